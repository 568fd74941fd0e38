"""A third modality added as README's "Adding a modality" says, by the example plugin in
examples/imu_plugin (nothing of it lives in the package): its `Signal` and options and its
`Modality` registered under one name, then `data.modalities: [image, audio, imu]` and nothing else
changed. The synthetic sensor (racmkd_imu.synthetic) is a 3-axis motion trace per item, written as
.npy files under a data root beside MNIST and FSDD; each digit has its own posture and rhythm,
blurred by noise, so the trace tells the digit often but not always.

One small run goes the whole way: the dataset pairs the traces by label within each split, the
teachers and a student get an imu encoder, the predictor takes `imu=`, the `inputs` compression
step lowers imu's own knob, the exported ONNX model's contract describes imu's preprocessing, the
edge runtime and the servers answer from it, and `racmkd predict` in a process of its own finds
the plugin through the entry points of examples/imu_plugin/pyproject.toml."""

from __future__ import annotations

import io
import json
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
    from racmkd_imu.signal import AXES, NAME, SAMPLES, ImuOptions, ImuSignal, ImuSpec
    from racmkd_imu.synthetic import ITEMS, write_traces
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
    """The real MNIST and FSDD (linked) and the synthetic traces under one data root."""
    root = tmp_path_factory.mktemp("data")
    for folder in ("mnist", "fsdd"):
        (root / folder).symlink_to(shared_root / folder, target_is_directory=True)
    write_traces(root)
    return root


RECIPE = """steps:
  - inputs: {reduce: {imu: {length: 8}}, finetune: {epochs: 1, samples: 512, lr: 0.003}}
  - export: {int8: static, int8_weights: false, calibration_samples: 64, latency_iters: 5, min_agreement: 0.0, max_accuracy_drop: 1.0, prefer: smaller}
"""


@pytest.fixture(scope="module")
def three(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, PairedDataset, Path]:
    """A run on image, audio and imu: teachers, one tier's student (all three inputs, level 2: imu
    16 steps), compressed by a recipe that lowers imu to 8 steps."""
    from conftest import one_tier_run

    return one_tier_run(
        tmp_path_factory.mktemp("three"),
        "three",
        ["image", "audio", NAME],
        "{name: low, budget_bytes: 65536, modalities: [image, audio, imu], scale: 2, depth: 1}",
        RECIPE,
        f"data.root={data_root}",
        "students.train={epochs: 4, modality_dropout: 0.3}",
    )


def raw_inputs(dataset: PairedDataset, rows: range) -> list[dict[str, np.ndarray]]:
    """Raw test inputs as a caller holds them: uint8 images, int16 recordings, float traces."""
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
    from racmkd.data.dataset import cache_path

    cfg, dataset, _ = three
    assert list(dataset.modalities) == ["image", "audio", NAME] and isinstance(dataset.modalities[NAME], ImuModality)
    ids = {s: set(dataset.banks[NAME][s].ids) for s in SPLITS}
    assert all(len(ids[s]) == 10 * ITEMS[s] for s in SPLITS)
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    for s, split in dataset.splits.items():
        assert torch.equal(dataset.banks[NAME][s].labels[split.index[NAME]], split.labels), s  # every sample's trace is of its digit, from its split
    assert dataset.info["modalities"][NAME]["items"] == {s: 10 * n for s, n in ITEMS.items()}
    # The cache's key reads imu's folder: a trace replaced is another dataset.
    before = cache_path(cfg.data)
    victim = next((data_root / "imu" / "test").glob("*.npy"))
    np.save(victim, np.load(victim) + 1)
    assert cache_path(cfg.data) != before


def test_teachers_and_student_use_imu(three: tuple[RunConfig, PairedDataset, Path]) -> None:
    from racmkd.models.checkpoint import load_model
    from racmkd.models.inference import predict_split

    _, dataset, run_dir = three
    assert {p.stem for p in (run_dir / "checkpoints").glob("*.pt")} == {"teacher", "teacher_image", "teacher_audio", f"teacher_{NAME}", "low"}
    teacher, specs, _, _ = load_model(run_dir / "checkpoints" / "teacher.pt")
    assert teacher.modalities == ["image", "audio", NAME] and specs[NAME] == ImuSpec(SAMPLES, 64)
    model, specs, _, _ = load_model(run_dir / "checkpoints" / f"teacher_{NAME}.pt")
    (logits,), labels = predict_split(model, specs, dataset, "test")
    assert (logits.argmax(1) == labels).float().mean() > 0.3  # the trace alone tells the digit well above chance (0.1): 0.47 here
    student, specs, _, _ = load_model(run_dir / "checkpoints" / "low.pt")
    assert student.modalities == ["image", "audio", NAME] and specs[NAME] == ImuSpec(SAMPLES, 16)
    (everything, imu_only), labels = predict_split(student, specs, dataset, "test", withheld=((), ("image", "audio")))
    assert (imu_only.argmax(1) == labels).float().mean() > 0.4  # 0.69 here; 0.92 with all three
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
    assert degraded["4.0"] < degraded["0.0"] - 0.05  # noise 4x the posture's scale: 0.37 against 0.47 here
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
    with pytest.raises(ValueError, match="imu: expected 3 axes x 64 samples"):
        predictor.predict(imu=np.zeros((3, 10), np.float32))
    with pytest.raises(ValueError, match="came in dead"):  # a flat trace is a dead sensor
        predictor.predict(imu=np.zeros((3, SAMPLES), np.float32))


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
    assert inputs["step"] == "inputs" and inputs["before"]["input_values"][NAME] == 3 * 16 and inputs["after"]["input_values"][NAME] == 3 * 8
    assert inputs["details"]["after"][NAME] == {"samples": SAMPLES, "length": 8} and inputs["details"]["after"]["image"] == inputs["details"]["before"]["image"]
    artifact = run_dir / "compressed" / "low" / record["artifact"]
    contract = read_contract(artifact)
    assert contract["inputs"][NAME] == {
        "modality": NAME,
        "spec": {"samples": SAMPLES, "length": 8},
        "shape": [3, 1, 8],
        "steps": ["3 axes x 64 samples, float", "average pooling in time to 8 steps"],
        "layout": ImuSignal.layout,
    }
    assert specs_from_contract(contract)[NAME] == ImuSpec(SAMPLES, 8)
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
    mixed = [[1.0, True] + [0.0] * (SAMPLES - 2)] * AXES  # numpy had made numbers of the boolean
    for body, message in (
        ({NAME: [["0.5"] * SAMPLES] * AXES}, "valid number"),
        ({NAME: [[True] * SAMPLES] * AXES}, "valid number"),
        ({NAME: mixed}, "valid number"),
        ({NAME: [[0.0] * 10] * AXES}, "3 axes x 64 samples"),
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

    code = f"import sys; sys.modules['torch'] = None; sys.path.insert(0, {str(PLUGIN)!r}); import racmkd_imu.signal as s, racmkd_imu.synthetic; s.register(); from racmkd.config import modality_options; from racmkd.registry import SIGNALS; print(SIGNALS.names(), modality_options().names())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "['audio', 'image', 'imu', 'pen'] ['audio', 'image', 'imu', 'pen']", done.stderr[-2000:]


def test_the_example_data_is_written_once_and_stray_files_are_named(imu_registered: Any, tmp_path: Path) -> None:
    from racmkd.config import DataConfig
    from racmkd.data.paths import DataError

    assert write_traces(str(tmp_path), items={"train": 2, "val": 1, "test": 1}) == tmp_path / NAME
    with pytest.raises(FileExistsError, match="remove the folder"):
        write_traces(tmp_path)
    banks = ImuModality(protocol="avmnist").load_banks(tmp_path, DataConfig())
    assert {s: len(b) for s, b in banks.items()} == {"train": 20, "val": 10, "test": 10} and banks["train"].data.shape[1:] == (AXES, SAMPLES)
    np.save(tmp_path / NAME / "val" / "notes.npy", np.zeros(3))
    with pytest.raises(DataError, match=r"\['notes.npy'\] are not named <digit>-<item>.npy"):
        ImuModality(protocol="avmnist").load_banks(tmp_path, DataConfig())
