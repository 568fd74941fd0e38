"""ONNX export of a racmkd model, with its preprocessing contract, and parity against PyTorch.

An exported model takes one input per modality, named after it, in the shape its spec gives
(batch first, dynamic), and returns `logits`. BatchNorm is folded into the convolutions before
export. The model's metadata (`racmkd.contract`) holds what a runtime must do to raw inputs
(`Modality.contract`): crop and resize for images, the log-mel parameters for audio.

The exporter is chosen explicitly: `dynamo=True` (torch.export + onnxscript), opset 18.
Reading contracts and opening sessions needs no torch: racmkd.compress.artifacts (re-exported here).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from racmkd.compress.artifacts import (  # noqa: F401 - the training side's one import
    CONTRACT_FORMAT,
    CONTRACT_KEY,
    ExportError,
    external_data_files,
    read_contract,
    session,
    specs_from_contract,
    stored_bytes,
    zero_feed,
)
from racmkd.config import to_dict
from racmkd.data.dataset import PairedDataset
from racmkd.data.modalities import Modality
from racmkd.models.inference import evaluation_inputs, fold_batchnorm
from racmkd.models.multimodal import MultimodalNet
from racmkd.utils import atomic_write_bytes

OPSET = 18
_EXPORTING = threading.Lock()  # one export at a time: the exporter's tracing is process-global state, and see below
_GRAPHS: OrderedDict[str, bytes] = OrderedDict()  # graph_key -> an exported graph, before its contract: this process's latest
_GRAPHS_LOCK = threading.Lock()
GRAPH_CACHE_BYTES = 256 * 2**20  # the most the kept graphs may take together


@functools.cache
def _torchlib_registry(build: Any, opset_version: int) -> Any:
    return build(opset_version)


@contextmanager
def _torchlib_registry_reused() -> Iterator[None]:
    """While held, `torch.onnx.export` reuses one operator registry per opset. The dynamo exporter
    builds it from torchlib on every call, parsing the source of some 2,000 onnxscript functions:
    1.1 s of a tiny student's 2.7 s export here, and the suite, the variant bank and the tests
    export dozens. The registry depends only on the opset when no custom translations are passed
    (we pass none) and the exporter only reads it. This replaces a private classmethod of the
    pinned torch for the duration of one export (under `_EXPORTING`); where torch lacks it,
    exports build their own registry as before."""
    try:
        from torch.onnx._internal.exporter import _registration

        registry_class = _registration.ONNXRegistry
        original = registry_class.__dict__["from_torchlib"]
    except (ImportError, AttributeError, KeyError):
        yield
        return
    build = original.__get__(None, registry_class)
    registry_class.from_torchlib = classmethod(lambda cls, opset_version=OPSET: _torchlib_registry(build, opset_version))
    try:
        yield
    finally:
        registry_class.from_torchlib = original


class InputGraph(nn.Module):
    """The model specialised for one set of present inputs, taken positionally (one per modality):
    the same function as `model({m: x for m in present})`, with the presence mask and the zero
    embeddings of absent modalities folded into the first layer after the concat (their
    contribution is a constant). What remains is encoders -> concat -> [project -> ReLU] ->
    classifier: no shape arithmetic for a device to run or store.

    `share` exports a student's additive share of the logits for its `present` modalities: the
    classifier's bias is left out (a student's logits are bias + one term per modality, since its
    classifier is linear over the concatenated embeddings), so that the edge runtime can add up
    the terms of variants that run separately. A teacher's fusion MLP does not split that way."""

    def __init__(self, model: MultimodalNet, present: list[str], share: bool = False) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict({m: model.encoders[m] for m in present})  # keeps the `encoders.<modality>` weight names
        widths = {m: e.embed_dim for m, e in model.encoders.items()}
        starts = dict(zip(widths, [sum(list(widths.values())[:i]) for i in range(len(widths))]))
        columns = torch.cat([torch.arange(starts[m], starts[m] + widths[m]) for m in present])
        order = list(model.encoders)
        presence = model.fusion.presence.weight[:, [order.index(m) for m in present]].sum(dim=1).detach()  # (D,)
        first = model.fusion.project if isinstance(model.fusion.project, nn.Linear) else model.classifier
        if share and first is not model.classifier:
            raise ExportError("only a student (a linear classifier over the embeddings) splits into additive per-modality shares; this model has a fusion MLP")
        folded = nn.Linear(len(columns), first.out_features)
        with torch.no_grad():
            folded.weight.copy_(first.weight[:, columns])
            bias = first.bias if first.bias is not None and not share else torch.zeros(first.out_features)
            # A student's classifier reads joint + presence: W (joint + p) + b = W joint + (W p + b).
            folded.bias.copy_(bias + (presence if first is model.fusion.project else first.weight @ presence))
        if first is model.fusion.project:
            self.head = nn.Sequential(folded, nn.ReLU(), model.classifier)
        else:
            self.head = folded

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([encoder(x) for encoder, x in zip(self.encoders.values(), inputs)], dim=1))


def contract(
    model_name: str, specs: dict[str, Any], modalities: dict[str, Modality], extra: dict[str, Any] | None = None, classes: int | None = None
) -> dict[str, Any]:
    """The preprocessing contract written into an exported model: with docs/contract.md, enough for
    a runtime written without racmkd (what each input must be made into, what the output means).
    Terse: every model file carries it (1.8 KB of a critical tier's 9.7)."""
    extra = extra or {}
    shape = f"(batch, {classes})" if classes else "(batch, classes)"
    if extra.get("share"):  # (read as logits alone, a share disagreed with its model on up to 5% of the digits)
        output = f"{shape} float32 share of the logits: logits = the sum of the answering shares + the mean of their logit_bias; column i = class i"
    else:
        output = f"{shape} float32 logits, column i = class i; softmax gives the probabilities"
    protocols = {m.protocol for m in modalities.values()}
    return {
        "format": CONTRACT_FORMAT,
        "model": model_name,
        **({"protocol": protocols.pop()} if len(protocols) == 1 else {}),
        "inputs": {m: {"modality": m, **modalities[m].contract(specs[m])} for m in specs},
        "outputs": {"logits": output},
        **extra,
    }


def strip_debug_info(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop what the exporter records for debugging (stack traces in node metadata, torch.export's
    graph signature in the graph's metadata, doc strings, intermediate shapes): bytes a device would
    store for nothing (the signature alone is 3 KB for a tiny student, 43 KB for MobileNetV3)."""
    for node in model.graph.node:
        node.ClearField("metadata_props")
        node.doc_string = ""
    model.graph.ClearField("metadata_props")
    model.graph.ClearField("value_info")
    model.graph.doc_string = ""
    return model


def module_weight_bytes(model: onnx.ModelProto) -> dict[str, int]:
    """Initializer bytes per top-level module (`encoders.image`, `encoders.audio`, `fusion`,
    `classifier`, ...), read off the exporter's tensor names (quantization scales included)."""
    totals: dict[str, int] = {}
    for init in model.graph.initializer:
        parts = init.name.removeprefix("model.").split(".")
        key = ".".join(parts[:2]) if parts[0] == "encoders" and len(parts) > 2 else parts[0] if len(parts) > 1 else "other"
        totals[key] = totals.get(key, 0) + stored_bytes(init)
    return totals


# Convolution attributes whose absence means the same value along every axis (ONNX's Conv: "if not
# present, the stride defaults to 1", likewise dilations; pads default to 0). The schema does not
# list these as defaults, so `drop_default_attributes` names them.
_CONV_ABSENT_MEANS = {"strides": 1, "dilations": 1, "pads": 0}


def default_opset(model: onnx.ModelProto) -> int | None:
    """The model's version of the default (ai.onnx) operator set, None when it imports none."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def drop_default_attributes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove every attribute set to the value its absence means: the operator schema's default
    (Conv's group 1 and auto_pad NOTSET, Gemm's alpha, beta, transA, DequantizeLinear's axis 1) and
    Conv's unit strides and dilations and zero pads. About a third of a tiny convolution node's
    bytes; ONNX Runtime reads the same graph."""
    opset = default_opset(model)
    if opset is None:
        return model
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, opset)
        except onnx.defs.SchemaError:
            continue
        kept = []
        for attr in node.attribute:
            default = schema.attributes[attr.name].default_value if attr.name in schema.attributes else None
            if (
                default is not None
                and default.type != onnx.AttributeProto.UNDEFINED
                and onnx.helper.get_attribute_value(default) == onnx.helper.get_attribute_value(attr)
            ):
                continue
            if node.op_type == "Conv" and attr.name in _CONV_ABSENT_MEANS and list(attr.ints) and all(v == _CONV_ABSENT_MEANS[attr.name] for v in attr.ints):
                continue
            kept.append(attr)
        if len(kept) < len(node.attribute):
            node.ClearField("attribute")
            node.attribute.extend(kept)
    return model


def compact_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rename every tensor but the graph's inputs and outputs to a short id, drop node names,
    intermediate shapes and attributes that restate defaults: the same graph, without the bytes an
    exporter's descriptive names cost (a QDQ graph of a tiny student is mostly names)."""
    keep = {v.name for v in [*model.graph.input, *model.graph.output]}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in names:
            names[name] = format(len(names), "x")
        return names[name]

    for init in model.graph.initializer:
        init.name = short(init.name)
    for node in model.graph.node:
        node.name = ""
        for i, name in enumerate(node.input):
            node.input[i] = short(name)
        for i, name in enumerate(node.output):
            node.output[i] = short(name)
    model.graph.ClearField("value_info")
    return drop_default_attributes(model)


def compact_file(path: Path) -> dict[str, int]:
    """Compact an exported model's names in place (atomically); returns its weight bytes per module,
    read before the names go."""
    model = onnx.load(path)
    by_module = module_weight_bytes(model)
    atomic_write_bytes(path, compact_names(model).SerializeToString())
    return by_module


def check_present(path: Path, present: list[str], specs: dict[str, Any]) -> None:
    """Refuse inputs to export that the model (`path`, named in the error) lacks or that are named twice."""
    unknown = set(present) - set(specs)
    if unknown:
        raise ExportError(f"{path}: cannot export inputs {sorted(unknown)}; the model uses {list(specs)}")
    repeated = sorted({m for m in present if present.count(m) > 1})
    if repeated:  # the graph takes one input per modality, named after it; torch's exporter fails obscurely on two
        raise ExportError(f"{path}: {', '.join(repeated)} listed more than once in the inputs to export ({present}); name each modality once")


def export_onnx(
    model: MultimodalNet,
    specs: dict[str, Any],
    modalities: dict[str, Modality],
    path: Path,
    name: str = "model",
    present: list[str] | None = None,
    extra_meta: dict[str, Any] | None = None,
    share: bool = False,
) -> Path:
    """Write `model` (BatchNorm folded) to `path` as ONNX with its contract; `present` exports the
    graph for a subset of its modalities (a variant with a sensor off); `share` exports only those
    modalities' additive share of a student's logits (see `InputGraph`). A graph this process
    exported before is written again from memory with this file's contract (see `graph_key`)."""
    present = list(present or specs)
    check_present(path, present, specs)
    wrapper = InputGraph(fold_batchnorm(model), present, share).eval()
    example = tuple(torch.zeros(1, *modalities[m].feature_shape(specs[m])) for m in present)
    key = graph_key(wrapper, example)
    with _GRAPHS_LOCK:
        graph = _GRAPHS.get(key)
        if graph is not None:
            _GRAPHS.move_to_end(key)
    if graph is None:
        graph = strip_debug_info(_exported(wrapper, example, present, path)).SerializeToString()
        _keep_graph(key, graph)
    proto = onnx.load_from_string(graph)
    used = {m: specs[m] for m in present}
    meta = contract(name, used, modalities, extra_meta, classes=model.classifier.out_features)
    set_metadata(proto, {CONTRACT_KEY: json.dumps(meta, separators=(",", ":"))})  # compact: it travels in every model file
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"{path}: the exported graph fails ONNX's checker ({str(err).splitlines()[0]}); nothing written") from None
    atomic_write_bytes(path, proto.SerializeToString())
    return path


VARIANT_SUFFIXES = (".fp32.onnx", ".int8.onnx", ".int8-weights.onnx", ".int4-weights.onnx")  # the files one `racmkd export` of a model may write


def remove_unwritten_variants(out_dir: Path, stem: str, written: list[Path]) -> list[Path]:
    """Delete the variants of model `stem` in `out_dir` (`<stem>.int8.onnx`, ...) that this export
    did not write: an earlier export's int8 file left beside a new fp32-only export looks deployable,
    yet the new `<stem>.export.json` lists nothing it matches. Called after the new files are written,
    so a failed export leaves the earlier set whole; files named for other models (`<stem>-image.*`,
    a subset's variant) stay. Returns what was removed."""
    keep = {Path(p).resolve() for p in written}
    removed = []
    for suffix in VARIANT_SUFFIXES:
        old = Path(out_dir) / f"{stem}{suffix}"
        if old.resolve() not in keep and old.is_file():
            old.unlink()
            removed.append(old)
    return removed


def _exported(wrapper: nn.Module, example: tuple[torch.Tensor, ...], present: list[str], path: Path) -> onnx.ModelProto:
    """torch's ONNX exporter run on the wrapped model (dynamo, a dynamic batch dimension, optimised)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # it warns about every torchvision operator it cannot register
    try:
        with _EXPORTING, _torchlib_registry_reused(), tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), redirect_stdout(StringIO()):
            warnings.simplefilter("ignore")
            raw = Path(tmp) / "model.onnx"
            torch.onnx.export(
                wrapper,
                example,
                raw,
                input_names=present,
                output_names=["logits"],
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                dynamic_shapes=(tuple({0: batch} for _ in present),),
                optimize=True,
            )
            return onnx.load(raw)
    except Exception as err:  # noqa: BLE001 - the exporter raises many kinds
        cause: BaseException | None = err
        for _ in range(32):  # Ctrl-C (or the CLI's SIGTERM, a SystemExit) inside torch.export comes out wrapped as its export error: a stop, not a failure
            if cause is None:
                break
            if isinstance(cause, (KeyboardInterrupt, SystemExit)):
                raise cause.with_traceback(None) from None
            cause = cause.__cause__ or cause.__context__
        raise ExportError(f"{path}: ONNX export failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err
    finally:
        exporter_log.setLevel(level)


def graph_key(wrapper: nn.Module, example: tuple[torch.Tensor, ...]) -> str:
    """What an exported graph depends on, hashed: every module's class, extra repr and attributes
    (tensors and arrays by their bytes, anything else by its repr), every parameter and buffer,
    the example inputs and the opset. Within one process the classes' code is fixed, and the
    exporter is deterministic (byte-identical files): two exports with one key write one graph.
    Why it is worth knowing: an export takes seconds (torch traces the model twice), and a run's
    models are exported again and again (its evaluation, its bank, the benchmark's rows: 50 of the
    test suite's 95 exports)."""
    digest = hashlib.sha256(f"{OPSET};{[(tuple(x.shape), x.dtype) for x in example]}".encode())
    for name, module in wrapper.named_modules():
        digest.update(f"{name}:{type(module).__module__}.{type(module).__qualname__}:{module.extra_repr()};".encode())
        for attribute, value in sorted(vars(module).items()):
            if not attribute.startswith("_") and not isinstance(value, nn.Module):
                digest.update(f"{attribute}=".encode())
                _fingerprint(value, digest)
    for name, tensor in [*wrapper.named_parameters(), *wrapper.named_buffers()]:
        digest.update(f"{name}=".encode())
        _fingerprint(tensor, digest)
    return digest.hexdigest()


def _fingerprint(value: Any, digest: Any) -> None:
    """Feed a value to a hash: tensors and arrays whole (their reprs elide), containers item by
    item, anything else by its repr (an object without one shows its address: never equal)."""
    if isinstance(value, torch.Tensor):
        digest.update(f"tensor{value.dtype}{tuple(value.shape)}".encode())
        digest.update(value.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, np.ndarray):
        digest.update(f"array{value.dtype}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__}{len(value)}(".encode())
        for item in value:
            _fingerprint(item, digest)
        digest.update(b")")
    elif isinstance(value, dict):
        digest.update(f"dict{len(value)}(".encode())
        for k, v in value.items():
            digest.update(f"{k!r}:".encode())
            _fingerprint(v, digest)
        digest.update(b")")
    else:
        digest.update(repr(value).encode())


def _keep_graph(key: str, graph: bytes) -> None:
    """Keep an exported graph for the next export of the same model, the oldest dropped beyond
    GRAPH_CACHE_BYTES."""
    with _GRAPHS_LOCK:
        _GRAPHS[key] = graph
        while sum(len(g) for g in _GRAPHS.values()) > GRAPH_CACHE_BYTES and len(_GRAPHS) > 1:
            _GRAPHS.popitem(last=False)


def set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    """Set (or replace) metadata_props entries."""
    kept = [p for p in model.metadata_props if p.key not in values]
    model.ClearField("metadata_props")
    for p in kept:
        model.metadata_props.add(key=p.key, value=p.value)
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)


def onnx_logits(
    sess: ort.InferenceSession, specs: dict[str, Any], dataset: PairedDataset, split: str, limit: int = 0, batch_size: int = 500
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, K) of an ONNX session on a split (fixed corruption draws) and the labels (N,)."""
    names = [i.name for i in sess.get_inputs()]
    outputs, labels = [], []
    for rows in dataset.batches(split, batch_size, limit=limit):
        features = evaluation_inputs(dataset, split, rows, {m: specs[m] for m in names})
        outputs.append(sess.run(["logits"], {m: features[m].contiguous().numpy() for m in names})[0])
        labels.append(dataset.splits[split].labels[rows].numpy())
    return np.concatenate(outputs), np.concatenate(labels)


@dataclass(frozen=True)
class Parity:
    """How closely one model's outputs follow a reference's on the same samples."""

    samples: int
    argmax_agreement: float
    max_abs_logit_diff: float
    accuracy: float
    reference_accuracy: float

    def as_dict(self) -> dict[str, Any]:
        return to_dict(self)  # type: ignore[no-any-return]


def parity(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> Parity:
    """Argmax agreement and largest logit difference of `logits` against `reference`."""
    return Parity(
        samples=len(labels),
        argmax_agreement=float((logits.argmax(1) == reference.argmax(1)).mean()),
        max_abs_logit_diff=float(np.abs(logits - reference).max()),
        accuracy=float((logits.argmax(1) == labels).mean()),
        reference_accuracy=float((reference.argmax(1) == labels).mean()),
    )


# The fp32 graph computes what PyTorch does, in another order of float operations: its logits have
# stayed within 3e-5 of PyTorch's on every test split (make bench's 24 tiers, 2026-12-03). A
# difference 30 times that is a wrong export (a mis-folded batch norm or presence map), not rounding.
FP32_LOGIT_TOLERANCE = 1e-3


def fp32_parity(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray, path: Path) -> Parity:
    """`parity` of an fp32 export against PyTorch, which must be exact but for rounding: the int8
    models are judged against it, so a wrong one would ship and set the reference for the rest."""
    p = parity(logits, reference, labels)
    if not p.max_abs_logit_diff <= FP32_LOGIT_TOLERANCE:  # NaN included
        raise ExportError(
            f"{path}: its logits differ from PyTorch's by up to {p.max_abs_logit_diff:.3g} (argmax agreement {p.argmax_agreement:.4f} over {p.samples} test samples; rounding stays below {FP32_LOGIT_TOLERANCE:g}): the export is wrong, nothing is deployed from it"
        )
    return p


def torch_logits(
    model: MultimodalNet, specs: dict[str, Any], dataset: PairedDataset, split: str, present: list[str] | None = None, limit: int = 0
) -> np.ndarray:
    """PyTorch logits of `model` on a split, with only `present` modalities given (default: all)."""
    from racmkd.models.inference import predict_split

    withheld = tuple(m for m in specs if present is not None and m not in present)
    (logits,), _ = predict_split(model, specs, dataset, split, limit=limit, withheld=(withheld,))
    return logits.numpy()
