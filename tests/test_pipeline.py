"""A tiny end-to-end run (a few hundred clean samples): its report, its students, its predictors."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import racmkd
from racmkd.compress.artifacts import ExportError, read_contract
from racmkd.config import ConfigError, DistillConfig, load_config
from racmkd.data.dataset import build_dataset
from racmkd.models.checkpoint import CheckpointError, load_model
from racmkd.models.inference import predict_split

TIERS = ["high", "medium", "low", "critical"]


@pytest.fixture(scope="module")
def report(tiny_run: Path) -> dict:
    return json.loads((tiny_run / "report.json").read_text())


def test_run_directory_layout(tiny_run: Path) -> None:
    for name in ("config.yaml", "report.json", "report.md", "selection.json", "accuracy_vs_memory.png", "accuracy_vs_latency.png"):
        assert (tiny_run / name).is_file(), name
    assert (tiny_run.parent / "latest").resolve() == tiny_run.resolve()
    expected = {"teacher", "teacher_image", "teacher_audio", *TIERS, *(f"{t}_labels_only" for t in TIERS)}
    assert {p.stem for p in (tiny_run / "checkpoints").glob("*.pt")} == expected


def test_report_has_the_promised_shape(report: dict, report_fields: list[str]) -> None:
    assert report["protocol"] == "clean" and "commit" in report
    for name, entry in report["models"].items():
        missing = [k for k in report_fields if k not in entry]
        assert not missing, f"{name} lacks {missing}"
        assert 0.0 <= entry["accuracy"] <= 1.0 and entry["energy_source"] in ("estimated", "measured")
        assert entry["flops"] > 0 and entry["peak_activation_bytes"] > 0 and entry["latency_ms_p95"] >= entry["latency_ms_p50"] > 0
        assert entry["latency_engine"] == "onnxruntime", name  # every row on the engine it deploys on, checkpoints through their fp32 export
    assert report["models"]["teacher"]["modalities"] == ["image", "audio"]


def test_students_fit_their_budgets_and_beat_chance_widely(report: dict) -> None:
    for tier in TIERS:
        entry = report["models"][tier]
        assert entry["within_budget"] and entry["param_bytes_fp32"] <= entry["budget_bytes"]
        assert entry["retention"] == pytest.approx(entry["accuracy"] / report["models"]["teacher"]["accuracy"])
    assert report["models"]["high"]["accuracy"] > 0.5  # chance is 0.1
    assert report["models"]["teacher"]["accuracy"] > 0.7
    assert report["models"]["teacher"]["accuracy_without"]["image"] > 0.3  # still answers from audio alone


def test_selection_explains_each_choice(report: dict, tiny_run: Path) -> None:
    selection = report["selection"]["tiers"]
    for tier in TIERS:
        entry = selection[tier]
        names = [c["name"] for c in entry["candidates"]]
        assert entry["chosen"] in names and entry["reason"]
        chosen = next(c for c in entry["candidates"] if c["name"] == entry["chosen"])
        best = max(c["val_accuracy"] for c in entry["candidates"])
        assert chosen["val_accuracy"] >= best - 0.005 + 1e-9 or chosen["val_accuracy"] == best
        assert report["models"][tier]["modalities"] == chosen["modalities"]
    assert "Why each tier uses what it uses" in (tiny_run / "report.md").read_text()


def test_predictor_on_raw_inputs_matches_the_evaluation(tiny_run: Path, report: dict) -> None:
    cfg = load_config(tiny_run / "config.yaml")
    dataset = build_dataset(cfg.data)
    rows = torch.arange(20)
    labels = dataset.splits["test"].labels[rows]
    image_bank, audio_bank = dataset.banks["image"]["test"], dataset.banks["audio"]["test"]
    images = image_bank.data[dataset.splits["test"].index["image"][rows]].numpy()  # raw uint8 28x28
    clips = audio_bank.data[dataset.splits["test"].index["audio"][rows]].numpy()  # raw int16
    for tier in ["teacher", "high", "critical"]:
        predictor = racmkd.load(tiny_run, tier)
        model, specs, _, _ = load_model(tiny_run / "checkpoints" / f"{tier}.pt")
        (logits,), _ = predict_split(model, specs, dataset, "test", limit=20)
        for i in range(len(rows)):
            label, probs = predictor.predict(image=images[i], audio=clips[i])
            assert label == int(logits[i].argmax()) and probs.shape == (10,) and abs(probs.sum() - 1) < 1e-5
    teacher = racmkd.load(tiny_run, "teacher")
    right = sum(teacher.predict(image=images[i], audio=clips[i])[0] == int(labels[i]) for i in range(len(rows)))
    assert right >= 12  # the raw images and recordings are the test rows' own (chance: 2 of 20)


def test_a_bf16_evaluation_leaves_the_shared_inputs_fp32(tiny_run: Path) -> None:
    # Evaluation inputs are cached for every model that reads them; computed under a bf16 model's
    # autocast they were bfloat16, and the next fp32 model on them failed (make run on a bf16 CPU).
    cfg = load_config(tiny_run / "config.yaml")
    dataset = build_dataset(cfg.data)  # its own feature cache
    model, specs, _, _ = load_model(tiny_run / "checkpoints" / "teacher.pt")
    (in_bf16,), _ = predict_split(model, specs, dataset, "test", limit=40, precision="bf16")
    (in_fp32,), _ = predict_split(model, specs, dataset, "test", limit=40)  # the same inputs, from the cache
    assert in_bf16.dtype == in_fp32.dtype == torch.float32
    assert (in_bf16.argmax(1) == in_fp32.argmax(1)).float().mean() >= 0.9  # bf16 rounding may flip a close call
    assert (in_fp32 - in_bf16).abs().max() > 0  # the first pass did run in bf16


def test_predictor_handles_missing_inputs_and_bad_ones(tiny_run: Path) -> None:
    teacher = racmkd.load(tiny_run, "teacher")
    image = np.zeros((28, 28), dtype=np.uint8)
    image[6:22, 13:15] = 255  # a stroke
    audio = (np.sin(np.arange(4000) / 3) * 8000 * (np.arange(4000) // 500 % 2)).astype(np.int16)  # in bursts: a steady tone is no speech
    assert teacher.predict(image=image)[1].shape == (10,)
    assert teacher.predict(audio=audio)[1].shape == (10,)
    silence = np.zeros(8000, dtype=np.int16)  # a dead sensor is a missing one (a confident answer came from silence)
    assert np.array_equal(teacher.predict(image=image, audio=silence)[1], teacher.predict(image=image)[1])
    with pytest.raises(ValueError, match=r"audio \(silent, or steady: no speech\) came in dead"):
        teacher.predict(audio=silence)
    assert teacher.predict(image=image.astype(np.float32) / 255)[0] == teacher.predict(image=image)[0]
    resampled = teacher.predict(audio=np.repeat(audio, 2), sample_rate=16000)[1]  # 16 kHz input
    assert abs(resampled.sum() - 1) < 1e-5
    with pytest.raises(ValueError, match="needs image and/or audio; got no input"):
        teacher.predict()
    with pytest.raises(ValueError, match="expected a 28x28 grey image"):
        teacher.predict(image=np.zeros((32, 32), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"float pixels must be finite and in \[0, 1\]"):
        teacher.predict(image=np.full((28, 28), 3.0))
    with pytest.raises(ValueError, match="mono waveform"):
        teacher.predict(audio=np.zeros((2, 100)))
    with pytest.raises(TypeError, match="unknown inputs"):
        teacher.predict(imu=np.zeros(3))
    image_only = racmkd.load(tiny_run, "teacher_image")
    with pytest.raises(ValueError, match="needs image; got only audio"):
        image_only.predict(audio=audio)
    with pytest.raises(CheckpointError, match="no model 'huge'"):
        racmkd.load(tiny_run, "huge")


def test_damaged_checkpoint_is_named(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "high.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"high\.pt: unreadable checkpoint") as caught:
        racmkd.load(tmp_path, "high")
    assert "weights_only" not in str(caught.value)  # torch's advice to load it unsafely is not passed on


def test_a_checkpoint_whose_specs_miss_an_encoders_input_is_named(tiny_run: Path, tmp_path: Path) -> None:
    """Empty specs failed at export as "torch.cat(): expected a non-empty list of Tensors"."""
    record = torch.load(tiny_run / "checkpoints" / "critical.pt", weights_only=True)
    damaged = tmp_path / "critical.pt"
    torch.save({**record, "specs": {}}, damaged)
    with pytest.raises(CheckpointError, match=r"critical\.pt: damaged checkpoint \(input specs for \[\], encoders for \["):
        load_model(damaged)


def test_a_checkpoint_whose_weights_do_not_fit_its_architecture_is_named_briefly_with_the_fix(tiny_run: Path, tmp_path: Path) -> None:
    """torch lists every mismatched tensor (about 30 lines for a student of another width), and the
    message, unlike every other checkpoint error, said nothing of what to do."""
    record = torch.load(tiny_run / "checkpoints" / "critical.pt", weights_only=True)
    kwargs = record["arch"]["kwargs"]
    damaged = tmp_path / "critical.pt"
    torch.save({**record, "arch": {**record["arch"], "kwargs": {**kwargs, "width": kwargs["width"] * 2}}}, damaged)
    with pytest.raises(
        CheckpointError, match=r"critical\.pt: weights do not fit the recorded architecture \(.*\)\. Re-run the stage that writes it\.$"
    ) as caught:
        load_model(damaged)
    assert str(caught.value).count("size mismatch") <= 3 and "\n" not in str(caught.value)


def test_inputs_are_compared_at_their_deepest_affordable_depth() -> None:
    from racmkd.pipeline import Design, deepest_per_input

    def design(mods: tuple[str, ...], level: int, depth: int) -> Design:
        return Design("t", mods, level, depth, 1.0, 100, 1024)

    designs = [design(("image",), 0, 1), design(("image",), 0, 3), design(("image",), 0, 2), design(("image", "audio"), 0, 1), design(("image",), 1, 2)]
    picked = {(d.modalities, d.level): d.depth for d in deepest_per_input(designs)}
    assert picked == {(("image",), 0): 3, (("image", "audio"), 0): 1, (("image",), 1): 2}


def test_modality_sets_whose_teacher_trails_the_fused_one_are_not_candidates(tiny_run: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    from racmkd.config import TierConfig
    from racmkd.models.checkpoint import save_model
    from racmkd.pipeline import candidates, out_of_reach
    from racmkd.registry import MODALITIES

    (tmp_path / "checkpoints").mkdir()
    for name, accuracy in (("teacher", 0.98), ("teacher_image", 0.65), ("teacher_audio", 0.95)):
        model, specs, _, meta = load_model(tiny_run / "checkpoints" / f"{name}.pt")
        save_model(tmp_path / "checkpoints" / f"{name}.pt", model, specs, {**meta, "val_accuracy": accuracy})
    cfg = load_config(Path("tests/tiny.yaml"))
    reasons = out_of_reach(cfg, tmp_path, ["image", "audio"])
    assert list(reasons) == [("image",)] and "0.6500" in reasons[("image",)] and "33.0 points below" in reasons[("image",)]
    mods = {m: MODALITIES.create(m) for m in ("image", "audio")}
    tier = TierConfig("t", 64 * 1024)
    designs, skipped = candidates(cfg, mods, tier, reasons)
    assert {d.modalities for d in designs} == {("image", "audio"), ("audio",)} and any(s.startswith("image: its teacher reached") for s in skipped)
    assert {("image",)} <= {d.modalities for d in candidates(cfg, mods, replace(tier, modalities=("image",)), reasons)[0]}  # a tier's own choice stands
    wide = replace(cfg, students=replace(cfg.students, selection=replace(cfg.students.selection, teacher_gap=1.0)))
    assert out_of_reach(wide, tmp_path, ["image", "audio"]) == {} and out_of_reach(cfg, tmp_path, ["audio"]) == {}


def test_a_tier_trains_for_its_own_number_of_epochs(tiny_run: Path) -> None:
    """The critical tier's `epochs: 8` against students.train.epochs (6 in the tiny config): its
    students, distilled and label-only, go on after the others, their epochs 7 and 8 replaying the
    batches of epochs 1 and 2 (`students.replay`)."""
    from racmkd.config import ConfigError, TierConfig

    histories = {name: load_model(tiny_run / "checkpoints" / f"{name}.pt")[3]["history"] for name in ("high", "critical", "critical_labels_only")}
    assert {name: len(h) for name, h in histories.items()} == {"high": 6, "critical": 8, "critical_labels_only": 8}
    assert [h["batches_of_epoch"] for h in histories["critical"]] == [1, 2, 3, 4, 5, 6, 1, 2]
    assert [h["batches_of_epoch"] for h in histories["high"]] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ConfigError, match="epochs"):
        TierConfig("critical", 1024, epochs=-1)


def test_ties_go_to_the_cheapest_or_to_capacity() -> None:
    from racmkd.config import ConfigError, TierConfig
    from racmkd.pipeline import break_ties

    entries = [
        {"name": "d1", "val_accuracy": 0.850, "flops": 1, "params": 10},
        {"name": "d2", "val_accuracy": 0.931, "flops": 8, "params": 164},
        {"name": "d3", "val_accuracy": 0.932, "flops": 12, "params": 261},
        {"name": "wide", "val_accuracy": 0.920, "flops": 30, "params": 400},  # more parameters, but not within the tolerance
    ]
    pick, why = break_ties(entries, 0.005, "flops")
    assert pick["name"] == "d2" and "fewer FLOPs" in why
    pick, why = break_ties(entries, 0.005, "capacity")
    assert pick["name"] == "d3" and why == "highest validation accuracy"
    entries[1]["val_accuracy"] = 0.935  # now d2 leads and d3 is within the tolerance: capacity still takes d3
    pick, why = break_ties(entries, 0.005, "capacity")
    assert pick["name"] == "d3" and "parameters" in why
    with pytest.raises(ConfigError, match="ties"):
        TierConfig("high", 1024, ties="biggest")


def test_a_jobs_training_does_not_depend_on_what_else_shares_its_pass(tiny_run: Path, tiny_dataset) -> None:  # noqa: ANN001
    """Trained alone or beside another job, with the same seed: the same weights (each job draws its
    modality-dropout masks from its own generator; the pass's generator only orders the batches)."""
    from racmkd.config import TrainConfig
    from racmkd.distill.trainer import Job, train_jobs

    train = TrainConfig(epochs=1, batch_size=64, lr=0.01, modality_dropout=0.5)

    def job(name: str, checkpoint: str) -> Job:
        model, specs, _, _ = load_model(tiny_run / "checkpoints" / f"{checkpoint}.pt")
        return Job(name, model, specs, train)

    alone = train_jobs(tiny_dataset, [job("a", "critical")], 1, 64, seed=5, samples_per_epoch=256, val_limit=64)[0]
    beside = train_jobs(tiny_dataset, [job("b", "low"), job("a", "critical")], 1, 64, seed=5, samples_per_epoch=256, val_limit=64)[1]
    for (name, x), (_, y) in zip(alone.model.state_dict().items(), beside.model.state_dict().items()):
        assert torch.equal(x, y), name
    # A longer job goes on alone after a shorter one's epochs, on the batches its own pass draws.
    alone = train_jobs(tiny_dataset, [job("a", "critical")], 3, 64, seed=5, samples_per_epoch=128, val_limit=64)[0]
    short = job("b", "low")
    short.epochs = 1
    beside, short = train_jobs(tiny_dataset, [job("a", "critical"), short], 3, 64, seed=5, samples_per_epoch=128, val_limit=64)
    assert [h["epoch"] for h in beside.history] == [1, 2, 3] and [h["epoch"] for h in short.history] == [1]
    assert [h["val_accuracy"] for h in beside.history] == [h["val_accuracy"] for h in alone.history]
    for (name, x), (_, y) in zip(alone.model.state_dict().items(), beside.model.state_dict().items()):
        assert torch.equal(x, y), name
    with pytest.raises(ValueError, match="at least one epoch"):
        short.epochs = -1
        train_jobs(tiny_dataset, [short], 1, 64, seed=5, samples_per_epoch=64, val_limit=64)


def test_a_job_whose_training_diverges_stops_the_pass_with_an_error_naming_it(tiny_run: Path, tiny_dataset) -> None:  # noqa: ANN001
    """A learning rate of 1e8 makes the loss NaN: NaN logits still have an argmax, scored about
    chance, which beat the "no best yet" start and was saved as the best model, silently."""
    from racmkd.config import TrainConfig
    from racmkd.distill.trainer import Job, TrainingDiverged, train_jobs

    model, specs, _, _ = load_model(tiny_run / "checkpoints" / "critical.pt")
    with pytest.raises(TrainingDiverged, match=r"training wild diverged: its loss is nan \(lr 100000000.0: lower students.train.lr\)"):
        train_jobs(tiny_dataset, [Job("wild", model, specs, TrainConfig(epochs=1, lr=1e8))], 1, 64, seed=5, samples_per_epoch=256, val_limit=64)
    with pytest.raises(ConfigError, match=r"distill.distill_losses.kd: nan"):  # a NaN loss weight: refused when the config is read
        DistillConfig(distill_losses={"kd": float("nan")})
    with pytest.raises(ConfigError, match=r"distill.align_losses.feature: -1.0"):
        DistillConfig(align_losses={"feature": -1.0})


def test_a_run_whose_first_teacher_diverges_leaves_no_run_behind(cache_dir: Path, tmp_path: Path) -> None:
    """It left a config.yaml alone with runs/latest pointing at it (`racmkd predict` found no model,
    the run before out of reach) and its --name taken; the message named train.lr, a setting of no
    teacher."""
    from conftest import tiny_config

    from racmkd.distill.trainer import TrainingDiverged
    from racmkd.pipeline import run_pipeline

    runs = tmp_path / "runs"
    (runs / "earlier" / "checkpoints").mkdir(parents=True)
    (runs / "latest").symlink_to("earlier")
    for name in ("", "named"):
        cfg = tiny_config(cache_dir, runs, f"name='{name}'", "teacher.unimodal.lr=1e9")
        with pytest.raises(TrainingDiverged, match=r"teacher_\w+ diverged: .*lower teacher.unimodal.lr in .*config.yaml\)$"):
            run_pipeline(cfg)
        assert sorted(p.name for p in runs.iterdir()) == ["earlier", "latest"] and os.readlink(runs / "latest") == "earlier"


def test_jobs_stepping_side_by_side_in_threads_learn_what_they_learn_one_after_another(tiny_run: Path, tiny_dataset) -> None:  # noqa: ANN001
    """workers=2 runs the teachers' forward pass, the label-only job and (after the teachers) the
    distilled job in two threads; with the ops on one thread either way, every weight and loss is
    what the same jobs learn one after another: no job reads another's state or the order of the threads."""
    from racmkd.config import DistillConfig, TrainConfig
    from racmkd.distill.adaptive import ObjectiveWeights
    from racmkd.distill.trainer import Job, train_jobs
    from racmkd.pipeline import load_teachers
    from racmkd.utils import torch_threads

    (fused,) = load_teachers(tiny_run, list(tiny_dataset.modalities), unimodal=False)
    train = TrainConfig(epochs=2, batch_size=64, lr=0.01, modality_dropout=0.3, mixup=0.4)
    weights = ObjectiveWeights(0.5, 1.0, 0.0, 1e-4, 2.0, 1.0)

    def trained(workers: int) -> list[Job]:
        jobs = []
        for name, checkpoint in [("kd", "critical"), ("labels", "low"), ("kd2", "low")]:
            model, specs, _, _ = load_model(tiny_run / "checkpoints" / f"{checkpoint}.pt")
            jobs.append(
                Job(
                    name,
                    model,
                    specs,
                    train,
                    None if name == "labels" else weights,
                    None if name == "labels" else DistillConfig(distill_losses={"kd": 1.0}, align_losses={}),
                )
            )
        with torch_threads(1):
            return train_jobs(tiny_dataset, jobs, 2, 64, seed=5, teachers=[fused], samples_per_epoch=192, val_limit=64, workers=workers)

    one_after_another, side_by_side = trained(1), trained(2)
    for a, b in zip(one_after_another, side_by_side):
        assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history], a.name
        for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
            assert torch.equal(x, y), f"{a.name}: {name}"


def _kd_student_trained(tiny_run: Path, tiny_dataset, fused, cache, seed: int = 5, epochs: int = 2, replay_after: int = 0, inputs=None):  # noqa: ANN001, ANN202
    """The tiny run's critical student distilled (logits and fused features) from the `fused` teacher
    (one object for every pass: a cached answer is keyed by the teacher it came from) for `epochs`
    epochs of 3 batches, two workers, ops on one thread."""
    from racmkd.config import DistillConfig, TrainConfig
    from racmkd.distill.adaptive import ObjectiveWeights
    from racmkd.distill.trainer import Job, attach_projection, train_jobs
    from racmkd.utils import torch_threads

    model, specs, _, _ = load_model(tiny_run / "checkpoints" / "critical.pt")
    train = TrainConfig(epochs=epochs, batch_size=64, lr=0.01, modality_dropout=0.3, mixup=0.4)
    job = Job(
        "kd", model, specs, train, ObjectiveWeights(0.5, 1.0, 0.5, 1e-4, 2.0, 1.0), DistillConfig(distill_losses={"kd": 1.0}, align_losses={"feature": 1.0})
    )
    attach_projection(job, fused.model, seed=0)
    with torch_threads(1):
        return train_jobs(
            tiny_dataset,
            [job],
            epochs,
            64,
            seed=seed,
            teachers=[fused],
            samples_per_epoch=192,
            val_limit=64,
            workers=2,
            teacher_cache=cache,
            replay_after=replay_after,
            input_cache=inputs,
        )[0]


def _same_training(a, b) -> None:  # noqa: ANN001
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), name


def test_passes_that_draw_the_same_batches_share_the_teachers_answers_and_learn_the_same(tiny_run: Path, tiny_dataset) -> None:  # noqa: ANN001
    """A pass with a teacher cache stores the teachers' answer on every batch; a second pass with the
    same seed, samples and workers reads them all back instead of running the teachers, and its
    students (distilled through the logits and the fused features) learn exactly what they learn
    without a cache. Another seed draws other batches: nothing to read."""
    from racmkd.data.dataset import FeatureCache
    from racmkd.pipeline import load_teachers

    (fused,) = load_teachers(tiny_run, list(tiny_dataset.modalities), unimodal=False)
    cache = FeatureCache(evict=False)
    plain, filling = _kd_student_trained(tiny_run, tiny_dataset, fused, None), _kd_student_trained(tiny_run, tiny_dataset, fused, cache)
    assert (cache.hits, len(cache)) == (0, 6)  # 2 epochs x 3 batches, each answered once
    reading = _kd_student_trained(tiny_run, tiny_dataset, fused, cache)
    assert cache.hits == 6 and len(cache) == 6
    for job in (filling, reading):
        _same_training(plain, job)
    _kd_student_trained(tiny_run, tiny_dataset, fused, cache, seed=6)
    assert cache.hits == 6 and len(cache) == 12


def test_passes_of_the_same_inputs_featurise_each_batch_once_and_learn_the_same(tiny_run: Path, tiny_dataset, monkeypatch) -> None:  # noqa: ANN001
    """With an input cache too, a second pass that draws the same batches for a student of the same
    inputs (the compression fine-tunes of tiers that share them) neither corrupts nor featurises any
    batch again: its generator jumps to where drawing each one left the first pass's, so the mixup
    and the batches after come out the same, and so do the student's weights."""
    from racmkd.data.dataset import FeatureCache
    from racmkd.pipeline import load_teachers

    (fused,) = load_teachers(tiny_run, list(tiny_dataset.modalities), unimodal=False)
    answers, inputs = FeatureCache(evict=False), FeatureCache(evict=False)
    plain = _kd_student_trained(tiny_run, tiny_dataset, fused, None)
    filling = _kd_student_trained(tiny_run, tiny_dataset, fused, answers, inputs=inputs)
    assert (inputs.hits, len(inputs)) == (0, 6)
    drawn = []
    raw_batch = tiny_dataset.raw_batch
    monkeypatch.setattr(tiny_dataset, "raw_batch", lambda *args, **kwargs: drawn.append(1) or raw_batch(*args, **kwargs))
    reading = _kd_student_trained(tiny_run, tiny_dataset, fused, answers, inputs=inputs)
    assert inputs.hits == 6 and not drawn
    for job in (filling, reading):
        _same_training(plain, job)


def test_epochs_past_replay_after_draw_the_first_epochs_batches_again_and_read_the_teachers_answers_back(tiny_run: Path, tiny_dataset) -> None:  # noqa: ANN001
    """With `replay_after=1` epochs 2 and 3 draw epoch 1's batches again: the teachers answer its 3
    batches once and the 6 later ones are read back, and the student learns exactly what it learns
    when the teachers answer every replayed batch anew (an answer read for a batch other than the
    one drawn would change its weights). Without replay the later epochs draw other batches."""
    from racmkd.data.dataset import FeatureCache
    from racmkd.pipeline import load_teachers

    (fused,) = load_teachers(tiny_run, list(tiny_dataset.modalities), unimodal=False)
    cache = FeatureCache(evict=False)
    replayed = _kd_student_trained(tiny_run, tiny_dataset, fused, cache, epochs=3, replay_after=1)
    assert (cache.hits, len(cache)) == (6, 3)
    assert [h["batches_of_epoch"] for h in replayed.history] == [1, 1, 1]
    _same_training(_kd_student_trained(tiny_run, tiny_dataset, fused, None, epochs=3, replay_after=1), replayed)
    inputs = FeatureCache(evict=False)  # the replayed batches' inputs kept too: not featurised again
    _same_training(_kd_student_trained(tiny_run, tiny_dataset, fused, FeatureCache(evict=False), epochs=3, replay_after=1, inputs=inputs), replayed)
    assert (inputs.hits, len(inputs)) == (6, 3)
    fresh = _kd_student_trained(tiny_run, tiny_dataset, fused, None, epochs=3)
    assert fresh.history[0]["train_loss"] == replayed.history[0]["train_loss"]
    assert fresh.history[1]["train_loss"] != replayed.history[1]["train_loss"]


def test_a_distillation_pass_leaves_its_teacher_as_it_was(tiny_run: Path, tiny_dataset) -> None:  # noqa: ANN001
    """The pass runs a folded copy of the teacher (BatchNorm inside the convolutions, for speed);
    the teacher itself keeps its layers, weights, layout and mode."""
    from torch import nn

    from racmkd.config import DistillConfig, TrainConfig
    from racmkd.distill.adaptive import ObjectiveWeights
    from racmkd.distill.trainer import Job, train_jobs
    from racmkd.pipeline import load_teachers

    (fused,) = load_teachers(tiny_run, list(tiny_dataset.modalities), unimodal=False)
    before = {k: v.clone() for k, v in fused.model.state_dict().items()}
    model, specs, _, _ = load_model(tiny_run / "checkpoints" / "critical.pt")
    only_kd = ObjectiveWeights(0.0, 1.0, 0.0, 0.0, 2.0, 1.0)
    (job,) = train_jobs(
        tiny_dataset,
        [Job("a", model, specs, TrainConfig(epochs=1, batch_size=64), only_kd, DistillConfig(distill_losses={"kd": 1.0}, align_losses={}))],
        1,
        64,
        seed=5,
        teachers=[fused],
        samples_per_epoch=128,
        val_limit=64,
    )
    assert 0 < job.history[0]["train_loss"] < 10  # it learnt from the teacher's answers alone
    after = fused.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, nn.BatchNorm2d) and m.affine for m in fused.model.modules())
    assert all(p.is_contiguous() for p in fused.model.parameters()) and not fused.model.training


def test_a_job_distils_from_the_teacher_it_names_among_the_pass_s_teachers(tiny_run: Path, tiny_dataset) -> None:  # noqa: ANN001
    """A job naming the audio teacher, in a pass whose first teacher is the fused one, learns exactly
    what it learns in a pass of the audio teacher alone, and not what it learns from the fused one
    (the benchmark's unimodal-KD students depend on it)."""
    from racmkd.config import DistillConfig, TrainConfig
    from racmkd.distill.adaptive import ObjectiveWeights
    from racmkd.distill.trainer import Job, train_jobs
    from racmkd.pipeline import load_teachers

    fused, _, audio = load_teachers(tiny_run, list(tiny_dataset.modalities), unimodal=True)
    assert (fused.name, audio.name) == ("teacher", "teacher_audio")
    only_kd = ObjectiveWeights(0.0, 1.0, 0.0, 0.0, 2.0, 1.0)

    def distilled(teachers: list, named: str | None) -> Job:  # noqa: ANN001
        model, specs, _, _ = load_model(tiny_run / "checkpoints" / "critical.pt")
        job = Job("a", model, specs, TrainConfig(epochs=1, batch_size=64), only_kd, DistillConfig(distill_losses={"kd": 1.0}, align_losses={}), teacher=named)
        return train_jobs(tiny_dataset, [job], 1, 64, seed=5, teachers=teachers, samples_per_epoch=128, val_limit=64)[0]

    named = distilled([fused, audio], "teacher_audio")
    assert named.teacher_index == 1
    alone, from_fused = distilled([audio], None), distilled([fused, audio], None)
    same = [torch.equal(x, y) for x, y in zip(named.model.state_dict().values(), alone.model.state_dict().values())]
    assert all(same)
    assert not all(torch.equal(x, y) for x, y in zip(named.model.state_dict().values(), from_fused.model.state_dict().values()))
    with pytest.raises(ValueError, match="not in this pass"):
        distilled([fused], "teacher_audio")


def test_a_run_checks_its_compression_recipes_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A misspelt recipe file was reported by compress_students, after the teachers and students had
    trained; now run_pipeline reads every recipe first, and the error names the setting."""
    from racmkd import pipeline
    from racmkd.compress.recipe import RecipeError

    def no_data(cfg: object) -> None:
        raise AssertionError("the data was read before the recipes were checked")

    monkeypatch.setattr(pipeline, "prepare_data", no_data)
    runs = tmp_path / "runs"
    missing = tmp_path / "defualt.yaml"
    for overrides, key in (
        ([f"compress.recipe={missing}"], "compress.recipe"),
        ([f"compress.tier_recipes={{high: {missing}}}"], r"compress\.tier_recipes\.high"),
    ):
        cfg = load_config(Path(__file__).parent / "tiny.yaml", [f"runs_dir={runs}", "compress.tiers=[high]", *overrides])
        with pytest.raises(RecipeError, match=rf"{key} \(tier 'high'\): .*defualt\.yaml does not exist"):
            pipeline.run_pipeline(cfg)
    assert not runs.exists()


def test_a_configs_recipe_paths_are_found_from_any_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/recipes/... in a config is the checkout's: `racmkd compress` outside the checkout
    failed with "does not exist" (device profiles were found from anywhere)."""
    from racmkd.data.paths import REPO_ROOT
    from racmkd.pipeline import recipe_for

    cfg = load_config(REPO_ROOT / "configs" / "default.yaml")
    monkeypatch.chdir(tmp_path)
    assert recipe_for(cfg, "high") == REPO_ROOT / "configs" / "recipes" / "default.yaml"
    assert recipe_for(cfg, "critical") == REPO_ROOT / "configs" / "recipes" / "critical.yaml"
    (tmp_path / "configs" / "recipes").mkdir(parents=True)
    (tmp_path / "configs" / "recipes" / "default.yaml").write_text("steps: [export]\n")
    assert recipe_for(cfg, "high") == Path("configs/recipes/default.yaml")  # the working directory's own comes first


def test_distilled_students_are_saved_before_their_timing_is_recorded(
    shared_root: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """distill_students recorded its time (a read-modify-write of timings.json) before it saved the
    students: an unreadable timings.json raised a JSONDecodeError naming no file, and every student
    just trained was lost. Now the students are saved first, and the timings file is bookkeeping."""
    from racmkd import pipeline

    overrides = [
        f"data.cache_dir={cache_dir}",
        f"runs_dir={tmp_path / 'runs'}",
        "name=timings",
        "teacher.unimodal={epochs: 1, samples_per_epoch: 64}",
        "teacher.fused={epochs: 1, samples_per_epoch: 64}",
        "students.tiers=[{name: edge-a, budget_bytes: 16384, modalities: [audio], scale: 3, depth: 1}]",  # one candidate: no selection training
        "students.train={epochs: 1, samples_per_epoch: 64}",
        "students.labels_only=false",
        "data.max_eval=64",
    ]
    cfg = load_config(Path(__file__).parent / "tiny.yaml", overrides)
    dataset = pipeline.prepare_data(cfg)
    run = pipeline.create_run(cfg)
    pipeline.train_teachers(cfg, dataset, run)
    (run / "timings.json").write_text("")  # emptied (a full disk, an editor)
    with caplog.at_level("WARNING", logger="racmkd.runs"):
        assert pipeline.distill_students(cfg, dataset, run) == ["edge-a"]
    assert f"{run / 'timings.json'}: unreadable" in caplog.text
    assert set(json.loads((run / "timings.json").read_text())) == {"distill_students"}
    (run / "checkpoints" / "edge-a.pt").unlink()

    def disk_full(run_dir: Path, stage: str, seconds: float) -> None:
        raise OSError(f"{run_dir / 'timings.json'}: no space left")

    monkeypatch.setattr(pipeline, "record_timing", disk_full)
    with pytest.raises(OSError, match="no space left"):
        pipeline.distill_students(cfg, dataset, run)
    assert load_model(run / "checkpoints" / "edge-a.pt")[3]["tier"] == "edge-a"  # saved before the timing failed


def test_a_failed_export_leaves_the_earlier_set_whole(tiny_run: Path, tiny_dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Written in place, an export that failed at the int8 step (or was killed there) left its new
    fp32 file beside the earlier int8 weights and export.json; now every file is built aside and
    moved in at the end, and a failure leaves the earlier files byte for byte and nothing else."""
    import racmkd.compress.quantize as quantize
    from racmkd.pipeline import export_model

    cfg, out = load_config(tiny_run / "config.yaml"), tmp_path / "onnx"
    export_model(cfg, tiny_dataset, tiny_run, "critical", out, int8=False, int8_weights=True)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["critical.export.json", "critical.fp32.onnx", "critical.int8-weights.onnx"]

    def fails(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("calibration failed")

    monkeypatch.setattr(quantize, "quantize_int8", fails)
    with pytest.raises(RuntimeError, match="calibration failed"):
        export_model(cfg, tiny_dataset, tiny_run, "critical", out, int8=True, int8_weights=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no hidden work folder either
    monkeypatch.undo()
    # A failed fp32 check named out/critical.fp32.onnx, the earlier good file; the bad one was in the work folder.
    monkeypatch.setattr("racmkd.compress.export.FP32_LOGIT_TOLERANCE", -1.0)
    with pytest.raises(ExportError, match=rf"^the new {re.escape(str(out / 'critical.fp32.onnx'))} \(not written\): its logits differ") as failed:
        export_model(cfg, tiny_dataset, tiny_run, "critical", out, int8=False, int8_weights=True)
    assert ".partial" not in str(failed.value) and {p.name: p.read_bytes() for p in out.iterdir()} == before
    monkeypatch.undo()
    # Killed while moving files in: the earlier export.json is gone first, so the mix is no export.
    moves, replace = [], os.replace

    def killed_after_one_move(src, dst):  # noqa: ANN001, ANN202
        if Path(dst).parent == out:  # (files written in the work folder are replaced into place too)
            if moves:
                raise KeyboardInterrupt
            moves.append(dst)
        replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_after_one_move)
    with pytest.raises(KeyboardInterrupt):
        export_model(cfg, tiny_dataset, tiny_run, "critical", out, int8=False, int8_weights=True)
    monkeypatch.undo()
    assert moves == [out / "critical.fp32.onnx"] and sorted(p.name for p in out.iterdir()) == ["critical.fp32.onnx", "critical.int8-weights.onnx"]
    again = export_model(cfg, tiny_dataset, tiny_run, "critical", out, int8=False, int8_weights=False)
    assert sorted(p.name for p in out.iterdir()) == ["critical.export.json", "critical.fp32.onnx"] and Path(again["fp32"]["path"]) == out / "critical.fp32.onnx"
    # 4-bit weights: where the agreement bound lets layers go to 4 bits, written (here a bound of 0:
    # every layer) and checked, with what stayed in 8 bits; an export without them removes the file.
    from racmkd.compress.steps import ExportOptions

    monkeypatch.setattr("racmkd.compress.steps.ExportOptions", lambda: ExportOptions(min_agreement=0.0))
    four = export_model(cfg, tiny_dataset, tiny_run, "critical", out, int8=False, int8_weights=False, int4_weights=True)
    monkeypatch.undo()
    assert read_contract(out / "critical.int4-weights.onnx")["precision"] == "int4-weights" and four["int4-weights"]["kept_int8"] == []
    assert four["int4-weights"]["parity_vs_fp32"]["samples"] > 0 and four["int4-weights"]["bytes"] < four["fp32"]["bytes"]
    # Where the search keeps every layer in 8 bits: no file, and the result says why.
    from racmkd.compress import quantize

    real = quantize.choose_int4_weights
    monkeypatch.setattr(quantize, "choose_int4_weights", lambda *args, **kwargs: dataclasses.replace(real(*args, **kwargs), has_int4=False))
    four = export_model(cfg, tiny_dataset, tiny_run, "critical", out, int8=False, int8_weights=False, int4_weights=True)
    monkeypatch.undo()
    assert four["int4-weights"]["written"] is False and "stay in 8 bits" in four["int4-weights"]["why"]
    assert sorted(p.name for p in out.iterdir()) == ["critical.export.json", "critical.fp32.onnx"]


def test_a_compressed_tier_to_export_names_the_file_compress_wrote(tmp_path: Path) -> None:
    """`export --model critical_compressed` said "no model" of a model the run has: compress
    exported it already; the error names that file (and comes before the data loads)."""
    from racmkd.pipeline import exportable_checkpoint
    from racmkd.runs import RunError

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "critical.pt").write_bytes(b"")
    (tmp_path / "compressed" / "critical").mkdir(parents=True)
    (tmp_path / "compressed" / "critical" / "compression.json").write_text(json.dumps({"artifact": "int8-weights.onnx", "format": "onnx-int8-weights"}))
    assert exportable_checkpoint(tmp_path, "critical") == tmp_path / "checkpoints" / "critical.pt"
    with pytest.raises(RunError, match=r"exported already, by `racmkd compress`: .*compressed/critical/int8-weights\.onnx .*--model critical$"):
        exportable_checkpoint(tmp_path, "critical_compressed")
    with pytest.raises(RunError, match="no model 'high_compressed'.*available: critical"):  # no such compressed tier
        exportable_checkpoint(tmp_path, "high_compressed")


def test_inputs_the_model_lacks_are_refused_before_the_data_loads(tiny_run: Path) -> None:
    """`export --modality smell` was refused by the exporter, after the dataset had loaded (minutes
    on a real run); the checkpoint's own inputs decide it first (`racmkd export` checks them before
    it loads the data), naming the file."""
    from racmkd.compress.artifacts import ExportError
    from racmkd.pipeline import exportable_checkpoint

    path = tiny_run / "checkpoints" / "critical.pt"
    assert exportable_checkpoint(tiny_run, "critical", ["image"]) == path
    with pytest.raises(ExportError, match=rf"{path}: cannot export inputs \['smell'\]; the model uses"):
        exportable_checkpoint(tiny_run, "critical", ["image", "smell"])
    with pytest.raises(ExportError, match="image listed more than once"):
        exportable_checkpoint(tiny_run, "critical", ["image", "image"])


def test_folders_a_killed_compression_left_are_no_compressed_tiers(tmp_path: Path) -> None:
    """A compression killed before its swap leaves .<tier>.<pid>-....partial/compression.json; glob's
    * matches hidden folders, and the report listed it as a compressed tier."""
    from racmkd.runs import compressed_records

    for folder in ("critical", ".critical.123-abc.partial", ".high.old", "low"):
        (tmp_path / "compressed" / folder).mkdir(parents=True)
        (tmp_path / "compressed" / folder / "compression.json").write_text("{}")
    assert [p.parent.name for p in compressed_records(tmp_path)] == ["critical", "low"]


def test_a_one_modality_run_measures_retention_against_its_own_teacher() -> None:
    """`--set data.modalities=[audio]` trains teacher_audio alone: retention read `teacher` only, and
    such a run's report had none (nor any target row)."""
    from racmkd.eval.report import add_retention, targets

    models = {
        "teacher_audio": {"role": "teacher", "accuracy": 0.8},
        "high": {"role": "student", "accuracy": 0.76, "budget_bytes": 1 << 20, "param_bytes_fp32": 1000, "within_budget": True},
    }
    add_retention(models, ["audio"])
    assert models["high"]["retention"] == pytest.approx(0.95) and "retention" not in models["teacher_audio"]
    assert [row["target"] for row in targets({"protocol": "avmnist", "models": models})] == ["high: retention >= 99% within 1024 KB"]


def test_a_model_name_that_is_a_path_is_refused() -> None:
    """`export --model ../checkpoints/critical` failed on a bare OS error, after making its folder;
    `predict --tier ../compressed/critical/model` loaded a model from outside the run's checkpoints."""
    from racmkd.runs import checkpoint

    assert checkpoint(Path("run"), "teacher_audio") == Path("run/checkpoints/teacher_audio.pt")
    for name in ("../checkpoints/critical", "a\\b", ".hidden", ""):
        with pytest.raises(ValueError, match="is not a model name"):
            checkpoint(Path("run"), name)


def test_a_tier_no_student_fits_is_refused_before_the_teachers_train(cache_dir: Path, tmp_path: Path) -> None:
    """A resolution level out of range (or a budget nothing fits) stopped `racmkd run` at the
    students, after the teachers' minutes; now before a run folder is made."""
    from conftest import tiny_config

    from racmkd.pipeline import run_pipeline
    from racmkd.runs import RunError

    with pytest.raises(RunError, match=r"tier 'critical': no student design fits 16384 bytes \(.*@L9: no such resolution level"):
        run_pipeline(tiny_config(cache_dir, tmp_path / "runs", "students.tiers.3.scale=9"))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_accuracy_plots_frame_the_tiers_and_mark_a_model_far_below(tmp_path: Path) -> None:
    """The image-only teacher at 0.65 squeezed every other model into the top 7% of the plot, where
    a tier's student hid under its baseline; a model below the tiers' range is drawn on the edge."""
    from racmkd.eval.plots import curve_colour, focus_range, plot_accuracy_vs_cost

    def model(role: str, accuracy: float, modalities: tuple[str, ...] = ("image", "audio")) -> dict:
        return {"role": role, "accuracy": accuracy, "modalities": list(modalities), "bytes_fp32": 1000, "peak_activation_bytes": 100, "latency_ms_p50": 0.1}

    models = {
        "teacher": model("teacher", 0.9925),
        "teacher_image": model("teacher", 0.649, ("image",)),
        "teacher_audio": model("teacher", 0.9765, ("audio",)),
        "high": model("student", 0.9891),
        "high_labels_only": model("baseline", 0.9892),
        "critical": model("student", 0.9705),
    }
    bottom, top = focus_range(models)
    assert 0.96 < bottom < 0.9705 and 0.9925 < top < 1.0  # the image teacher is outside, the audio one within
    assert len(plot_accuracy_vs_cost(models, tmp_path)) == 2
    # One colour per tier and its baseline (dashed), the teachers apart: no two series share one.
    colours = {name: curve_colour(name) for name in ("teacher", "teacher_image", "teacher_audio", "teacher_pen", "high", "medium", "low", "critical")}
    assert None not in colours.values() and len(set(colours.values())) == len(colours) and curve_colour("high_labels_only") == colours["high"]


def test_a_tiers_choice_does_not_depend_on_the_tiers_distilled_with_it(tiny_run: Path, tiny_dataset, tmp_path: Path) -> None:  # noqa: ANN001
    """A design two tiers could afford was trained once, as the first tier's (its objective, its
    dropout seed): with its budget raised to afford medium's designs, low chose another student in
    `racmkd run` than in `racmkd distill --tier low`."""
    import shutil

    from racmkd.pipeline import load_teachers, select_designs

    cfg = load_config(tiny_run / "config.yaml", ["students.tiers.2.budget_bytes=131072"])
    teachers = load_teachers(tiny_run, list(tiny_dataset.modalities), unimodal=False)
    tables = []
    for names in (["medium", "low"], ["low"]):
        run = tmp_path / "+".join(names)
        run.mkdir()
        shutil.copy(tiny_run / "config.yaml", run / "config.yaml")
        chosen = select_designs(cfg, tiny_dataset, teachers, run, [t for t in cfg.students.tiers if t.name in names])
        low = json.loads((run / "selection.json").read_text())["tiers"]["low"]
        tables.append((chosen["low"].name, [(c["name"], c["trained_as"], c["val_accuracy"]) for c in low["candidates"]]))
        if names == ["medium", "low"]:  # (the case: a design both tiers try)
            medium = json.loads((run / "selection.json").read_text())["tiers"]["medium"]
            both = {c["name"].split(":", 1)[1] for c in medium["candidates"]} & {c["name"].split(":", 1)[1] for c in low["candidates"]}
            assert both, (medium["candidates"], low["candidates"])
    assert tables[0] == tables[1]
    assert all(trained_as.startswith("low:") for _, trained_as, _ in tables[0][1])


def test_a_checkpoint_predictor_runs_on_one_thread_and_gives_the_process_its_own_back(tiny_run: Path) -> None:
    """A thread per core spun against the host's other work: racmkd.load(run).predict took 16-20 ms
    on 2 busy cores, 3.7 on one."""
    predictor = racmkd.load(tiny_run, "high")
    model, seen = predictor.model, []

    def forward(features):  # noqa: ANN001, ANN202
        seen.append(torch.get_num_threads())
        return model(features)

    predictor.model = forward
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        predictor.predict(
            image=np.zeros((28, 28), np.uint8) + np.eye(28, dtype=np.uint8) * 200,
            audio=(np.sin(np.arange(8000) / 3) * (np.arange(8000) // 1000 % 2)).astype(np.float32),
        )
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_bank_removal_cut_short_leaves_no_bank_that_names_files_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A removal stopped after a variant file and before bank.json left a bank naming files gone
    (bank.json went in whatever order the folder listed it). The manifest goes first; live.json stays."""
    from racmkd import pipeline

    bank = tmp_path / "edge"
    (bank / "variants").mkdir(parents=True)
    for name in ("a.onnx", "b.onnx", "c.onnx"):
        (bank / name).write_bytes(b"model")
    (bank / "bank.json").write_text("{}")
    (bank / "live.json").write_text("{}")
    real_unlink = Path.unlink

    def killed_after_the_first(path: Path, missing_ok: bool = False) -> None:
        real_unlink(path, missing_ok=missing_ok)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "unlink", killed_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        pipeline.remove_bank(tmp_path, "replaced")
    monkeypatch.undo()
    assert not (bank / "bank.json").exists() and (bank / "live.json").exists()
    pipeline.remove_bank(tmp_path, "replaced")
    assert [p.name for p in bank.iterdir()] == ["live.json"]


def test_students_trained_together_are_saved_together(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Saved one by one, a failure or a kill in the loop left some students new and some old. Now
    each is written beside its place, then all move in: a failure leaves every old one, and nothing
    half-written; a killed writer's pending files go at the next save."""
    import os
    import shutil
    import subprocess
    import sys

    from racmkd.models import checkpoint as checkpoints
    from racmkd import utils

    for name in ("high", "critical"):
        shutil.copy(tiny_run / "checkpoints" / f"{name}.pt", tmp_path / f"{name}.pt")
    old = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    high, critical = (load_model(tiny_run / "checkpoints" / f"{name}.pt") for name in ("high", "critical"))
    items = [
        (tmp_path / "high.pt", high[0], high[1], {"tier": "high", "new": True}),
        (tmp_path / "critical.pt", critical[0], critical[1], {"tier": "critical", "new": True}),
    ]
    real_save = checkpoints.save_model

    def disk_full_at_the_second(path: Path, *args: object) -> None:
        if "critical" in path.name:
            raise OSError(28, "No space left on device")
        real_save(path, *args)

    monkeypatch.setattr(checkpoints, "save_model", disk_full_at_the_second)
    made_stale = []  # what the new checkpoints make stale (a run's edge bank) goes only once they are all written
    with pytest.raises(OSError, match=r"No space left on device: .*critical\.pt not written"):
        checkpoints.save_models_together(items, before_moving_in=lambda: made_stale.append(True))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old and not made_stale  # the first one too, and no pending file
    monkeypatch.undo()
    ended = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True).stdout)
    (tmp_path / f".high.pt.{ended}-{utils._HOST}-pending.tmp").write_bytes(b"a killed save's")
    checkpoints.save_models_together(items, before_moving_in=lambda: made_stale.append((tmp_path / "high.pt").read_bytes() == old["high.pt"]))
    assert made_stale == [True]  # called once, every new file written and the old ones still in place
    assert sorted(os.listdir(tmp_path)) == ["critical.pt", "high.pt"]
    assert all(load_model(tmp_path / f"{name}.pt")[3]["new"] for name in ("high", "critical"))
