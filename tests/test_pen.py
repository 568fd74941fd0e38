"""The pen modality: the UCI pen digits' trajectories (a tablet's sensor readings), from the UNIPEN
files through the resampled trace to the features of a spec, in torch for training and in numpy
for deployment; its input-side compression (downsampling, statistical aggregation); its download."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from racmkd.config import ConfigError, DataConfig, load_config
from racmkd.data.dataset import build_dataset
from racmkd.data.download import download_pendigits
from racmkd.data.modalities import PenModality
from racmkd.data.paths import DataError
from racmkd.data.pendigits import PENDIGITS_SHA256, load_pendigits, parse_unipen
from racmkd.data.signals import PenSignal, PenSpec, pen_trace
from racmkd.utils import sha256

UNIPEN = """.INCLUDE        dene.doc

.LEXICON "0" "1" "2" "3" "4" "5" "6" "7" "8" "9"
.HIERARCHY      DIGIT

.SEGMENT DIGIT    0 ? "7"
.COMMENT 7 3  12
.PEN_DOWN
 100  400
 300  400
 200  100
.PEN_UP
.DT 100

.SEGMENT DIGIT    1-2 ? "4"
.COMMENT 4 5  40
.PEN_DOWN
 100  300
 100  200
 300  200
.PEN_UP
.PEN_DOWN
 250  350
 250  100
.PEN_UP
.DT 100
"""


def test_unipen_digits_are_read_with_writer_and_strokes(tmp_path: Path) -> None:
    seven, four = parse_unipen(UNIPEN, tmp_path / "x.unipen")
    assert (seven.digit, seven.writer, seven.item, four.digit, four.writer, four.item) == (7, 3, 0, 4, 5, 1)
    assert seven.points.tolist() == [[100, 400, 0], [300, 400, 0], [200, 100, 0]]
    assert four.points[:, 2].tolist() == [0, 0, 0, 1, 1]


@pytest.mark.parametrize(
    ("broken", "line"),
    [
        (UNIPEN.replace(" 300  400\n", " 300  400  7\n"), 10),  # a point of three numbers
        (UNIPEN.replace(".PEN_UP\n.DT 100\n\n.SEGMENT DIGIT    1-2", ".DT 100\n\n.SEGMENT DIGIT    1-2"), 14),  # no .PEN_UP before the next digit
        (UNIPEN.replace('"4"', '"x"'), 15),  # not a digit
        (UNIPEN.replace(".PEN_DOWN\n 250", " 250"), 22),  # coordinates outside a stroke
        (UNIPEN.replace(" 200  100\n", " 99999999999999  100\n"), 11),  # beyond 32-bit integers
    ],
)
def test_a_damaged_unipen_file_names_the_file_and_line(tmp_path: Path, broken: str, line: int) -> None:
    with pytest.raises(DataError, match=rf"x\.unipen:{line}: .*racmkd data --download"):
        parse_unipen(broken, tmp_path / "x.unipen")


def test_a_pen_digits_file_cut_short_at_a_digit_or_with_a_label_edited_is_refused(shared_root: Path, tmp_path: Path) -> None:
    """Both parse as well as the official file does: only its checksum tells them apart."""
    text = (shared_root / "pendigits" / "pendigits-test.unipen").read_text()
    half = text.index(".SEGMENT", len(text) // 2)
    for name, damaged in (("cut", text[:half]), ("relabelled", text.replace('"8"', '"3"', 1))):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "pendigits-test.unipen").write_text(damaged)
        assert load_pendigits(folder, "test", verify=False)  # it parses
        with pytest.raises(
            DataError, match=r"pendigits-test\.unipen: sha256 .* it parses \(\d+ digits\), but it is not the official file .*racmkd data --download"
        ):
            load_pendigits(folder, "test")


def test_the_real_pen_digits_hold_the_official_writer_independent_split(shared_root: Path) -> None:
    folder = shared_root / "pendigits"
    for name, digest in PENDIGITS_SHA256.items():
        assert sha256((folder / name).read_bytes()) == digest
    train, test = load_pendigits(folder, "train"), load_pendigits(folder, "test")
    assert (len(train), len(test)) == (7494, 3498)
    assert {d.writer for d in train} == set(range(1, 31)) and {d.writer for d in test} == set(range(1, 15))
    assert sorted({d.digit for d in test}) == list(range(10))
    lengths = [len(d.points) for d in train]
    assert (min(lengths), max(lengths)) == (9, 185)


def test_a_trace_is_normalised_and_evenly_spaced_along_the_path_jumps_included() -> None:
    four = np.array([[100, 300, 0], [100, 200, 0], [300, 200, 0], [250, 350, 1], [250, 100, 1]])
    trace = pen_trace(four, 64)
    x, y, down = trace
    assert trace.shape == (3, 64) and trace.dtype == np.float32
    # Centred on the bounding box (x 100-300, y 100-350), its longer side (250) scaled to 1; the path's ends are kept.
    assert np.allclose(trace[:2, 0], [-0.4, 0.3]) and np.allclose(trace[:2, -1], [0.2, -0.5])
    assert x.min() >= -0.4 - 1e-6 and x.max() <= 0.4 + 1e-6 and y.min() >= -0.5 - 1e-6 and y.max() <= 0.5 + 1e-6
    steps = np.hypot(np.diff(x), np.diff(y))
    corners = np.abs(steps - steps.max()) > 1e-4  # (a step that turns a corner is a chord: shorter)
    assert corners.sum() <= 3 and np.allclose(steps[~corners], steps.max(), atol=1e-5)
    # The path is 100 + 200 (stroke 0), a jump of 180.3 to (250, 350), then 250 (stroke 1): the points on the jump say so.
    path = 100 + 200 + math.hypot(50, 150) + 250
    along = np.linspace(0, path, 64)
    on_jump = (along > 300 + 1e-9) & (along < 300 + math.hypot(50, 150) - 1e-9)
    assert on_jump.any() and (down[on_jump] == 0).all() and (down[~on_jump] == 1).all()
    # Where, how large and how fast the digit was written does not change its trace.
    moved = four * [3, 3, 1] + [1000, -50, 0]
    slower = np.repeat(four, 3, axis=0)
    assert np.allclose(pen_trace(moved, 64), trace, atol=1e-6) and np.allclose(pen_trace(slower, 64), trace, atol=1e-6)
    huge = four.astype(np.float64) * 1e305  # (near float64's limits: the span overflowed to inf, every point to 0)
    assert np.allclose(pen_trace(huge, 64), trace, atol=1e-6)
    # A sample on a stroke's last or first point is pen down: only the inside of a jump is not.
    corner = pen_trace(np.array([[0, 0, 0], [1, 0, 0], [2, 0, 1], [3, 0, 1]]), 4)  # samples at 0, 1, 2, 3
    assert corner[2].tolist() == [1, 1, 1, 1]
    dot = pen_trace(np.array([[5, 5, 0], [5, 5, 0]]), 8)
    assert (dot[:2] == 0).all() and (dot[2] == 1).all()


@pytest.fixture(scope="module")
def pen(shared_root: Path, cache_dir: Path) -> tuple[PenModality, dict]:
    modality = PenModality()
    return modality, modality.load_banks(shared_root, DataConfig())


def test_validation_holds_out_writers_and_the_banks_keep_every_digit(pen: tuple[PenModality, dict]) -> None:
    modality, banks = pen
    assert {s: len(b) for s, b in banks.items()} == {"train": 7494 - len(banks["val"]), "val": len(banks["val"]), "test": 3498}
    assert 1000 < len(banks["val"]) < 1600  # writers 26-30 of 30
    assert not set(banks["train"].ids) & set(banks["val"].ids)
    assert banks["train"].data.shape[1:] == (3, modality.options.samples)


def test_the_spread_does_not_cancel_where_a_window_sits_far_from_zero(pen: tuple[PenModality, dict]) -> None:
    """E[x^2] - E[x]^2 in float32 lost 2e-5 where the mean is large beside the spread (37 samples,
    5 overlapping windows): both sides now agree with a two-pass float64 reference to 1e-6."""
    modality, _ = pen
    spec = PenSpec(37, 5, 2)
    raw = (0.45 + 0.002 * torch.randn(16, 3, 37, generator=torch.Generator().manual_seed(0))).float()
    ours, theirs = modality.features(raw, spec)[:, :, 1].numpy(), PenSignal().features(raw.numpy(), spec)[:, :, 1]
    wide = raw.double().numpy()
    reference = np.stack([wide[..., (w * 37) // 5 : -(-(w + 1) * 37 // 5)].std(axis=-1) for w in range(5)], axis=-1)  # torch's adaptive bins
    assert np.abs(ours - reference).max() < 1e-6 and np.abs(theirs - reference).max() < 1e-6


@pytest.mark.parametrize("spec", [PenSpec(32, 32, 1), PenSpec(32, 8, 1), PenSpec(32, 8, 2), PenSpec(32, 5, 2), PenSpec(32, 1, 2)])
def test_training_and_deployment_compute_the_same_features(pen: tuple[PenModality, dict], spec: PenSpec) -> None:
    modality, banks = pen
    raw = modality.gather(banks["test"], torch.arange(0, 3498, 50))
    ours, theirs = modality.features(raw, spec), PenSignal().features(raw.numpy(), spec)
    assert ours.shape == (len(raw), *modality.feature_shape(spec)) == theirs.shape
    assert np.abs(ours.numpy() - theirs).max() < 1e-6
    if spec.statistics == 2:  # the spread row is each window's standard deviation
        window = raw[:, :, : 32 // spec.length] if 32 % spec.length == 0 else None
        if window is not None:
            assert torch.allclose(ours[:, :, 1, 0], window.std(dim=-1, unbiased=False), atol=1e-4)


def test_augmentation_turns_and_scales_the_digit_but_not_its_pen_state(pen: tuple[PenModality, dict]) -> None:
    modality, banks = pen
    raw = modality.gather(banks["train"], torch.arange(16))
    spec = PenSpec(32, 32, 1)
    plain, turned = modality.features(raw, spec), modality.features(raw, spec, augment_seed=5)
    assert torch.equal(turned, modality.features(raw, spec, augment_seed=5)) and not torch.allclose(plain, turned)
    assert torch.equal(plain[:, 2], turned[:, 2])
    radius = lambda f: f[:, :2].square().sum(dim=1).sqrt()  # noqa: E731 - a rotation keeps it, the zoom scales it by at most 10%
    ratio = radius(turned) / radius(plain).clamp(min=1e-6)
    assert ((ratio > 0.89) & (ratio < 1.11) | (radius(plain) < 1e-3)).all()


def test_a_user_trajectory_is_checked_and_resampled_as_the_dataset_was(pen: tuple[PenModality, dict], shared_root: Path) -> None:
    modality, banks = pen
    signal, spec = PenSignal(), modality.spec(0)
    digit = load_pendigits(shared_root / "pendigits", "test")[0]
    assert np.array_equal(signal.to_raw(digit.points, spec)[0], banks["test"].data[0].numpy())
    assert np.array_equal(signal.to_raw(banks["test"].data[0].numpy(), spec), banks["test"].data[:1].numpy())  # a trace already resampled
    for bad, why in (
        (np.zeros((5, 2)), "shape"),
        (np.zeros((0, 3)), r"shape \(0, 3\)"),
        (np.array([[1.0, np.nan, 0]]), "NaN"),
        (np.array([["a", "b", "c"]]), "dtype"),
    ):
        with pytest.raises(ValueError, match=why):
            signal.to_raw(bad, spec)
    assert signal.input_quality(signal.to_raw(digit.points, spec)) == 1.0
    assert signal.input_quality(signal.to_raw(np.array([[3, 4, 0]] * 5), spec)) == 0.0  # the pen never moved
    assert signal.input_quality(signal.blank(spec)) == 0.0
    still = np.stack([np.full(32, 0.3), np.full(32, -0.2), np.ones(32)]).astype(np.float32)  # a resampled trace that never moves
    assert signal.input_quality(signal.to_raw(still, spec)) == 0.0
    # A pen resting on the tablet: its jitter, centred and scaled, spans a full-size trace; judged
    # dead by its shape (a path that turns by over 50 degrees on average), every test digit alive.
    jitter = np.column_stack([np.random.default_rng(0).normal(3000.0, 2.0, (100, 2)), np.zeros(100)])
    assert np.ptp(signal.to_raw(jitter, spec)[0, :2], axis=-1).max() > 0.5 and signal.input_quality(signal.to_raw(jitter, spec)) == 0.0
    assert all(signal.input_quality(signal.to_raw(d.points, spec)) == 1.0 for d in load_pendigits(shared_root / "pendigits", "test"))
    # On fewer resampled points writing turns more from one to the next (a circle at 8, 51 degrees a
    # step): such traces are not judged by their turns.
    circle = np.column_stack([100 * np.cos(np.linspace(0, 2 * np.pi, 60)), 100 * np.sin(np.linspace(0, 2 * np.pi, 60)), np.zeros(60)])
    assert signal.input_quality(signal.to_raw(circle, PenSpec(samples=8, length=8))) == 1.0 and signal.input_quality(signal.to_raw(circle, spec)) == 1.0
    assert (
        signal.input_quality(np.concatenate([signal.to_raw(jitter, spec), signal.to_raw(digit.points, spec)])) == 1.0
    )  # a batch: dead only when every trace is
    with pytest.raises(ValueError, match="pen: expected points .* one array for all strokes"):
        signal.to_raw([[[0, 0, 0], [1, 1, 0]], [[2, 2, 1]]], spec)  # strokes as ragged lists
    # Points stacked the other way round, (3, n), are refused; also with n = 32, the trace's shape, where
    # tablet coordinates were taken as a trace already centred and scaled.
    sideways = next(d.points for d in load_pendigits(shared_root / "pendigits", "test") if len(d.points) == spec.samples)
    for n in (spec.samples, spec.samples + 1):
        with pytest.raises(ValueError, match="pen: .*transpose it|pen: expected points"):
            signal.to_raw(np.resize(sideways, (n, 3)).T, spec)
    not_a_pen = banks["test"].data[0].numpy().copy()
    not_a_pen[2, 0] = 0.5  # the pen channel is 0 or 1
    with pytest.raises(ValueError, match="transpose it"):
        signal.to_raw(not_a_pen, spec)
    contract = signal.contract(PenSpec(32, 8, 2))
    assert contract["shape"] == [3, 2, 8] and PenSignal.spec_from_dict(contract["spec"]) == PenSpec(32, 8, 2)


def test_downsampling_is_a_reduction_and_aggregation_a_levels_design() -> None:
    modality = PenModality()
    full = modality.spec(0)
    assert modality.reduce(full, length=8) == PenSpec(32, 8, 1)
    assert modality.reduce(PenSpec(32, 8, 2), length=4) == PenSpec(32, 4, 2)
    with pytest.raises(ValueError, match=r"unknown input reduction.*knows \['length'\]"):
        modality.reduce(full, length=8, statistics=2)  # a network trained on means has no weights for spreads
    with pytest.raises(ValueError, match="unknown input reduction"):
        modality.reduce(full, samples=16)  # the points along the path are the dataset's resampling
    with pytest.raises(ValueError, match="larger"):
        modality.reduce(PenSpec(32, 8, 1), length=16)


def test_pen_options_are_checked_when_the_config_is_read() -> None:
    for override, words in (
        ("data.options.pen.levels=[[8, 3]]", "statistics 1"),
        ("data.options.pen.levels=[[64, 1]]", "windows 1-32"),
        ("data.options.pen.val_writers=[5, 2]", "val_writers"),
        ("data.options.pen.zoom=1.0", "zoom"),
    ):
        with pytest.raises(ConfigError, match=words):
            load_config(None, ["data.modalities=[image, audio, pen]", override])


def test_the_dataset_pairs_pen_trajectories_by_digit_within_each_split(shared_root: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RACMKD_CACHE", str(cache_dir))
    cfg = load_config(Path(__file__).parent / "tiny.yaml", ["data.modalities=[image, audio, pen]"])
    dataset = build_dataset(cfg.data)
    banks = dataset.banks["pen"]
    for split in ("train", "val", "test"):
        rows = dataset.splits[split].index["pen"]
        assert torch.equal(banks[split].labels[rows], dataset.splits[split].labels)
    val_writers = {i.split("#")[1] for i in banks["val"].ids}
    assert not val_writers & {i.split("#")[1] for i in banks["train"].ids}


def lzw_literals(data: bytes) -> bytes:
    """`data` as a .Z stream (Unix compress) of 9-bit literal codes only: valid, if no smaller, up to
    256 bytes (then the decoder's table is full and its codes grow to 10 bits)."""
    assert len(data) <= 256
    bits = "".join(format(byte, "09b")[::-1] for byte in data)  # codes are written least significant bit first
    bits += "0" * (-len(bits) % 8)
    return b"\x1f\x9d\x09" + bytes(int(bits[i : i + 8][::-1], 2) for i in range(0, len(bits), 8))


def test_pen_digits_download_uncompresses_and_checks_each_file(tmp_path: Path) -> None:
    server = tmp_path / "uci"
    server.mkdir()
    one = '.SEGMENT DIGIT 0 ? "7"\n.COMMENT 7 3 12\n.PEN_DOWN\n 100 400\n 300 400\n 200 100\n.PEN_UP\n'
    contents = {"pendigits-train.unipen": one.encode(), "pendigits-test.unipen": UNIPEN.replace('"7"', '"1"').encode()}
    files = {"pendigits-train.unipen": "orig.tra.Z", "pendigits-test.unipen": "orig.tes"}  # compressed, and not
    (server / "orig.tra.Z").write_bytes(lzw_literals(contents["pendigits-train.unipen"]))
    (server / "orig.tes").write_bytes(contents["pendigits-test.unipen"])
    expected = {name: sha256(data) for name, data in contents.items()}
    root = tmp_path / "root"
    saved = download_pendigits(root, base_url=server.as_uri(), files=files, expected=expected)
    assert [p.read_bytes() for p in saved] == list(contents.values())
    assert [d.digit for d in load_pendigits(root / "pendigits", "test", verify=False)] == [1, 4]  # (not the official file)
    (server / "orig.tra.Z").unlink()  # what is there and checks out is not fetched again
    assert download_pendigits(root, base_url=server.as_uri(), files=files, expected=expected) == saved
    (server / "orig.tes").write_bytes(b"something else")
    (root / "pendigits" / "pendigits-test.unipen").write_bytes(b"damaged")
    with pytest.raises(DataError, match="sha256 .* nothing was written"):
        download_pendigits(root, base_url=server.as_uri(), files=files, expected=expected)
    assert (root / "pendigits" / "pendigits-test.unipen").read_bytes() == b"damaged"
    (server / "orig.tes").write_bytes(b"\x1f\x9d\x90\x01")  # a .Z stream cut short
    with pytest.raises(DataError, match=r"not a valid \.Z"):
        download_pendigits(root, base_url=server.as_uri(), files=files, expected=expected)


RECIPE = """steps:
  - inputs: {reduce: {pen: {length: 4}}, finetune: {epochs: 1, samples: 512, lr: 0.003}}
  - export: {int8: static, int8_weights: false, calibration_samples: 64, latency_iters: 5, min_agreement: 0.0, max_accuracy_drop: 1.0, prefer: smaller}
"""


@pytest.fixture(scope="module")
def pen_run(shared_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A small run on image and pen: teachers, a pen-only student at 8 windows of mean and spread
    (its level's design) distilled from the fused teacher, then compressed to 4 windows, and exported."""
    from conftest import one_tier_run

    return one_tier_run(
        tmp_path_factory.mktemp("pen"),
        "pen",
        ["image", "pen"],
        "{name: low, budget_bytes: 65536, modalities: [pen], scale: 2, depth: 1}",
        RECIPE,
        "data.options.pen.levels=[[32, 1], [16, 1], [8, 2], [4, 1]]",
    )


def test_a_pen_only_student_learns_and_answers_a_trajectory_as_the_tablet_gives_it(pen_run: tuple, shared_root: Path) -> None:
    import json

    import racmkd
    from racmkd.runtime.predictor import OnnxPredictor

    cfg, dataset, run_dir = pen_run
    predictor = racmkd.load(run_dir, "low")
    assert predictor.modalities == ["pen"] and predictor.specs["pen"] == PenSpec(32, 8, 2)
    digits = load_pendigits(shared_root / "pendigits", "test")[:200]
    right = sum(predictor.predict(pen=d.points)[0] == d.digit for d in digits)
    assert right >= 120  # 60% of unseen writers' digits after 1,024 samples of 4 epochs (chance: 10%)
    compression = json.loads((run_dir / "compressed" / "low" / "compression.json").read_text())
    inputs = next(step for step in compression["steps"] if step["step"] == "inputs")
    assert inputs["details"]["after"]["pen"] == {"samples": 32, "length": 4, "statistics": 2}
    deployed = OnnxPredictor(run_dir / "compressed" / "low" / compression["artifact"])
    assert deployed.specs["pen"] == PenSpec(32, 4, 2)
    compressed = racmkd.load(run_dir, "low_compressed")
    for d in digits[:20]:  # the ONNX artifact reads points through the contract: as the compressed network does
        (label, probs), (expected, reference) = deployed.predict(pen=d.points), compressed.predict(pen=d.points)
        assert label == expected or np.abs(probs - reference).max() < 0.05
    with pytest.raises(ValueError, match=r"pen \(a dot, or jitter in place\) came in dead"):
        deployed.predict(pen=np.array([[1, 1, 0]] * 4))


def test_a_pen_model_runs_without_racmkd_from_its_contract(pen_run: tuple, shared_root: Path, consumer) -> None:  # noqa: ANN001
    """docs/contract.md said only that the pen is resampled evenly along its path: read as equal
    parts' midpoints, 97.6% of the labels agreed; a one-point first stroke's end read as a jump
    (test digit 41). The example, written from the doc alone, computes racmkd's features."""
    import racmkd

    _, _, run_dir = pen_run
    digits = load_pendigits(shared_root / "pendigits", "test")[:300]
    assert any(len(np.unique(d.points[:2, 2])) == 2 for d in digits)  # (a stroke of one point: digit 41)
    files = sorted((run_dir / "compressed" / "low").glob("*.onnx"))
    assert files
    for path in files:
        theirs, ours = consumer.Model(path), racmkd.load(path)
        for d in digits:
            (name,) = theirs.contract["inputs"]
            mine = consumer.pen_features(d.points, theirs.contract["inputs"][name]["spec"])
            expected = ours.features({"pen": d.points})["pen"][0]
            assert np.abs(mine - expected).max() < 1e-5, (path.name, int(np.abs(mine - expected).argmax()))
        for d in digits[:50]:
            got, reference = theirs.logits(pen=d.points), ours.logits(ours.features({"pen": d.points}))
            assert np.argmax(got) == np.argmax(reference) and np.abs(got - reference).max() < 1e-3, path.name
    raw = PenSignal().to_raw(digits[0].points, PenSpec())[0]  # a trace already resampled goes through as it is
    spec = {"samples": 32, "length": 8, "statistics": 2}
    assert np.abs(consumer.pen_features(raw, spec) - PenSignal().features(raw[None], PenSpec(32, 8, 2))[0]).max() < 1e-6
