"""Will this model fit that device, and how fast will it run there? Answered before deploying.

For an exported ONNX model and a device profile:

- ROM: the model file's bytes.
- RAM: the peak of live activation tensors, from their lifetimes in the graph (a tensor is
  allocated when its node runs and freed after its last reader), plus the weights when the device
  loads them into RAM, plus the runtime's own overhead. In a QDQ (int8) graph an int8 runtime fuses
  DequantizeLinear -> op -> QuantizeLinear into one int8 kernel, so the float tensors around it are
  never stored: activations count at the width the runtime keeps them. The float rule is the same
  one: a float runtime fuses Conv / Gemm / MatMul (with a bias Add) into the elementwise activation
  that is its output's only reader (ONNX Runtime's FusedConv / FusedGemm; its optimised graph has no
  Relu), so the pre-activation tensor is never stored either. Counting it in float graphs only would
  overstate fp32 memory and with it the int8 saving. A model with int8 weights
  and float arithmetic (no QuantizeLinear) is stored small but computes in float: a runtime that
  loads weights into RAM holds them dequantized (ONNX Runtime folds them at load); one that reads
  them from flash dequantizes one layer's weights at a time into a scratch buffer.
- Latency (the seed's eq. 7): T = n_ops * t_op + FLOPs / (eta_f * P) + bytes / (eta_b * B), with
  P and B the device's peak arithmetic and bandwidth. t_op (dispatch per operator), eta_f and
  eta_b (the fractions of peak an inference runtime reaches) are fitted on this machine by timing
  synthetic convolution graphs with ONNX Runtime, against this machine's own measured peak and
  bandwidth, then carried over to the device (t_op scaled by clock). On a device neither fraction
  exceeds 1: the datasheet peaks bound it. The host's eta_b often does (its caches serve traffic
  faster than a large copy streams), which holds for the host's own estimate, not for another bus.
- Energy (the seed's eq. 18): E = a * FLOPs + b * bytes moved + c * T, the device's coefficients.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from racmkd.compress.artifacts import ExportError, read_contract, session, stored_bytes, zero_feed
from racmkd.config import finite_number
from racmkd.data.paths import cache_root
from racmkd.measure.timing import estimated_energy_joules, percentiles, wall_latency_ms
from racmkd.resources.devices import DeviceProfile
from racmkd.utils import atomic_write_json, progress

log = logging.getLogger(__name__)

COMPUTE_OPS = {"Conv", "Gemm", "MatMul", "ConvInteger", "QLinearConv", "QLinearMatMul", "MatMulInteger", "QGemm"}
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
# Elementwise activations a float runtime applies inside the Conv / Gemm / MatMul kernel that feeds
# them: the ones ONNX Runtime 1.32's CPU provider fuses into Conv (its optimised graph at
# ENABLE_EXTENDED and ENABLE_ALL holds one FusedConv / NCHWc Conv carrying the activation). It keeps
# HardSwish (as HardSigmoid + Mul), Elu, Selu, Softplus and Gelu as nodes of their own, reading a
# stored pre-activation tensor, so counting those as fused would understate a model's memory.
# Gemm and MatMul (+ bias Add) are held to the same set, an approximation: ORT's FusedGemm takes
# Elu, Selu and Softplus but not Clip, and fuses a MatMul only once a bias Add makes it a 2-D Gemm.
FUSED_ACTIVATIONS = {"Relu", "Clip", "Sigmoid", "HardSigmoid", "LeakyRelu", "Tanh"}
# What `graph_cost` stores; 2: float pre-activation tensors fused away; 3: only the activations above
# fuse, an int8 kernel's input lives until its QuantizeLinear writes, and a float op before a
# QuantizeLinear stores its output; 4: operators counted as kernels (fused activations and Q/DQ
# inside int8 kernels not; Q/DQ at float boundaries yes), a mixed model's fp32 layers as fp32 FLOPs.
# Cached latency fits record it (eta_b is a rate over these bytes, t_op a time per operator).
GRAPH_COST_RULES = 4
# `racmkd profile`'s measurement on this machine: the wall time it may take, and the fewest runs it
# times (a model estimated slower than that allows is not run).
MEASURE_BUDGET_S = 10.0
MEASURED_RUNS_MIN = 6


# The graph -------------------------------------------------------------------------------------------


def _with_batch(model: onnx.ModelProto, batch: int, source: str) -> onnx.ModelProto:
    """A copy with each input's batch axis (its first) set to `batch`, shapes inferred through the
    graph. Any other axis must be fixed: set to the batch too, a model whose height and width were
    symbolic was profiled at 1x1 (a 41 KB model's activations read 1.5 KB, and it "fit")."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    weights = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name in weights:
            continue
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if axis == 0 and (dim.HasField("dim_param") or dim.dim_value <= 0):
                dim.ClearField("dim_param")
                dim.dim_value = batch
            elif dim.HasField("dim_param") or dim.dim_value <= 0:
                size = repr(dim.dim_param) if dim.HasField("dim_param") else dim.dim_value
                raise ExportError(
                    f"{source}: input {value.name!r} has axis {axis} of size {size}: its costs cannot be estimated; export it with fixed input shapes but the batch (as `racmkd export` does)"
                )
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, ValueError) as err:
        raise ExportError(f"{source}: not a valid ONNX graph, its shapes cannot be inferred ({str(err).splitlines()[0][:200]}); export it again") from None


def _shapes_by_running(model: onnx.ModelProto, names: list[str], source: str) -> dict[str, onnx.ValueInfoProto]:
    """The value infos ONNX's shape inference leaves out (ONNX Runtime's contrib operators: QGemm,
    QLinearGlobalAveragePool), read from one run of the graph on zeros with those tensors as extra
    outputs. Left out, they counted as 0 bytes of RAM. ExportError when ONNX Runtime cannot run it
    (an operator of another domain), naming the tensors and their operators."""
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    weights = {i.name for i in model.graph.initializer}
    try:
        feed = {
            v.name: np.zeros([d.dim_value for d in v.type.tensor_type.shape.dim], dtype=helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type))
            for v in model.graph.input
            if v.name not in weights
        }
        results = session(probe.SerializeToString()).run(names, feed)
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        writers = {out: f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in model.graph.node for out in n.output}
        tensors = ", ".join(f"{name!r} ({writers.get(name, '?')})" for name in names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        raise ExportError(
            f"{source}: the shapes of {tensors} cannot be inferred from the graph, nor read by running it in ONNX Runtime ({str(err).splitlines()[0][:200]}), so its memory cannot be estimated; export it with standard ONNX operators"
        ) from None
    return {name: helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(r.dtype), r.shape) for name, r in zip(names, results)}


def _tensor_bytes(value: onnx.ValueInfoProto, source: str) -> int:
    """Bytes of a tensor whose shape the graph fixes; ExportError when it does not (counted as 0, a
    Reshape to a shape computed at run time made its output free)."""
    t = value.type.tensor_type
    dims = [d.dim_value for d in t.shape.dim]
    if not t.HasField("shape") or any(d <= 0 for d in dims):
        raise ExportError(
            f"{source}: the shape of {value.name!r} cannot be inferred from the graph, so its memory cannot be estimated; export it with fixed shapes"
        )
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
    except KeyError:
        raise ExportError(f"{source}: {value.name!r} has no known element type ({t.elem_type}); export it again") from None
    return math.prod(dims) * itemsize  # (Python ints: np.int64 wrapped to 0 at 2^64)


@dataclass(frozen=True)
class GraphCost:
    """What an ONNX graph needs at batch 1."""

    file_bytes: int
    weight_bytes: int  # initializers, as stored in the file
    resident_weight_bytes: int  # weights as a runtime holds them in RAM (float where the arithmetic is float)
    dequantize_scratch_bytes: int  # the largest layer's weights dequantized (int8-weights graphs read from flash)
    peak_activation_bytes: int  # live activations at the worst moment (inputs included)
    activation_bytes_written: int  # every stored activation, once
    flops: int  # 2 per multiply-add of Conv / Gemm / MatMul
    int8_flops: int  # the part of `flops` done by layers quantized to int8
    operators: int  # kernels a runtime dispatches: fused activations and the Q/DQ nodes inside int8 kernels are not, Q/DQ at float boundaries are (ONNX Runtime's optimised graph, counted)
    quantized: bool  # int8 arithmetic (activations quantized too)
    uncosted: tuple[str, ...] = ()  # operators whose arithmetic `flops` leaves out (UNCOSTED_HEAVY_OPS, other domains' ops)


# Where a compute op's second operand (a convolution's weight, a product's B) is among its inputs:
# the QOperator ops put their input's scale and zero point before it.
SECOND_OPERAND = {"QLinearConv": 3, "QLinearMatMul": 3, "QGemm": 3}
INT8_OPS = {"ConvInteger", "QLinearConv", "QLinearMatMul", "MatMulInteger", "QGemm"}  # int8 arithmetic whatever surrounds them
# Standard operators whose arithmetic can outweigh a convolution's, which the FLOP model does not
# count (racmkd exports none): a graph holding one, or an operator of a domain other than ONNX's
# (a runtime's custom kernel), has its latency and energy estimated without their work, and says so.
UNCOSTED_HEAVY_OPS = {"ConvTranspose", "QLinearConvTranspose", "LSTM", "GRU", "RNN", "Einsum", "Attention", "MultiHeadAttention", "FFT", "DFT", "STFT"}


def _operand_shape(name: str, shapes: dict[str, list[int]], weights: dict[str, np.ndarray]) -> list[int] | None:
    return shapes.get(name) if name in shapes else (list(weights[name].shape) if name in weights else None)


def _conv_flops(node: onnx.NodeProto, shapes: dict[str, list[int]], weights: dict[str, np.ndarray]) -> int:
    out = shapes.get(node.output[0])
    w = _operand_shape(node.input[SECOND_OPERAND.get(node.op_type, 1)], shapes, weights)
    if not out or not w:
        return 0
    return 2 * math.prod(out) * math.prod(w[1:])  # each output value: C_in/groups * kH * kW multiply-adds


def _matmul_flops(node: onnx.NodeProto, shapes: dict[str, list[int]], weights: dict[str, np.ndarray], batch: int = 1) -> int:
    a = _operand_shape(node.input[0], shapes, weights)
    b = _operand_shape(node.input[SECOND_OPERAND.get(node.op_type, 1)], shapes, weights)
    out = shapes.get(node.output[0])
    transposed = {attr.name: bool(attr.i) for attr in node.attribute if attr.name in ("transA", "transB")}
    if b and len(b) == 2 and not out and node.op_type in ("Gemm", "QGemm"):  # a contrib op (QGemm) ONNX's shape inference does not know
        rows = (a[-1] if transposed.get("transA") else a[0]) if a else batch
        return 2 * int(rows) * math.prod(b)  # rows x (K x N) multiply-adds
    if not a or not b or not out:
        return 0
    inner = a[-2] if transposed.get("transA") else a[-1]
    return 2 * math.prod(out) * int(inner)


def graph_cost(model: onnx.ModelProto | Path, batch: int = 1) -> GraphCost:
    """Walk the graph in order, allocating each stored output when its node runs and freeing each
    tensor after its last reader; measure the peak, the FLOPs and the operators.

    "Stored" follows what a runtime's fused kernels keep, by one rule for both precisions: in an
    int8 graph DequantizeLinear -> op -> QuantizeLinear is one kernel (the float tensors inside it
    are not stored); in a float graph Conv / Gemm / MatMul (+ bias Add) -> activation is one kernel
    (the pre-activation tensor is not stored). Either kernel reads its inputs until it writes its
    output, so they stay live until the node that writes it (the QuantizeLinear, the activation):
    a kernel's input and output are never counted apart. An op is an int8 kernel only when its
    activation inputs are dequantized tensors; a float op on float inputs (an exported model's input
    BatchNormalization) stores its float output before a QuantizeLinear reads it, as ONNX Runtime
    runs it. A layer kept in fp32 inside an int8 graph, DQ(activation) -> op -> Q, counts as a kernel
    writing requantized output. A graph output is always stored."""
    source = str(model) if isinstance(model, Path) else f"model {model.graph.name!r}"
    if isinstance(model, Path):
        file_bytes = model.stat().st_size
        model = onnx.load(model)
    else:
        file_bytes = model.ByteSize()
    graph_model = _with_batch(model, batch, source)
    graph_ = graph_model.graph
    control_flow = sorted({n.op_type for n in graph_.node if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute)})
    if control_flow:  # (a tensor read only inside a branch was freed early, a branch's FLOPs never counted)
        raise ExportError(f"{source}: the graph holds control flow ({', '.join(control_flow)}): its subgraphs' costs cannot be estimated; racmkd exports none")
    # Weights: initializers, and constants a graph may hold them in instead (counted as activations,
    # a 1000x1000 weight charged 4 MB of RAM a microcontroller reads from flash).
    weights = {i.name: numpy_helper.to_array(i) for i in graph_.initializer}
    weights |= {n.output[0]: numpy_helper.to_array(a.t) for n in graph_.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"}
    values = {v.name: v for v in [*graph_.input, *graph_.value_info, *graph_.output]}
    unknown = [out for node in graph_.node for out in node.output if out and out not in values and out not in weights]
    if unknown:
        values |= _shapes_by_running(graph_model, unknown, source)
    shapes = {n: [d.dim_value for d in v.type.tensor_type.shape.dim] for n, v in values.items()}
    producer = {out: node for node in graph_.node for out in node.output}
    quantized = any(n.op_type == "QuantizeLinear" for n in graph_.node)
    # Weights behind a DequantizeLinear in a graph with float arithmetic: folded to float at load.
    dequantized_weights = {n.output[0]: n.input[0] for n in graph_.node if not quantized and n.op_type == "DequantizeLinear" and n.input[0] in weights}

    def dequantized_source(name: str) -> str | None:
        """For a DequantizeLinear output: the quantized tensor it reads (None for weights)."""
        node = producer.get(name)
        if node is not None and node.op_type == "DequantizeLinear":
            return None if node.input[0] in weights else node.input[0]
        return name

    readers: dict[str, list[int]] = {}
    for i, node in enumerate(graph_.node):
        for name in node.input:
            if name and name not in weights and name not in dequantized_weights:
                tensor = dequantized_source(name) if quantized else name
                if tensor is not None:
                    readers.setdefault(tensor, []).append(i)
    outputs = {o.name for o in graph_.output}

    def sole_reader(name: str) -> onnx.NodeProto | None:
        idx = readers.get(name, [])
        return graph_.node[idx[0]] if len(idx) == 1 and name not in outputs else None

    # Float graphs: the counterpart of the int8 rule below. A Conv / Gemm / MatMul output (and the
    # bias Add after it) whose only reader is an elementwise activation is computed in registers by
    # the fused kernel, never stored; the kernel reads its inputs until it writes the activation's
    # output, so they stay live until then.
    fused_into_activation: set[str] = set()
    kernel_end: dict[int, int] = {}  # node index -> index of the node whose output its fused kernel writes
    for i, node in enumerate(graph_.node):
        if quantized or node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        chain, members = [node.output[0]], [i]  # the tensors fused away, the nodes of the kernel
        reader = sole_reader(chain[-1])
        if reader is not None and reader.op_type == "Add" and all(n in weights or n in dequantized_weights for n in reader.input if n != chain[-1]):
            members.append(readers[chain[-1]][0])  # a bias add
            chain.append(reader.output[0])
            reader = sole_reader(chain[-1])
        if reader is not None and reader.op_type in FUSED_ACTIVATIONS and reader.input[0] == chain[-1]:
            fused_into_activation.update(chain)
            kernel_end.update({m: readers[chain[-1]][0] for m in members})

    # Int8 graphs: an op whose activation inputs are all dequantized and whose outputs only
    # QuantizeLinear nodes read is one int8 kernel, DQ -> op -> Q: its output is requantized in
    # registers (never stored as float), and its int8 inputs stay live until the last of those
    # QuantizeLinear nodes writes, as in the float rule above.
    requantizing: set[int] = set()  # node indices of such kernels
    for i, node in enumerate(graph_.node):
        if not quantized or node.op_type in QDQ_OPS or any(o in outputs for o in node.output):
            continue
        activations = [n for n in node.input if n and n not in weights and not (producer.get(n) is not None and producer[n].op_type == "Constant")]
        from_dequantize = [n for n in activations if producer.get(n) is not None and producer[n].op_type == "DequantizeLinear"]
        if not activations or len(from_dequantize) < len(activations) or all(dequantized_source(n) is None for n in activations):
            continue  # a float op (a graph input or float tensor among its inputs), or one on weights alone
        quantizers = [j for o in node.output for j in readers.get(o, [])]
        if quantizers and all(graph_.node[j].op_type == "QuantizeLinear" for j in quantizers):
            requantizing.add(i)
            kernel_end[i] = max(quantizers)
    last_read = {name: max(kernel_end.get(i, i) for i in idx) for name, idx in readers.items()}
    producer_index = {out: i for i, node in enumerate(graph_.node) for out in node.output}
    consumers: dict[str, list[int]] = {}  # tensor -> the nodes that read it as it is named
    for i, node in enumerate(graph_.node):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    # Kernels a DequantizeLinear fuses into: the int8 kernels above, and a Gemm / MatMul on two
    # dequantized operands with a float output (ONNX Runtime's QGemm, MatMulIntegerToFloat: a
    # classifier's logits). A DequantizeLinear read by anything else (ReduceMean) runs on its own.
    int8_reading = requantizing | {
        i
        for i, node in enumerate(graph_.node)
        if quantized
        and node.op_type in ("Gemm", "MatMul")
        and all(producer.get(n) is not None and producer[n].op_type == "DequantizeLinear" for n in node.input[:2])
    }

    def dispatched(node: onnx.NodeProto, i: int) -> bool:
        """Whether a node is a kernel of its own the runtime dispatches, by the rules above: not an
        activation or bias Add fused into the Conv / Gemm / MatMul before it; in an int8 graph not a
        QuantizeLinear or DequantizeLinear fused into an int8 kernel, but those at the boundaries
        (quantizing a float op's output, dequantizing for a float op) are kernels of their own."""
        if node.op_type in ("Constant", "Identity", "Shape") or node.output[0] in dequantized_weights:
            return False
        if not quantized:
            return not (node.op_type not in COMPUTE_OPS and node.input and node.input[0] in fused_into_activation)
        if node.op_type in FUSED_ACTIVATIONS and node.input:  # after a layer a mixed model keeps in fp32: fused into its kernel
            source = producer.get(node.input[0])
            if source is not None and source.op_type in ("Conv", "Gemm", "MatMul") and len(consumers.get(node.input[0], [])) == 1:
                return False
        if node.op_type == "QuantizeLinear":
            return producer_index.get(node.input[0]) not in requantizing  # (a graph input's: None)
        if node.op_type == "DequantizeLinear":
            return node.input[0] not in weights and (node.output[0] in outputs or any(j not in int8_reading for j in consumers.get(node.output[0], [])))
        return True

    def stored(name: str, node: onnx.NodeProto, i: int) -> bool:
        if name in outputs:
            return True
        if not quantized:
            return name not in fused_into_activation
        if node.op_type == "DequantizeLinear":
            return False  # a view of its int8 input, fused into the reading kernel
        return i not in requantizing  # requantized in the producing kernel

    sizes = {}
    live = 0
    for value in graph_.input:
        if value.name not in weights:
            sizes[value.name] = _tensor_bytes(value, source)
            live += sizes[value.name]
    peak, written = live, 0  # inputs count towards the peak; `written` counts what the graph writes
    flops = int8_flops = operators = 0
    for i, node in enumerate(graph_.node):
        if node.op_type in COMPUTE_OPS:
            f = _conv_flops(node, shapes, weights) if "Conv" in node.op_type else _matmul_flops(node, shapes, weights, batch)
            flops += f
            # int8 when both operands are dequantized (a Conv's or Gemm's input and weight): a layer a
            # mixed model keeps in fp32 reads a dequantized input too, but its weight is float.
            if node.op_type in INT8_OPS or (
                quantized and all(producer.get(n) is not None and producer[n].op_type == "DequantizeLinear" for n in node.input[:2])
            ):
                int8_flops += f
        if dispatched(node, i):
            operators += 1
        for name in node.output:
            if name and name not in dequantized_weights and name not in weights and stored(name, node, i):
                sizes[name] = _tensor_bytes(values[name], source)
                live += sizes[name]
                written += sizes[name]
        peak = max(peak, live)
        for name in list(sizes):
            if name not in outputs and last_read.get(name, -1) <= i:
                live -= sizes.pop(name)
    stored = {n: w.nbytes for n, w in weights.items()} | {i.name: stored_bytes(i) for i in graph_.initializer}  # (initializers as the file packs them)
    weight_bytes = sum(stored.values())
    float_bytes = {q: weights[q].size * 4 for q in dequantized_weights.values()}  # each int8 or int4 weight as a float32
    scales = {n.input[1] for n in graph_.node if n.output[0] in dequantized_weights}
    resident = weight_bytes + sum(float_bytes.values()) - sum(stored[q] for q in float_bytes) - sum(stored[s] for s in scales if s in stored)
    custom = {
        f"{n.domain}.{n.op_type}" for n in graph_.node if n.domain not in ("", "ai.onnx") and n.op_type not in COMPUTE_OPS | QDQ_OPS
    }  # (ONNX Runtime's com.microsoft QGemm and quantize ops are costed by their names)
    uncosted = tuple(sorted(custom | {n.op_type for n in graph_.node if n.op_type in UNCOSTED_HEAVY_OPS}))
    return GraphCost(file_bytes, weight_bytes, resident, max(float_bytes.values(), default=0), peak, written, flops, int8_flops, operators, quantized, uncosted)


# The latency model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostPeaks:
    """This machine's own measured one-thread peak arithmetic and memory bandwidth."""

    gflops_fp32: float
    memory_gbps: float


def measure_host_peaks() -> HostPeaks:
    """One-thread fp32 rate of a large matrix product in ONNX Runtime (the runtime that will be
    timed) and one-thread large-copy bandwidth, measured here."""
    n = 1024
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "peak",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
        [numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "b")],
    )
    sess = session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString())
    feed = {"a": rng.standard_normal((n, n)).astype(np.float32)}
    matmul = wall_latency_ms(lambda: sess.run(None, feed), warmup=2, iters=9)["p50"] / 1e3
    src = np.ones(64 * 2**20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    copy = wall_latency_ms(lambda: np.copyto(dst, src), warmup=2, iters=9)["p50"] / 1e3
    return HostPeaks(2 * n**3 / matmul / 1e9, 2 * src.nbytes / copy / 1e9)  # a copy reads and writes


def synthetic_graph(channels: int, size: int, blocks: int) -> onnx.ModelProto:
    """A calibration point shaped like a student: `blocks` depthwise-separable blocks (3x3
    depthwise + ReLU, 1x1 pointwise + ReLU) on (1, C, size, size), then pooling and a linear layer."""
    rng = np.random.default_rng(channels * 1000 + size * 10 + blocks)
    nodes, inits = [], []
    x = "input"
    for i in range(blocks):
        dw = rng.standard_normal((channels, 1, 3, 3)).astype(np.float32) * 0.3
        pw = (rng.standard_normal((channels, channels, 1, 1)) / np.sqrt(channels)).astype(np.float32)
        inits += [
            numpy_helper.from_array(dw, f"dw{i}"),
            numpy_helper.from_array(pw, f"pw{i}"),
            numpy_helper.from_array(np.zeros(channels, np.float32), f"b{i}"),
        ]
        nodes += [
            helper.make_node("Conv", [x, f"dw{i}", f"b{i}"], [f"d{i}"], pads=[1, 1, 1, 1], group=channels),
            helper.make_node("Relu", [f"d{i}"], [f"dr{i}"]),
            helper.make_node("Conv", [f"dr{i}", f"pw{i}", f"b{i}"], [f"p{i}"]),
            helper.make_node("Relu", [f"p{i}"], [f"pr{i}"]),
        ]
        x = f"pr{i}"
    inits += [numpy_helper.from_array(rng.standard_normal((channels, 10)).astype(np.float32), "fc"), numpy_helper.from_array(np.zeros(10, np.float32), "fcb")]
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "calibration",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@dataclass(frozen=True)
class LatencyModel:
    """T = n_ops * t_op + FLOPs / (eta_f * P) + bytes / (eta_b * B), fitted on `host`."""

    host: str
    host_clock_mhz: float
    peaks: HostPeaks
    seconds_per_op: float
    flops_efficiency: float  # eta_f: the share of the large-matmul rate small layers reach
    # eta_b: traffic rate over the large-copy rate (above 1 when caches serve it, applied so on this host only); None: the fit found traffic costs no time
    bandwidth_efficiency: float | None
    fit_relative_error: float  # median |predicted - measured| / measured over the calibration graphs
    points: int

    def is_sound(self) -> bool:
        """Whether every figure can be a fit's: a cache edited or damaged to a zero efficiency
        divided by zero, a negative time per operator gave negative latencies that "fit"."""

        rates = [self.host_clock_mhz, self.peaks.gflops_fp32, self.peaks.memory_gbps, self.seconds_per_op, self.flops_efficiency]
        rates += [self.bandwidth_efficiency] if self.bandwidth_efficiency is not None else []  # (None: the fit found traffic free)
        return all(finite_number(x) and x > 0 for x in rates)

    def predict(
        self,
        operators: int,
        flops: float,
        bytes_moved: float,
        peak_gflops: float,
        memory_gbps: float,
        seconds_per_op: float | None = None,
        fitted_host: bool = False,
    ) -> float:
        """Seconds for one inference on a device with these peaks (`fitted_host`: the host the
        model was fitted on, with its own measured peaks)."""
        t_op = self.seconds_per_op if seconds_per_op is None else seconds_per_op
        # No layer outruns a device's peak (`calibrate` holds eta_f at 1 at most: a fit above 1 says this
        # host's measured peak, a median of large matmuls, fell short of its real one, not that
        # another device computes faster than its datasheet). eta_b likewise: above 1 it is this
        # host's caches serving traffic faster than its large-copy bandwidth, a property of this
        # host, not a device's bus running past its datasheet. The host itself keeps its fitted rate,
        # so its estimate stays comparable with what it measures.
        eta_b = self.bandwidth_efficiency if fitted_host or self.bandwidth_efficiency is None else min(self.bandwidth_efficiency, 1.0)
        compute = flops / (min(self.flops_efficiency, 1.0) * peak_gflops * 1e9) if flops else 0.0
        memory = bytes_moved / (eta_b * memory_gbps * 1e9) if bytes_moved and eta_b is not None else 0.0
        return operators * t_op + compute + memory


def calibrate(host: str, host_clock_mhz: float, show_progress: bool = True) -> LatencyModel:
    """Time synthetic graphs with ONNX Runtime (one thread) and fit the latency model by
    non-negative least squares."""
    from scipy.optimize import nnls

    peaks = measure_host_peaks()
    grid = [(c, s, n) for c in (4, 16, 64, 256) for s in (4, 8, 16, 32) for n in (1, 3, 6)]
    rows, times = [], []
    for channels, size, blocks in progress(grid, desc="calibrate latency model") if show_progress else grid:
        model = synthetic_graph(channels, size, blocks)
        cost = graph_cost(model)
        sess = session(model.SerializeToString())
        feed = {"input": np.random.default_rng(0).standard_normal((1, channels, size, size)).astype(np.float32)}
        seconds = wall_latency_ms(lambda: sess.run(None, feed), warmup=5, iters=30)["p50"] / 1e3
        moved = cost.resident_weight_bytes + 2 * cost.activation_bytes_written
        rows.append([cost.operators, cost.flops / (peaks.gflops_fp32 * 1e9), moved / (peaks.memory_gbps * 1e9)])
        times.append(seconds)
    a, t = np.array(rows), np.array(times)
    weights = 1.0 / t  # fit relative error: small graphs matter as much as large ones
    coef, _ = nnls(a * weights[:, None], t * weights)
    if coef[1] < 1.0:  # eta_f above 1: faster than the measured peak. Held at 1, the rest refitted around it
        rest, _ = nnls(a[:, [0, 2]] * weights[:, None], (t - a[:, 1]) * weights)
        coef = np.array([rest[0], 1.0, rest[1]])
    predicted = a @ coef
    error = float(np.median(np.abs(predicted - t) / t))
    inv_f, inv_b = coef[1], coef[2]  # inv_f >= 1 (held there above); inv_b 0 when traffic explained no time: no term, not a made-up rate
    return LatencyModel(host, host_clock_mhz, peaks, float(coef[0]), float(1 / inv_f), float(1 / inv_b) if inv_b > 0 else None, error, len(t))


def host_description() -> tuple[str, float]:
    """This machine's CPU model and clock (MHz); 2000 MHz where the system does not say (psutil
    raises on some Apple Silicon Macs and on Linux hosts whose cpufreq files cannot be read, and
    reads 0 on others: a zero clock would scale every operator's estimate to nothing)."""
    import psutil

    from racmkd.measure.timing import machine

    try:
        freq = psutil.cpu_freq()
    except Exception as err:  # (FileNotFoundError, NotImplementedError, RuntimeError seen in psutil's issues)
        log.debug("psutil.cpu_freq() failed (%s): taking 2000 MHz", err)
        freq = None
    clock = float(freq.max or freq.current) if freq else 0.0
    return machine()["cpu"], clock if clock > 0 else 2000.0


def latency_model(cache_dir: Path | None = None, refresh: bool = False, show_progress: bool = True) -> LatencyModel:
    """The fitted latency model of this machine, read from the cache (`cache_dir`, else the
    per-machine `cache_root()`, wherever the command runs) when it was fitted here before and
    against the bytes `graph_cost` counts now (eta_b is a rate over those bytes: a fit made when
    fused pre-activation tensors still counted would be applied to fewer bytes than it was fitted on).
    A cache that cannot be read or written (a read-only checkout, a home folder that is not there)
    costs a fit on each run, with a warning, not the command: the fit is what it needs."""
    host, clock = host_description()
    path = Path(cache_dir or cache_root()) / "latency-model.json"
    if path.exists() and not refresh:
        try:
            data = json.loads(path.read_text())
            if (
                isinstance(data, dict)
                and data.get("host") == host
                and data.get("flops_efficiency", 0.0) <= 1.0
                and data.pop("graph_cost_rules", None) == GRAPH_COST_RULES
            ):  # eta_f above 1: fitted before it was held at 1
                cached = LatencyModel(**{**data, "peaks": HostPeaks(**data["peaks"])})
                if cached.is_sound():
                    return cached
                log.warning("%s: a latency model with impossible values (zero, negative or not a number); fitting it again", path)
        except (OSError, ValueError, TypeError, KeyError):
            pass  # an unreadable cache is refitted
    fitted = calibrate(host, clock, show_progress)
    try:
        atomic_write_json(path, {**asdict(fitted), "graph_cost_rules": GRAPH_COST_RULES})
    except OSError as err:
        log.warning("%s: the latency model is not cached (%s); the next command fits it again. Set RACMKD_CACHE to a writable folder to keep it", path, err)
    return fitted


# The profile --------------------------------------------------------------------------------------


def estimated_seconds(
    cost: GraphCost, model: LatencyModel, peak_fp32: float, peak_int8: float, bandwidth: float, t_op: float | None = None, fitted_host: bool = False
) -> float:
    """Eq. 7 for one graph on a processor with these peaks (t_op: its dispatch time per operator;
    None: this machine's, as fitted; `fitted_host`: the processor is the host the model was fitted on)."""
    moved = cost.resident_weight_bytes + 2 * cost.activation_bytes_written
    fp_flops, q_flops = cost.flops - cost.int8_flops, cost.int8_flops
    compute = model.predict(0, fp_flops, 0, peak_fp32, bandwidth) + model.predict(0, q_flops, 0, peak_int8, bandwidth)
    return (
        cost.operators * (model.seconds_per_op if t_op is None else t_op) + compute + model.predict(0, 0, moved, peak_fp32, bandwidth, fitted_host=fitted_host)
    )


def device_seconds(cost: GraphCost, device: DeviceProfile, model: LatencyModel) -> float:
    """Eq. 7 on a device profile (its dispatch time: stated, else this machine's scaled by clock)."""
    seconds_per_op = device.op_overhead_us * 1e-6 if device.op_overhead_us > 0 else model.seconds_per_op * model.host_clock_mhz / device.clock_mhz
    return estimated_seconds(cost, model, device.peak_gflops_fp32, device.peak_gops_int8, device.memory_gbps, seconds_per_op)


def host_seconds(cost: GraphCost, model: LatencyModel) -> float:
    """Eq. 7 on this machine, with its measured peaks (int8 at twice the fp32 rate) and its fitted
    bandwidth efficiency as it is (its caches included): the estimate printed beside its measurement."""
    return estimated_seconds(cost, model, model.peaks.gflops_fp32, 2 * model.peaks.gflops_fp32, model.peaks.memory_gbps, fitted_host=True)


def profiled_contract(path: Path) -> dict[str, Any]:
    """The contract of a model `profile_model` can judge: a racmkd model in one file. A model saved
    with external data has its weights in other files, which the ROM figure (the model file's
    size) would leave out, and ONNX Runtime could not load some of them (constants it must read to
    infer shapes); `racmkd export` never writes one."""
    return read_contract(path, single_file=True)


def profile_model(path: Path, device: DeviceProfile, model: LatencyModel, measure_here: bool = True, latency_target_ms: float | None = None) -> dict[str, Any]:
    """ROM, RAM, estimated latency and energy of an exported model on `device`, a verdict with its
    reason, and (with `measure_here`) this machine's measured latency beside its own estimate."""
    path = Path(path)
    contract = profiled_contract(path)
    try:  # (a graph no runtime loads, a cycle or a tensor nothing writes, was "not measured" here yet judged to fit)
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as err:
        raise ExportError(f"{path}: not a valid ONNX model ({str(err).strip().splitlines()[0][:200]}); export it again") from None
    cost = graph_cost(path)
    moved = cost.resident_weight_bytes + 2 * cost.activation_bytes_written
    seconds = device_seconds(cost, device, model)
    rom = cost.file_bytes
    weights_in_ram = cost.resident_weight_bytes if device.weights_in == "ram" else cost.dequantize_scratch_bytes
    ram = cost.peak_activation_bytes + device.runtime_overhead_bytes + weights_in_ram
    target = device.latency_target_ms if latency_target_ms is None else latency_target_ms
    problems = []
    if rom > device.rom_bytes:
        problems.append(f"the model file needs {rom:,} bytes of storage, the device has {device.rom_bytes:,}")
    if ram > device.ram_bytes:
        problems.append(
            f"it needs {ram:,} bytes of RAM (activations {cost.peak_activation_bytes:,} + runtime {device.runtime_overhead_bytes:,}{f' + weights {weights_in_ram:,}' if weights_in_ram else ''}), the device has {device.ram_bytes:,}"
        )
    if not 0 <= seconds < math.inf:  # (a device profile or fit gone wrong: never a verdict of "fits")
        problems.append(f"the latency estimate is {seconds * 1e3} ms: check the device profile's peaks and the latency model")
    elif target and seconds * 1e3 > target:
        problems.append(f"the estimated latency {seconds * 1e3:.3f} ms exceeds the {target:g} ms target")
    fits = not problems
    reason = (
        "; ".join(problems)
        if problems
        else f"ROM {rom:,} <= {device.rom_bytes:,}, RAM {ram:,} <= {device.ram_bytes:,}" + (f", {seconds * 1e3:.3f} ms <= {target:g} ms" if target else "")
    )
    if cost.uncosted:  # (such a graph was judged on its other operators' work alone, and said nothing)
        reason += f"; the latency and energy estimates leave out the work of {', '.join(cost.uncosted)}, which the cost model does not count: measure it on the device"
    result: dict[str, Any] = {
        "model": str(path),
        "model_name": contract.get("model"),
        "precision": contract.get("precision", "fp32"),
        "device": device.name,
        "device_description": device.description,
        "rom_bytes": rom,
        "ram_bytes": ram,
        "ram_breakdown": {"peak_activations": cost.peak_activation_bytes, "runtime": device.runtime_overhead_bytes, "weights": weights_in_ram},
        "flops": cost.flops,
        "int8_flops": cost.int8_flops,
        "operators": cost.operators,
        "uncosted_operators": list(cost.uncosted),
        "estimated_latency_ms": seconds * 1e3,
        "estimated_energy_mj": estimated_energy_joules(cost.flops, moved, seconds, device.energy) * 1e3,
        "energy_source": "estimated",
        "latency_target_ms": target or None,
        "fits": fits,
        "verdict": "fits" if fits else "does not fit",
        "reason": reason,
        "latency_model": {
            "host": model.host,
            "seconds_per_op": model.seconds_per_op,
            "flops_efficiency": model.flops_efficiency,
            "bandwidth_efficiency": model.bandwidth_efficiency,
            "fit_relative_error": model.fit_relative_error,
        },
    }
    if measure_here:
        result["this_machine"] = measured_here(path, cost, model)
    return result


def measured_here(path: Path, cost: GraphCost, model: LatencyModel) -> dict[str, Any]:
    """This machine's measured latency of the model beside its own estimate: 200 runs after 20 to
    warm up, or as many as MEASURE_BUDGET_S allows (at least 6; a model estimated too slow for that
    is not run: a 2 GB convolution was measured for minutes). A model ONNX Runtime cannot load or
    run here (a tensor past its 4 GB limit, an operator it lacks, too little memory) has no
    measured figures and says why; the estimate and the device's verdict stand."""
    estimate = host_seconds(cost, model)
    here: dict[str, Any] = {"host": model.host, "measured_latency_ms_p50": None, "measured_latency_ms_p95": None}
    if not estimate * MEASURED_RUNS_MIN <= MEASURE_BUDGET_S:
        here["not_measured"] = (
            f"estimated at {estimate:.1f} s a run here, {MEASURED_RUNS_MIN} runs would take more than {MEASURE_BUDGET_S:g} s (profile with --no-measure to skip this)"
        )
        source = "not measured: too slow to time here; estimate from the same model as the device's"
        return {**here, "estimated_latency_ms": estimate * 1e3, "source": source}
    try:
        sess = session(path)
        feed = zero_feed(sess)
        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # the failure is reported below, once, not also logged by ONNX Runtime
        runs, started = [], time.perf_counter()
        while len(runs) < 220 and (len(runs) < MEASURED_RUNS_MIN or time.perf_counter() - started < MEASURE_BUDGET_S):
            runs.append(_time_once(sess, feed, quiet))
        warm = min(20, len(runs) // 3)
        timed = percentiles(runs[warm:])
        here.update(measured_latency_ms_p50=timed["p50"], measured_latency_ms_p95=timed["p95"], measured_runs=len(runs) - warm)
        source = "measured with ONNX Runtime, batch 1, one thread (latency); estimate from the same model as the device's"
    except Exception as err:  # noqa: BLE001 - ONNX Runtime's own exception types share no base but Exception
        if not isinstance(err, (ExportError, MemoryError, ValueError)) and not type(err).__module__.startswith("onnxruntime"):
            raise
        here["not_measured"] = re.sub(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", "", str(err)).splitlines()[0]
        source = "not measured: ONNX Runtime could not run the model here; estimate from the same model as the device's"
    return {**here, "estimated_latency_ms": estimate * 1e3, "source": source}


def _time_once(sess: Any, feed: dict[str, np.ndarray], options: ort.RunOptions | None = None) -> float:
    start = time.perf_counter()
    sess.run(None, feed, options)
    return (time.perf_counter() - start) * 1e3


def render_profile(p: dict[str, Any]) -> str:
    """A profile as the lines `racmkd profile` prints."""
    lines = [
        f"{p['model']} on {p['device']} ({p['device_description']})",
        f"  ROM        {p['rom_bytes']:>14,} bytes (model file, {p['precision']})",
        f"  RAM        {p['ram_bytes']:>14,} bytes (activations {p['ram_breakdown']['peak_activations']:,} + runtime {p['ram_breakdown']['runtime']:,} + weights {p['ram_breakdown']['weights']:,})",
        f"  FLOPs      {p['flops']:>14,} ({p['int8_flops']:,} in int8), {p['operators']} operators",
        f"  latency    {p['estimated_latency_ms']:>14.4f} ms (estimated)",
        f"  energy     {p['estimated_energy_mj']:>14.5f} mJ (estimated)",
    ]
    here = p.get("this_machine")
    if here and here["measured_latency_ms_p50"] is None:
        lines.append(f"  this machine: not measured ({here['not_measured']}), estimated {here['estimated_latency_ms']:.4f} ms ({here['host']})")
    elif here:
        lines.append(
            f"  this machine: measured p50 {here['measured_latency_ms_p50']:.4f} ms / p95 {here['measured_latency_ms_p95']:.4f} ms, estimated {here['estimated_latency_ms']:.4f} ms ({here['host']})"
        )
    lines.append(f"  verdict    {p['verdict'].upper()}: {p['reason']}")
    return "\n".join(lines)
