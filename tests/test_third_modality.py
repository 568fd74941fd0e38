"""A third modality added as README's "Adding a modality" says: a `Signal`, a `Modality` and its
options registered under one name (here, in this module: nothing of it lives in the package), then
`data.modalities: [image, audio, imu]` and nothing else changed. The synthetic sensor is a 3-axis
accelerometer trace per item, written as .npy files under a data root beside MNIST and FSDD: each
digit has its own mean posture (a point on a ring, plus up or down) and rhythm, blurred by per-item
and per-sample noise, so the trace tells the digit often but not always.

One small run goes the whole way: the dataset pairs the traces by label within each split, the
teachers and a student get an imu encoder, the predictor takes `imu=`, the `inputs` compression
step lowers imu's own knob, the exported ONNX model's contract describes imu's preprocessing, the
edge runtime and the servers answer from it."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import racmkd
from racmkd.config import ConfigError, DataConfig, RunConfig, load_config
from racmkd.data.dataset import PairedDataset
from racmkd.data.modalities import SPLITS, Bank, Modality
from racmkd.data.paths import DataError
from racmkd.data.signals import Signal, pooling_matrix
from racmkd.registry import MODALITIES, MODALITY_OPTIONS, SIGNALS

TINY = Path(__file__).parent / "tiny.yaml"
NAME = "imu"
AXES, SAMPLES = 3, 64  # one trace: 3 axes x 64 samples
ITEMS = {"train": 60, "val": 20, "test": 20}  # traces per digit and split


# The modality, as a plugin would write it ---------------------------------------------------------


@dataclass(frozen=True)
class ImuOptions:
    """data.options.imu: the time steps the models read per level (average pooling of the trace)."""

    levels: tuple[int, ...] = (64, 32, 16, 8)

    def __post_init__(self) -> None:
        if not self.levels or not all(1 <= n <= SAMPLES for n in self.levels):
            raise ConfigError(f"levels {list(self.levels)}: at least one, each 1-{SAMPLES} time steps")


@dataclass(frozen=True)
class ImuSpec:
    """What an imu model expects: the trace's `samples`, average-pooled to `length` steps."""

    samples: int = SAMPLES
    length: int = SAMPLES

    def __post_init__(self) -> None:
        if not (isinstance(self.samples, int) and isinstance(self.length, int) and 1 <= self.length <= self.samples):
            raise ConfigError(f"need whole numbers 1 <= length <= samples, got length {self.length!r}, samples {self.samples!r}")


class ImuSignal(Signal):
    """3-axis traces: checked, average-pooled in time; the axes are the feature's channels."""

    name = NAME
    spec_type = ImuSpec
    layout = "(batch, axes, 1, steps) float32"

    def to_raw(self, value: Any, spec: ImuSpec, sample_rate: int | None = None) -> np.ndarray:
        array = np.asarray(value)
        if array.shape != (AXES, spec.samples) or array.dtype.kind not in "iuf":
            raise ValueError(f"imu: expected {AXES} axes x {spec.samples} samples of numbers, got shape {array.shape}, dtype {array.dtype}")
        raw = array.astype(np.float32)
        if not np.isfinite(raw).all():
            raise ValueError("imu: the trace holds NaN or infinite samples")
        return raw[None]

    def blank(self, spec: ImuSpec) -> np.ndarray:
        return np.zeros((1, AXES, spec.samples), dtype=np.float32)

    def features(self, raw: np.ndarray, spec: ImuSpec) -> np.ndarray:
        pooled = raw if raw.shape[-1] == spec.length else raw @ pooling_matrix(raw.shape[-1], spec.length)  # (B, 3, T) @ (T, L)
        return pooled[:, :, None].astype(np.float32, copy=False)  # (B, 3, 1, L)

    def feature_shape(self, spec: ImuSpec) -> tuple[int, ...]:
        return (AXES, 1, spec.length)

    def steps(self, spec: ImuSpec) -> list[str]:
        steps = [f"{AXES} axes x {spec.samples} samples, float"]
        if spec.length != spec.samples:
            steps.append(f"average pooling in time to {spec.length} steps")
        return steps


class ImuModality(Modality):
    """Traces stored as <root>/imu/<split>/<digit>-<item>.npy, split by folder (as the sensor's
    dataset ships them)."""

    name = NAME
    options_type = ImuOptions
    teacher_encoder = "cnn2d"
    student_encoder = "dscnn2d"
    data_folders = ("imu",)
    reductions: ClassVar[dict[str, str]] = {"length": "time steps, by average pooling (64 -> 32 -> 16 -> 8)"}

    def load_banks(self, root: Path, cfg: DataConfig) -> dict[str, Bank]:
        banks = {}
        for split in SPLITS:
            files = sorted((root / "imu" / split).glob("*.npy"))
            if not files:
                raise DataError(f"{root / 'imu' / split}: no traces (<digit>-<item>.npy)")
            data = torch.from_numpy(np.stack([np.load(f) for f in files]))  # (R, 3, 64) float32
            banks[split] = Bank(data, torch.tensor([int(f.name.split("-")[0]) for f in files]), [f.name for f in files])
        return banks

    @property
    def n_levels(self) -> int:
        return len(self.options.levels)

    def spec(self, level: int = 0) -> ImuSpec:
        return ImuSpec(SAMPLES, self.options.levels[level])

    def features(self, raw: torch.Tensor, spec: ImuSpec, augment_seed: int | None = None, memo: dict | None = None) -> torch.Tensor:
        if augment_seed is not None:  # a sensor's gain varies a little from device to device
            raw = raw * (1 + 0.1 * (2 * torch.rand(raw.shape[0], 1, 1, generator=torch.Generator().manual_seed(augment_seed)) - 1))
        pooled = raw if raw.shape[-1] == spec.length else F.adaptive_avg_pool1d(raw, spec.length)
        return pooled.unsqueeze(2)  # (B, 3, 1, L)

    def check_reduction(self, spec: ImuSpec, reduced: ImuSpec) -> None:
        super().check_reduction(spec, reduced)
        if reduced.samples != spec.samples:
            raise ValueError("imu: the trace's samples are the sensor's, not a knob")


def trace(digit: int, rng: np.random.Generator) -> np.ndarray:
    """One synthetic (3, 64) trace of a digit: its posture (a point on a ring, up for 5-9), blurred
    per item, a rhythm of 1-3 cycles, and sample noise."""
    angle = 2 * math.pi * digit / 10
    posture = np.array([math.cos(angle), math.sin(angle), 1.0 if digit >= 5 else -1.0]) + 0.3 * rng.standard_normal(AXES)
    t = np.arange(SAMPLES)
    rhythm = 0.5 * np.sin(2 * math.pi * (1 + digit % 3) * t / SAMPLES + rng.uniform(0, 2 * math.pi, (AXES, 1)))
    return (posture[:, None] + rhythm + 0.3 * rng.standard_normal((AXES, SAMPLES))).astype(np.float32)


def write_traces(root: Path, seed: int = 0) -> None:
    """ITEMS traces per digit and split; items are numbered across splits (an id is one trace)."""
    rng, item = np.random.default_rng(seed), 0
    for split, per_digit in ITEMS.items():
        folder = root / "imu" / split
        folder.mkdir(parents=True)
        for digit in range(10):
            for _ in range(per_digit):
                np.save(folder / f"{digit}-{item:05d}.npy", trace(digit, rng))
                item += 1


# Registration and the run ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imu_registered() -> Any:
    """The three registrations under one name, taken out again after this module's tests."""
    from racmkd.data import modalities as _modalities  # noqa: F401 - image and audio first, as the package registers them

    added = [(SIGNALS, ImuSignal), (MODALITY_OPTIONS, ImuOptions), (MODALITIES, ImuModality)]
    for registry, obj in added:
        registry.register(NAME)(obj)
    yield
    for registry, obj in added:
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
    from racmkd.data.dataset import build_dataset
    from racmkd.pipeline import compress_students, create_run, distill_students, train_teachers

    work = tmp_path_factory.mktemp("three")
    cfg = load_config(TINY, [
        f"data.cache_dir={work / 'cache'}", f"runs_dir={work / 'runs'}", "name=three", f"data.root={data_root}", "data.modalities=[image, audio, imu]",
        "teacher.unimodal={epochs: 4}", "teacher.fused={epochs: 1}", "students.train={epochs: 4, modality_dropout: 0.3}", "students.labels_only=false",
        "students.tiers=[{name: low, budget_bytes: 65536, modalities: [image, audio, imu], scale: 2, depth: 1}]",
    ])
    dataset = build_dataset(cfg.data, use_cache=False)
    run_dir = create_run(cfg)
    train_teachers(cfg, dataset, run_dir)
    distill_students(cfg, dataset, run_dir)
    recipe = work / "imu.yaml"
    recipe.write_text(RECIPE)
    compress_students(cfg, dataset, run_dir, ["low"], recipe=recipe)
    return cfg, dataset, run_dir


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


def test_predictor_takes_imu_as_a_keyword(three: tuple[RunConfig, PairedDataset, Path]) -> None:
    from racmkd.models.inference import predict_split

    _, dataset, run_dir = three
    predictor = racmkd.load(run_dir, "low")
    assert predictor.modalities == ["image", "audio", NAME]
    samples = raw_inputs(dataset, range(12))
    (everything, without_imu, imu_only), _ = predict_split(predictor.model, predictor.specs, dataset, "test", limit=12, withheld=((), (NAME,), ("image", "audio")))
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
    bad = {"empty.npy": "not a readable .npy array (EOFError", "both.npz": "an .npz archive", "words.npy": "<U1 values; pass an array of numbers"}  # an empty file said a bare "Aborted."
    for pair, message in ((f"gyro={tmp_path / 'trace.npy'}", "no modality 'gyro'"), (f"{NAME}={tmp_path / 'none.npy'}", "none.npy"), ("imu", "expected NAME=FILE.npy"), *((f"{NAME}={tmp_path / f}", m) for f, m in bad.items())):
        result = CliRunner().invoke(app, ["predict", "--run", str(run_dir), "--tier", "low", "--input", pair])
        assert result.exit_code == 2 and message in result.output, (pair, result.output)


def install_plugin(folder: Path) -> Path:
    """This module's imu as an installed distribution would declare it: entry points under
    racmkd.signals (the Signal and options) and racmkd.training (the Modality), each a module that
    registers what it names. Returns the folder to put on PYTHONPATH."""
    info = folder / "racmkd_imu_test-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: racmkd-imu-test\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[racmkd.signals]\n{NAME} = imu_signal_plugin\n\n[racmkd.training]\n{NAME} = imu_training_plugin\n")
    here = f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
    (folder / "imu_signal_plugin.py").write_text(here + f"from test_third_modality import ImuOptions, ImuSignal\nfrom racmkd.registry import MODALITY_OPTIONS, SIGNALS\nSIGNALS.register({NAME!r})(ImuSignal)\nMODALITY_OPTIONS.register({NAME!r})(ImuOptions)\n")
    (folder / "imu_training_plugin.py").write_text(here + f"from test_third_modality import ImuModality\nfrom racmkd.registry import MODALITIES\nMODALITIES.register({NAME!r})(ImuModality)\n")
    return folder


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
    env = {**os.environ, "RACMKD_PROGRESS": "0", "PYTHONPATH": os.pathsep.join([str(install_plugin(tmp_path / "site")), *filter(None, [os.environ.get("PYTHONPATH")])])}
    answer = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0 and json.loads(answer.stdout)["label"] == racmkd.load(run_dir, "low").predict(imu=x[NAME])[0], answer.stderr[-2000:]
    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
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
    assert contract["inputs"][NAME] == {"modality": NAME, "spec": {"samples": SAMPLES, "length": 8}, "shape": [3, 1, 8], "steps": ["3 axes x 64 samples, float", "average pooling in time to 8 steps"], "layout": ImuSignal.layout}
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
    for body, message in (({NAME: [["0.5"] * SAMPLES] * AXES}, "valid number"), ({NAME: [[True] * SAMPLES] * AXES}, "valid number"), ({NAME: mixed}, "valid number"), ({NAME: [[0.0] * 10] * AXES}, "3 axes x 64 samples"), ({"gyro": [1.0]}, "unknown inputs ['gyro']"), ({NAME: [[0.0], [0.0, 1.0]]}, "rectangular")):
        reply = client.post("/predict", json=body)
        assert reply.status_code == 422 and message in reply.text, (body, reply.text)

    edge = EdgeService(cfg, run_dir, cfg.serve)
    try:
        assert edge.modalities() == ["image", "audio", NAME]
        reply = TestClient(create_app(edge, cfg.serve, token=None)).post("/predict", json={NAME: x[NAME].tolist()})
        assert reply.status_code == 200 and reply.json()["variants"] == [f"low/{NAME}"] and reply.json()["label"] == share.predict(imu=x[NAME])[0], reply.text
    finally:
        edge.close()
