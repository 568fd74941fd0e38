"""A third modality added as README's "Adding a modality" says, by the example plugin in
examples/imu_plugin (nothing of it lives in the package): its `Signal` and options and its
`Modality` registered under one name, then `data.modalities: [image, audio, imu]` and nothing else
changed. The sensor is real: a pen's IMU (accelerometer and gyroscope, 6 axes) recorded while one
writer wrote digits (<data root>/imu_pen_digits, 1,031 CSV files of 1-46 readings; racmkd_imu.data),
each recording resampled to a trace of 6 axes x 32 time steps.

One small run goes the whole way: the dataset pairs the traces by label within each split, the
teachers and a student get an imu encoder, the predictor takes `imu=`, the `inputs` compression
step lowers imu's own knob, the exported ONNX model's contract describes imu's preprocessing, the
edge runtime and the servers answer from it, and `racmkd predict` in a process of its own finds
the plugin through the entry points of examples/imu_plugin/pyproject.toml."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import racmkd
from racmkd.config import RunConfig
from racmkd.data.dataset import PairedDataset
from racmkd.data.modalities import SPLITS
from racmkd.registry import MODALITIES, MODALITY_OPTIONS, SIGNALS

TINY = Path(__file__).parent / "tiny.yaml"
PLUGIN = Path(__file__).parents[1] / "examples" / "imu_plugin"
# The example's modules, imported from its folder, which leaves sys.path again: left there, a build's
# egg-info in it would be an installed plugin to every later test.
sys.path.insert(0, str(PLUGIN))
try:
    from racmkd_imu.modality import ImuModality
    from racmkd_imu.data import FILE, FOLDER, download, load_recordings, split_of
    from racmkd_imu.signal import AXES, NAME, SAMPLES, ImuOptions, ImuSignal, ImuSpec, imu_trace
finally:
    sys.path.remove(str(PLUGIN))


# Registration and the run ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imu_registered() -> Any:
    """The example plugin's registrations (what its `register()` functions do), taken out again
    after this module's tests."""
    from racmkd.data import modalities as _modalities  # noqa: F401 - image and audio first, as the package registers them

    # (An installed example registered itself through its entry points: only what is missing here is registered and taken out.)
    ours = [(registry, obj) for registry, obj in ((SIGNALS, ImuSignal), (MODALITY_OPTIONS, ImuOptions), (MODALITIES, ImuModality)) if NAME not in registry]
    for registry, obj in ours:
        registry.register(NAME)(obj)
    yield
    for registry, obj in ours:
        assert registry.unregister(NAME) is obj
    from racmkd.deploy.server import input_checker

    input_checker.cache_clear()  # (it keeps each modality's signal by name)


@pytest.fixture(scope="module")
def data_root(imu_registered: Any, shared_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real MNIST and FSDD (linked) and the IMU recordings (copied: a test edits one) under one data root."""
    if not (shared_root / FOLDER).is_dir():
        pytest.fail(f"the IMU recordings are not at {shared_root / FOLDER}: fetch them (python -m racmkd_imu.data, with examples/imu_plugin on PYTHONPATH)")
    root = tmp_path_factory.mktemp("data")
    for folder in ("mnist", "fsdd"):
        (root / folder).symlink_to(shared_root / folder, target_is_directory=True)
    shutil.copytree(shared_root / FOLDER, root / FOLDER)
    for path in (root / FOLDER).rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)  # (the shared copy is read-only)
    return root


RECIPE = """steps:
  - inputs: {reduce: {imu: {length: 4}}, finetune: {epochs: 1, samples: 512, lr: 0.003}}
  - export: {int8: static, int8_weights: false, calibration_samples: 64, latency_iters: 5, min_agreement: 0.0, max_accuracy_drop: 1.0, prefer: smaller}
"""


@pytest.fixture(scope="module")
def three(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, PairedDataset, Path]:
    """A run on image, audio and imu: teachers, one tier's student (all three inputs, level 2: imu
    8 steps of its first 3 principal components), compressed by a recipe that lowers imu to 4 steps."""
    from conftest import one_tier_run

    return one_tier_run(
        tmp_path_factory.mktemp("three"),
        "three",
        ["image", "audio", NAME],
        "{name: low, budget_bytes: 65536, modalities: [image, audio, imu], scale: 2, depth: 1}",
        RECIPE,
        f"data.root={data_root}",
        "students.train={epochs: 4, modality_dropout: 0.3}",
        "data.options.imu={levels: [[32, 6], [16, 6], [8, 3], [4, 3]]}",
    )


def raw_inputs(dataset: PairedDataset, rows: range) -> list[dict[str, np.ndarray]]:
    """Raw test inputs as a caller holds them: uint8 images, int16 recordings, float IMU traces (6, 32)."""
    split = dataset.splits["test"]
    return [{m: dataset.banks[m]["test"].data[split.index[m][r]].numpy() for m in ("image", "audio", NAME)} for r in rows]


# The tests ----------------------------------------------------------------------------------------------


def test_registry_unregister_takes_a_name_out() -> None:
    from racmkd.registry import Registry

    reg: Registry = Registry("widget")
    reg.register("conv")(int)
    assert reg.unregister("conv") is int and "conv" not in reg
    reg.register("conv")(float)  # no longer a duplicate
    with pytest.raises(KeyError, match="not registered"):
        reg.unregister("dense")


def test_dataset_pairs_imu_by_label_within_each_split(three: tuple[RunConfig, PairedDataset, Path], data_root: Path) -> None:
    from racmkd.data.dataset import build_dataset, cache_path
    from racmkd.data.paths import DataError

    cfg, dataset, _ = three
    assert list(dataset.modalities) == ["image", "audio", NAME] and isinstance(dataset.modalities[NAME], ImuModality)
    ids = {s: set(dataset.banks[NAME][s].ids) for s in SPLITS}
    assert {s: len(ids[s]) for s in SPLITS} == {"train": 724, "val": 101, "test": 206}  # all 1,031 recordings, every fifth a test item
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    assert all(split_of(int(i.split("_")[1])) == s for s in SPLITS for i in ids[s])
    for s, split in dataset.splits.items():
        assert torch.equal(dataset.banks[NAME][s].labels[split.index[NAME]], split.labels), s  # every sample's trace is of its digit, from its split
        assert set(dataset.banks[NAME][s].labels.tolist()) == set(range(10)), s
    # The cache's key reads imu's folder: a recording edited is another dataset, and not the set's,
    # so it is refused when it loads (its digest checked), not trained on.
    before = cache_path(cfg.data)
    victim = data_root / FOLDER / "readings_100_digit_0.csv"
    original, stat = victim.read_text(), victim.stat()
    victim.write_text(original.replace("1", "2", 1))
    try:
        assert cache_path(cfg.data) != before
        with pytest.raises(DataError, match="do not match the set's files"):
            build_dataset(cfg.data)
    finally:  # put back as it was, its time too, for the tests after this one
        victim.write_text(original)
        os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache_path(cfg.data) == before


def test_teachers_and_student_use_imu(three: tuple[RunConfig, PairedDataset, Path]) -> None:
    from racmkd.models.checkpoint import load_model
    from racmkd.models.inference import predict_split

    _, dataset, run_dir = three
    assert {p.stem for p in (run_dir / "checkpoints").glob("*.pt")} == {"teacher", "teacher_image", "teacher_audio", f"teacher_{NAME}", "low"}
    teacher, specs, _, _ = load_model(run_dir / "checkpoints" / "teacher.pt")
    assert teacher.modalities == ["image", "audio", NAME] and specs[NAME] == ImuSpec(SAMPLES, SAMPLES)
    model, specs, _, _ = load_model(run_dir / "checkpoints" / f"teacher_{NAME}.pt")
    (logits,), labels = predict_split(model, specs, dataset, "test")
    assert (logits.argmax(1) == labels).float().mean() > 0.8  # the IMU alone tells the digit (one writer's): 0.95 here
    student, specs, _, _ = load_model(run_dir / "checkpoints" / "low.pt")
    assert student.modalities == ["image", "audio", NAME] and specs[NAME] == ImuSpec(SAMPLES, 8, 3, *dataset.modalities[NAME].principal)
    (everything, imu_only), labels = predict_split(student, specs, dataset, "test", withheld=((), ("image", "audio")))
    assert (imu_only.argmax(1) == labels).float().mean() > 0.75  # 0.90 here; 0.94 with all three
    assert (everything.argmax(1) == labels).float().mean() > (imu_only.argmax(1) == labels).float().mean()


def test_the_robustness_sweeps_take_imu_through_its_own_degradation(three: tuple[RunConfig, PairedDataset, Path]) -> None:
    from racmkd.eval.deployed import robustness
    from racmkd.eval.suite import SuiteSettings, degradation_sweeps

    cfg, dataset, run_dir = three
    sweeps = degradation_sweeps(SuiteSettings(config=Path("unused.yaml")), dataset.modalities)
    assert sweeps[NAME] == ImuModality.degradation_levels  # registered by the plugin, swept without naming it
    rob = robustness({"imu_teacher": run_dir / "checkpoints" / f"teacher_{NAME}.pt"}, dataset, {NAME: (0.0, 4.0)})["imu_teacher"]
    degraded = rob["degraded"][NAME]
    assert list(rob["degraded"]) == [NAME] and degraded["0.0"] == rob["protocol"]  # level 0: the traces as they are
    assert degraded["4.0"] < degraded["0.0"] - 0.3  # noise 4 g (and 400 deg/s) buries the motion: 0.10 against 0.95 here
    assert rob["missing"][NAME] is None  # its only input withheld: no answer, not a number


def test_predictor_takes_imu_as_a_keyword(three: tuple[RunConfig, PairedDataset, Path]) -> None:
    from racmkd.models.inference import predict_split

    _, dataset, run_dir = three
    predictor = racmkd.load(run_dir, "low")
    assert predictor.modalities == ["image", "audio", NAME]
    samples = raw_inputs(dataset, range(12))
    (everything, without_imu, imu_only), _ = predict_split(
        predictor.model, predictor.specs, dataset, "test", limit=12, withheld=((), (NAME,), ("image", "audio"))
    )
    for i, x in enumerate(samples):
        for given, reference in ((x, everything), ({"image": x["image"], "audio": x["audio"]}, without_imu), ({NAME: x[NAME]}, imu_only)):
            label, probs = predictor.predict(**given)
            assert label == int(reference[i].argmax()) and probs.sum() == pytest.approx(1.0, abs=1e-5), (i, sorted(given))
    with pytest.raises(ValueError, match=r"imu: expected readings \(n, 6\)"):
        predictor.predict(imu=np.zeros((10, 3), np.float32))
    with pytest.raises(ValueError, match="came in dead"):  # a flat trace is a dead sensor
        predictor.predict(imu=np.zeros((len(AXES), SAMPLES), np.float32))
    with pytest.raises(ValueError, match="came in dead"):  # so is a stuck one, which still reads gravity, and one reading alone
        predictor.predict(imu=np.tile([[1000.0, 0.0, 300.0, 2.0, -6.0, 1.0]], (20, 1)))
    with pytest.raises(ValueError, match="came in dead"):
        predictor.predict(imu=np.array([[1000.0, 0.0, 300.0, 2.0, -6.0, 1.0]]))
    with pytest.raises(ValueError, match="past float32's range"):
        predictor.predict(imu=np.full((5, 6), 1e45))


def test_cli_predict_takes_imu_as_a_named_input(three: tuple[RunConfig, PairedDataset, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from racmkd.cli import app

    _, dataset, run_dir = three
    x = raw_inputs(dataset, range(1))[0]
    np.save(tmp_path / "trace.npy", x[NAME])
    result = CliRunner().invoke(app, ["predict", "--run", str(run_dir), "--tier", "low", "--input", f"{NAME}={tmp_path / 'trace.npy'}"])
    assert result.exit_code == 0 and json.loads(result.output)["label"] == racmkd.load(run_dir, "low").predict(imu=x[NAME])[0], result.output
    (tmp_path / "empty.npy").write_bytes(b"")
    np.savez(tmp_path / "both.npz", a=x[NAME])
    np.save(tmp_path / "words.npy", np.array(["a", "b"]))
    # an empty file said a bare "Aborted."
    bad = {"empty.npy": "not a readable .npy array (EOFError", "both.npz": "an .npz archive", "words.npy": "<U1 values; pass an array of numbers"}
    for pair, message in (
        (f"gyro={tmp_path / 'trace.npy'}", "no modality 'gyro'"),
        (f"{NAME}={tmp_path / 'none.npy'}", "none.npy"),
        ("imu", "expected NAME=FILE.npy"),
        *((f"{NAME}={tmp_path / f}", m) for f, m in bad.items()),
    ):
        result = CliRunner().invoke(app, ["predict", "--run", str(run_dir), "--tier", "low", "--input", pair])
        assert result.exit_code == 2 and message in result.output, (pair, result.output)


def install_plugin(folder: Path) -> list[Path]:
    """examples/imu_plugin as `pip install` would leave it, without touching the environment: its
    pyproject's entry points in a dist-info folder. Returns the folders to put on PYTHONPATH."""
    from conftest import fake_distribution

    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    assert set(project["entry-points"]) == {"racmkd.signals", "racmkd.training"}
    return [fake_distribution(folder, project["name"], project["version"], project["entry-points"]), PLUGIN]


def test_a_plugin_modality_reaches_the_commands_through_entry_points(three: tuple[RunConfig, PairedDataset, Path], tmp_path: Path) -> None:
    """`racmkd predict` in its own process knows imu only through the installed plugin's entry
    points (nothing in it registers imu by hand); without the plugin it refuses the input by name."""
    import os
    import subprocess
    import sys

    _, dataset, run_dir = three
    x = raw_inputs(dataset, range(1))[0]
    np.save(tmp_path / "trace.npy", x[NAME])
    command = [sys.executable, "-m", "racmkd.cli", "predict", "--run", str(run_dir), "--tier", "low", "--input", f"{NAME}={tmp_path / 'trace.npy'}"]
    env = {
        **os.environ,
        "RACMKD_PROGRESS": "0",
        "PYTHONPATH": os.pathsep.join([*map(str, install_plugin(tmp_path / "site")), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    answer = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0 and json.loads(answer.stdout)["label"] == racmkd.load(run_dir, "low").predict(imu=x[NAME])[0], answer.stderr[-2000:]
    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    if any(point.name == NAME for point in entry_points(group="racmkd.signals")):
        return  # the example is installed where racmkd is (README warns): no process without it to compare
    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and f"no modality {NAME!r}" in refused.stderr + refused.stdout, refused.stderr[-2000:]


def test_inputs_step_lowers_imu_and_the_contract_says_so(three: tuple[RunConfig, PairedDataset, Path]) -> None:
    from racmkd.compress.artifacts import read_contract, specs_from_contract

    _, dataset, run_dir = three
    record = json.loads((run_dir / "compressed" / "low" / "compression.json").read_text())
    inputs = record["steps"][0]
    assert inputs["step"] == "inputs" and inputs["before"]["input_values"][NAME] == 3 * 8 and inputs["after"]["input_values"][NAME] == 3 * 4
    reduced = ImuSpec(SAMPLES, 4, 3, *dataset.modalities[NAME].principal)
    as_written = json.loads(json.dumps(dataclasses.asdict(reduced)))  # (tuples as lists)
    assert inputs["details"]["after"][NAME] == as_written and inputs["details"]["after"]["image"] == inputs["details"]["before"]["image"]
    artifact = run_dir / "compressed" / "low" / record["artifact"]
    contract = read_contract(artifact)
    assert contract["inputs"][NAME] == {
        "modality": NAME,
        "spec": as_written,
        "shape": [3, 1, 4],
        "steps": [
            *ImuSignal().steps(ImuSpec(SAMPLES, SAMPLES)),
            "average pooling in time to 4 steps",
            "per step: minus spec.centre, projected onto the first 3 rows of spec.axes (principal axes of the training traces)",
        ],
        "layout": ImuSignal.layout,
    }
    assert specs_from_contract(contract)[NAME] == reduced
    deployed = racmkd.load(run_dir, "low_compressed")
    assert type(deployed).__name__ == "OnnxPredictor" and deployed.modalities == ["image", "audio", NAME]
    x = raw_inputs(dataset, range(1))[0]
    label, _ = deployed.predict(**x)
    assert 0 <= label < 10
    with pytest.raises(ValueError, match="needs imu"):
        deployed.predict(image=x["image"], audio=x["audio"])


def test_an_imu_only_export_answers_as_the_checkpoint(three: tuple[RunConfig, PairedDataset, Path]) -> None:
    from racmkd.pipeline import export_model
    from racmkd.runtime.predictor import OnnxPredictor

    cfg, dataset, run_dir = three
    result = export_model(cfg, dataset, run_dir, "low", present=[NAME], int8=False)
    assert result["fp32"]["meets_bound"]
    onnx_model, checkpoint = OnnxPredictor(Path(result["fp32"]["path"])), racmkd.load(run_dir, "low")
    assert onnx_model.modalities == [NAME]
    for x in raw_inputs(dataset, range(8)):
        (label, probs), (expected, reference) = onnx_model.predict(imu=x[NAME]), checkpoint.predict(imu=x[NAME])
        assert label == expected and np.allclose(probs, reference, atol=1e-4)


def test_edge_runtime_and_servers_answer_from_imu(three: tuple[RunConfig, PairedDataset, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from racmkd.deploy.server import EdgeService, ModelService, create_app
    from racmkd.runtime.bank import load_bank
    from racmkd.runtime.edge import EdgeRuntime
    from racmkd.runtime.predictor import OnnxPredictor
    from racmkd.runtime.variants import build_bank

    cfg, dataset, run_dir = three
    # Each variant's resident memory is measured in a fresh interpreter (3 s apiece): the graph's estimate stands in here.
    monkeypatch.setattr("racmkd.runtime.variants.resident_bytes", lambda *args, **kwargs: None)
    folder = build_bank(cfg, dataset, run_dir, val_samples=300, test_samples=300, latency_iters=10)
    bank = load_bank(folder)
    assert list(bank.table.modalities) == ["image", "audio", NAME] and {v.id for v in bank.table.variants} == {"low/image", "low/audio", f"low/{NAME}"}
    runtime = EdgeRuntime(bank, pinned={"image": "low", "audio": "low", NAME: "low"})
    share = OnnxPredictor(folder / f"low.{NAME}.onnx")
    samples = raw_inputs(dataset, range(6))
    try:
        for x in samples:
            assert sorted(runtime.predict(**x).variants) == ["low/audio", "low/image", f"low/{NAME}"]
            alone = runtime.predict(imu=x[NAME])
            assert alone.variants == [f"low/{NAME}"] and alone.label == share.predict(imu=x[NAME])[0]
    finally:
        runtime.close()

    x = samples[0]
    fog = ModelService("fog", run_dir, ["low"])
    client = TestClient(create_app(fog, cfg.serve, token=None))
    expected = fog.predictors["low"]
    reply = client.post("/predict", json={NAME: x[NAME].tolist()})
    assert reply.status_code == 200 and np.allclose(reply.json()["probabilities"], expected.predict(imu=x[NAME])[1], atol=1e-5), reply.text
    for given in ({NAME: x[NAME]}, x):  # the answer reads imu: without it, other probabilities
        archive = io.BytesIO()
        np.savez(archive, **given)
        reply = client.post("/predict", content=archive.getvalue(), headers={"Content-Type": "application/x-npz"})
        assert reply.status_code == 200 and np.allclose(reply.json()["probabilities"], expected.predict(**given)[1], atol=1e-5), reply.text
    mixed = [[1.0, True] + [0.0] * (SAMPLES - 2)] * len(AXES)  # numpy had made numbers of the boolean
    for body, message in (
        ({NAME: [["0.5"] * SAMPLES] * len(AXES)}, "valid number"),
        ({NAME: [[True] * SAMPLES] * len(AXES)}, "valid number"),
        ({NAME: mixed}, "valid number"),
        ({NAME: [[0.0] * 10] * 5}, "expected readings (n, 6)"),
        ({"gyro": [1.0]}, "unknown inputs ['gyro']"),
        ({NAME: [[0.0], [0.0, 1.0]]}, "rectangular"),
    ):
        reply = client.post("/predict", json=body)
        assert reply.status_code == 422 and message in reply.text, (body, reply.text)

    edge = EdgeService(cfg, run_dir, cfg.serve)
    try:
        assert edge.modalities() == ["image", "audio", NAME]
        reply = TestClient(create_app(edge, cfg.serve, token=None)).post("/predict", json={NAME: x[NAME].tolist()})
        assert reply.status_code == 200 and reply.json()["variants"] == [f"low/{NAME}"] and reply.json()["label"] == share.predict(imu=x[NAME])[0], reply.text
    finally:
        edge.close()


def test_the_example_signal_half_loads_without_torch() -> None:
    """What an edge device imports of the plugin (group racmkd.signals) needs no torch."""
    import subprocess
    import sys

    code = f"import sys; sys.modules['torch'] = None; sys.path.insert(0, {str(PLUGIN)!r}); import racmkd_imu.signal as s, racmkd_imu.data; s.register(); from racmkd.config import modality_options; from racmkd.registry import SIGNALS; print(SIGNALS.names(), modality_options().names())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "['audio', 'image', 'imu', 'pen'] ['audio', 'image', 'imu', 'pen']", done.stderr[-2000:]


def test_a_recording_as_the_sensor_sends_it_answers_as_its_trace(three: tuple[RunConfig, PairedDataset, Path], data_root: Path) -> None:
    """`predict(imu=readings)` with a CSV file's readings (n, 6) in mg and deg/s is the same answer as
    with the dataset's trace of it: the signal's resampling is the dataset's."""
    _, dataset, run_dir = three
    predictor = racmkd.load(run_dir, "low")
    bank = dataset.banks[NAME]["test"]
    for row in (0, 1, len(bank) - 1):
        number, digit = bank.ids[row].split("_")[1::2]
        path = next((data_root / FOLDER).rglob(f"readings_{number}_digit_{digit}.csv"))
        readings = np.loadtxt(path, delimiter=",", ndmin=2)
        trace = ImuSignal().to_raw(readings, ImuSpec())
        assert np.allclose(trace[0], bank.data[row].numpy(), atol=1e-6) and trace.shape == (1, len(AXES), SAMPLES)
        assert predictor.predict(imu=readings)[0] == predictor.predict(imu=bank.data[row].numpy())[0]
    one = imu_trace(np.array([[1000.0, 0, -500, 100, 0, 0]]), SAMPLES)  # one reading: a constant trace in g and 100 deg/s
    assert np.allclose(one, np.array([1.0, 0, -0.5, 1, 0, 0])[:, None]) and one.shape == (len(AXES), SAMPLES)
    # Readings stacked the other way round, (6, n), are refused; also with n = SAMPLES, the trace's
    # shape, where they were taken as a trace and reached the model in mg, not g.
    for n in (SAMPLES, SAMPLES + 1):
        sideways = np.resize(readings, (n, len(AXES))).T
        with pytest.raises(ValueError, match="transpose it|expected readings"):
            ImuSignal().to_raw(sideways, ImuSpec())


def test_pca_keeps_the_sensors_principal_axes_and_both_halves_project_alike(three: tuple[RunConfig, PairedDataset, Path]) -> None:
    """The principal axes are the channels' directions of most variance, the same on a refit; the
    signal (numpy) and the modality (torch) compute the same PCA features; a PCA spec needs its axes."""
    from racmkd.config import ConfigError
    from racmkd.data.dataset import build_dataset
    from racmkd.data.signals import principal_axes, project_channels

    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 1, 20))
    traces = np.concatenate([x, -2 * x, 0.01 * rng.standard_normal((50, 1, 20))], axis=1) + np.array([1.0, 2.0, 3.0])[:, None]  # (R, 3, T)
    centre, axes = principal_axes(traces)
    assert np.allclose(centre, traces.mean(axis=(0, 2))) and np.allclose(axes[0], np.array([-1, 2, 0]) / np.sqrt(5), atol=1e-3)  # largest entry positive
    refit = principal_axes(traces[::-1].astype(np.float32))[1]  # other order, other precision: the same axes, signs included
    assert np.allclose(axes @ axes.T, np.eye(3), atol=1e-9) and np.allclose(refit[:2], axes[:2], atol=1e-4)
    scores = project_channels(traces.astype(np.float32), centre, axes[:1])
    assert scores.shape == (50, 1, 20) and np.allclose(scores[:, 0], -np.sqrt(5) * (x[:, 0] - x.mean()), atol=0.05)  # the one axis holds the motion

    cfg, dataset, _ = three
    modality = dataset.modalities[NAME]
    spec = modality.spec(2)
    assert spec.components == 3 and spec.axes == modality.principal[1] and modality.feature_shape(spec) == (3, 1, 8)
    raw = dataset.banks[NAME]["test"].data[:16]
    assert np.allclose(modality.features(raw, spec).numpy(), ImuSignal().features(raw.numpy(), spec), atol=1e-5)
    train = dataset.banks[NAME]["train"].data.numpy()
    kept = np.var(project_channels(train, spec.centre, spec.axes[:3]), axis=(0, 2)).sum() / np.var(train, axis=(0, 2)).sum()
    assert 0.7 < kept < 0.85  # three of six components keep 78% of the variance of these recordings
    again = build_dataset(cfg.data)  # written to the cache, then read from it: fitted alike both ways
    assert again.modalities[NAME].principal == modality.principal == build_dataset(cfg.data).modalities[NAME].principal
    with pytest.raises(ConfigError, match="build the dataset first"):
        ImuModality(levels=[[8, 3]]).spec(0)
    with pytest.raises(ConfigError, match="PCA needs the training traces' centre"):
        ImuSpec(SAMPLES, 8, 3)
    with pytest.raises(ConfigError, match="must be finite"):
        ImuSpec(SAMPLES, 8, 3, (float("nan"),) + spec.centre[1:], spec.axes)


def test_data_download_fetches_what_the_configs_modalities_read(imu_registered: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`racmkd data --download` asks each configured modality for its data (a plugin's too), and only
    those: examples/imu_plugin/imu.yaml (default.yaml with the IMU) fetches MNIST, FSDD and the IMU set."""
    from typer.testing import CliRunner

    from racmkd.cli import app
    from racmkd.config import load_config
    from racmkd.data import dataset as dataset_module
    from racmkd.data.modalities import Modality
    from racmkd.data.paths import DataError

    fetched = []
    monkeypatch.setattr("racmkd.data.modalities.download_mnist", lambda root: fetched.append(("mnist", root)))
    monkeypatch.setattr("racmkd.data.modalities.download_fsdd", lambda root: fetched.append(("fsdd", root)))
    monkeypatch.setattr("racmkd.data.modalities.download_pendigits", lambda root: fetched.append(("pendigits", root)))
    monkeypatch.setattr("racmkd_imu.modality.download", lambda root: fetched.append((FOLDER, root)))
    monkeypatch.setattr(dataset_module, "build_dataset", lambda cfg: type("Built", (), {"info": {"built": True}})())
    config = PLUGIN / "imu.yaml"
    cfg = load_config(config)
    assert cfg.data.modalities == ("image", "audio", NAME) and cfg.runtime.critical == {NAME: "critical"}
    result = CliRunner().invoke(app, ["data", "--download", "--config", str(config), "--set", f"data.root={tmp_path}"])
    assert result.exit_code == 0 and json.loads(result.output) == {"built": True}, result.output
    assert fetched == [("mnist", tmp_path), ("fsdd", tmp_path), (FOLDER, tmp_path)]  # no pen digits: the config does not use them
    with pytest.raises(DataError, match="imu: no download; put its data under"):
        Modality.download(ImuModality(), tmp_path)  # a modality that does not say how
    # A plugin written before the hook: passed over where its data is, named before anything is fetched where not.
    monkeypatch.setattr(ImuModality, "download", Modality.download)
    fetched.clear()
    (tmp_path / FOLDER).mkdir()
    assert CliRunner().invoke(app, ["data", "--download", "--config", str(config), "--set", f"data.root={tmp_path}"]).exit_code == 0
    assert [name for name, _ in fetched] == ["mnist", "fsdd"]
    fetched.clear()
    (tmp_path / FOLDER).rmdir()
    result = CliRunner().invoke(app, ["data", "--download", "--config", str(config), "--set", f"data.root={tmp_path}"])
    assert result.exit_code == 2 and "imu: no download (Modality.download) and no data under" in result.output and fetched == [], result.output


def write_recordings(folder: Path, recordings: dict[str, str]) -> None:
    for name, text in recordings.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def test_the_recordings_parser_names_the_file_and_line_of_bad_input(imu_registered: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import racmkd_imu.modality

    from racmkd.config import DataConfig
    from racmkd.data.fsdd import recordings_digest
    from racmkd.data.paths import DataError

    folder = tmp_path / FOLDER
    good = {f"readings_{n}_digit_{n % 10}.csv": f"{n},0,1000,0.5,-2,3\n{n + 1},1,999,0.5,-2,3\n" for n in range(20)}
    write_recordings(folder, {**good, "below_800/readings_20_digit_0.csv": "1,2,3,4,5,6\n"})
    recordings = load_recordings(folder)
    assert [n for n, _, _ in recordings] == list(range(21)) and recordings[3][1] == 3 and recordings[3][2].shape == (2, 6)
    # The modality loads the set only when its files are the set's (here: this small one's digest).
    with pytest.raises(DataError, match=r"the 21 recordings \(the set: 1031\) do not match"):
        ImuModality(protocol="avmnist").load_banks(tmp_path, DataConfig())
    files = [(p.relative_to(folder).as_posix(), p.read_bytes()) for p in folder.rglob("*.csv")]
    monkeypatch.setattr(racmkd_imu.modality, "IMU_PEN_DIGITS_SHA256", recordings_digest(files))
    banks = ImuModality(protocol="avmnist").load_banks(tmp_path, DataConfig())
    assert {s: len(b) for s, b in banks.items()} == {"train": 14, "val": 2, "test": 5} and banks["train"].data.shape[1:] == (len(AXES), SAMPLES)
    assert split_of(13) == "val" and split_of(15) == "test" and split_of(16) == "train"
    for name, text, message in (
        ("readings_30_digit_3.csv", "1,2,3\n", "readings_30_digit_3.csv:1: expected 6 numbers"),
        ("readings_30_digit_3.csv", "1,2,3,4,5,6\n1,2,x,4,5,6\n", "readings_30_digit_3.csv:2: expected 6 numbers"),
        ("readings_30_digit_3.csv", "1,2,3,4,5,nan\n", "readings_30_digit_3.csv:1: expected 6 numbers"),
        ("readings_30_digit_3.csv", "\n", "readings_30_digit_3.csv: no readings"),
        ("notes.csv", "1,2,3,4,5,6\n", "notes.csv: not named readings_<n>_digit_<d>.csv"),
        ("below_800/readings_5_digit_5.csv", "1,2,3,4,5,6\n", "recording 5 is also"),
    ):
        write_recordings(folder, {name: text})
        with pytest.raises(DataError, match=message):
            load_recordings(folder)
        (folder / name).unlink()
    with pytest.raises(DataError, match="python -m racmkd_imu.data"):
        load_recordings(tmp_path / "absent")
    write_recordings(folder, {".checkpoints/readings_40_digit_4.csv": "junk\n", "._readings_41_digit_4.csv": "junk\n"})  # hidden: not the set's
    assert [n for n, _, _ in load_recordings(folder)] == list(range(21))
    for n in (0, 5, 10, 15):
        (folder / f"readings_{n}_digit_{n % 10}.csv").unlink()
    (folder / "below_800/readings_20_digit_0.csv").unlink()
    with pytest.raises(DataError, match="do not match"):  # recordings gone: not the set
        ImuModality(protocol="avmnist").load_banks(tmp_path, DataConfig())
    files = [(p.relative_to(folder).as_posix(), p.read_bytes()) for p in folder.rglob("*.csv") if not p.name.startswith(".") and ".checkpoints" not in p.parts]
    monkeypatch.setattr(racmkd_imu.modality, "IMU_PEN_DIGITS_SHA256", recordings_digest(files))
    with pytest.raises(DataError, match="no test recordings"):
        ImuModality(protocol="avmnist").load_banks(tmp_path, DataConfig())


def test_the_recordings_download_installs_the_data_folder_once_it_checks(tmp_path: Path) -> None:
    import tarfile

    from racmkd.data.fsdd import recordings_digest
    from racmkd.data.paths import DataError

    files = {"data/readings_1_digit_0.csv": "1,2,3,4,5,6\n", "data/below_800/readings_2_digit_7.csv": "6,5,4,3,2,1\n", "README.md": "not data\n"}
    write_recordings(tmp_path / "repo-270d8af", files)
    archive = tmp_path / "repo.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "repo-270d8af", arcname="repo-270d8af")
    digest = recordings_digest([("readings_1_digit_0.csv", b"1,2,3,4,5,6\n"), ("below_800/readings_2_digit_7.csv", b"6,5,4,3,2,1\n")])
    with pytest.raises(DataError, match="expected " + "0" * 64 + "; nothing was written"):
        download(tmp_path / "root", url=archive.as_uri(), expected_sha256="0" * 64)
    assert not (tmp_path / "root" / FOLDER).exists()
    target = download(tmp_path / "root", url=archive.as_uri(), expected_sha256=digest)
    assert target == tmp_path / "root" / FOLDER and sorted(p.relative_to(target).as_posix() for p in target.rglob("*.csv")) == [
        "below_800/readings_2_digit_7.csv",
        "readings_1_digit_0.csv",
    ]
    assert [(n, d) for n, d, _ in load_recordings(target)] == [(1, 0), (2, 7)]
    archive.unlink()  # the files there match: nothing is fetched
    assert download(tmp_path / "root", url=archive.as_uri(), expected_sha256=digest) == target
    assert FILE.fullmatch("readings_1051_digit_9.csv") and not FILE.fullmatch("readings_1_digit_10.csv")
