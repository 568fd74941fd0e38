"""Deployable artifacts without the training stack: an exported model's contract, and ONNX Runtime
sessions to run it. Edge devices import this module, never racmkd.compress.export (which needs torch).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from racmkd.data import signals as _signals  # noqa: F401 - registers the image, audio and pen signals
from racmkd.registry import SIGNALS

CONTRACT_KEY = "racmkd.contract"
CONTRACT_FORMAT = "racmkd-onnx/2"
# The contract formats read. /2 (2026-12-07) says that an audio input's spec records where its
# recording sits in the window (`spec.window`); /1 files made before 2026-12-06 have no window and
# are placed as they were then ("loudest", `AudioSignal.spec_from_dict`: by the key's presence, not
# the format, so the /1 files of 2026-12-06 that have one are read as written). A reader of our
# files that ignores keys it does not know sees /2 and learns that its audio placement changed.
READABLE_CONTRACT_FORMATS = ("racmkd-onnx/1", CONTRACT_FORMAT)
# A deployable artifact's format -> the arithmetic it runs in (a mixed model is int8 but for a few layers).
FORMAT_PRECISION = {"onnx-fp32": "fp32", "onnx-int8": "int8", "onnx-mixed": "int8", "onnx-int8-weights": "int8-weights", "onnx-int4-weights": "int4-weights"}
# Precisions whose weights alone are stored as integers (float arithmetic), and their width in bits.
WEIGHTS_ONLY_BITS = {"int8-weights": 8, "int4-weights": 4}
# Element types stored two to a byte (numpy, through ml_dtypes, holds each in a byte of its own).
PACKED_4BIT = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4, onnx.TensorProto.FLOAT4E2M1}


class ExportError(RuntimeError):
    """A model could not be exported, or a file is not a racmkd ONNX model; the message names the file."""


def read_contract(path: Path, fix: str = "export it with `racmkd export`", single_file: bool = False) -> dict[str, Any]:
    """The contract of an exported racmkd model; a clear error for anything else, ending in `fix`
    (how to make the file again: a bank's variant is rebuilt with the bank, not exported alone).
    `single_file`: a model whose weights are in external data files is refused too (see
    `racmkd.resources.profile.profiled_contract`)."""
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"{path}: a folder, not a model file; name the .onnx file in it (`racmkd export` writes <model>.fp32.onnx)")
    if not path.is_file():
        raise ExportError(f"{path}: no such file; {fix}")
    if path.stat().st_size == 0:
        raise ExportError(f"{path}: an empty file, not an ONNX model; {fix}")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf raises DecodeError and others
        raise ExportError(f"{path}: not an ONNX model, or a truncated one ({type(err).__name__}); {fix}") from None
    if not model.graph.node and not model.graph.input:  # protobuf reads many a short text (b"x\n") as a message with nothing in it
        raise ExportError(f"{path}: not an ONNX model (no graph in it); {fix}")
    external = external_data_files(model)
    missing = [name for name in external if not (path.parent / name).is_file()]
    if missing:
        raise ExportError(
            f"{path}: its weights are stored in {', '.join(str(path.parent / m) for m in missing)}, which is missing; put it beside the model, or save the model as one file"
        )
    if single_file and external:
        raise ExportError(
            f"{path}: stores its weights in external data ({', '.join(external)}); racmkd profiles single-file models. Save it as one: "
            f"python -c \"import onnx; onnx.save(onnx.load('{path}'), 'one-file.onnx')\""
        )
    meta = {p.key: p.value for p in model.metadata_props}
    if CONTRACT_KEY not in meta:
        raise ExportError(f"{path}: an ONNX model without a racmkd contract (metadata {CONTRACT_KEY!r}); {fix}")
    try:
        contract = json.loads(meta[CONTRACT_KEY])
    except ValueError as err:
        raise ExportError(f"{path}: its racmkd contract is not JSON ({err}); {fix}") from None
    if (
        not isinstance(contract, dict)
        or contract.get("format") not in READABLE_CONTRACT_FORMATS
        or not isinstance(contract.get("inputs"), dict)
        or not contract["inputs"]
    ):
        found = contract.get("format") if isinstance(contract, dict) else None
        raise ExportError(f"{path}: its racmkd contract is not a {' or '.join(READABLE_CONTRACT_FORMATS)} contract with inputs (format {found!r}); {fix}")
    return contract


def external_data_files(model: onnx.ModelProto) -> list[str]:
    """The files, relative to the model's folder, that hold tensors of a model saved with external
    data (`onnx.save(..., save_as_external_data=True)`); none for a single-file model, as racmkd writes."""
    tensors = [*model.graph.initializer, *(a.t for n in model.graph.node for a in n.attribute if a.HasField("t"))]
    names = {e.value for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL for e in t.external_data if e.key == "location"}
    return sorted(names)


def compress_again(folder: Path) -> str:
    """What remakes a compressed tier's folder (<run>/compressed/<tier>), the run named: without
    `--run` the command would compress runs/latest's tier, not this run's."""
    folder = Path(folder)
    return f"compress the tier again with `racmkd compress --run {folder.parent.parent} --tier {folder.name}`"


def read_compression_record(folder: Path, whole: bool = False) -> dict[str, Any]:
    """A compressed tier's compression.json (written by `racmkd compress`: the artifact it deploys,
    its format, every step's log), checked; errors name the file. `whole`: also what the report
    reads of it (the reason, tier, recipe and step log; hand-edited, a TypeError traceback)."""
    path = Path(folder) / "compression.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file. Compress the tier with `racmkd compress`.")
    try:
        record = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ExportError(f"{path}: not readable JSON ({err}); {compress_again(folder)}") from None
    missing = [k for k in ("artifact", "format") if not isinstance(record, dict) or not isinstance(record.get(k), str)]
    if missing:
        raise ExportError(f"{path}: no {' or '.join(missing)} recorded; {compress_again(folder)}")
    if whole:
        damaged = [k for k in ("reason", "tier") if not isinstance(record.get(k), str)] + ["recipe"] * ("recipe" not in record)
        steps = record.get("steps")
        if not isinstance(steps, list) or not all(isinstance(s, dict) and {"step", "before", "after", "seconds"} <= s.keys() for s in steps):
            damaged.append("steps")
        if damaged:
            raise ExportError(f"{path}: {', '.join(damaged)} missing or damaged; {compress_again(folder)}")
    return record


def specs_from_contract(contract: dict[str, Any], fix: str = "export it again with `racmkd export`") -> dict[str, Any]:
    """The feature specs of an exported model's inputs, as the modalities' signals read them."""
    try:
        return {m: SIGNALS.get(m).spec_from_dict(entry["spec"]) for m, entry in contract["inputs"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ExportError(f"model {contract.get('model', '?')!r}: its contract's inputs are damaged ({type(err).__name__}: {err}); {fix}") from None


def stored_bytes(tensor: onnx.TensorProto) -> int:
    """The bytes a tensor's values take in the model file (4-bit types packed two to a byte)."""
    count = math.prod(tensor.dims)
    if tensor.data_type in PACKED_4BIT:
        return (count + 1) // 2
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def stores_quantized_weights_only(model: onnx.ModelProto) -> bool:
    """True for a graph whose only integer tensors are stored weights (int8 or int4):
    DequantizeLinear nodes that read initializers, and no QuantizeLinear (activations stay float)."""
    weights = {i.name for i in model.graph.initializer}
    dequantized = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    return bool(dequantized) and all(n.input[0] in weights for n in dequantized) and not any(n.op_type == "QuantizeLinear" for n in model.graph.node)


def session(path: Path | bytes, threads: int = 1) -> ort.InferenceSession:
    """An ONNX Runtime CPU session on `threads` threads, all graph optimisations on.

    For a model with int8 or int4 weights and float arithmetic (racmkd.compress.quantize.quantize_weights),
    the QDQ transformers are turned off: they would keep every DequantizeLinear and run it at each
    inference (measured here: 1.1x to 2.2x the fp32 model's latency on the four compressed tiers); without them
    constant folding turns the weights back into float once, at load, and the model runs as fast as
    its fp32 export."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        model = onnx.load(path, load_external_data=False) if isinstance(path, (str, Path)) else onnx.load_from_string(path)
        if stores_quantized_weights_only(model):
            options.add_session_config_entry("session.disable_quant_qdq", "1")
    except Exception:  # noqa: BLE001, S110 - not a readable model: ONNX Runtime's own message below says so
        pass
    source = str(path) if isinstance(path, (str, Path)) else path
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ExportError(f"{path if isinstance(path, Path) else 'model'}: ONNX Runtime cannot load it ({str(err).splitlines()[0]})") from None


def zero_feed(sess: ort.InferenceSession) -> dict[str, np.ndarray]:
    """Zero inputs of batch 1 for every input of a session (health checks, timing)."""
    return {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], dtype=np.float32) for i in sess.get_inputs()}
