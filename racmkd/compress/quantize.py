"""int8 quantization: post-training static quantization through ONNX Runtime, quantization-aware
fine-tuning in PyTorch, mixed precision chosen from measured per-layer sensitivity, and int8 or
4-bit weights with float arithmetic.

The deployed arithmetic is always ONNX Runtime's QDQ format: signed int8 weights (symmetric, one
scale per output channel, in [-64, 64]: see WEIGHT_QMAX) and signed int8 activations (one scale and
zero point per tensor, from min-max calibration on training samples), around every Conv, Gemm and
MatMul; the rest of the graph stays float. Quantization-aware training (QAT) fine-tunes the float weights while the forward pass
rounds weights and layer inputs the same way (fake quantization with a straight-through gradient),
then goes through the same ONNX Runtime path: its per-channel weight scales (max |w| / WEIGHT_QMAX) are the
ones QAT trained under. torch.ao.quantization is deprecated, so nothing here builds on it.

Int8 weights with float arithmetic (`quantize_weights`, format `onnx-int8-weights`; TensorFlow
Lite calls it dynamic-range quantization) store each weight in a quarter of its bytes and run at
fp32 speed: ONNX Runtime dequantizes them once, when it loads the model (see
racmkd.compress.artifacts.session). It is the artifact for the tiny students, where int8 kernels
are slower than fp32 ones and full int8 loses agreement, but the file still has to shrink.
4-bit weights (`quantize_weights(..., bits=4)`, format `onnx-int4-weights`) halve those bytes
again: ONNX's INT4, two to a byte, dequantized the same way at load. Fifteen levels per channel
cost more accuracy, so the export keeps the layers that lose most in 8 bits (`fewest_int8_weights`)
and QAT can train for the 4-bit grid (`fake_quantized(..., weight_bits=4, activations=False)`).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import torch
from onnx import version_converter
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn
from torch.nn.utils import parametrize

from racmkd.compress.export import CONTRACT_KEY, ExportError, default_opset, read_contract, session, set_metadata
from racmkd.data.dataset import PairedDataset
from racmkd.models.inference import BatchFeatures
from racmkd.utils import atomic_write_bytes, progress

QUANTIZED_OPS = ["Conv", "Gemm", "MatMul"]  # the layers that carry weights and nearly all the arithmetic
# What the quantizer is given besides: with Relu among them, a Conv's output takes its ReLU's range
# and the Relu fuses away; without, the Conv's output was rounded to its pre-ReLU range (about twice
# as coarse) and again after the Relu, rounding QAT does not model. The logits (a Gemm's output) stay
# float: one int8 scale for all ten classes flipped near ties, and QAT does not round them either.
# Critical audio path of run deploy-s0 (no QAT re-run): test agreement with fp32 0.9843 -> 0.9898,
# low 0.9884 -> 0.9931, files 12-14% smaller.
QUANTIZER_OPS_WITH_RELU = [*QUANTIZED_OPS, "Relu"]
FLOAT_OUTPUTS = ["Gemm"]

# Weights are quantized to [-64, 64], 129 levels (ONNX Runtime's `reduce_range`, "7 bits"). On x86
# CPUs without VNNI, ONNX Runtime's int8 kernels multiply u8 activations by s8 weights with an
# instruction whose pairwise sums saturate at 16 bits (2 x 255 x 64 = 32,640 fits; x 127 does not);
# with full 8-bit weights the stem convolution of our audio encoders overflows. Measured here (Xeon
# without VNNI, critical tier): argmax agreement with the fp32 model 0.44 with 8-bit weights, 0.98
# with reduced-range ones (0.99 when the QDQ graph is run unfused, in float). A reduced-range
# artifact runs correctly on every CPU, so it is the only kind we ship. QAT rounds to the same grid
# (scale max |w| / 64: the quantizer's, read off a deployed graph's weights, which span -64..64).
WEIGHT_QMAX = 64


# Calibration data ----------------------------------------------------------------------------------


def calibration_inputs(dataset: PairedDataset, specs: dict[str, Any], samples: int, split: str = "train") -> dict[str, np.ndarray]:
    """Model inputs of the first `samples` samples of a split (fixed corruption draws, no augmentation)."""
    rows = torch.arange(min(samples, len(dataset.splits[split])))
    features = BatchFeatures(dataset.modalities, dataset.raw_batch(split, rows)).get(specs)
    return {m: x.numpy() for m, x in features.items()}


class _Feeder(CalibrationDataReader):
    """Feeds ONNX Runtime's calibrator batches of the calibration inputs."""

    def __init__(self, inputs: dict[str, np.ndarray], names: list[str], batch: int = 64) -> None:
        n = len(next(iter(inputs.values())))
        self._batches = iter([{m: inputs[m][i : i + batch] for m in names} for i in range(0, n, batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


# Post-training static quantization -----------------------------------------------------------------


def preprocess(fp32_path: Path, out_path: Path) -> Path:
    """ONNX Runtime's recommended step before quantization (shape inference, graph optimisation)."""
    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True)
    return out_path


def quantizable_nodes(model_path: Path) -> list[onnx.NodeProto]:
    """The nodes static quantization acts on, in graph order."""
    return [n for n in onnx.load(model_path).graph.node if n.op_type in QUANTIZED_OPS]


def _relus_after(model: onnx.ModelProto) -> dict[str, str]:
    """Quantizable layer -> the Relu that alone reads its output (fused into its output's rounding)."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    fused = {}
    for node in model.graph.node:
        if node.op_type in QUANTIZED_OPS and node.output:
            after = readers.get(node.output[0], [])
            if len(after) == 1 and after[0].op_type == "Relu" and after[0].name:
                fused[node.name] = after[0].name
    return fused


def quantize_int8(
    fp32_path: Path, out_path: Path, calibration: dict[str, np.ndarray], keep_float: list[str] | tuple[str, ...] = (), only: list[str] | None = None
) -> Path:
    """Static QDQ int8 quantization of an exported model; `keep_float` names layers (nodes of the
    pre-processed graph) left in fp32, `only` quantizes just these. Keeps the racmkd contract, adds
    the precision of every layer to it."""
    contract = read_contract(fp32_path)
    with tempfile.TemporaryDirectory() as tmp:
        pre = preprocess(fp32_path, Path(tmp) / "pre.onnx")
        names = [i.name for i in onnx.load(pre).graph.input]
        layers = [n.name for n in quantizable_nodes(pre)]
        unknown = set(keep_float) - set(layers)
        if unknown:
            raise ValueError(f"{fp32_path}: no quantizable layers named {sorted(unknown)}; it has {layers}")
        quantized = Path(tmp) / "int8.onnx"
        # A layer's ReLU goes with it: quantized alone (a sensitivity probe) the layer's output was
        # rounded to its pre-ReLU range, the coarse rounding the full graph no longer has; and kept
        # in fp32, its ReLU was quantized on its own, at that range again.
        relus = _relus_after(onnx.load(pre))
        excluded = [*keep_float, *(relus[n] for n in keep_float if n in relus)]
        probed = None if only is None else [*only, *(relus[n] for n in only if n in relus)]
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantizer logs per-tensor notes on the root logger
        try:
            quantize_static(
                str(pre),
                str(quantized),
                _Feeder(calibration, names),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=QUANTIZER_OPS_WITH_RELU,
                per_channel=True,
                reduce_range=WEIGHT_QMAX < 127,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                nodes_to_quantize=probed,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True, "OpTypesToExcludeOutputQuantization": FLOAT_OUTPUTS},
            )
        finally:
            root.setLevel(level)
        model = onnx.load(quantized)
    mixed = bool(keep_float) or only is not None
    precision = {n: ("int8" if (only is None or n in only) and n not in keep_float else "fp32") for n in layers}
    set_metadata(model, {CONTRACT_KEY: _json({**contract, "precision": "mixed" if mixed else "int8", **({"layer_precision": precision} if mixed else {})})})
    atomic_write_bytes(out_path, model.SerializeToString())
    return out_path


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))  # compact: the contract travels in every model file


# Quantized weights, float arithmetic -----------------------------------------------------------------

# No integer kernel ever multiplies these weights, so they use every level but the lowest, symmetric:
# int8 [-127, 127], int4 [-7, 7] (the 16th level, -8, would make the grid lopsided).
WEIGHTS_ONLY_QMAX = {8: 127, 4: 7}
# ONNX's DequantizeLinear reads int4 from opset 21; a model with 4-bit weights is converted to it
# (the operators our exports use mean the same there: later opsets added types, not behaviour).
INT4_OPSET = 21
FLOAT = 32  # a weight left as it is, in `quantize_weights`' bits


def _output_channel_axis(node: onnx.NodeProto, weight: np.ndarray) -> int:
    """The axis of a layer's weight that indexes its output channels (one scale each)."""
    if node.op_type == "Gemm":
        return 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
    return 0 if node.op_type == "Conv" else weight.ndim - 1  # MatMul: (..., in, out)


def layer_weights(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Each Conv, Gemm and MatMul weight initializer (a matrix or larger) by name, with the first
    node that reads it. The names are the modules' own (`encoders.image.body.1.0.weight`), the
    same in every graph exported from one model, so a choice made on one export applies to another."""
    initializers = {i.name: i for i in model.graph.initializer}
    found: dict[str, onnx.NodeProto] = {}
    for node in model.graph.node:
        name = node.input[1] if node.op_type in QUANTIZED_OPS and len(node.input) > 1 else ""
        if name in initializers and name not in found and len(initializers[name].dims) >= 2:
            found[name] = node
    return found


def quantize_weights(
    fp32_path: Path,
    out_path: Path,
    bits: int = 8,
    bits_by_weight: dict[str, int] | None = None,
    clipped: Collection[str] = (),
    whole_rows: dict[str, np.ndarray] | None = None,
    per_tensor: Collection[str] = (),
    bias_shift: dict[str, np.ndarray] | None = None,
) -> Path:
    """Store every Conv, Gemm and MatMul weight of an exported model in `bits` (8 or 4; symmetric,
    one scale per output channel) behind a DequantizeLinear; activations, biases and arithmetic
    stay float. `bits_by_weight` overrides the width of named weights (see `layer_weights`; 32:
    left in fp32), for mixed precision. ONNX Runtime's weight-only quantizers cover MatMul in 4-bit
    blocks, not convolutions, hence this transform. Each output channel's grid spans its
    `weight_range`, clipped for the 4-bit weights named in `clipped`. `whole_rows` gives named
    weights the rows (one per output channel, see `channel_rows`) to take that range from instead
    of their own: a graph holding part of a layer's inputs (a variant bank's share of the
    classifier) then rounds them on the whole layer's grid. The weights named in `per_tensor` take
    one scale for the whole layer (its rows as one), stored as a scalar: in a layer with few
    weights per channel (9 in a 3x3 depthwise convolution) a channel's fp32 scale costs as many
    bytes as four of its 8-bit weights. `bias_shift` adds to named bias initializers (see
    `bias_shifts`: what the rounding moved the layers' mean outputs by).
    Keeps the racmkd contract, with precision "int4-weights" when any weight is in 4 bits, else
    "int8-weights"; a model with 4-bit weights is converted to opset 21."""
    widths = {bits, *(bits_by_weight or {}).values()}
    if not widths <= {*WEIGHTS_ONLY_QMAX, FLOAT}:
        raise ValueError(f"weights are stored in 8 or 4 bits (32: left in fp32), not {sorted(widths)}")
    if widths == {FLOAT}:
        raise ValueError("no weight to quantize: every width given is 32 (fp32); name 8 or 4")
    contract = read_contract(fp32_path)
    model = onnx.load(fp32_path)
    graph = model.graph
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node):
        raise ExportError(f"{fp32_path}: already quantized ({contract.get('precision', 'int8')}); quantized weights are made from the fp32 export")
    for listed, names in (("clipped", clipped), ("per_tensor", per_tensor)):
        if isinstance(names, str):
            raise TypeError(f"{listed} names weights, a collection of names, not the string {names!r}")
    found = layer_weights(model)
    unknown = sorted((set(bits_by_weight or {}) | set(clipped) | set(whole_rows or {}) | set(per_tensor)) - set(found))
    if unknown:
        raise ExportError(f"{fp32_path}: no layer weights named {unknown}; the model's are {sorted(found)}")
    chosen = {name: (bits_by_weight or {}).get(name, bits) for name in found}
    unscaled = sorted(name for name in per_tensor if chosen[name] == FLOAT)
    if unscaled:
        raise ExportError(f"{fp32_path}: {unscaled} left in fp32 have no scale to share; name only quantized weights in per_tensor")
    if 4 in chosen.values():
        model = version_converter.convert_version(model, max(INT4_OPSET, default_opset(model) or INT4_OPSET))
        graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    dequantize: list[onnx.NodeProto] = []  # first in the graph: every reader of a weight comes after
    for name, node in found.items():
        if chosen[name] == FLOAT:
            continue
        qmax = WEIGHTS_ONLY_QMAX[chosen[name]]
        weight = onnx.numpy_helper.to_array(initializers[name]).astype(np.float32)
        axis = _output_channel_axis(node, weight)
        rows = channel_rows(weight, axis)
        if whole_rows and name in whole_rows:
            if whole_rows[name].ndim != 2 or len(whole_rows[name]) != len(rows):
                raise ExportError(
                    f"{fp32_path}: whole_rows for {name} must hold one row for each of its {len(rows)} output channels, not {whole_rows[name].shape}"
                )
            rows = whole_rows[name].astype(np.float32)
        one_scale = name in per_tensor
        span = weight_range(rows.reshape(1, -1) if one_scale else rows, chosen[name], clip=name in clipped)
        scale = span / qmax
        scale[scale == 0] = 1.0  # an all-zero channel (pruning leaves none, but a user's model may)
        shape = [1] * weight.ndim
        if not one_scale:
            shape[axis] = -1
        q = np.clip(np.round(weight / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
        stored = onnx.numpy_helper.from_array(q.astype(ml_dtypes.int4) if chosen[name] == 4 else q, f"{name}_int{chosen[name]}")  # int4: two per byte
        graph.initializer.remove(initializers[name])
        scale = scale.astype(np.float32)
        graph.initializer.extend([stored, onnx.numpy_helper.from_array(scale.reshape(()) if one_scale else scale, f"{name}_scale")])
        axis_attribute = {} if one_scale else {"axis": axis}  # a scalar scale serves the whole tensor
        dequantize.append(onnx.helper.make_node("DequantizeLinear", [stored.name, f"{name}_scale"], [name], **axis_attribute))
    nodes = [*dequantize, *graph.node]
    graph.ClearField("node")
    graph.node.extend(nodes)
    present = {i.name for i in graph.initializer}  # (the weights just stored in 8 or 4 bits are gone)
    for name, shift in (bias_shift or {}).items():
        if name not in present or initializers[name].data_type != onnx.TensorProto.FLOAT or tuple(initializers[name].dims) != np.shape(shift):
            raise ExportError(f"{fp32_path}: bias_shift names {name!r}, which is no fp32 initializer of shape {np.shape(shift)} in the model")
        shifted = onnx.numpy_helper.to_array(initializers[name]) + np.asarray(shift, dtype=np.float32)
        initializers[name].CopyFrom(onnx.numpy_helper.from_array(shifted.astype(np.float32), name))
    # Which weights are in which width, the stored tensors' types say (the names go at `compact_file`).
    precision = "int4-weights" if 4 in chosen.values() else "int8-weights"
    set_metadata(model, {CONTRACT_KEY: _json({**contract, "precision": precision})})
    onnx.checker.check_model(model)
    atomic_write_bytes(out_path, model.SerializeToString())
    return out_path


def _layer_outputs(model: onnx.ModelProto, names: list[str], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The named intermediate tensors of a model (made graph outputs) on `feed`."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.ClearField("output")
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    sess = session(probe.SerializeToString())
    return dict(zip(names, sess.run(names, {i.name: feed[i.name] for i in sess.get_inputs()})))


def bias_shifts(fp32_path: Path, quantized_path: Path, calibration: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Empirical bias correction (Nagel et al., "Data-Free Quantization Through Weight Equalization
    and Bias Correction", 2019): rounding a layer's weights moves the mean of each of its output
    channels, and the error passes on through every later layer; the bias can take it back at no
    cost in bytes. For each encoder layer of a weights-only model whose weights are rounded, in
    graph order, the mean over `calibration` samples of its fp32 output less its quantized output
    (the earlier layers already corrected) per output channel is what to add to its bias
    (`quantize_weights`' `bias_shift`). The classifier is left as it is: the variant bank splits it
    among shares and adds the tier's bias at run time; so are a layer without a bias input of its
    own and a bias two layers read (no one shift serves both). Each layer's outputs are probed
    alone (all of a large tier's at once would fill memory); no shifts when no layer qualifies.
    On a pruned critical tier's image encoder,
    three layers in 4 bits and the rest on one 8-bit scale each, it raised the agreement with the
    fp32 model from 0.9855 to 0.9918 of the validation split (measured 2026-12-06)."""
    fp32, quantized = onnx.load(fp32_path), onnx.load(quantized_path)
    rounded = {n.output[0] for n in quantized.graph.node if n.op_type == "DequantizeLinear"}
    biases = {i.name: i for i in quantized.graph.initializer}
    readers: dict[str, int] = {}
    for node in quantized.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    layers = [
        node
        for name, node in layer_weights(fp32).items()
        if name in rounded
        and name.removeprefix("model.").startswith("encoders.")
        and len(node.input) > 2
        and node.input[2] in biases
        and readers[node.input[2]] == 1  # a bias two layers read cannot take either one's shift
    ]
    shifts: dict[str, np.ndarray] = {}
    for node in layers:  # graph order: each layer's mean is measured after the earlier ones' correction
        bias = biases[node.input[2]]  # (in `quantized`, corrected in place as the loop goes)
        out = node.output[0]  # (one layer's outputs at a time: all of a large tier's at once would fill memory)
        difference = _layer_outputs(fp32, [out], calibration)[out] - _layer_outputs(quantized, [out], calibration)[out]
        per_channel = difference.mean(axis=tuple(a for a in range(difference.ndim) if a != 1), dtype=np.float64)  # (N, C, ...): channel axis 1
        shifts[bias.name] = per_channel.astype(np.float32).reshape(tuple(bias.dims))
        bias.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(bias) + shifts[bias.name], bias.name))
    return shifts


def weights_only_model(fp32_path: Path, out_path: Path, calibration: dict[str, np.ndarray] | None = None, **formats: Any) -> tuple[Path, dict[str, np.ndarray]]:
    """`quantize_weights(fp32_path, out_path, **formats)`, its encoder biases corrected on
    `calibration` samples when given (see `bias_shifts`); returns the file and the shifts."""
    path = quantize_weights(fp32_path, out_path, **formats)
    if calibration is None:
        return path, {}
    shifts = bias_shifts(fp32_path, path, calibration)
    if not shifts:
        return path, shifts
    return quantize_weights(fp32_path, out_path, **formats, bias_shift=shifts), shifts


def channel_rows(weight: np.ndarray, axis: int) -> np.ndarray:
    """A layer's weight as one row per output channel."""
    return np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)


def layer_rows(model_path: Path) -> dict[str, np.ndarray]:
    """Each layer weight of an exported model as one row per output channel (see `layer_weights`)."""
    model = onnx.load(model_path)
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    out = {}
    for name, node in layer_weights(model).items():
        weight = initializers[name].astype(np.float32)
        out[name] = channel_rows(weight, _output_channel_axis(node, weight))
    return out


# Clip ratios searched for 4-bit grids: from the largest |w| down to half of it.
CLIP_RATIOS = np.linspace(1.0, 0.5, 26)


def weight_range(rows: np.ndarray, bits: int, clip: bool = False) -> np.ndarray:
    """The range each row's (output channel's) symmetric grid spans, in `bits`: the largest |w|,
    or, clipped (4 bits only; 8-bit steps are fine enough that clipping gains nothing), the clip
    from the largest |w| down to half of it that rounds the row with the least squared error. With
    7 levels a side, one large weight stretches every step; clipped, the rest round finer. Whether
    that serves the model is the layer's own question (`int4_weight_sensitivity` asks it): on a
    compressed critical tier, clipped grids halved some layers' KL and doubled others', whose
    rows hold 8 or 9 weights."""
    largest = np.abs(rows).max(axis=1)
    if bits != 4 or not clip:
        return largest  # type: ignore[no-any-return]
    qmax = WEIGHTS_ONLY_QMAX[4]
    best, best_error = largest, np.full(len(rows), np.inf)
    for ratio in CLIP_RATIOS:  # from no clip down: a tie keeps the wider grid
        span = largest * np.float32(ratio)
        step = np.where(span > 0, span / qmax, 1.0)[:, None]
        error = ((np.clip(np.round(rows / step), -qmax, qmax) * step - rows).astype(np.float64) ** 2).sum(axis=1)
        better = error < best_error
        best, best_error = np.where(better, span, best), np.where(better, error, best_error)
    return best  # type: ignore[no-any-return]


# Mixed precision ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSensitivity:
    """What quantizing one layer alone does to the model's outputs."""

    layer: str
    op: str
    weights: int  # weight elements
    kl: float  # mean KL(p_fp32 || p_layer_int8) over the evaluation samples
    accuracy_change: float
    bytes_fp32: int
    bytes_int8: int


def weight_elements(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """(weight elements, output channels) of each quantizable node's weight initializer."""
    init = {i.name: tuple(i.dims) for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type in QUANTIZED_OPS and len(node.input) > 1 and node.input[1] in init:
            dims = init[node.input[1]]
            out[node.name] = (int(np.prod(dims)), int(dims[0]) if dims else 1)
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def mean_kl(reference_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean KL(softmax(reference) || softmax(logits)) over samples."""
    p, q = softmax(reference_logits.astype(np.float64)), softmax(logits.astype(np.float64))
    return float(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=1)))


def layer_sensitivity(fp32_path: Path, calibration: dict[str, np.ndarray], evaluation: dict[str, np.ndarray], labels: np.ndarray) -> list[LayerSensitivity]:
    """Quantize each layer alone and measure the change of the outputs on `evaluation` samples."""
    reference = session(Path(fp32_path)).run(["logits"], evaluation)[0]
    with tempfile.TemporaryDirectory() as tmp:
        pre = preprocess(fp32_path, Path(tmp) / "pre.onnx")
        sizes = weight_elements(onnx.load(pre))
        rows = []
        for node in progress(quantizable_nodes(pre), desc="layer sensitivity"):
            one = quantize_int8(fp32_path, Path(tmp) / "one.onnx", calibration, only=[node.name])
            logits = session(one).run(["logits"], evaluation)[0]
            elements, channels = sizes.get(node.name, (0, 1))
            rows.append(
                LayerSensitivity(
                    node.name,
                    node.op_type,
                    elements,
                    mean_kl(reference, logits),
                    float((logits.argmax(1) == labels).mean() - (reference.argmax(1) == labels).mean()),
                    4 * elements,
                    elements + 5 * channels,  # int8 weights + a float scale and an int8 zero point per channel
                )
            )
    return rows


def choose_mixed_precision(sensitivity: list[LayerSensitivity], budget_bytes: int) -> tuple[list[str], int]:
    """Layers kept in fp32, most sensitive first (by KL per extra byte), while the weights fit
    `budget_bytes`; returns them and the resulting weight bytes."""
    total = sum(s.bytes_int8 for s in sensitivity)
    if total > budget_bytes:
        raise ValueError(f"mixed precision: even all-int8 weights take {total} bytes, more than the budget of {budget_bytes}")
    kept = []
    for s in sorted(sensitivity, key=lambda s: s.kl / max(s.bytes_fp32 - s.bytes_int8, 1), reverse=True):
        extra = s.bytes_fp32 - s.bytes_int8
        if s.kl > 0 and total + extra <= budget_bytes:
            kept.append(s.layer)
            total += extra
    return kept, total


def fewest_kept(
    build: Callable[[list[str], Path], Path],
    fp32_path: Path,
    evaluation: dict[str, np.ndarray],
    candidates: list[str],
    min_agreement: float,
    kept_as: str,
) -> tuple[list[str], list[dict[str, Any]]]:
    """The fewest layers to keep in higher precision: the shortest head of `candidates` (most useful
    first) whose quantized model, `build(head, path)`, agrees with the fp32 model's argmax on
    `min_agreement` of the `evaluation` samples (the export step passes the whole validation split,
    which holds the samples the layers were ranked on: the margin below covers that); all of them
    when no head does. One or two sensitive layers (typically an encoder's stem, which sees the
    widest-ranging input) usually carry the disagreement, and every layer kept costs bytes. The
    agreement measured on the `evaluation` samples must clear `min_agreement` by two binomial
    standard errors, so that it holds on other samples too (without the margin, heads chosen at
    0.9900-0.9901 on the validation split agreed on 0.9877-0.9882 of the test split). Returns the
    layers and every trial ({kept_as: layers, agreement, needed})."""
    reference = session(Path(fp32_path)).run(["logits"], evaluation)[0].argmax(1)
    needed = min_agreement + 2 * math.sqrt(min_agreement * (1 - min_agreement) / len(reference)) if 0 < min_agreement < 1 else min_agreement
    trials: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in progress(range(len(candidates) + 1), desc=kept_as.replace("_", " ")):
            trial = build(candidates[:count], Path(tmp) / "trial.onnx")
            agreement = float((session(trial).run(["logits"], evaluation)[0].argmax(1) == reference).mean())
            trials.append({kept_as: candidates[:count], "agreement": agreement, "needed": needed})
            if agreement >= needed:
                return candidates[:count], trials
    return list(candidates), trials


def fewest_float_layers(
    fp32_path: Path, calibration: dict[str, np.ndarray], evaluation: dict[str, np.ndarray], candidates: list[str], min_agreement: float
) -> tuple[list[str], list[dict[str, Any]]]:
    """The fewest of `candidates` (node names, as `choose_mixed_precision` orders them) to keep in
    fp32 in an int8 model (see `fewest_kept`)."""

    def build(kept: list[str], out: Path) -> Path:
        return quantize_int8(fp32_path, out, calibration, keep_float=kept)

    return fewest_kept(build, fp32_path, evaluation, candidates, min_agreement, "kept_fp32")


@dataclass(frozen=True)
class WeightSensitivity:
    """What storing one layer's weights in 4 bits, the rest in fp32, does to the model's outputs."""

    weight: str  # the weight initializer's name (see `layer_weights`)
    elements: int
    kl: float  # mean KL(p_fp32 || p_this_weight_int4) over the evaluation samples, on the better grid
    accuracy_change: float
    bytes_saved: int  # int8 -> int4: half a byte per weight
    clipped: bool  # its grid clipped (see `weight_range`): the lower KL of the two


def int4_weight_sensitivity(fp32_path: Path, evaluation: dict[str, np.ndarray], labels: np.ndarray) -> list[WeightSensitivity]:
    """Each layer's weights alone in 4 bits, on the grid of the two (largest |w| or clipped) that
    changes the outputs less, most damaging per byte saved first: the order in which
    `fewest_int8_weights` keeps layers in 8 bits."""
    reference = session(Path(fp32_path)).run(["logits"], evaluation)[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, by_channel in progress(list(layer_rows(fp32_path).items()), desc="4-bit sensitivity"):
            clips = (weight_range(by_channel, 4, clip=True) < weight_range(by_channel, 4)).any()
            grids = (False, True) if clips else (False,)  # a clip that clips nothing: one trial
            tried = []
            for clip in grids:
                one = quantize_weights(fp32_path, Path(tmp) / "one.onnx", bits=FLOAT, bits_by_weight={name: 4}, clipped=[name] if clip else [])
                logits = session(one).run(["logits"], evaluation)[0]
                tried.append((mean_kl(reference, logits), clip, float((logits.argmax(1) == labels).mean() - (reference.argmax(1) == labels).mean())))
            kl, clip, accuracy_change = min(tried)
            rows.append(WeightSensitivity(name, by_channel.size, kl, accuracy_change, by_channel.size // 2, clip))
    return sorted(rows, key=lambda r: r.kl / max(r.bytes_saved, 1), reverse=True)


def fewest_int8_weights(
    fp32_path: Path,
    evaluation: dict[str, np.ndarray],
    ranked: list[str],
    min_agreement: float,
    clipped: Collection[str] = (),
    calibration: dict[str, np.ndarray] | None = None,
    fixed_int8: Collection[str] = (),
) -> tuple[list[str], list[dict[str, Any]]]:
    """The fewest weights of `ranked` (most sensitive first) to keep in 8 bits, the rest in 4 (on
    clipped grids where named in `clipped`), for the model to agree with its fp32 export (see
    `fewest_kept`); each trial's biases corrected on `calibration` samples when given. The weights
    in `fixed_int8` stay in 8 bits in every trial (they are not among the choices)."""

    def build(kept: list[str], out: Path) -> Path:
        widths = dict.fromkeys([*fixed_int8, *kept], 8)
        return weights_only_model(fp32_path, out, calibration, bits=4, bits_by_weight=widths, clipped=clipped)[0]

    return fewest_kept(build, fp32_path, evaluation, ranked, min_agreement, "kept_int8")


def in_modules(weight: str, modules: Collection[str]) -> bool:
    """Whether a layer weight (named as `layer_weights` names it) belongs to one of `modules`
    (`encoders.image`, `head`), or any weight when none is named."""
    name = weight.removeprefix("model.")
    return not modules or any(name == m or name.startswith(f"{m}.") for m in modules)


def export_names(model: nn.Module) -> dict[nn.Module, str]:
    """Each module of `model` under the name its weights carry in the exported graph (see
    `in_modules`): the encoders' own (pruning keeps them); `head` for a student's classifier, or
    where a fusion MLP comes first (a teacher), `head.0` for its projection and `head.2` for the
    classifier, as the export builds its head."""
    project = getattr(getattr(model, "fusion", None), "project", None)
    mlp = isinstance(project, nn.Linear)
    exported = {"classifier": "head.2" if mlp else "head", **({"fusion.project": "head.0"} if mlp else {})}
    return {layer: exported.get(name, name) for name, layer in model.named_modules()}


def export_modules(model: nn.Module) -> set[str]:
    """The module names a recipe may give (`int4_modules`, qat's `modules`): the encoders and their
    parts, and `head` with its parts."""
    return {n for n in export_names(model).values() if n.startswith("encoders.") or n.split(".")[0] == "head"} | {"head"}


@dataclass(frozen=True)
class Int4Choice:
    """Which weights a 4-bit-weights file keeps in 8 bits and which 4-bit grids it clips."""

    kept_int8: list[str]  # the fixed ones first, then those the search kept
    clipped: list[str]  # 4-bit weights on a clipped grid (see `weight_range`)
    fixed_int8: list[str]  # outside the modules offered to 4 bits
    has_int4: bool  # some weight in 4 bits (else the file would be the int8-weights one again: none is written)
    trials: list[dict[str, Any]]
    layers: list[WeightSensitivity]  # the offered weights, most sensitive per byte first


def choose_int4_weights(
    fp32_path: Path,
    validation: dict[str, np.ndarray],
    evaluation: dict[str, np.ndarray],
    labels: np.ndarray,
    min_agreement: float,
    modules: Collection[str] = (),
    calibration: dict[str, np.ndarray] | None = None,
) -> Int4Choice:
    """Mixed 4/8-bit weights for the agreement bound: each weight of `modules` (every layer when
    none is named; the others fixed in 8 bits) ranked by what 4 bits alone cost it on `evaluation`
    samples (`int4_weight_sensitivity`, with its grid), then the fewest of the most sensitive kept
    in 8 bits for the model to agree with its fp32 export on `min_agreement` of `validation`, by two
    standard errors (`fewest_int8_weights`; each trial's biases corrected on `calibration` samples
    when given)."""
    every = int4_weight_sensitivity(fp32_path, evaluation, labels)
    ranked = [r for r in every if in_modules(r.weight, modules)]
    if not ranked:
        raise ValueError(f"int4_modules {list(modules)} hold none of this model's layers; its layers: {[r.weight for r in every]}")
    fixed_int8 = [r.weight for r in every if not in_modules(r.weight, modules)]
    clipped = [r.weight for r in ranked if r.clipped]
    chosen_int8, trials = fewest_int8_weights(fp32_path, validation, [r.weight for r in ranked], min_agreement, clipped, calibration, fixed_int8)
    kept_int8 = [*fixed_int8, *chosen_int8]
    return Int4Choice(
        kept_int8, [w for w in clipped if w not in kept_int8], fixed_int8, len(chosen_int8) < len(ranked), trials, ranked
    )  # a clip is of 4-bit grids only


@dataclass(frozen=True)
class ScaleSensitivity:
    """What one scale for a layer's weights, instead of one per output channel, does to the outputs."""

    weight: str  # the weight initializer's name (see `layer_weights`)
    channels: int
    kl: float  # mean KL(p_fp32 || p) with this layer alone quantized on one scale, less that on one scale per channel
    bytes_saved: int  # the channels' fp32 scales but one


def scale_sensitivity(
    fp32_path: Path, evaluation: dict[str, np.ndarray], bits: int, bits_by_weight: dict[str, int] | None = None, clipped: Collection[str] = ()
) -> list[ScaleSensitivity]:
    """Each quantized layer alone (widths and grids as `quantize_weights` takes them, the rest fp32)
    on one scale against one per channel, most damaging per byte saved first: the order in which
    `fewest_per_channel_layers` keeps layers' scales per channel. Layers left in fp32 have no scale,
    and a layer of one output channel saves nothing: both are left out."""
    reference = session(Path(fp32_path)).run(["logits"], evaluation)[0]
    layers = layer_rows(fp32_path)
    widths = {name: (bits_by_weight or {}).get(name, bits) for name in layers}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, by_channel in progress(list(layers.items()), desc="scale sensitivity"):
            if widths[name] == FLOAT or len(by_channel) < 2:
                continue
            kl = {}
            for one_scale in (False, True):
                one = quantize_weights(
                    fp32_path,
                    Path(tmp) / "one.onnx",
                    bits=FLOAT,
                    bits_by_weight={name: widths[name]},
                    clipped=[name] if name in clipped else [],
                    per_tensor=[name] if one_scale else [],
                )
                kl[one_scale] = mean_kl(reference, session(one).run(["logits"], evaluation)[0])
            rows.append(ScaleSensitivity(name, len(by_channel), kl[True] - kl[False], 4 * (len(by_channel) - 1)))
    return sorted(rows, key=lambda r: r.kl / r.bytes_saved, reverse=True)


def fewest_per_channel_layers(
    fp32_path: Path,
    evaluation: dict[str, np.ndarray],
    ranked: list[str],
    min_agreement: float,
    bits: int,
    bits_by_weight: dict[str, int] | None = None,
    clipped: Collection[str] = (),
    calibration: dict[str, np.ndarray] | None = None,
) -> tuple[list[str], list[dict[str, Any]]]:
    """The fewest weights of `ranked` (most sensitive first) to keep on one scale per output
    channel, the rest of them on one scale each, for the weights-only model (widths and grids as
    `quantize_weights` takes them; biases corrected on `calibration` samples when given) to agree
    with its fp32 export (see `fewest_kept`). A pruned
    critical tier's image encoder (rows of 4 to 9 weights, 2026-12-06's visual experiment) took one
    scale in every layer at 0.9986 validation agreement; the audio encoder beside it needed some
    layers per channel."""

    def build(kept: list[str], out: Path) -> Path:
        one_scale = [w for w in ranked if w not in kept]
        return weights_only_model(fp32_path, out, calibration, bits=bits, bits_by_weight=bits_by_weight, clipped=clipped, per_tensor=one_scale)[0]

    return fewest_kept(build, fp32_path, evaluation, ranked, min_agreement, "kept_per_channel")


# Quantization-aware training -------------------------------------------------------------------------


class _FakeQuantWeight(nn.Module):
    """Parametrization: the weight as the deployed model holds it, symmetric, one scale per output
    channel (max |w| / qmax: WEIGHT_QMAX for int8 arithmetic, 127 for int8 weights with float
    arithmetic, 7 for 4-bit weights), with a straight-through gradient. (The export may clip a
    4-bit layer's grid where that changes the model's outputs less; which layers those are is
    chosen after training, so QAT trains on the largest |w|.) `per_tensor`: one scale for the whole
    layer, as the export's `per_tensor_scales` stores a layer where the agreement allows."""

    def __init__(self, qmax: int, per_tensor: bool = False) -> None:
        super().__init__()
        self.qmax = qmax
        self.per_tensor = per_tensor

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.per_tensor:
            scale = max(float(weight.detach().abs().max()) / self.qmax, 1e-8)
            return torch.fake_quantize_per_tensor_affine(weight, scale, 0, -self.qmax, self.qmax)
        flat = weight.detach().reshape(weight.shape[0], -1)
        scale = (flat.abs().amax(dim=1) / self.qmax).clamp_min(1e-8)
        zero = torch.zeros(weight.shape[0], dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -self.qmax, self.qmax)


class _FakeQuantInput:
    """Forward pre-hook: the layer's input as int8 would hold it, one scale and zero point per
    tensor, from a running min-max of what it has seen (as the calibrator will measure)."""

    def __init__(self, momentum: float = 0.01) -> None:
        self.low: float | None = None
        self.high: float | None = None
        self.momentum = momentum

    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = args[0]
        if module.training or self.low is None:
            low, high = float(x.detach().min()), float(x.detach().max())
            if self.low is None:
                self.low, self.high = low, high
            else:
                self.low += self.momentum * (low - self.low)
                self.high += self.momentum * (high - self.high)
        low, high = min(self.low, 0.0), max(self.high, 0.0)  # the range always holds 0 (exact zero padding)
        scale = max((high - low) / 255.0, 1e-8)
        zero_point = int(round(-128 - low / scale))
        return (torch.fake_quantize_per_tensor_affine(x, scale, max(-128, min(127, zero_point)), -128, 127), *args[1:])


def absorb_batchnorm(model: nn.Module) -> nn.Module:
    """Fold each conv-BN pair's scale into the convolution (in place), leaving the BatchNorm a frozen
    bias (mean 0, variance 1 - eps, weight 1): the same function, and the same weights the exported,
    folded graph will quantize, yet the same module structure, so checkpoints still load."""
    for block in model.modules():
        if isinstance(block, nn.Sequential) and len(block) >= 2 and isinstance(block[1], nn.BatchNorm2d) and block[1].affine:
            conv = block[0]
            while isinstance(conv, nn.Sequential):  # a factorised layer: the BatchNorm scales its last convolution
                conv = conv[-1]
            bn = block[1]
            with torch.no_grad():
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
                bn.bias.copy_(bn.bias - bn.running_mean * scale)
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
                bn.weight.fill_(1.0)
            bn.requires_grad_(False)
    return model


@contextmanager
def fake_quantized(
    model: nn.Module, weight_bits: int = 8, activations: bool = True, modules: tuple[str, ...] = (), per_tensor: bool = False
) -> Iterator[nn.Module]:
    """Within the block, `model` computes with rounded weights and, with `activations`, int8-rounded
    layer inputs (BatchNorm absorbed first); on exit the rounding is removed and the trained float
    weights stay. The weights' grid is the artifact's: int8 arithmetic's (WEIGHT_QMAX) with
    activations, else the weights-only files' (`onnx-int8-weights`: 127 levels each side;
    `onnx-int4-weights`, `weight_bits` 4: 7). `modules` (named as the export names them: an
    encoder such as `encoders.image`, or `head`: the classifier, and a teacher's fusion MLP) limits `weight_bits` to their
    layers, the others rounded to 8 bits, as the export's `int4_modules` stores them; `per_tensor`
    rounds every layer on one scale (the export's `per_tensor_scales`)."""
    if weight_bits not in WEIGHTS_ONLY_QMAX:
        raise ValueError(f"fake quantization rounds weights to 8 or 4 bits, not {weight_bits}")
    if weight_bits == 8 and modules:
        raise ValueError(f"modules {list(modules)} name the layers for 4-bit weights; with weight_bits 8 every layer is in 8 bits already")
    if per_tensor and activations:
        raise ValueError("one scale per layer is the weights-only files' (per_tensor_scales); the int8 graph keeps its scales per channel: activations=False")
    names = export_names(model)
    known = export_modules(model)
    unknown = [m for m in modules if m not in known]
    if unknown:
        raise ValueError(
            f"fake quantization: no modules named {unknown} in the model; its encoders are {sorted(n for n in known if n.count('.') == 1)}, its classifier head"
        )
    absorb_batchnorm(model)
    # The presence map is folded into the classifier's bias at export (it never runs as an int8
    # layer): rounding it here trained against an error the deployed graph does not have.
    fusion = getattr(model, "fusion", None)
    presence = getattr(fusion, "presence", None)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.requires_grad and m is not presence]
    # Where the fusion projects nothing (students), the deployed classifier reads the concatenated
    # embeddings, the presence map being its bias: their rounding is of the embeddings, before the
    # presence term (rounded after it, a range shifted below 0 and up to 8% wider was trained for).
    classifier = getattr(model, "classifier", None)
    joint_rounded = fusion is not None and isinstance(getattr(fusion, "project", None), nn.Identity) and classifier in layers
    hooks = []
    for layer in layers:
        bits = weight_bits if in_modules(names[layer], modules) else 8
        qmax = WEIGHT_QMAX if activations and bits == 8 else WEIGHTS_ONLY_QMAX[bits]
        parametrize.register_parametrization(layer, "weight", _FakeQuantWeight(qmax, per_tensor))
        if activations:
            hooks.append((fusion if joint_rounded and layer is classifier else layer).register_forward_pre_hook(_FakeQuantInput()))
    if joint_rounded:
        # The export folds the presence term into the bias through the float weight, W p + b, and only
        # then rounds W: the deployed classifier computes W_q joint + W p + b, not W_q (joint + p).
        latest: dict[str, torch.Tensor] = {}
        hooks.append(presence.register_forward_hook(lambda module, args, out: latest.__setitem__("presence", out)))
        hooks.append(fusion.register_forward_hook(lambda module, args, out: latest.__setitem__("fused", out)))

        def presence_through_float_weight(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
            if args[0] is not latest.get("fused"):  # the classifier on other input than the fusion's last output: no presence term in it
                return out
            return out + latest["presence"] @ (module.parametrizations.weight.original - module.weight).T

        hooks.append(classifier.register_forward_hook(presence_through_float_weight))
    try:
        yield model
    finally:
        for hook in hooks:
            hook.remove()
        for layer in layers:
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
