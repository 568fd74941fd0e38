"""The benchmark suite's smoke test (what CI runs of `make bench`): baselines, deployed rows,
Tables 6.6 to 6.8, robustness, transfer, cost growth and the report, on the tiny run."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from racmkd.config import ConfigError, save_config
from racmkd.eval.deployed import closest_in_cost, dominates, pareto_front, raw_test_batch, scaling_exponent
from racmkd.models.encoders import MobileNetV3SmallEncoder
from racmkd.models.multimodal import count_params, linear_fusion

TINY = Path(__file__).parent / "tiny.yaml"


def test_pareto_front_keeps_only_undominated_points() -> None:
    points = {"a": (10.0, 0.90), "b": (20.0, 0.95), "c": (20.0, 0.80), "d": (5.0, 0.70), "e": (30.0, 0.95)}
    assert pareto_front(points) == ["d", "a", "b"]  # c is beaten by a, e by b (same accuracy, more cost)


def test_dominance_and_closest_baseline() -> None:
    tier = {"accuracy": 0.9, "bytes_deployable": 100.0, "latency_ms_p50": 1.0}
    near = {"accuracy": 0.8, "bytes_deployable": 120.0, "latency_ms_p50": 1.0}
    far = {"accuracy": 0.5, "bytes_deployable": 10_000.0, "latency_ms_p50": 9.0}
    assert closest_in_cost(tier, {"near": near, "far": far}) == "near"
    assert dominates(tier, near) and not dominates(near, tier)
    assert not dominates(tier, {**near, "latency_ms_p50": 0.5})  # faster baseline: not dominated


def test_narrowest_reaching_hands_the_baseline_at_least_the_target() -> None:
    from racmkd.eval.baselines import narrowest_reaching

    asked: list[int] = []

    def size_of(width: int) -> int:
        asked.append(width)
        return 1000 + 40 * width * width  # bytes grow with width, as a network's do

    widths = list(range(1, 65))
    for target in (1, 1040, 1041, 5000, 1000 + 40 * 64 * 64):
        width, size = narrowest_reaching(size_of, target, widths)
        assert size == size_of(width) >= target and (width == 1 or size_of(width - 1) < target)
    asked.clear()
    assert narrowest_reaching(size_of, 10**9, widths) == (64, size_of(64))  # none reaches it: the widest, its real size
    asked.clear()
    # each size is an export, seconds each: never far wider than the answer
    assert narrowest_reaching(size_of, 30_000, widths)[0] == 27 and len(asked) <= 10 and max(asked) < 2 * 27 + 2
    asked.clear()
    assert narrowest_reaching(size_of, 1, widths) == (1, 1040) and asked == [1]  # a tiny tier: one export


def test_scaling_exponent_recovers_a_power_law() -> None:
    xs = [1, 2, 4, 8, 16]
    assert scaling_exponent(xs, [3 * x**1.5 for x in xs]) == pytest.approx(1.5)
    assert scaling_exponent([1], [1.0]) is None


def test_mobilenetv3_encoder_runs_on_small_inputs_and_scales_with_width() -> None:
    for shape in [(1, 8, 8), (1, 16, 16), (1, 64, 32)]:
        encoder = MobileNetV3SmallEncoder(shape, width=0.25)
        assert encoder(torch.zeros(2, *shape)).shape == (2, encoder.embed_dim)
    inputs = {"image": {"encoder": "mbv3", "shape": [1, 16, 16]}}
    assert count_params(linear_fusion(inputs, {"width": 0.5})) > 2 * count_params(linear_fusion(inputs, {"width": 0.25}))


def test_raw_test_batch_degrades_reproducibly(tiny_dataset, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    from racmkd.data import audio as dsp

    monkeypatch.setattr(dsp, "centre_on_energy", lambda wave: wave)  # the noise as added, before the windows are placed again
    rows = torch.arange(8)
    protocol = raw_test_batch(tiny_dataset, rows)
    clean = raw_test_batch(tiny_dataset, rows, {"audio": math.inf, "image": 0.0})
    noisy = raw_test_batch(tiny_dataset, rows, {"audio": 0.0, "image": 0.3})
    again = raw_test_batch(tiny_dataset, rows, {"audio": 0.0, "image": 0.3})
    assert torch.equal(noisy["audio"], again["audio"]) and torch.equal(noisy["image"], again["image"])
    assert torch.equal(clean["image"], protocol["image"])  # level 0: the image as the protocol has it
    power = clean["audio"].pow(2).sum(1)
    noise = (noisy["audio"] - clean["audio"]).pow(2).sum(1)
    assert torch.allclose(10 * torch.log10(power / noise), torch.zeros(8), atol=1.5)  # 0 dB: noise as strong as the speech
    assert noisy["image"].min() >= 0 and noisy["image"].max() <= 1 and not torch.equal(noisy["image"], clean["image"])
    # one modality degraded, the other as the protocol has it; each modality's noise its own stream
    audio_only = raw_test_batch(tiny_dataset, rows, {"audio": 0.0})
    assert torch.equal(audio_only["audio"], noisy["audio"]) and torch.equal(audio_only["image"], protocol["image"])


def test_the_suite_sweeps_each_modalitys_own_degradation_unless_told(tiny_dataset, tmp_path: Path) -> None:
    from racmkd.eval.suite import SuiteSettings, degradation_sweeps, run_suite

    settings = SuiteSettings(config=TINY)
    sweeps = degradation_sweeps(settings, tiny_dataset.modalities)
    assert sweeps == {m: tiny_dataset.modalities[m].degradation_levels for m in ("image", "audio")} and math.inf in sweeps["audio"]
    assert degradation_sweeps(replace(settings, degradations={"audio": (0.0, 10.0)}), tiny_dataset.modalities)["audio"] == (0.0, 10.0)
    assert degradation_sweeps(settings.quick(), tiny_dataset.modalities)["audio"] == (-5.0, math.inf)  # quick: each sweep's ends
    assert "image" not in degradation_sweeps(replace(settings, degradations={"image": ()}), tiny_dataset.modalities)  # () : not swept
    with pytest.raises(ValueError, match=r"degradations for \['gyro'\]"):
        degradation_sweeps(replace(settings, degradations={"gyro": (1.0,)}), tiny_dataset.modalities)
    with pytest.raises(ValueError, match="degradations for"):  # before any training, not after it
        run_suite(replace(settings, degradations={"gyro": (1.0,)}, runs_dir=tmp_path / "never"))
    assert not (tmp_path / "never").exists()


def test_quick_suite_trains_measures_and_reports(tiny_run: Path, cache_dir: Path, tmp_path: Path) -> None:
    from racmkd.eval.suite import MATCHED, TABLE_ROWS, SuiteSettings, plot_all, render, run_suite, seed_config

    runs = tmp_path / "bench"
    # seed 0: the tiny run's teachers and tiers ...
    shutil.copytree(tiny_run, runs / "clean-s0", ignore=shutil.ignore_patterns("edge", "simulate", "compressed"))
    settings = replace(
        SuiteSettings(
            config=TINY, protocols=("clean",), runs_dir=runs, overrides=(f"data.cache_dir={cache_dir}", "students.train.epochs=2"), recipe=None
        ).quick(),
        requests=60,
        trace_seconds=6.0,
    )
    save_config(seed_config(settings, "clean", 0, None), runs / "clean-s0" / "config.yaml")  # ... taken as made with the suite's settings
    result = run_suite(settings)
    section = result["protocols"]["clean"]
    rows = section["table_66"]
    assert set(TABLE_ROWS) - set(MATCHED) <= set(rows) and not set(MATCHED) & set(rows)  # nothing compressed: no tier's bytes to match, said
    assert any("no tier was compressed" in why for why in section["missing"].values())
    for name, row in rows.items():
        assert 0.0 <= row["accuracy"]["mean"] <= 1.0 and row["accuracy"]["n"] == 2, name
        assert row["bytes_deployable"] > 0 and row["latency_ms_p50"] > 0 and row["flops"] > 0, name
    assert rows["tinyml"]["format"] == "onnx-int8" and rows["tinyml"]["bytes_deployable"] < rows["mobilenetv3"]["bytes_deployable"]
    assert rows["teacher"]["accuracy"]["std"] == 0.0  # one teacher, shared by the seeds
    assert rows["teacher"]["accuracy"]["mean"] > 0.5  # the tiny teacher has learned something
    assert len(section["targets"]) == 8 and section["pareto"]["bytes"]
    ablation_rows = section["table_68"]
    # each a configuration trained and measured
    assert [r["model"] for r in ablation_rows][:4] == ["standard_kd", "kd_align", "kd_align_resource", "high"]
    assert all("accuracy" in r for r in ablation_rows[:4])
    assert "--recipe" in ablation_rows[4]["not_produced"]  # this quick run compressed nothing: said
    dynamic_rows = [r for r in ablation_rows if r["model"] == "runtime"]
    assert dynamic_rows and all(
        r["memory_bytes"] > r["memory_bytes_static_high"] > 0 and r["energy_mj_estimated"] > 0 and r["energy_mj_estimated_static_high"] > 0
        for r in dynamic_rows
    )  # the runtime holds every tier's variants
    bank = runs / "clean-s0" / "edge"
    assert section["table_67"]["random"]["bytes_deployable"] == sum(
        (bank / v["path"]).stat().st_size for v in json.loads((bank / "bank.json").read_text())["variants"]
    )  # the runtime's point on the Pareto plot: every variant's file
    assert section["robustness_not_measured"] == {} and section["cost_growth_not_measured"] == {}
    rob = section["robustness"]["teacher"]
    assert rob["degraded"]["audio"]["-5.0"] <= rob["degraded"]["audio"]["inf"]  # noise does not help
    assert set(rob["degraded"]["image"]) == {"0.0", "0.5"} and set(rob["missing"]) == {"image", "audio"}
    assert set(section["transfer"]) == {"image", "audio", "image+audio"}
    growth = section["cost_growth"]["teacher"]
    assert growth["exponent_memory_vs_batch"] > 0.5  # activations grow with the batch
    assert section["table_67"]["random"]["levels"]
    # What this invocation made (seed 0 came with its teachers and tiers): seed 1's students, the baselines, the bank.
    assert "students" in result["made"]["clean-s1"] and "tinyml" in result["made"]["clean-s0"] and "edge bank" in result["made"]["clean-s0"]
    assert "teachers" not in result["made"]["clean-s0"] and result["resumed"]["clean-s0"] == ["teachers", "students"] and not result["resumed"]["clean-s1"]
    json.dumps(result)  # the result is plain JSON
    plots = plot_all(result, tmp_path, "suite")
    assert all((tmp_path / name).stat().st_size > 0 for name in plots.values())
    markdown = render(result, plots)
    for heading in ("Table 6.6", "Table 6.7", "Table 6.8", "Robustness", "Cross-modal transfer", "Cost growth"):
        assert heading in markdown
    assert "this one resumed: clean-s0: teachers, students)" in markdown and f"config `{TINY}`" in markdown
    # Table 6.7 per level, dynamic beside each static tier
    assert "| level | dynamic | static high | static medium | static low | static critical |" in markdown
    assert "not produced: the suite ran without a compression recipe" in markdown
    assert "held (static high" in markdown and "mJ (static high" in markdown  # the dynamic rows' memory and energy
    # the robustness table: each modality's sweep in its own words, in the dataset's order
    assert "| model | image noise 0.0 | image noise 0.5 | audio -5.0 dB | audio inf dB | without image | without audio |" in markdown


def test_a_run_report_without_retention_leaves_it_blank_and_sets_it_no_target() -> None:
    """A teacher with no accuracy to divide by (or none at all) gives no retention: the run report's
    cell is blank, not 0.0%, and the tier's retention target is left out, not a KeyError."""
    from racmkd.eval.report import render_markdown, targets

    row = {
        "inputs": {"image": {"resolution": 28}},
        "accuracy": 0.5,
        "f1_macro": 0.5,
        "auc_roc": None,
        "params": 10,
        "param_bytes_fp32": 40,
        "flops": 1e6,
        "peak_activation_bytes": 100,
        "latency_ms_p50": 1.0,
        "latency_ms_p95": 1.0,
        "energy_mj": 0.1,
        "energy_source": "estimated",
    }
    models = {
        "teacher": {**row, "role": "teacher", "accuracy": 0.0},
        "high": {**row, "role": "student", "budget_bytes": 1024, "within_budget": True},
        "high_compressed": {
            **row,
            "role": "compressed",
            "tier": "high",
            "format": "onnx-int8",
            "bytes_deployable": 30,
            "weight_bytes": 10,
            "compression_ratio": 1.3,
            "artifact_reason": "the smallest",
        },
    }
    report = {"run": "r", "protocol": "clean", "commit": None, "machine": {"cpu": "c", "cores": 1, "torch": "2"}, "seed": 0, "data": {}, "models": models}
    report["targets"] = targets(report)
    assert [t["target"] for t in report["targets"]] == ["teacher accuracy >= 99.5%"]
    compressed_row = next(line for line in render_markdown(report).splitlines() if line.startswith("| high_compressed | onnx-int8"))
    assert "| +0.0000 |  | 1.00 M |" in compressed_row and "%" not in compressed_row


def cost(size: float, ms: float, format: str = "onnx-fp32") -> dict:
    """A table row's measured costs, as `measure_seed` writes them: `size` bytes, `ms` per call."""
    return {
        "format": format,
        "params": 1,
        "bytes_deployable": size,
        "weight_bytes": size,
        "peak_activation_bytes": 1,
        "memory_bytes": size + 1,
        "flops": 1,
        "latency_ms_p50": ms,
        "latency_ms_p95": ms,
        "energy_mj_estimated": 0.1,
    }


def test_tables_tolerate_a_row_that_was_not_produced() -> None:
    from racmkd.eval.suite import table_66, table_targets

    def acc(a: float) -> dict:
        return {"accuracy": a, "f1_macro": a, "auc_roc": None}

    seeds = [
        {
            "seed": s,
            "rows": {"teacher": acc(0.98), "high": acc(0.96 + s / 100), "standard_kd": acc(0.95)},
            "missing": {"tinyml": "ExportError: boom"},
            "costs": {"teacher": cost(4e6, 6.0), "high": cost(2e5, 0.1), "standard_kd": cost(6e5, 2.0)},
        }
        for s in (0, 1)
    ]
    rows = table_66(seeds)
    assert set(rows) == {"teacher", "high", "standard_kd"} and rows["high"]["accuracy"]["std"] > 0
    assert rows["high"]["retention"] == pytest.approx(0.965 / 0.98)
    targets = {t["target"]: t for t in table_targets(rows)}
    dominance = next(t for name, t in targets.items() if name.startswith("racmkd high dominates"))
    assert dominance["reached"] and "Standard KD" in dominance["target"]
    assert not next(t for name, t in targets.items() if name.startswith("racmkd medium"))["reached"]  # not produced: reported, not skipped
    # A cost-matched TinyML row gets a verdict of its own beside the closest by bytes and latency together.
    seeds[0]["rows"]["tinyml_high"], seeds[0]["costs"]["tinyml_high"] = acc(0.94), cost(2.1e5, 0.3)
    matched = {t["target"]: t for t in table_targets(table_66(seeds[:1]))}["racmkd high dominates the TinyML recipe at its bytes"]
    assert matched["reached"] and "0.9600 vs 0.9400" in matched["measured"]
    # The ablation says which row was not produced and why, instead of leaving it out.
    from racmkd.eval.suite import ablation

    rows["high_fp32"] = rows.pop("high")
    table = ablation(rows, {}, {"kd_align (seed 1)": "RuntimeError: diverged", "high (seed 0)": "ExportError: boom"}, compressed=True)
    assert [r.get("not_produced") for r in table] == [None, "RuntimeError: diverged", "not measured", None, "ExportError: boom"]
    assert "accuracy_change" not in table[3]  # nothing above it to compare with
    assert ablation(rows, {}, {}, compressed=False)[3]["not_produced"] == "not measured"  # "high" absent, no reason recorded


def test_the_ablation_steps_hold_their_component_where_the_high_tier_schedules_it_out() -> None:
    """configs/default.yaml fades alignment and the resource term out at the 1 MB budget: the
    ablation's steps still add each at its largest scheduled weight (they were copies of plain KD)."""
    from racmkd.config import load_config
    from racmkd.distill.adaptive import objective_weights
    from racmkd.eval.baselines import ablation_objective, kd_objective

    cfg = load_config(Path("configs/default.yaml"))
    high = cfg.students.tiers[0].budget_bytes
    racmkd = objective_weights(cfg.distill, high, [t.budget_bytes for t in cfg.students.tiers])
    kd, align, align_resource = kd_objective(cfg, high)[0], ablation_objective(cfg, high, False), ablation_objective(cfg, high, True)
    assert (racmkd.gamma, racmkd.delta) == (0.0, 0.0) and (kd.gamma, kd.delta) == (0.0, 0.0)
    assert (align.gamma, align.delta) == (0.5, 0.0) and (align_resource.gamma, align_resource.delta) == (0.5, 1e-4)
    assert align.beta == kd.beta and align.temperature == kd.temperature  # only the component differs


def test_one_seed_has_no_spread_and_leaves_the_ablation_undecided() -> None:
    """One seed: no standard deviation (None, not 0.0), so a 0.0001 gain is not called a help; two
    seeds judge the gain against their spread."""
    from racmkd.eval.suite import ablation, mean_pm, mean_std

    assert mean_std([0.9])["std"] is None and mean_pm(mean_std([0.9])) == "0.9000"

    def row(*accuracies: float) -> dict:
        return {"accuracy": mean_std(list(accuracies)), "memory_bytes": 10, "bytes_deployable": 10, "latency_ms_p50": 0.1, "energy_mj_estimated": 0.1}

    one = ablation({"standard_kd": row(0.9000), "kd_align": row(0.9001)}, {}, compressed=False)
    assert one[1]["spread"] is None and one[1]["helps_accuracy"] is None
    two = ablation({"standard_kd": row(0.9000, 0.9002), "kd_align": row(0.9101, 0.9103)}, {}, compressed=False)
    assert two[1]["spread"] == pytest.approx(0.0002 / 2**0.5) and two[1]["helps_accuracy"] is True


def fake_rows(monkeypatch: pytest.MonkeyPatch, host: dict) -> tuple[list[str], set[str]]:
    """measure_seed's bookkeeping alone: each row "deployed" as a small file and scored 0.5, a row
    named in the returned set failing instead; returns (the rows deployed, in order; that set)."""
    from types import SimpleNamespace

    from racmkd.eval import suite

    calls: list[str] = []
    failing: set[str] = set()

    def deploy(cfg, dataset, run_dir, name, out_dir, compressed=True):  # noqa: ANN001, ANN202 - (the signature of racmkd.eval.deployed.deploy)
        calls.append(name)
        if name in failing:
            raise RuntimeError("not built here")
        artifact = out_dir / f"{name}-{compressed}.onnx"
        artifact.parent.mkdir(parents=True, exist_ok=True)
        artifact.write_bytes(b"onnx")
        return SimpleNamespace(name=name if compressed else f"{name}_fp32", artifact=artifact)

    monkeypatch.setattr(suite, "deploy", deploy)
    monkeypatch.setattr(suite, "artifact_accuracy", lambda row, dataset: {"accuracy": 0.5, "f1_macro": 0.5, "auc_roc": None})
    monkeypatch.setattr(suite, "git_commit", lambda: "0" * 40)
    monkeypatch.setattr(suite, "machine", lambda: dict(host))
    return calls, failing


def test_measurements_are_reused_only_on_the_machine_that_made_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """rows.json is read back for the same commit, models, settings and machine; another host, an
    evaluation or data setting, or another ONNX Runtime measures again."""
    import onnxruntime

    from racmkd.config import load_config
    from racmkd.eval import suite

    host = {"cpu": "A", "cores": 2}
    calls, _ = fake_rows(monkeypatch, host)
    cfg = load_config(TINY)
    first = suite.measure_seed(cfg, None, tmp_path, with_costs=False)
    assert calls and first["machine"] == host and first["rows"]["teacher"]["accuracy"] == 0.5
    assert set(first["missing"]) == {suite.NOT_TRAINED_NOTE}  # nothing compressed here: the suite's own note, nothing failed
    measured = len(calls)
    assert suite.measure_seed(cfg, None, tmp_path, with_costs=False) == first and len(calls) == measured  # read back
    host["cpu"] = "B"
    assert suite.measure_seed(cfg, None, tmp_path, with_costs=False)["machine"]["cpu"] == "B" and len(calls) == 2 * measured  # measured again
    # Figures of other settings are not republished: every energy figure follows eval.energy, every
    # accuracy the data, every latency ONNX Runtime.
    for changed in (["eval.energy.static_watts=50"], ["data.max_eval=10"]):
        count = len(calls)
        suite.measure_seed(load_config(TINY, changed), None, tmp_path, with_costs=False)
        assert len(calls) == count + measured, changed
        suite.measure_seed(cfg, None, tmp_path, with_costs=False)  # back to the first settings: measured again too
    count = len(calls)
    monkeypatch.setattr(onnxruntime, "__version__", "0.0.0")
    suite.measure_seed(cfg, None, tmp_path, with_costs=False)
    assert len(calls) == count + measured
    suite.measure_seed(cfg, None, tmp_path, with_costs=False)
    assert len(calls) == count + measured  # and read back under that version


def test_measurements_with_a_row_not_produced_are_measured_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row that failed (an export killed, a disk full) is not kept missing for good: rows.json
    that lists it is measured again, until every row is produced; then it is read back."""
    from racmkd.config import load_config
    from racmkd.eval import suite

    calls, failing = fake_rows(monkeypatch, {"cpu": "A", "cores": 2})
    cfg = load_config(TINY)
    failing.add("tinyml")
    first = suite.measure_seed(cfg, None, tmp_path, with_costs=False)
    assert "RuntimeError: not built here" in first["missing"]["tinyml"] and "tinyml" not in first["rows"]
    measured = len(calls)
    failing.clear()
    second = suite.measure_seed(cfg, None, tmp_path, with_costs=False)
    assert len(calls) == 2 * measured and "tinyml" in second["rows"] and set(second["missing"]) == {suite.NOT_TRAINED_NOTE}
    assert suite.measure_seed(cfg, None, tmp_path, with_costs=False) == second and len(calls) == 2 * measured  # whole: read back
    # A row that fails every time is tried MEASURE_ATTEMPTS times, then the measurement is read back.
    (tmp_path / "bench" / "rows.json").unlink()
    failing.add("tinyml")
    for attempt in range(1, suite.MEASURE_ATTEMPTS + 2):
        again = suite.measure_seed(cfg, None, tmp_path, with_costs=False)
        assert "tinyml" in again["missing"] and again["attempts"] == min(attempt, suite.MEASURE_ATTEMPTS)
    assert len(calls) == (2 + suite.MEASURE_ATTEMPTS) * measured


def test_a_suite_with_a_broken_recipe_stops_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--recipe and --tier-recipe files are read when the suite starts, not after hours of training;
    the error names the option that gave the file."""
    from racmkd.compress.recipe import RecipeError
    from racmkd.eval import suite

    def seed_run(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("trained before the recipes were checked")

    monkeypatch.setattr(suite, "seed_run", seed_run)
    good = Path(__file__).parents[1] / "configs" / "recipes" / "bench.yaml"
    broken = tmp_path / "broken.yaml"
    broken.write_text("steps:\n  - prnue: {ratio: 0.5}\n")
    settings = suite.SuiteSettings(config=TINY, runs_dir=tmp_path / "never", recipe=tmp_path / "absent.yaml")
    with pytest.raises(RecipeError, match="--recipe .*absent.yaml"):
        suite.run_suite(settings)
    with pytest.raises(RecipeError, match=r"--tier-recipe critical=.*broken.yaml.*unknown compression step 'prnue'"):
        suite.run_suite(replace(settings, recipe=good, tier_recipes={"critical": broken}))
    assert not (tmp_path / "never").exists()


def test_a_replay_without_a_static_high_policy_leaves_the_dynamic_row_undecided() -> None:
    """No static high tier in the bank: nothing to compare the runtime with, so its row says
    undecided (None), not "no" with a NaN gain."""
    from racmkd.eval.suite import ablation, render

    dynamic = {"slo_accuracy": 0.9, "requests": 200, "accuracy": 0.95, "latency_ms_p50": 0.5, "memory_held_bytes_max": 3e6, "energy_mj_mean": 0.1}
    (row,) = [r for r in ablation({}, {"random": {"dynamic": dynamic, "static": {}}}, {}, True) if r["model"] == "runtime"]
    assert row["helps_accuracy"] is None and row["slo_gain"] is None and row["slo_noise"] is None
    json.dumps(row, allow_nan=False)  # no NaN for other readers to choke on
    result = {
        "commit": "0" * 40,
        "machine": {"cpu": "A", "cores": 2, "python": "3", "torch": "2"},
        "config": str(TINY),
        "seeds": [0],
        "overrides": [],
        "recipe": None,
        "seconds": 1.0,
        "protocols": {"clean": {"runs": ["clean-s0"], "table_66": {}, "targets": [], "pareto": {}, "table_68": [row]}},
    }
    (line,) = [line for line in render(result, {}).splitlines() if line.startswith("| + dynamic resource allocation")]
    assert "| undecided |" in line and "no static high policy" in line and "nan" not in line


def test_a_bank_is_replayed_only_where_and_by_the_code_that_built_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables 6.7 and 6.8 come from a bank built by this commit on this machine: one of an older
    commit (or none recorded), of an uncommitted tree or of another host is built again."""
    from types import SimpleNamespace

    import racmkd.runtime.variants as variants
    from racmkd.eval import suite

    here = {"commit": "1" * 40, "machine": {"cpu": "A"}}
    built: list[dict] = []

    def build_bank(cfg, dataset, run_dir, test_samples=0):  # noqa: ANN001, ANN202 - what build_bank records, without the minutes of building
        built.append(dict(here))
        (run_dir / "edge").mkdir(exist_ok=True)
        (run_dir / "edge" / "bank.json").write_text(json.dumps({"commit": here["commit"], "machine": here["machine"], "variants": []}))

    monkeypatch.setattr(variants, "build_bank", build_bank)
    monkeypatch.setattr(variants, "load_bank", lambda folder: SimpleNamespace(data=json.loads((folder / "bank.json").read_text())))
    monkeypatch.setattr(suite, "git_commit", lambda: here["commit"])
    monkeypatch.setattr(suite, "machine", lambda: here["machine"])

    def replay() -> int:
        suite.replay_tables(None, None, tmp_path, SimpleNamespace(bank_test_samples=0, traces=()))
        return len(built)

    assert replay() == 1 and replay() == 1  # built, then replayed as it is
    bank = tmp_path / "edge" / "bank.json"
    for stale in ({"commit": "0" * 40}, {"commit": None}, {}):  # an older commit's bank, or one that recorded none
        bank.write_text(json.dumps({"machine": here["machine"], "variants": [], **stale}))
        count = len(built)
        assert replay() == count + 1, stale
    here["machine"] = {"cpu": "B"}
    assert replay() == len(built) == 5
    here["commit"] += "-dirty"  # an uncommitted tree: its own bank is no record of any commit's code
    assert replay() == 6 and replay() == 7


def test_pinned_tiers_keep_the_first_seeds_designs_and_settings(tiny_run: Path) -> None:
    from racmkd.config import load_config
    from racmkd.eval.suite import _pinned_tiers
    from racmkd.models.checkpoint import load_model

    first = load_config(tiny_run / "config.yaml")
    pinned = load_config(tiny_run / "config.yaml", ["seed=1", *_pinned_tiers(tiny_run)]).students.tiers
    assert [t.name for t in pinned] == [t.name for t in first.students.tiers]
    for tier, before in zip(pinned, first.students.tiers):
        design = load_model(tiny_run / "checkpoints" / f"{tier.name}.pt")[3]["design"]
        assert (list(tier.modalities), tier.scale, tier.depth) == (list(design["modalities"]), design["level"], design["depth"])
        assert (tier.budget_bytes, tier.epochs, tier.ties) == (before.budget_bytes, before.epochs, before.ties)
    assert pinned[-1].epochs == 8  # tests/tiny.yaml's critical tier trains longer; its pinned seeds must too


def test_teachers_that_learned_another_audio_window_are_not_reused(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--teachers-from a run made before recordings were placed on their speech: its teachers were
    copied, and the run failed at its first evaluation asking for them to be retrained."""
    from racmkd.config import load_config
    from racmkd.eval.suite import _copy_teachers
    from racmkd.runs import checkpoint, teacher_names

    cfg = load_config(tiny_run / "config.yaml")
    source = tmp_path / "old"
    shutil.copytree(tiny_run, source, ignore=shutil.ignore_patterns("edge", "simulate", "compressed"))
    for run in ("a", "b"):
        (tmp_path / run / "checkpoints").mkdir(parents=True)  # (as the suite makes a seed's run folder)
    assert _copy_teachers(source, tmp_path / "a", cfg) and all(checkpoint(tmp_path / "a", t).is_file() for t in teacher_names(cfg.data.modalities))
    old = checkpoint(source, "teacher_audio")
    record = torch.load(old, weights_only=True)
    del record["specs"]["audio"]["window"]  # as saved before AudioSpec.window: read as "loudest"
    torch.save(record, old)
    assert not _copy_teachers(source, tmp_path / "b", cfg)
    assert f"not reusing its teachers for b ({old.stem}: audio: this model learned recordings placed the 'loudest' way" in capsys.readouterr().out
    assert not any((tmp_path / "b" / "checkpoints").iterdir())
    # Teachers of a run on fewer samples (a --quick suite's): its data settings differ, say which.
    import dataclasses

    (tmp_path / "c" / "checkpoints").mkdir(parents=True)
    assert not _copy_teachers(tiny_run, tmp_path / "c", dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_train=cfg.data.max_train + 1)))
    assert "(its data max_train differ)" in capsys.readouterr().out


def test_a_rows_seeds_of_different_sizes_are_shown_and_dominance_takes_the_largest() -> None:
    """A prune step can stop early in one seed only: that seed deploys more bytes, and a mean accuracy
    over all three seeds cannot be claimed at the smaller seeds' size."""
    from racmkd.eval.suite import _seed_sizes, table_66, table_targets

    def acc(a: float, size: float) -> dict:
        return {"accuracy": a, "f1_macro": a, "auc_roc": None, "bytes_deployable": size}

    seeds = [
        {
            "seed": s,
            "rows": {"teacher": acc(0.99, 4e6), "low": acc(0.94, 11_000 if s < 2 else 21_000), "tinyml": acc(0.93, 12_000)},
            "costs": {"teacher": cost(4e6, 6.0, "onnx-int8"), "low": cost(11_000, 0.03, "onnx-int8"), "tinyml": cost(12_000, 0.05, "onnx-int8")},
        }
        for s in range(3)
    ]
    rows = table_66(seeds)
    assert rows["low"]["bytes_deployable_seeds"] == [11_000, 11_000, 21_000] and "bytes_deployable_seeds" not in rows["tinyml"]
    assert _seed_sizes(rows["low"]) == " (seeds: 10.7 KB, 10.7 KB, 20.5 KB)"
    assert _seed_sizes({"bytes_deployable_seeds": [11_980, 11_984, 11_976]}) == ""  # the same size as printed
    low = next(t for t in table_targets(rows) if t["target"].startswith("racmkd low dominates"))
    assert not low["reached"] and "20.5 vs 11.7 KB" in low["measured"]  # judged on the largest seed
    for s in seeds:
        s["rows"]["low"]["bytes_deployable"] = 11_000
    low = next(t for t in table_targets(table_66(seeds)) if t["target"].startswith("racmkd low dominates"))
    assert low["reached"]
    # A large seed does not choose a bigger, weaker baseline to be judged against: the first seed's costs choose.
    for s in seeds:
        s["rows"]["mobilenetv3"] = acc(0.90, 50_000)
        s["costs"]["mobilenetv3"] = cost(50_000, 0.08)
    seeds[2]["rows"]["low"]["bytes_deployable"] = 45_000
    low = next(t for t in table_targets(table_66(seeds)) if t["target"].startswith("racmkd low dominates"))
    assert "TinyML" in low["target"] and not low["reached"]


def test_a_tier_is_compressed_again_when_its_recipe_changed(tmp_path: Path) -> None:
    from racmkd.compress.recipe import load_recipe
    from racmkd.eval.suite import compressed_with

    recipes = Path(__file__).parents[1] / "configs" / "recipes"
    manifest = tmp_path / "compressed" / "low" / "compression.json"
    assert not compressed_with(tmp_path, "low", recipes / "bench.yaml")  # nothing compressed yet
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"tier": "low", "recipe_steps": load_recipe(recipes / "bench.yaml").describe()}))
    assert compressed_with(tmp_path, "low", recipes / "bench.yaml")
    assert not compressed_with(tmp_path, "low", recipes / "bench-critical.yaml")  # another max_drop: compress again
    edited = tmp_path / "edited.yaml"
    edited.write_text((recipes / "bench.yaml").read_text().replace("epochs: 2, samples: 20000", "epochs: 3, samples: 20000", 1))
    assert not compressed_with(tmp_path, "low", edited)
    manifest.write_text("{not json")
    assert not compressed_with(tmp_path, "low", recipes / "bench.yaml")  # unreadable: made again
    manifest.write_text("[]")
    assert not compressed_with(tmp_path, "low", recipes / "bench.yaml")
    manifest.write_text(json.dumps({"tier": "low", "recipe_steps": load_recipe(recipes / "bench.yaml").describe()}))
    student = tmp_path / "checkpoints" / "low.pt"
    student.parent.mkdir()
    student.write_bytes(b"retrained")
    os.utime(student, ns=(manifest.stat().st_mtime_ns + 10**9,) * 2)
    assert not compressed_with(tmp_path, "low", recipes / "bench.yaml")  # the student is newer than its compression
    os.utime(student, ns=(manifest.stat().st_mtime_ns - 10**9,) * 2)
    assert compressed_with(tmp_path, "low", recipes / "bench.yaml")
    # Recorded by content (what `compress` writes now): the clock is no witness. A student retrained
    # after the clock stepped back reads older than its predecessor's compression: compressed again.
    steps = load_recipe(recipes / "bench.yaml").describe()
    manifest.write_text(json.dumps({"tier": "low", "recipe_steps": steps, "source_sha256": hashlib.sha256(b"trained").hexdigest()}))
    os.utime(student, ns=(manifest.stat().st_mtime_ns - 3600 * 10**9,) * 2)
    assert not compressed_with(tmp_path, "low", recipes / "bench.yaml")
    student.write_bytes(b"trained")  # the same student, its file touched since (copied, restored): not again
    os.utime(student, ns=(manifest.stat().st_mtime_ns + 10**9,) * 2)
    assert compressed_with(tmp_path, "low", recipes / "bench.yaml")


def test_a_seed_run_compresses_the_tiers_whose_recipe_changed_and_drops_the_stale_bank(
    tiny_run: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The suite's compression branch end to end: each tier with its recipe (the critical tier's own
    where one is given), the variant bank built from the replaced models dropped, a resumed call
    compressing nothing, and a changed tier recipe compressing that tier alone."""
    from racmkd.eval import suite

    runs = tmp_path / "bench"
    shutil.copytree(tiny_run, runs / "clean-s0", ignore=shutil.ignore_patterns("compressed", "simulate"))
    (runs / "clean-s0" / "edge").mkdir(exist_ok=True)
    (runs / "clean-s0" / "edge" / "bank.json").write_text("{}")  # a bank of the models about to be replaced
    monkeypatch.setattr(suite, "train_extras", lambda *args, **kwargs: ([], []))  # the baselines are not this test's
    common, own = tmp_path / "common.yaml", tmp_path / "own.yaml"
    common.write_text("steps:\n  - export: {int8: none, int8_weights: true, latency_iters: 5}\n")
    own.write_text("steps:\n  - export: {int8: none, int8_weights: false, latency_iters: 5}\n")
    settings = suite.SuiteSettings(
        config=TINY, protocols=("clean",), runs_dir=runs, overrides=(f"data.cache_dir={cache_dir}",), recipe=common, tier_recipes={"critical": own}
    )
    datasets: dict = {}
    other = replace(settings, overrides=(*settings.overrides, "students.train.lr=0.123"))
    with pytest.raises(ConfigError, match=r"made with other settings \(students.train.lr\)"):  # its models are not that configuration's
        suite.seed_run(other, "clean", 0, None, datasets)

    _, run_dir, made, resumed = suite.seed_run(settings, "clean", 0, None, datasets)
    assert made == [f"{t} compressed" for t in suite.TIERS] and resumed == ["teachers", "students"]
    assert not (run_dir / "edge").exists()  # built from the students' old compressed models: dropped
    recipes = {t: json.loads((run_dir / "compressed" / t / "compression.json").read_text())["recipe"] for t in suite.TIERS}
    assert recipes == {**{t: str(common) for t in suite.TIERS}, "critical": str(own)}
    assert json.loads((run_dir / "compressed" / "critical" / "compression.json").read_text())["format"] == "onnx-fp32"  # its recipe exports no int8

    _, _, made, resumed = suite.seed_run(settings, "clean", 0, None, datasets)
    assert made == [] and resumed == ["teachers", "students", *(f"{t} compressed" for t in suite.TIERS)]

    _, _, made, _ = suite.seed_run(replace(settings, tier_recipes={}), "clean", 0, None, datasets)
    assert made == ["critical compressed"]  # back to the common recipe: that tier alone
    assert json.loads((run_dir / "compressed" / "critical" / "compression.json").read_text())["recipe"] == str(common)

    teacher = run_dir / "checkpoints" / "teacher_audio.pt"
    record = torch.load(teacher, weights_only=True)
    del record["specs"]["audio"]["window"]  # a teacher saved before AudioSpec.window: it learned another window
    torch.save(record, teacher)
    with pytest.raises(
        ConfigError, match=r"clean-s0: its teachers cannot be resumed \(teacher_audio: audio: this model learned recordings placed the 'loudest' way"
    ):
        suite.seed_run(settings, "clean", 0, None, datasets)


def test_the_report_lists_teachers_then_each_tier_with_its_twins() -> None:
    """A third modality's unimodal teacher sits with the teachers, not after the tiers."""
    from racmkd.eval.report import report_order

    names = ["standard_kd", "low", "teacher_imu", "high_compressed", "high", "teacher", "high_labels_only", "teacher_audio", "teacher_image"]
    assert sorted(names, key=report_order) == [
        "teacher",
        "teacher_image",
        "teacher_audio",
        "teacher_imu",
        "high",
        "high_labels_only",
        "high_compressed",
        "low",
        "standard_kd",
    ]


def test_the_report_gives_every_input_its_size() -> None:
    from racmkd.eval.report import _inputs

    entry = {"inputs": {"image": {"resolution": 12, "crop": 24}, "audio": {"n_mels": 32, "n_frames": 16}, "imu": {"samples": 64, "length": 16}}}
    assert _inputs(entry) == "image 12x12, audio 32x16, imu samples=64 length=16"  # imu had its name alone


def test_a_run_resumed_under_another_protocol_order_differs_only_in_its_twins(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Label-only twins are trained where the transfer study runs, the first protocol's first seed:
    `--protocols clean` after a whole suite refused clean-s0 (made without them). Now the run goes on,
    without the transfer table where it has no twins; any other difference is still refused."""
    from racmkd.config import ConfigError, load_config, save_config
    from racmkd.eval.suite import resumable

    config = Path(__file__).parents[1] / "configs" / "default.yaml"
    save_config(load_config(config, ["students.labels_only=false"]), tmp_path / "config.yaml")
    wanted = load_config(config, ["students.labels_only=true"])
    cfg, transfer = resumable(tmp_path, wanted, transfer=True)
    assert cfg.students.labels_only is False and transfer is False and "transfer table is left out" in capsys.readouterr().out
    save_config(wanted, tmp_path / "config.yaml")  # made with twins, resumed where none are needed
    cfg, transfer = resumable(tmp_path, load_config(config, ["students.labels_only=false"]), transfer=False)
    assert cfg.students.labels_only is True and transfer is False
    with pytest.raises(ConfigError, match="made with other settings \\(students.train.epochs"):
        resumable(tmp_path, load_config(config, ["students.train.epochs=9"]), transfer=True)
