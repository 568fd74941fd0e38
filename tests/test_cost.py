"""Cost measurement: FLOPs, observed peak activation memory (and the run report's, on the fp32 graph), latency, energy (estimated and RAPL)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from racmkd.config import EnergyModel
from racmkd.measure.cost import (
    CALLS_PER_ROUND,
    activation_memory,
    count_flops,
    estimated_energy_joules,
    latency_ms,
    latency_round_robin,
    measured_energy_joules,
    model_bytes,
    percentiles,
    rounds_for,
)
from racmkd.eval.metrics import classification_metrics


class Dict(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.body(inputs["x"])


def test_flops_and_bytes_of_a_linear_layer() -> None:
    model = Dict(nn.Linear(8, 4))
    assert count_flops(model, {"x": torch.zeros(1, 8)}) == 2 * 8 * 4
    assert model_bytes(model) == {"params": 36, "param_bytes_fp32": 144, "bytes_fp32": 144}
    assert model_bytes(nn.BatchNorm1d(3))["bytes_fp32"] == 4 * (6 + 6)  # running mean and variance count too


def test_peak_activation_is_observed() -> None:
    model = Dict(nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1)))
    out = activation_memory(model, {"x": torch.zeros(1, 1, 10, 10)})
    per_map = 100 * 4  # one channel of 10x10 fp32
    # input + (conv1 out, relu out) or (relu out, conv2 out): at least 8 + 8 channels live at once
    assert out["peak_activation_bytes"] >= per_map * (1 + 16)
    assert out["activation_bytes_written"] >= per_map * (8 + 8 + 4)
    # Linear layers read their weights through a transposed view: weights, not activations.
    wide = Dict(nn.Sequential(*[nn.Linear(1000, 1000) for _ in range(3)]))
    out = activation_memory(wide, {"x": torch.zeros(1, 1000)})
    # the input and two 1000-wide rows at most; 12 MB of weights
    assert out["peak_activation_bytes"] <= 3 * 4000 and out["activation_bytes_written"] <= 3 * 4000


def test_latency_measures_what_the_calls_take() -> None:
    """A 4 ms sleep times at 4 ms or more (sleep never returns early); percentiles of known values."""
    lat = latency_ms(lambda: time.sleep(0.004), warmup=1, iters=10)
    assert 3.9 <= lat["p50"] <= lat["p95"] < 1000
    assert percentiles([float(x) for x in range(100, 0, -1)]) == {"p50": 50.5, "p95": 95.0}


def test_percentile_is_the_nearest_rank() -> None:
    """The smallest value with at least q% of them at or below it: the rank was rounded from q% of
    n - 1, one lower for many n (p95 of 12 values the 10th; a level's p95 of 333 requests 2.547 ms
    where nearest rank gives 2.684)."""
    from racmkd.utils import percentile

    assert percentile(range(1, 13), 95) == 12 and percentile(range(1, 53), 99) == 52  # (was 11 and 51)
    assert percentile(range(1, 101), 95) == 95 and percentile(range(1, 201), 95) == 190 and percentile(range(1, 11), 50) == 5
    assert percentile([3.0], 99) == 3.0 and percentile(range(1, 11), 0) == 1 and percentile(range(1, 11), 100) == 10
    assert math.isnan(percentile([], 50))


def test_energy_model_and_rapl(tmp_path: Path) -> None:
    coeffs = EnergyModel(joules_per_flop=1e-9, joules_per_byte=2e-9, static_watts=3.0)
    assert estimated_energy_joules(1000, 500, 0.01, coeffs) == pytest.approx(1e-6 + 1e-6 + 0.03)
    assert measured_energy_joules(lambda: None, 5, tmp_path) is None  # no counters: not measured
    counter = tmp_path / "intel-rapl:0" / "energy_uj"
    counter.parent.mkdir()
    counter.write_text("1000")

    def work() -> None:  # each call costs 250 uJ on the fake counter
        counter.write_text(str(int(counter.read_text()) + 250))

    assert measured_energy_joules(work, 4, tmp_path) == pytest.approx(250e-6)


def test_metrics_hand_values() -> None:
    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0], [0.0, 3.0]])
    labels = torch.tensor([0, 1, 1, 1])
    m = classification_metrics(logits, labels)
    assert m["accuracy"] == 0.75
    assert m["f1_macro"] == pytest.approx((2 / 3 + 0.8) / 2)  # class 0: P=1/2 R=1; class 1: P=1 R=2/3
    assert m["auc_roc"] == pytest.approx(5 / 6)
    assert classification_metrics(logits[:1], labels[:1])["auc_roc"] is None
    # A class neither in the labels nor among the answers (a small test set) is no error of the model's.
    perfect = torch.nn.functional.one_hot(torch.arange(9).repeat(2), 10).float()
    assert classification_metrics(perfect, torch.arange(9).repeat(2))["f1_macro"] == 1.0


def test_round_robin_times_every_subject_each_round() -> None:
    calls: list[str] = []
    subjects = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    result = latency_round_robin(subjects, warmup=1, iters=4, rounds=2)
    assert set(result) == {"a", "b"} and all(r["p50"] >= 0 for r in result.values())
    timed = latency_round_robin({"fast": lambda: None, "slow": lambda: time.sleep(0.003)}, warmup=1, iters=4, rounds=2)
    assert timed["slow"]["p50"] >= 2.9 and timed["fast"]["p50"] < 1.0  # each subject's own time, not its neighbour's
    assert calls == ["a", "b"] + ["a"] * 2 + ["b"] * 2 + ["a"] * 2 + ["b"] * 2  # warm-ups once, then 2 timed per round, in turn
    assert rounds_for(300) == 300 // CALLS_PER_ROUND and rounds_for(3) == 1


def test_a_checkpoints_peak_memory_is_measured_on_its_fp32_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The report's peak-memory column for a checkpoint comes from its fp32 ONNX export, as a
    compressed row's comes from its artifact (BatchNorm folded, Conv + activation fused); from
    PyTorch's allocations, and said so, only when there is no export."""
    import racmkd.compress.export as export
    from racmkd.eval import report
    from racmkd.models.multimodal import student
    from racmkd.registry import MODALITIES
    from racmkd.resources.profile import graph_cost

    modalities = {m: MODALITIES.create(m) for m in ("image", "audio")}
    specs = {m: modalities[m].spec(1) for m in modalities}
    model = student({m: {"encoder": "dscnn2d", "shape": list(modalities[m].feature_shape(s))} for m, s in specs.items()}, width=1.0, depth=2).eval()
    inputs = {m: torch.zeros(1, *modalities[m].feature_shape(s)) for m, s in specs.items()}
    _, engine, graph = report.onnx_timer("student", model, specs, modalities, inputs)
    row = report.checkpoint_memory(model, inputs, graph)
    expected = graph_cost(export.export_onnx(model, specs, modalities, tmp_path / "student.onnx", name="student"))
    assert engine == "onnxruntime" and row == {
        "peak_activation_bytes": expected.peak_activation_bytes,
        "activation_bytes_written": expected.activation_bytes_written,
        "memory_method": "onnx-graph",
    }
    eager = activation_memory(model, inputs)
    assert row["peak_activation_bytes"] < eager["peak_activation_bytes"]  # eager also holds every BatchNorm output and pre-activation map

    def no_export(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise export.ExportError("no export here")

    monkeypatch.setattr(export, "export_onnx", no_export)
    _, engine, graph = report.onnx_timer("student", model, specs, modalities, inputs)
    assert engine == "pytorch" and graph is None
    assert report.checkpoint_memory(model, inputs, graph) == {**eager, "memory_method": "pytorch"}
