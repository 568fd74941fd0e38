"""Device profiles and the per-device estimate: graph memory against hand-computed figures, the
latency model, verdicts, and the `racmkd profile` command."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from racmkd.cli import app
from racmkd.compress.export import ExportError, export_onnx
from racmkd.config import ConfigError
from racmkd.models.multimodal import student
from racmkd.registry import MODALITIES
from racmkd.resources.devices import device_names, load_device
from racmkd.resources.profile import LatencyModel, HostPeaks, graph_cost, latency_model, profile_model

runner = CliRunner()
F32 = TensorProto.FLOAT


def hand_graph(activation: str = "Relu") -> onnx.ModelProto:
    """input (1,1,4,4) -> Conv 1->2 (3x3, pad 1) -> activation -> Conv 2->1 (1x1) -> output (1,1,4,4)."""
    w1 = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w1")
    w2 = numpy_helper.from_array(np.ones((1, 2, 1, 1), np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node(activation, ["a"], ["b"]),
        helper.make_node("Conv", ["b", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "hand", [helper.make_tensor_value_info("x", F32, ["batch", 1, 4, 4])], [helper.make_tensor_value_info("y", F32, ["batch", 1, 4, 4])], [w1, w2]
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_peak_activation_memory_matches_the_hand_computed_lifetimes() -> None:
    # Conv -> Relu is one fused kernel (as DQ -> Conv -> Q is in an int8 graph): a is never stored,
    # and x stays live until the kernel writes b. x 64 B is live; conv+relu write b (128 B): 192
    # (the peak); x is dead -> 128. conv writes y (64 B): 192; b dies -> 64.
    cost = graph_cost(hand_graph())
    assert cost.peak_activation_bytes == 192
    assert cost.activation_bytes_written == 128 + 64
    assert cost.weight_bytes == 4 * (18 + 2)
    assert cost.flops == 2 * (2 * 16 * 9) + 2 * (16 * 2)  # conv1: 32 outputs x 9 MACs; conv2: 16 outputs x 2 MACs
    assert cost.operators == 2 and not cost.quantized  # two kernels dispatched: the Relu runs inside the first
    # Abs is no activation a Conv kernel applies, so a is stored: x 64; conv writes a (128 B): 192;
    # x dies -> 128; abs writes b (128 B): 256 (the peak); a dies -> 128; conv writes y: 192.
    unfused = graph_cost(hand_graph("Abs"))
    assert unfused.peak_activation_bytes == 256 and unfused.activation_bytes_written == 128 + 128 + 64
    assert unfused.operators == 3


def test_weights_held_as_constants_count_as_weights_and_control_flow_is_refused() -> None:
    """A weight stored in a Constant node counted as an activation (4 MB of RAM for a 1000x1000
    MatMul weight an MCU reads from flash); an If's branches read tensors the walk freed early and
    their FLOPs went uncounted: refused, not estimated wrong."""
    weight = np.ones((1000, 1000), np.float32)
    x, y = helper.make_tensor_value_info("x", F32, [1, 1000]), helper.make_tensor_value_info("y", F32, [1, 1000])
    as_constant = helper.make_graph(
        [helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(weight, "w")), helper.make_node("MatMul", ["x", "w"], ["y"])], "c", [x], [y]
    )
    as_initializer = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "i", [x], [y], [numpy_helper.from_array(weight, "w")])
    costs = [graph_cost(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])) for g in (as_constant, as_initializer)]
    assert costs[0].weight_bytes == costs[1].weight_bytes == 4_000_000
    assert costs[0].peak_activation_bytes == costs[1].peak_activation_bytes == 8_000 and costs[0].flops == costs[1].flops == 2_000_000
    column = helper.make_tensor_value_info("x", F32, [1000, 1])  # the weight first, W @ x: its FLOPs were 0
    weight_first = helper.make_graph(
        [helper.make_node("MatMul", ["w", "x"], ["y"])],
        "w",
        [column],
        [helper.make_tensor_value_info("y", F32, [1000, 1])],
        [numpy_helper.from_array(weight, "w")],
    )
    assert graph_cost(helper.make_model(weight_first, opset_imports=[helper.make_opsetid("", 18)])).flops == 2_000_000
    branch = helper.make_graph([helper.make_node("Relu", ["x"], ["z"])], "branch", [], [helper.make_tensor_value_info("z", F32, [1, 1000])])
    flow = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)],
        "flow",
        [x, helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [y],
    )
    with pytest.raises(ExportError, match="control flow \\(If\\)"):
        graph_cost(helper.make_model(flow, opset_imports=[helper.make_opsetid("", 18)]))


def test_sizes_past_int64_do_not_wrap_around() -> None:
    """np.prod in int64 wrapped: a [2^31, 2^31, 4] float tensor counted 0 bytes, and the model fitted anywhere."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "huge",
        [helper.make_tensor_value_info("x", F32, [2**31, 2**31, 4])],
        [helper.make_tensor_value_info("y", F32, [2**31, 2**31, 4])],
    )
    assert graph_cost(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])).peak_activation_bytes == 2 * 4 * 2**64


@pytest.mark.parametrize("activation", ["HardSwish", "Elu", "Selu", "Softplus"])
def test_an_activation_onnx_runtime_keeps_apart_from_the_conv_stores_its_input(activation: str) -> None:
    """ONNX Runtime's CPU provider fuses Relu, Clip, Sigmoid, HardSigmoid, LeakyRelu and Tanh into a
    Conv, not these: the pre-activation tensor is stored, as with Abs above (256 B peak, not 192)."""
    cost = graph_cost(hand_graph(activation))
    assert cost.peak_activation_bytes == 256 and cost.activation_bytes_written == 128 + 128 + 64


def test_a_float_product_its_bias_and_activation_store_only_the_activation() -> None:
    """MatMul -> bias Add -> Relu is one kernel; not when the Add's output has another reader."""
    inits = [numpy_helper.from_array(np.ones((4, 8), np.float32), "w"), numpy_helper.from_array(np.zeros(8, np.float32), "bias")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "bias"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]

    def cost(extra_output: bool) -> tuple[int, int]:
        outputs = [helper.make_tensor_value_info("y", F32, [1, 8])] + ([helper.make_tensor_value_info("c", F32, [1, 8])] if extra_output else [])
        graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", F32, [1, 4])], outputs, inits)
        c = graph_cost(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
        return c.peak_activation_bytes, c.activation_bytes_written

    assert cost(extra_output=False) == (16 + 32, 32)  # x (16 B, read until the kernel writes y) and y (32 B); m and c never stored
    # c is also a graph output, so it is stored and nothing fuses into the Relu: x 16 + m 32 = 48;
    # x dies -> 32; + c 32 = 64; m dies -> 32; + y 32 = 64.
    assert cost(extra_output=True) == (64, 3 * 32)


def test_an_int8_graph_counts_activations_as_an_int8_runtime_stores_them() -> None:
    # x (64 B float) -> Q -> xq (16 B int8) -> DQ -> Conv(DQ(w)) -> c (float, only requantized: fused away)
    # -> Q -> cq (32 B int8) -> DQ -> Relu -> y (128 B float, the output).
    inits = [
        numpy_helper.from_array(np.ones((2, 1, 3, 3), np.int8), "wq"),
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["w"]),
        helper.make_node("Conv", ["xd", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["cd"]),
        helper.make_node("Relu", ["cd"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", F32, [1, 1, 4, 4])], [helper.make_tensor_value_info("y", F32, [1, 2, 4, 4])], inits
    )
    cost = graph_cost(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    # live: x 64; +xq 16 = 80, x dies -> 16; conv (c not stored, xq read until the Q writes); +cq 32 = 48
    # (peak so far 80), xq dies -> 32; relu: +y 128 = 160 (the peak), cq dies -> 128.
    assert cost.quantized and cost.peak_activation_bytes == 160
    assert cost.int8_flops == cost.flops == 2 * 32 * 9
    # Kernels, as ONNX Runtime's optimised graph holds them: QuantizeLinear (of the float input),
    # QLinearConv (DQ -> Conv -> Q), DequantizeLinear (for the float Relu), Relu.
    assert cost.operators == 4


def qdq_model(nodes: list[onnx.NodeProto], x: list[int], y: list[int], inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    """A graph of `nodes` from float input x to float output y, with one scale s and zero point z."""
    inits = [*inits, numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", F32, x)], [helper.make_tensor_value_info("y", F32, y)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_an_int8_kernel_reads_its_input_while_it_writes_its_output() -> None:
    """DQ -> Conv -> Q is one int8 kernel: the int8 tensor it reads is live until the Q writes the
    int8 tensor it produces, as a float Conv -> Relu kernel's input is."""
    inits = [numpy_helper.from_array(np.ones((64, 1, 1, 1), np.int8), "w1q"), numpy_helper.from_array(np.ones((64, 64, 1, 1), np.int8), "w2q")]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),  # (1,1,8,8) int8: 64 B
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w1q", "s", "z"], ["w1"]),
        helper.make_node("Conv", ["xd", "w1"], ["c1"]),
        helper.make_node("QuantizeLinear", ["c1", "s", "z"], ["c1q"]),  # (1,64,8,8) int8: 4096 B
        helper.make_node("DequantizeLinear", ["c1q", "s", "z"], ["c1d"]),
        helper.make_node("DequantizeLinear", ["w2q", "s", "z"], ["w2"]),
        helper.make_node("Conv", ["c1d", "w2"], ["c2"]),
        helper.make_node("QuantizeLinear", ["c2", "s", "z"], ["c2q"]),  # (1,64,8,8) int8: 4096 B
        helper.make_node("DequantizeLinear", ["c2q", "s", "z"], ["c2d"]),
        helper.make_node("GlobalAveragePool", ["c2d"], ["y"]),  # (1,64,1,1) float: 256 B
    ]
    cost = graph_cost(qdq_model(nodes, [1, 1, 8, 8], [1, 64, 1, 1], inits))
    # live: x 256; +xq 64 = 320, x dies -> 64; conv 1 (c1 not stored, xq read until its Q); +c1q 4096 =
    # 4160, xq dies -> 4096; conv 2 (c2 not stored); +c2q 4096 = 8192 (the peak: conv 2 reads c1q
    # while it writes c2q), c1q dies -> 4096; pool: +y 256 = 4352, c2q dies -> 256.
    assert cost.quantized and cost.peak_activation_bytes == 8192
    assert cost.activation_bytes_written == 64 + 4096 + 4096 + 256


def test_a_float_op_before_a_quantize_stores_its_float_output() -> None:
    """Abs on the float graph input is no int8 kernel (its input is not dequantized): ONNX Runtime
    runs it in float and stores its output before the QuantizeLinear reads it, as it does an exported
    model's input BatchNormalization. A Conv kept in fp32 between DQ and Q is a kernel all the same:
    its float output is requantized, never stored. The dequantized graph output is stored."""
    inits = [numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")]
    nodes = [
        helper.make_node("Abs", ["x"], ["a"]),  # (1,1,8,8) float: 256 B
        helper.make_node("QuantizeLinear", ["a", "s", "z"], ["aq"]),  # 64 B
        helper.make_node("DequantizeLinear", ["aq", "s", "z"], ["ad"]),
        helper.make_node("Conv", ["ad", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),  # (1,2,4,4) float, float weights
        helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"]),  # 32 B
        helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["y"]),  # the output: (1,2,4,4) float, 128 B
    ]
    cost = graph_cost(qdq_model(nodes, [1, 1, 8, 8], [1, 2, 4, 4], inits))
    # live: x 256; abs: +a 256 = 512 (the peak), x dies -> 256; +aq 64 = 320, a dies -> 64; conv (c not
    # stored); +cq 32 = 96, aq dies -> 32; +y 128 = 160, cq dies -> 128.
    assert cost.quantized and cost.peak_activation_bytes == 512
    assert cost.activation_bytes_written == 256 + 64 + 32 + 128


def test_an_int8_graph_in_onnx_runtimes_qoperator_format_counts_its_flops(tmp_path: Path) -> None:
    """QLinearConv and QGemm carry their weight fourth (after the input's scale and zero point):
    the same FLOPs as the float graph, all of them int8."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from racmkd.resources.profile import synthetic_graph

    fp32 = tmp_path / "fp32.onnx"
    onnx.save(synthetic_graph(8, 6, 2), fp32)

    class Feed(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": np.random.default_rng(i).random((1, 8, 6, 6), dtype=np.float32)} for i in range(4)])

        def get_next(self):  # noqa: ANN202
            return next(self.batches, None)

    quantize_static(
        str(fp32), str(tmp_path / "q.onnx"), Feed(), quant_format=QuantFormat.QOperator, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8
    )
    quantized = onnx.load(tmp_path / "q.onnx")
    assert {"QLinearConv", "QGemm"} <= {n.op_type for n in quantized.graph.node}
    expected = graph_cost(onnx.load(fp32)).flops
    cost = graph_cost(quantized)
    assert expected > 0 and cost.flops == cost.int8_flops == expected
    # ONNX's shape inference does not know QLinearGlobalAveragePool and QGemm: their outputs' shapes
    # are read from a run (they counted as 0 bytes): 12 + 12 + 2 bytes of uint8 more than 1,480.
    assert cost.activation_bytes_written == 1506


def test_a_tensor_whose_shape_nothing_can_tell_is_refused_not_free(tmp_path: Path) -> None:
    """An operator of a domain neither ONNX nor ONNX Runtime knows: its output counted as 0 bytes and
    a graph that writes 4,096 values "fit"; it is refused, naming the tensor and its operator."""
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("Upsample4096", ["a"], ["b"], domain="com.example"),
            helper.make_node("ReduceMax", ["b"], ["y"]),
        ],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    with pytest.raises(ExportError, match=r"shapes of 'b' \(com\.example\.Upsample4096\) cannot be inferred"):
        graph_cost(model)


def test_every_shipped_device_profile_loads() -> None:
    names = device_names()
    assert {"cortex-m7", "raspberry-pi-4", "jetson-nano", "fog-server", "cloud-gpu"} <= set(names)
    m7 = load_device("cortex-m7")
    assert m7.ram_bytes == 512 * 1024 and m7.rom_bytes == 2 * 1024 * 1024 and m7.weights_in == "rom"


def test_an_installed_racmkd_finds_its_device_profiles_by_name(tmp_path: Path) -> None:
    """The profiles were read from the checkout's configs/devices/ only: on an edge install (a
    wheel) `racmkd profile M.onnx --device cortex-m7` was refused. They are package data now, and
    configs/devices/ links to them. The wheel is built from a copy of the tracked sources (a build
    writes build/ beside them) and run unpacked, outside any checkout."""
    import shutil
    import subprocess
    import sys
    import zipfile

    from racmkd.resources.devices import SHIPPED_DEVICES

    root = Path(__file__).resolve().parents[1]
    assert (root / "configs" / "devices").resolve() == SHIPPED_DEVICES
    source = tmp_path / "source"
    shutil.copytree(root / "racmkd", source / "racmkd", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    with zipfile.ZipFile(next((tmp_path / "dist").glob("racmkd-*.whl"))) as wheel:
        wheel.extractall(tmp_path / "site")
    check = (
        "from racmkd.data.paths import checkout; from racmkd.resources.devices import device_names, load_device; "
        "assert checkout() is None; print(','.join(device_names())); print(load_device('cortex-m7').ram_bytes)"
    )
    installed = subprocess.run(  # (from tmp_path: `python -c` reads the working directory's packages first)
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    )
    assert installed.returncode == 0, installed.stderr
    names, ram = installed.stdout.split()
    assert names.split(",") == device_names() and int(ram) == 512 * 1024


def test_a_profile_missing_a_field_or_with_a_bad_value_is_a_clear_error(tmp_path: Path) -> None:
    good = (Path(__file__).parents[1] / "configs" / "devices" / "cortex-m7.yaml").read_text()
    broken = tmp_path / "broken.yaml"
    broken.write_text("\n".join(line for line in good.splitlines() if not line.startswith("rom_bytes")))
    with pytest.raises(ConfigError, match="rom_bytes is missing") as err:  # was "DeviceProfile.__init__() missing 1 required positional argument"
        load_device(broken)
    assert str(broken) in str(err.value)
    broken.write_text(good.replace("kind: mcu", "kind: toaster"))
    with pytest.raises(ConfigError, match="toaster"):
        load_device(broken)
    with pytest.raises(ConfigError, match="empty; name a known device .*cortex-m7"):  # (was read as the folder ".")
        load_device("")
    broken.write_text(good.replace("runtime_overhead_bytes: ", "runtime_overhead_bytes: -"))  # RAM would come out negative
    with pytest.raises(ConfigError, match="runtime_overhead_bytes must be a finite number >= 0"):
        load_device(broken)
    broken.write_text(good.replace("clock_mhz: 216", "clock_mhz: 1.0e-320"))  # every estimate infinite, and Infinity in --json
    with pytest.raises(ConfigError, match=r"clock_mhz must be a positive finite number \(at least 1e-06\), got 1e-320"):
        load_device(broken)
    broken.write_text("\n".join(line for line in good.splitlines() if not line.strip().startswith("device:")))  # the energy model's label
    with pytest.raises(ConfigError, match="energy is missing device"):
        load_device(broken)
    with pytest.raises(ConfigError, match="known devices: .*cortex-m7"):
        load_device("no-such-board")


def test_int8_weights_with_float_arithmetic_count_as_float_once_loaded(tmp_path: Path) -> None:
    from racmkd.compress.export import CONTRACT_KEY, set_metadata
    from racmkd.compress.quantize import quantize_weights

    model = hand_graph()
    set_metadata(model, {CONTRACT_KEY: json.dumps({"format": "racmkd-onnx/1", "inputs": {"x": {}}})})
    onnx.save(model, tmp_path / "fp32.onnx")
    fp32, w8 = graph_cost(tmp_path / "fp32.onnx"), graph_cost(quantize_weights(tmp_path / "fp32.onnx", tmp_path / "w8.onnx"))
    assert w8.weight_bytes == (18 + 2) + 4 * (2 + 1)  # int8 weights and a float scale per output channel
    assert w8.resident_weight_bytes == fp32.weight_bytes  # ONNX Runtime holds them as floats after loading
    assert w8.dequantize_scratch_bytes == 4 * 18  # the largest layer, dequantized, on a device reading flash
    assert not w8.quantized and w8.int8_flops == 0 and w8.flops == fp32.flops
    assert (w8.operators, w8.peak_activation_bytes, w8.activation_bytes_written) == (fp32.operators, fp32.peak_activation_bytes, fp32.activation_bytes_written)
    m7 = profile_model(tmp_path / "w8.onnx", load_device("cortex-m7"), FIXED, measure_here=False)
    assert m7["ram_breakdown"]["weights"] == 4 * 18 and m7["precision"] == "int8-weights"
    pi = profile_model(tmp_path / "w8.onnx", load_device("raspberry-pi-4"), FIXED, measure_here=False)
    assert pi["ram_breakdown"]["weights"] == fp32.weight_bytes


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    modalities = {m: MODALITIES.create(m) for m in ("image", "audio")}
    specs = {"image": modalities["image"].spec(1), "audio": modalities["audio"].spec(1)}
    model = student({m: {"encoder": "dscnn2d", "shape": list(modalities[m].feature_shape(s))} for m, s in specs.items()}, width=2.0, depth=2).eval()
    return export_onnx(model, specs, modalities, tmp_path_factory.mktemp("onnx") / "student.onnx", name="student")


FIXED = LatencyModel(
    "test-host", 2000.0, HostPeaks(100.0, 20.0), seconds_per_op=1e-6, flops_efficiency=0.5, bandwidth_efficiency=1.0, fit_relative_error=0.1, points=3
)


def test_verdicts_say_why(exported: Path) -> None:
    m7 = profile_model(exported, load_device("cortex-m7"), FIXED, measure_here=False)
    assert m7["fits"] and m7["ram_breakdown"]["weights"] == 0  # weights stay in flash
    assert m7["ram_bytes"] == graph_cost(exported).peak_activation_bytes + 16384
    tight = profile_model(exported, load_device("cortex-m7"), FIXED, measure_here=False, latency_target_ms=1e-6)
    assert not tight["fits"] and "exceeds the 1e-06 ms target" in tight["reason"]
    # The estimate follows eq. 7: operators * t_op (scaled by clock) + FLOPs / (eta * peak) + bytes / (eta * B).
    cost = graph_cost(exported)
    moved = cost.resident_weight_bytes + 2 * cost.activation_bytes_written
    device = load_device("raspberry-pi-4")
    expected = cost.operators * 1e-6 * 2000 / 1500 + cost.flops / (0.5 * device.peak_gflops_fp32 * 1e9) + moved / (1.0 * 4e9)
    assert profile_model(exported, device, FIXED, measure_here=False)["estimated_latency_ms"] == pytest.approx(expected * 1e3)


def test_a_model_too_big_for_the_device_does_not_fit(exported: Path, tmp_path: Path) -> None:
    text = (Path(__file__).parents[1] / "configs" / "devices" / "cortex-m7.yaml").read_text()
    small = tmp_path / "tiny-mcu.yaml"
    small.write_text(text.replace("ram_bytes: 524288", "ram_bytes: 20000").replace("rom_bytes: 2097152", "rom_bytes: 1000"))
    p = profile_model(exported, load_device(small), FIXED, measure_here=False)
    assert not p["fits"] and "bytes of storage" in p["reason"] and "bytes of RAM" in p["reason"]


def test_a_graph_whose_sizes_are_not_fixed_is_refused_not_profiled_small(exported: Path, tmp_path: Path) -> None:
    """Every symbolic input axis was set to the batch size: a model with symbolic height and width
    was profiled at 1x1 and "fit"; a tensor whose shape could not be inferred counted 0 bytes; a
    graph shape inference rejects ended in onnx's traceback."""
    model = onnx.load(exported)
    name = next(i.name for i in model.graph.input if i.name not in {w.name for w in model.graph.initializer})
    model.graph.input[[i.name for i in model.graph.input].index(name)].type.tensor_type.shape.dim[2].dim_param = "H"
    onnx.save(model, tmp_path / "dynamic.onnx")
    with pytest.raises(ExportError, match=rf"dynamic\.onnx: input '{name}' has axis 2 of size 'H': its costs cannot be estimated"):
        graph_cost(tmp_path / "dynamic.onnx")
    assert graph_cost(exported).peak_activation_bytes > 0  # (its batch axis, symbolic, is set to 1)
    shape = helper.make_tensor_value_info("shape", TensorProto.INT64, [2])
    unknown = helper.make_model(
        helper.make_graph(
            [helper.make_node("Reshape", ["x", "shape"], ["a"]), helper.make_node("Relu", ["a"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64]), shape],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        )
    )
    with pytest.raises(ExportError, match=r"the shape of 'a' cannot be inferred from the graph"):
        graph_cost(unknown)
    broken = helper.make_model(
        helper.make_graph([helper.make_node("Abs", ["x"], [])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])], [])
    )
    with pytest.raises(ExportError, match=r"not a valid ONNX graph, its shapes cannot be inferred"):
        graph_cost(broken)
    dangling = onnx.load(exported)  # a node reading a tensor nothing writes: "not measured" here, yet it was judged to fit
    dangling.graph.node[-1].input[0] = "nowhere"
    onnx.save(dangling, tmp_path / "dangling.onnx")
    with pytest.raises(ExportError, match=r"dangling\.onnx: not a valid ONNX model .*nowhere.*; export it again"):
        profile_model(tmp_path / "dangling.onnx", load_device("cortex-m7"), FIXED, measure_here=False)


def test_the_latency_model_is_fitted_here_and_cached(tmp_path: Path) -> None:
    fitted = latency_model(tmp_path, show_progress=False)
    assert fitted.points >= 30 and fitted.seconds_per_op > 0 and fitted.peaks.gflops_fp32 > 0
    assert fitted.fit_relative_error < 1.0
    assert latency_model(tmp_path, show_progress=False) == fitted  # read back, not refitted
    assert json.loads((tmp_path / "latency-model.json").read_text())["host"] == fitted.host


def test_the_latency_model_is_cached_once_per_machine_not_per_working_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cached under ./.cache, every folder a command ran in fitted again (10 s) and printed slightly
    different estimates; now $RACMKD_CACHE, else the checkout's .cache/racmkd, else ~/.cache/racmkd."""
    import racmkd.data.paths as paths
    import racmkd.resources.profile as profile

    host, clock = profile.host_description()
    fitted = LatencyModel(host, clock, HostPeaks(50.0, 10.0), 2e-6, 0.25, None, 0.01, 40)
    monkeypatch.setenv("RACMKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(profile, "calibrate", lambda host, clock, show_progress: fitted)
    (tmp_path / "one").mkdir()
    monkeypatch.chdir(tmp_path / "one")
    assert latency_model(show_progress=False) == fitted
    monkeypatch.setattr(profile, "calibrate", lambda host, clock, show_progress: pytest.fail("fitted again in another folder"))
    monkeypatch.chdir(tmp_path)
    assert latency_model(show_progress=False) == fitted and (tmp_path / "cache" / "latency-model.json").is_file()
    monkeypatch.delenv("RACMKD_CACHE")
    assert paths.cache_root() == Path(__file__).resolve().parents[1] / ".cache" / "racmkd"  # run from the checkout
    monkeypatch.setattr(paths, "checkout", lambda: None)  # installed
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_root() == tmp_path / "xdg" / "racmkd"


def test_a_clock_the_system_does_not_give_is_taken_as_2000_mhz(monkeypatch: pytest.MonkeyPatch) -> None:
    """psutil.cpu_freq() raises on some Apple Silicon Macs (and Linux hosts with unreadable cpufreq
    files) and reads 0 on others: `racmkd profile` died, or scaled every estimate by a zero clock."""
    from types import SimpleNamespace

    import psutil

    import racmkd.resources.profile as profile

    def fails() -> None:
        raise NotImplementedError("can't find current frequency file")

    for reading in (fails, lambda: None, lambda: SimpleNamespace(current=0.0, min=0.0, max=0.0)):
        monkeypatch.setattr(psutil, "cpu_freq", reading)
        assert profile.host_description()[1] == 2000.0
    monkeypatch.setattr(psutil, "cpu_freq", lambda: SimpleNamespace(current=1800.0, min=600.0, max=2400.0))
    assert profile.host_description()[1] == 2400.0


def test_a_cache_that_is_json_but_no_model_is_refitted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import racmkd.resources.profile as profile

    host, clock = profile.host_description()
    refit = LatencyModel(host, clock, HostPeaks(50.0, 10.0), 2e-6, 0.25, None, 0.01, 40)
    monkeypatch.setattr(profile, "calibrate", lambda host, clock, show_progress: refit)  # (a real fit takes seconds)
    for damaged in ("[]", "42", '"model"', "null"):
        (tmp_path / "latency-model.json").write_text(damaged)
        assert latency_model(tmp_path, show_progress=False) == refit
        assert json.loads((tmp_path / "latency-model.json").read_text())["host"] == host  # and the cache is written again
    # A fit of this host made before graph_cost stopped counting fused pre-activation tensors: its
    # eta_b is a rate over bytes no longer counted, so it is refitted, not read back.
    stale = LatencyModel(host, clock, HostPeaks(50.0, 10.0), 1e-6, 0.5, 1.0, 0.01, 40)
    (tmp_path / "latency-model.json").write_text(json.dumps(dataclasses.asdict(stale)))
    assert latency_model(tmp_path, show_progress=False) == refit
    # One fitted under the previous counting rules (int8 kernels' inputs freed before their output
    # was written, HardSwish counted fused) is refitted too.
    (tmp_path / "latency-model.json").write_text(json.dumps({**dataclasses.asdict(stale), "graph_cost_rules": profile.GRAPH_COST_RULES - 1}))
    assert latency_model(tmp_path, show_progress=False) == refit
    # A current cache edited or damaged to impossible values: a zero efficiency divided by zero, a
    # negative time per operator made negative latencies that "fit", NaN printed as JSON NaN.
    for field, bad in (("flops_efficiency", 0), ("bandwidth_efficiency", 0), ("seconds_per_op", -1), ("seconds_per_op", "x"), ("host_clock_mhz", 0)):
        current = {**dataclasses.asdict(stale), "graph_cost_rules": profile.GRAPH_COST_RULES, field: bad}
        (tmp_path / "latency-model.json").write_text(json.dumps(current))
        assert latency_model(tmp_path, show_progress=False) == refit, field
    (tmp_path / "latency-model.json").write_text(
        json.dumps({**dataclasses.asdict(stale), "graph_cost_rules": profile.GRAPH_COST_RULES}).replace("1e-06", "NaN")
    )
    assert latency_model(tmp_path, show_progress=False) == refit
    monkeypatch.setattr(profile, "calibrate", lambda host, clock, show_progress: pytest.fail("a current cache was refitted"))
    assert latency_model(tmp_path, show_progress=False) == refit  # the refit, recorded with its rules, is read back


def test_an_unwritable_cache_costs_a_warning_not_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A read-only checkout (or no usable home folder) made the cache write raise PermissionError,
    failing `profile`, `registry add` and `deploy plan` after the fit they needed had been made."""
    import racmkd.resources.profile as profile

    host, clock = profile.host_description()
    fitted = LatencyModel(host, clock, HostPeaks(50.0, 10.0), 2e-6, 0.25, None, 0.01, 40)
    monkeypatch.setattr(profile, "calibrate", lambda host, clock, show_progress: fitted)

    def read_only(path: Path, data: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(profile, "atomic_write_json", read_only)
    with caplog.at_level("WARNING", logger="racmkd.resources.profile"):
        assert latency_model(tmp_path / "cache", show_progress=False) == fitted
    assert "the latency model is not cached" in caplog.text and "RACMKD_CACHE" in caplog.text


def test_a_fit_that_finds_traffic_free_charges_no_traffic_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Timings that memory traffic does not explain (operators and FLOPs only): eta_b is no rate
    (None, not a made-up 1.0), and bytes add nothing to an estimate; the other terms are recovered."""
    import racmkd.resources.profile as profile

    peaks = HostPeaks(50.0, 10.0)
    last: dict[str, object] = {}

    def costing(model):  # noqa: ANN001, ANN202 - the synthetic graph's cost, noted for the fake timing
        last["cost"] = graph_cost(model)
        return last["cost"]

    def fake_latency(fn, warmup: int, iters: int) -> dict[str, float]:  # noqa: ANN001
        cost = last["cost"]
        moved = cost.resident_weight_bytes + 2 * cost.activation_bytes_written
        # traffic a hair faster, if anything
        seconds = cost.operators * 2e-6 + cost.flops / (0.25 * peaks.gflops_fp32 * 1e9) - 0.01 * moved / (peaks.memory_gbps * 1e9)
        return {"p50": seconds * 1e3, "p95": seconds * 1e3}

    monkeypatch.setattr(profile, "measure_host_peaks", lambda: peaks)
    monkeypatch.setattr(profile, "graph_cost", costing)
    monkeypatch.setattr(profile, "wall_latency_ms", fake_latency)
    fitted = profile.calibrate("fake-host", 2000.0, show_progress=False)
    assert fitted.bandwidth_efficiency is None and fitted.fit_relative_error < 0.05
    assert fitted.seconds_per_op == pytest.approx(2e-6, rel=0.05) and fitted.flops_efficiency == pytest.approx(0.25, rel=0.05)
    assert fitted.predict(0, 0, 1e9, 10.0, 4.0) == 0.0
    assert fitted.predict(3, 0, 1e9, 10.0, 4.0) == pytest.approx(3 * fitted.seconds_per_op)


def test_profile_command_prints_json_and_writes_it(exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RACMKD_CACHE", str(tmp_path / "cache"))  # the latency model fitted here, not read from the user's cache
    result = runner.invoke(app, ["profile", str(exported), "--device", "raspberry-pi-4", "--json"])
    assert result.exit_code == 0, result.output
    profile = json.loads(result.output)
    assert profile["device"] == "raspberry-pi-4" and profile["rom_bytes"] == exported.stat().st_size
    assert profile["this_machine"]["measured_latency_ms_p50"] > 0 and profile["energy_source"] == "estimated"
    assert json.loads(exported.with_suffix(".profile.json").read_text())["verdict"] == profile["verdict"]
    text = runner.invoke(app, ["profile", str(exported), "--device", "cortex-m7", "--device", "cloud-gpu", "--no-measure"])
    assert text.exit_code == 0 and "cortex-m7" in text.output and "verdict" in text.output


def test_profile_command_refuses_bad_input(exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    junk = tmp_path / "junk.onnx"
    junk.write_text("hello")
    result = runner.invoke(app, ["profile", str(junk), "--device", "cortex-m7"])
    assert result.exit_code == 2 and "not an ONNX model" in result.output
    result = runner.invoke(app, ["profile", str(exported), "--device", "toaster"])
    assert result.exit_code == 2 and "known devices" in result.output
    result = runner.invoke(app, ["profile", str(exported), "--device", str(tmp_path)])  # was "<tmp_path>.yaml does not exist"
    assert result.exit_code == 2 and "a folder; name a device profile's YAML file" in result.output, result.output


def test_profile_command_refuses_an_out_that_would_overwrite_an_input(exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--out is checked before any work: the model itself (it was replaced by JSON, exit 0), a device
    profile or any other file that is not JSON, a path under a file."""
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "m.onnx"
    model.write_bytes(exported.read_bytes())
    device = tmp_path / "board.yaml"
    device.write_text((Path(__file__).parents[1] / "configs" / "devices" / "cortex-m7.yaml").read_text())
    cases = [
        (["--device", "cortex-m7", "--out", "m.onnx"], "that is the input m.onnx itself"),
        (["--device", str(device), "--out", str(device)], "that is the input"),
        (["--device", "cortex-m7", "--out", str(Path(__file__).parents[1] / "configs" / "devices" / "cortex-m7.yaml")], "not JSON; it is not overwritten"),
        (["--device", "cortex-m7", "--out", "m.onnx/p.json"], "is a file, not a folder"),
        (["--device", "cortex-m7", "--out", "bank.json"], "an existing JSON file that is not a profile"),  # (a run's bank.json was replaced)
    ]
    (tmp_path / "bank.json").write_text('{"format": 3, "variants": []}')
    for args, message in cases:
        result = runner.invoke(app, ["profile", "m.onnx", "--no-measure", *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    assert model.read_bytes() == exported.read_bytes() and device.read_text().startswith(("#", "name"))
    assert json.loads((tmp_path / "bank.json").read_text()) == {"format": 3, "variants": []}
    earlier = runner.invoke(app, ["profile", "m.onnx", "--no-measure", "--device", "cortex-m7", "--device", "raspberry-pi-4", "--out", "p.json"])
    again = runner.invoke(app, ["profile", "m.onnx", "--no-measure", "--device", "cortex-m7", "--out", "p.json"])  # an earlier profile is replaced
    assert earlier.exit_code == again.exit_code == 0 and json.loads((tmp_path / "p.json").read_text())["device"] == "cortex-m7"


def test_profile_out_may_be_an_empty_file_and_a_large_one_is_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty --out (made by `touch`) was refused as "not JSON"; a large file was read whole
    into memory only to be parsed as JSON and refused."""
    from racmkd.cli import _OUT_JSON_MAX_BYTES, _check_out_json

    empty = tmp_path / "p.json"
    empty.touch()
    _check_out_json(empty, [])
    big = tmp_path / "big.json"
    with big.open("wb") as handle:
        handle.truncate(_OUT_JSON_MAX_BYTES + 1)  # sparse: no disk used
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"{self} was read"))
    with pytest.raises(ValueError, match=r"big\.json: an existing file of 10485761 bytes, too large to be a profile; it is not overwritten"):
        _check_out_json(big, [])
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # (size 0, like /dev/null: passed as an empty file, then replaced by one)
    with pytest.raises(ValueError, match="not a regular file"):
        _check_out_json(fifo, [])


def test_a_model_with_external_data_is_refused_in_one_line(exported: Path, tmp_path: Path) -> None:
    """Saved with external data, a model's weights live in another file: missing, onnx.load raised a
    traceback; present, ONNX Runtime failed obscurely and the ROM figure would leave them out."""
    model = tmp_path / "ext.onnx"
    onnx.save(onnx.load(exported), model, save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    result = runner.invoke(app, ["profile", str(model), "--device", "cortex-m7", "--no-measure"])
    assert result.exit_code == 2 and "stores its weights in external data (ext.onnx.data)" in result.output, result.output
    (tmp_path / "ext.onnx.data").unlink()
    result = runner.invoke(app, ["profile", str(model), "--device", "cortex-m7", "--no-measure"])
    assert result.exit_code == 2 and f"{tmp_path / 'ext.onnx.data'}, which is missing" in result.output, result.output


def test_a_model_onnx_runtime_cannot_run_here_is_profiled_without_measurement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Tile whose output passes ONNX Runtime's 4 GB limit: timing it raised a traceback; now the
    measured figures are absent with the reason, and the estimate and verdict stand. Estimated too
    slow to time here within MEASURE_BUDGET_S, it is not run at all (a 2 GB convolution was timed
    220 times, for minutes)."""
    from racmkd.compress.export import CONTRACT_KEY, set_metadata
    from racmkd.resources import profile
    from racmkd.resources.profile import render_profile

    graph = helper.make_graph(
        [helper.make_node("Tile", ["x", "repeats"], ["y"])],
        "huge",
        [helper.make_tensor_value_info("x", F32, [1, 4])],
        [helper.make_tensor_value_info("y", F32, [1, 2**32])],  # (a graph output without a shape is not valid ONNX: refused before profiling)
        [numpy_helper.from_array(np.array([1, 2**30], np.int64), "repeats")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    set_metadata(model, {CONTRACT_KEY: json.dumps({"format": "racmkd-onnx/1", "inputs": {"x": {}}})})
    onnx.save(model, tmp_path / "huge.onnx")
    slow = profile_model(tmp_path / "huge.onnx", load_device("raspberry-pi-4"), FIXED)["this_machine"]
    assert slow["measured_latency_ms_p50"] is None and "runs would take more than 10 s" in slow["not_measured"]
    monkeypatch.setattr(profile, "MEASURE_BUDGET_S", math.inf)  # (timed whatever it costs: ONNX Runtime refuses it)
    p = profile_model(tmp_path / "huge.onnx", load_device("raspberry-pi-4"), FIXED)
    here = p["this_machine"]
    assert here["measured_latency_ms_p50"] is None and "4294967296 bytes" in here["not_measured"] and here["estimated_latency_ms"] > 0
    assert not p["fits"] and "bytes of RAM" in p["reason"]
    assert "this machine: not measured (" in render_profile(p)


def test_work_the_cost_model_does_not_count_is_said_beside_the_verdict(tmp_path: Path) -> None:
    """A custom operator (a runtime's own kernel) or a ConvTranspose has no FLOP model: the graph was
    judged to fit on its other operators' work and said nothing; now the reason names them."""
    from racmkd.compress.export import CONTRACT_KEY, set_metadata
    from racmkd.resources.profile import render_profile

    plain = graph_cost(hand_graph())
    assert plain.uncosted == ()
    # ONNX Runtime's own int8 product (com.microsoft QGemm) is costed: not named
    qgemm = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
            helper.make_node("QGemm", ["xq", "s", "z", "w", "s", "z", "b", "s", "z"], ["yq"], domain="com.microsoft", transB=1),
            helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["y"]),
        ],
        "qgemm",
        [helper.make_tensor_value_info("x", F32, [1, 8])],
        [helper.make_tensor_value_info("y", F32, [1, 4])],
        [
            numpy_helper.from_array(np.array(0.1, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.int8), "z"),
            numpy_helper.from_array(np.ones((4, 8), np.int8), "w"),
            numpy_helper.from_array(np.zeros(4, np.int32), "b"),
        ],
        value_info=[helper.make_tensor_value_info("yq", TensorProto.INT8, [1, 4])],
    )
    costed = graph_cost(helper.make_model(qgemm, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]))
    assert costed.int8_flops == 64 and costed.uncosted == ()
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
            helper.make_node("Heavy", ["a"], ["b"], domain="com.example"),
            helper.make_node("ConvTranspose", ["b", "wt"], ["y"]),
        ],
        "custom",
        [helper.make_tensor_value_info("x", F32, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", F32, [1, 1, 6, 6])],
        [numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w"), numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "wt")],
        value_info=[helper.make_tensor_value_info("b", F32, [1, 2, 4, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    set_metadata(model, {CONTRACT_KEY: json.dumps({"format": "racmkd-onnx/1", "inputs": {"x": {}}})})
    onnx.save(model, tmp_path / "custom.onnx")
    p = profile_model(tmp_path / "custom.onnx", load_device("raspberry-pi-4"), FIXED)
    assert p["uncosted_operators"] == ["ConvTranspose", "com.example.Heavy"]
    assert p["fits"] and "leave out the work of ConvTranspose, com.example.Heavy" in p["reason"]
    assert p["this_machine"]["measured_latency_ms_p50"] is None  # (ONNX Runtime has no such kernel: said, as before)
    assert "leave out the work of" in render_profile(p)


def test_no_estimate_outruns_the_devices_peak() -> None:
    fitted_above_one = dataclasses.replace(FIXED, flops_efficiency=1.32, seconds_per_op=0.0)  # this host's measured peak fell short of its real one
    flops, peak_gflops = 2e9, 10.0
    assert fitted_above_one.predict(0, flops, 0.0, peak_gflops, 1.0) == pytest.approx(flops / (peak_gflops * 1e9))  # at the peak, not 32% past it


def test_no_estimate_outruns_the_devices_bus_but_the_host_keeps_its_fitted_rate(exported: Path) -> None:
    """eta_b above 1 is this host's caches serving traffic faster than its large copy: a device's
    memory term is held at its datasheet bandwidth, while the host's own estimate (printed beside
    its measurement, and the denominator of device-to-host ratios) keeps the fitted rate."""
    from racmkd.resources.profile import device_seconds, host_seconds

    cached = dataclasses.replace(FIXED, bandwidth_efficiency=4.7, seconds_per_op=0.0)
    moved, gbps = 1e9, 4.0
    assert cached.predict(0, 0.0, moved, 10.0, gbps) == pytest.approx(moved / (gbps * 1e9))  # at the bus rate, not 4.7x past it
    assert cached.predict(0, 0.0, moved, 10.0, gbps, fitted_host=True) == pytest.approx(moved / (4.7 * gbps * 1e9))
    cost = graph_cost(exported)
    traffic = cost.resident_weight_bytes + 2 * cost.activation_bytes_written
    device = load_device("raspberry-pi-4")
    as_one = dataclasses.replace(cached, bandwidth_efficiency=1.0)
    assert device_seconds(cost, device, cached) == pytest.approx(device_seconds(cost, device, as_one))
    assert host_seconds(cost, as_one) - host_seconds(cost, cached) == pytest.approx(traffic / (FIXED.peaks.memory_gbps * 1e9) * (1 - 1 / 4.7))


def test_operators_are_the_kernels_onnx_runtime_dispatches_and_fp32_layers_of_a_mixed_model_are_fp32_flops(exported: Path, tmp_path: Path) -> None:
    """The dispatch term counted every node: a fused Relu as a kernel of its own in a float graph,
    while an int8 graph's Relus are gone and its boundary Q/DQ nodes were not counted. t_op came out
    half a kernel's cost and the int8 files' estimates 0.66-0.70 of their measured latency on make
    run's tiers (fp32's 1.42-1.85x). And a layer a mixed model keeps in fp32 counted as int8 FLOPs,
    timed at the int8 peak: it reads a dequantized input, but its weight is float."""
    from racmkd.compress.quantize import quantize_int8, quantize_weights, quantizable_nodes

    from onnxruntime import GraphOptimizationLevel, InferenceSession, SessionOptions

    rng = np.random.default_rng(0)
    inputs = {i.name: [d.dim_value or 1 for d in i.type.tensor_type.shape.dim][1:] for i in onnx.load(exported).graph.input}
    calibration = {name: rng.standard_normal((16, *shape)).astype(np.float32) for name, shape in inputs.items()}
    first = quantizable_nodes(exported)[0].name
    files = {
        "fp32": exported,
        "int8": quantize_int8(exported, tmp_path / "int8.onnx", calibration),
        "mixed": quantize_int8(exported, tmp_path / "mixed.onnx", calibration, keep_float=[first]),
        "int8-weights": quantize_weights(exported, tmp_path / "w8.onnx"),
    }
    for name, path in files.items():
        options = SessionOptions()
        options.graph_optimization_level = GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(tmp_path / f"{name}.optimised.onnx")
        if name == "int8-weights":
            options.add_session_config_entry("session.disable_quant_qdq", "1")  # as racmkd's session loads it: the weights folded to float once
        InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        kernels = len(onnx.load(tmp_path / f"{name}.optimised.onnx").graph.node)
        assert graph_cost(path).operators == kernels, name
    fp32, int8, mixed = (graph_cost(files[n]) for n in ("fp32", "int8", "mixed"))
    assert int8.int8_flops == int8.flops == fp32.flops
    assert 0 < mixed.int8_flops < mixed.flops == fp32.flops  # the first layer's FLOPs in fp32
