"""The benchmark scripts' own logic (benchmarks/*.py), on fake reports and run folders: what they
reuse, which targets they set and how they say a target was not measured. Nothing here trains."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from racmkd.config import RunConfig, load_config, save_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # (as the scripts find their shared modules: results_io, bare_edge)

import audio_windows  # noqa: E402
import deploy  # noqa: E402
import foundation  # noqa: E402
import sensor_inputs  # noqa: E402


def entry(accuracy: float, **fields: object) -> dict:
    """One model's row of a report.json, the fields the foundation benchmark reads."""
    return {
        "accuracy": accuracy,
        "f1_macro": accuracy,
        "param_bytes_fp32": 1000,
        "bytes_fp32": 1000,
        "peak_activation_bytes": 10,
        "flops": 1,
        "latency_ms_p50": 0.1,
        "modalities": ["image"],
        "inputs": {},
        **fields,
    }


def student(accuracy: float, teacher: float = 0.99, **fields: object) -> dict:
    return entry(accuracy, retention=accuracy / teacher, budget_bytes=2048, **fields)


def full_report(run: str, commit: str = "abc", shift: float = 0.0) -> dict:
    """A seed's report with the teacher, every tier and its labels-only twin."""
    models = {"teacher": entry(0.99)}
    for i, tier in enumerate(foundation.TIERS):
        models[tier] = student(0.98 - i / 100 + shift)
        models[f"{tier}_labels_only"] = student(0.97 - i / 100)
    return {"run": run, "commit": commit, "seed": int(run[-1]), "models": models, "data": {"samples": {"test": 100}}}


# foundation.py ------------------------------------------------------------------------------------


def test_foundation_gives_every_target_a_row_even_where_a_report_lacks_it() -> None:
    """A tier missing from one seed, a tier without its labels-only twin, a report without a teacher:
    each target still has its row, not reached, saying which run lacks what (before, the rows were
    dropped unsaid, and a report without a teacher raised KeyError)."""
    reports = [full_report("bench-avmnist-s0"), full_report("bench-avmnist-s1", shift=0.001)]
    del reports[1]["models"]["critical"]
    for r in reports:
        del r["models"]["low_labels_only"]
    targets = {t["target"].split(" (")[0]: t for t in foundation.targets(foundation.summarise(reports), "avmnist", None)}
    for tier in foundation.RETENTION_TARGETS:
        assert any(name.startswith(f"{tier}: retention") for name in targets), tier
        assert f"{tier}: distillation beats labels only by more than the seed spread" in targets, tier
    critical = next(t for name, t in targets.items() if name.startswith("critical: retention"))
    assert critical["reached"] is False and "bench-avmnist-s1" in critical["measured"]
    low_gain = targets["low: distillation beats labels only by more than the seed spread"]
    assert low_gain["reached"] is False and "low_labels_only" in low_gain["measured"]
    assert targets["high: distillation beats labels only by more than the seed spread"]["reached"] is True  # +0.01 against a 0.0007 spread

    no_teacher = [full_report("bench-avmnist-s0")]
    del no_teacher[0]["models"]["teacher"]
    for name, model in no_teacher[0]["models"].items():
        model.pop("retention", None)
    rows = foundation.targets(foundation.summarise(no_teacher), "avmnist", None, clean_run="bench-clean-s0")
    assert rows[0]["reached"] is False and "no teacher row in bench-avmnist-s0" in rows[0]["measured"]
    assert rows[1]["target"].startswith("clean teacher") and rows[1]["reached"] is False  # the clean run measured, its teacher missing
    assert all(r["reached"] is False for r in rows if "retention" in r["target"])  # nothing to divide by


def test_foundation_judges_the_budget_on_every_seed_and_lists_sizes_that_differ() -> None:
    """A seed whose student is over its budget fails the target (the first seed's size alone was
    judged), and the table lists each seed's size where they differ."""
    reports = [full_report("bench-avmnist-s0"), full_report("bench-avmnist-s1")]
    reports[1]["models"]["high"]["param_bytes_fp32"] = 4096  # over its 2 KB
    summary = foundation.summarise(reports)
    assert summary["models"]["high"]["param_bytes_fp32_seeds"] == [1000, 4096] and "param_bytes_fp32_seeds" not in summary["models"]["medium"]
    high = next(t for t in foundation.targets(summary, "avmnist", None) if t["target"].startswith("high: retention"))
    assert high["reached"] is False and "over its budget in bench-avmnist-s1" in high["measured"]
    assert "1.0 KB (seeds: 1.0, 4.0)" in foundation._sizes(summary["models"]["high"], "param_bytes_fp32", 1024, "KB", 1)


def test_foundation_says_which_commit_measured_a_reused_run(tmp_path: Path) -> None:
    """A run whose report exists is reused as it is: the markdown names the commit that measured it
    beside the figures, not only the commit the file was assembled at."""
    config = REPO / "configs" / "default.yaml"
    name = "bench-avmnist-s0"
    cfg = load_config(config, [f"name={name}", f"runs_dir={tmp_path}", "seed=0", "data.protocol=avmnist", "compress.tiers=[]"])
    (tmp_path / name).mkdir()
    save_config(cfg, tmp_path / name / "config.yaml")
    (tmp_path / name / "report.json").write_text(json.dumps(full_report(name, commit="0123abc-old")))
    report = foundation.run_seed(config, "avmnist", 0, tmp_path, [])  # reused: nothing trains
    summary = foundation.summarise([report])
    result = {
        "commit": "fedcba9",
        "machine": {"cpu": "A", "cores": 2},
        "protocol": "avmnist",
        "seeds": [0],
        "avmnist": summary,
        "test_samples": 100,
        "measured_at": [{"label": "seed 0", "run": name, "commit": report["commit"]}],
        "targets": foundation.targets(summary, "avmnist", None),
    }
    markdown = foundation.render(result)
    assert "seed 0 measured at `0123abc-old`" in markdown and "Not every run was measured at this commit" in markdown
    result["measured_at"][0]["commit"] = "fedcba9"
    assert "Every run was measured at this commit" in foundation.render(result)


def test_foundation_reuses_a_run_made_with_compression_and_refuses_other_training(tmp_path: Path) -> None:
    """`make run`'s run (its tiers compressed after the report's models) holds the same teacher and
    students as the benchmark's own: reused; one trained with other settings is refused."""
    config = REPO / "configs" / "default.yaml"
    name = "bench-avmnist-s0"
    (tmp_path / name).mkdir()
    (tmp_path / name / "report.json").write_text(json.dumps(full_report(name)))
    made = load_config(config, [f"name={name}", f"runs_dir={tmp_path}", "seed=0", "data.protocol=avmnist"])  # compress.tiers as make run's
    save_config(made, tmp_path / name / "config.yaml")
    assert foundation.run_seed(config, "avmnist", 0, tmp_path, [])["commit"] == full_report(name)["commit"]
    save_config(load_config(config, [f"name={name}", f"runs_dir={tmp_path}", "seed=0", "students.train.epochs=8"]), tmp_path / name / "config.yaml")
    with pytest.raises(SystemExit, match="students.train.epochs"):
        foundation.run_seed(config, "avmnist", 0, tmp_path, [])


def test_the_compression_benchmark_refuses_a_run_made_from_another_config(tmp_path: Path) -> None:
    """runs/bench-compression was measured whatever --config said, and the result did not say which."""
    import compression

    name = "bench-compression"
    (tmp_path / name).mkdir()
    (tmp_path / name / "report.json").write_text("{}")
    config = REPO / "configs" / "default.yaml"
    save_config(load_config(config, [f"name={name}", f"runs_dir={tmp_path}"]), tmp_path / name / "config.yaml")
    assert compression.ensure_run(config, None, tmp_path) == tmp_path / name  # (compression settings aside: the same run)
    with pytest.raises(SystemExit, match=r"data\.modalities"):
        compression.ensure_run(REPO / "configs" / "trimodal.yaml", None, tmp_path)


# sensor_inputs.py ---------------------------------------------------------------------------------


def test_sensor_inputs_reuses_a_finished_run_and_starts_others_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runs' names are fixed: a second invocation reuses a run whose report exists and whose
    config holds these settings, and deletes and runs again one cut short or made with others
    (before, `create_run` refused the existing name and the benchmark could not be run again)."""
    from racmkd.runs import create_run

    sensor = sensor_inputs.SENSORS["pen"]
    ran: list[str] = []

    def run_pipeline(cfg: RunConfig) -> Path:  # the real one's folder and report, without the training
        run_dir = create_run(cfg)
        models = {sensor.tier(*r): {"params": 10, "flops": 20, "accuracy": 0.9} for r in sensor.reductions}
        models["teacher_pen"] = {"accuracy": 0.95}
        report = {"commit": "abc", "models": models, "data": {"samples": {"test": 50}}}
        (run_dir / "report.json").write_text(json.dumps(report))
        ran.append(cfg.name)
        return run_dir

    monkeypatch.setattr(sensor_inputs, "run_pipeline", run_pipeline)
    first = sensor_inputs.measure(sensor, [0], 1, True, tmp_path)
    assert ran == ["pen-inputs-s0"] and first["runs"][0]["seconds"] is not None
    again = sensor_inputs.measure(sensor, [0], 1, True, tmp_path)
    assert ran == ["pen-inputs-s0"] and again["runs"][0]["seconds"] is None and again["rows"] == first["rows"]  # reused
    sensor_inputs.measure(sensor, [0], 2, True, tmp_path)  # other settings (epochs): run again
    assert len(ran) == 2 and load_config(tmp_path / "pen-inputs-s0" / "config.yaml").students.tiers[0].epochs == 2
    (tmp_path / "pen-inputs-s0" / "report.json").unlink()  # an attempt cut short
    sensor_inputs.measure(sensor, [0], 2, True, tmp_path)
    assert len(ran) == 3 and (tmp_path / "pen-inputs-s0" / "report.json").is_file()


def test_sensor_inputs_plots_one_line_per_reduction_sorted_by_input_values() -> None:
    """The IMU's 3- and 2-component rows are two lines, each in order of input values (one line in
    list order went 96, 48, 24, then back up to 32 values)."""
    sensor = sensor_inputs.SENSORS["imu"]
    rows = [{"steps": s, "knob": k, "input_values": sensor.values(s, k)} for s, k in sensor.reductions]
    lines = dict(sensor_inputs.plot_lines(sensor, rows))
    assert [[r["input_values"] for r in line] for line in lines.values()] == [[24, 48, 96, 192], [24, 48, 96], [32]]
    assert list(lines)[1:] == ["3 principal components", "2 principal components"]
    pen = sensor_inputs.SENSORS["pen"]
    labels = [label for label, _ in sensor_inputs.plot_lines(pen, [{"steps": s, "knob": k, "input_values": pen.values(s, k)} for s, k in pen.reductions])]
    assert labels == ["average pooling in time (downsampling)", pen.reduced_label]  # one reduction: its own legend


# deploy.py ----------------------------------------------------------------------------------------


def test_deploy_fit_target_is_not_reached_with_nothing_registered_or_nothing_fitting(tmp_path: Path) -> None:
    """Every device's "nothing fits" reason passed the target by construction: an empty registry, or
    releases that fit no device, exercised nothing."""
    from racmkd.deploy.orchestrator import plan
    from racmkd.deploy.registry import ModelRegistry
    from racmkd.resources.devices import device_names, load_device

    devices = [load_device(d) for d in device_names()]
    empty = {"releases": [], "plan": [a.as_dict() for a in plan(ModelRegistry(tmp_path / "registry"), devices)]}
    target = deploy.fit_target(empty)
    assert target["reached"] is False and "the registry holds no releases" in target["measured"]
    unfit = [{"device": d.name, "release": None, "reason": "nothing fits: edge: RAM over"} for d in devices]
    assert deploy.fit_target({"releases": [{"label": "edge"}], "plan": unfit})["reached"] is False
    fitted = [{**unfit[0], "release": "edge", "reason": "edge: the most accurate that fits"}, *unfit[1:]]
    assert deploy.fit_target({"releases": [{"label": "edge"}], "plan": fitted})["reached"] is True


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--iters", "5"], "--iters: 5 is below 6"),
        (["--requests", "0"], "--requests: 0 is below 2"),
        (["--rate", "0"], "--rate: 0.0 is not above 0"),
        (["--load-requests", "0"], "--load-requests: 0 is below 1"),
    ],
)
def test_deploy_refuses_values_its_experiments_cannot_run_with(argv: list[str], says: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Refused on the command line: --iters below the rounds failed (fmean of nothing) and
    --requests 0 divided by zero only after the delta experiment's minutes."""
    with pytest.raises(SystemExit):
        deploy.parse_args(argv)
    assert says in capsys.readouterr().err
    assert deploy.parse_args(["--iters", str(deploy.ROUNDS), "--requests", "2", "--out", str(tmp_path)]).iters == deploy.ROUNDS


def test_benchmarks_refuse_an_unwritable_out_and_options_quick_would_replace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An --out under a file was found when the results were written, after all the measuring (a
    traceback, the figures lost); --quick replaced --steps, --config and others given beside it."""
    (tmp_path / "afile").write_text("")
    for argv, says in (
        (["--out", str(tmp_path / "afile" / "sub")], "cannot write results there"),
        (["--quick", "--steps", "5", "--soak-minutes", "0", "--out", str(tmp_path)], "--quick sets --steps, --soak-minutes itself"),
        (["--quick", "--steps=300", "--out", str(tmp_path)], "--quick sets --steps itself"),  # (its default value, given: replaced in silence)
    ):
        with pytest.raises(SystemExit):
            deploy.parse_args(argv)
        assert says in capsys.readouterr().err
    assert deploy.parse_args(["--quick", "--out", str(tmp_path / "new")]).quick and (tmp_path / "new").is_dir() and not list((tmp_path / "new").iterdir())


def test_a_benchmark_stopped_by_sigterm_runs_its_cleanup() -> None:
    """SIGTERM (a CI cancel, `kill`) ended a benchmark on the spot: the servers it had started
    kept running, their parent gone, because its `finally` blocks never ran."""
    import os
    import signal

    from results_io import reports_errors

    cleaned, before = [], signal.getsignal(signal.SIGTERM)

    @reports_errors
    def main() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            cleaned.append(True)

    with pytest.raises(SystemExit) as stopped:
        main()
    assert cleaned == [True] and stopped.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before  # the handler before it is back


def test_benchmarks_say_a_bad_run_in_one_line_before_any_work(tmp_path: Path) -> None:
    """A --run that is not a run, or --teachers-from one, ended in a traceback (the suite's after
    it had made the first seed's run folder, blaming --config); runtime.py's --repeats 0 and --rate
    0 failed after the replays (IndexError, ZeroDivisionError)."""
    import subprocess

    def script(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300, cwd=tmp_path)

    for argv in (
        ("runtime.py", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "out")),
        ("compression.py", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "out")),
        ("suite.py", "--teachers-from", str(tmp_path / "nope"), "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")),
    ):
        failed = script(str(REPO / "benchmarks" / argv[0]), *argv[1:])
        assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
        assert f"{tmp_path / 'nope'}: not a run directory" in failed.stderr, failed.stderr
    assert not (tmp_path / "runs").exists()  # nothing made for the suite
    for argv, says in ((["--repeats", "0"], "--repeats: 0 is below 1"), (["--rate", "0"], "--rate: 0.0 is not above 0")):
        refused = script(str(REPO / "benchmarks" / "runtime.py"), *argv)
        assert refused.returncode == 2 and says in refused.stderr, refused.stderr


# suite.py -----------------------------------------------------------------------------------------


def test_suite_writes_its_markdown_before_the_plots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plot that fails leaves the markdown of this result beside its JSON, not the previous run's
    (suite.json was written, then the plots, then the markdown)."""
    import suite as bench_suite

    def plot_all(result: dict, out: Path, stem: str) -> dict[str, str]:
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(bench_suite, "run_suite", lambda settings: {"result": "new"})
    monkeypatch.setattr(bench_suite, "render", lambda result, plots: f"{result['result']}, plots {sorted(plots)}")
    monkeypatch.setattr(bench_suite, "plot_all", plot_all)
    monkeypatch.setattr(sys, "argv", ["suite.py", "--quick", "--out", str(tmp_path)])
    with pytest.raises(RuntimeError, match="plotting failed"):
        bench_suite.main()
    assert json.loads((tmp_path / "suite-quick.json").read_text()) == {"result": "new"}
    assert (tmp_path / "suite-quick.md").read_text() == "new, plots []"
    monkeypatch.setattr(bench_suite, "plot_all", lambda result, out, stem: {"Pareto": f"{stem}-pareto.png"})
    bench_suite.main()
    assert (tmp_path / "suite-quick.md").read_text() == "new, plots ['Pareto']"  # written again with the plots' links


def test_audio_windows_places_the_word_and_cuts_each_window_as_named() -> None:
    """The clip holds the recording where asked, in noise at the asked level; each way of cutting
    hands the model one window: the clip's middle, its loudest stretch, or that stretch centred on
    the word."""
    import numpy as np

    from racmkd.data import signals

    word = np.sin(np.arange(400) / 3.0)
    rng = np.random.default_rng(0)
    late = audio_windows.noisy_clip(word, 0.25, 8000, "end", -40.0, rng)
    assert len(late) == 2000 and np.allclose(late[1600:], word, atol=0.05) and 0.005 < late[:1600].std() / np.sqrt(np.mean(word**2)) < 0.02
    assert len(audio_windows.noisy_clip(word, 0, 8000, "middle", -40.0, rng)) == 400  # as recorded: the recording alone
    assert np.array_equal(audio_windows.cut(late, 1000, "centre"), late[500:1500])
    loudest = audio_windows.cut(late, 1000, "loudest")
    assert len(loudest) == 1000 and np.allclose(loudest[-400:], word, atol=0.05)
    speech = audio_windows.cut(late, 1000, "speech")
    at = 1600 - signals.speech_start(late, 1000)  # where the word begins in the window
    assert abs(at - 300) <= 1 and np.allclose(speech[at : at + 400], word, atol=0.05) and not speech[at + 400 :].any()  # mid-window, silence past the clip
