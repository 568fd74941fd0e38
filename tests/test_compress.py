"""Compression: pruning, low-rank, input reduction, quantization, export, recipes, and a whole
recipe on the tiny run's students."""

from __future__ import annotations

import copy
import json
import re
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch.nn.utils import parametrize
from torch import nn

import racmkd
from racmkd.compress.export import ExportError, compact_names, export_onnx, module_weight_bytes, read_contract, session, specs_from_contract
from racmkd.compress.inputs import most_informative, reduce_inputs
from racmkd.compress.lowrank import factorise, lowrank_model, rank_for_energy
from racmkd.compress.prune import align_channels, prune_encoders, ratio_for_bytes
from racmkd.compress.quantize import absorb_batchnorm, choose_mixed_precision, fake_quantized, LayerSensitivity
from racmkd.compress.recipe import RecipeError, parse_recipe
from racmkd.models.inference import fold_batchnorm
from racmkd.models.multimodal import build, student
from racmkd.registry import MODALITIES

INPUTS = {"image": {"encoder": "dscnn2d", "shape": [1, 16, 16]}, "audio": {"encoder": "dscnn2d", "shape": [1, 32, 32]}}


def batch(n: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {m: torch.randn(n, *s["shape"], generator=g) for m, s in INPUTS.items()}


def with_running_stats(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, as a trained model has (fresh ones are the identity)."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


# Pruning ------------------------------------------------------------------------------------------


def test_pruning_halves_every_layer_and_keeps_the_model_runnable() -> None:
    model = student(INPUTS, width=2.0, depth=2).eval()
    before = {m: e.structure()["channels"] for m, e in model.encoders.items()}
    params = sum(p.numel() for p in model.parameters())
    prune_encoders(model, 0.5)
    after = {m: e.structure()["channels"] for m, e in model.encoders.items()}
    for m in before:
        assert after[m] == [c - int(c * 0.5) for c in before[m]], m  # half of every layer's channels removed
    remaining = sum(p.numel() for p in model.parameters()) / params
    assert 0.2 < remaining < 0.35  # pointwise weights scale with channels in and out: about a quarter stay
    assert model(batch()).shape == (3, 10) and model.classifier.out_features == 10
    assert model.fused_dim == sum(c[-1] for c in after.values())
    assert model({"audio": batch()["audio"]}).shape == (3, 10)  # a missing modality still works after pruning


def test_pruning_one_modality_leaves_the_other_alone_and_rebuilds_from_its_record() -> None:
    model = with_running_stats(student(INPUTS, width=2.0, depth=2))
    audio_before = model.encoders["audio"].structure()
    prune_encoders(model, {"image": 0.5})
    assert model.encoders["audio"].structure() == audio_before
    assert model.encoders["image"].structure()["channels"][-1] == 16  # 32 -> 16
    rebuilt = build(model.arch)
    rebuilt.load_state_dict(model.state_dict())
    x = batch()
    torch.testing.assert_close(rebuilt.eval()(x), model(x))


def scripted_prune(monkeypatch: pytest.MonkeyPatch, model: nn.Module, accuracies: list[float], **options: Any) -> tuple[Any, dict[str, Any]]:
    """Prune `model` with each fine-tune's validation accuracy scripted (the start 0.95); checks that
    every scripted fine-tune ran, none more. Returns the subject and the step's details."""
    from racmkd.compress import steps

    scripted = iter(accuracies)
    monkeypatch.setattr(steps, "val_accuracy", lambda subject, ctx: 0.95)
    monkeypatch.setattr(steps, "finetune", lambda subject, ctx, options, desc: next(scripted))
    subject = steps.Subject("tier", model, dict.fromkeys(INPUTS), None, Path("."))  # type: ignore[arg-type]
    details = steps.Prune(steps.PruneOptions(**options)).apply(subject, None)  # type: ignore[arg-type]
    assert next(scripted, None) is None
    return subject, details


@pytest.mark.parametrize(
    ("recover", "accuracies", "kept_rounds", "recoveries"),
    [
        (0, [0.93], [False], [0]),  # one fine-tune past the bound: pruning stops at once
        (1, [0.93, 0.945, 0.92, 0.93], [True, False], [1, 1]),  # round 1 comes back; round 2 does not
        (2, [0.93, 0.93, 0.95, 0.949], [True, True], [2, 0]),
    ],
)
def test_a_pruning_round_past_its_bound_may_recover_before_pruning_stops(
    recover: int, accuracies: list[float], kept_rounds: list[bool], recoveries: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each fine-tune's validation accuracy is scripted (start 0.95, bound 0.01): a round is kept
    when one of its `recover` extra fine-tunes brings it back; one that does not is undone."""
    model = student(INPUTS, width=2.0, depth=2)
    channels = model.encoders["image"].structure()["channels"]
    subject, details = scripted_prune(monkeypatch, model, accuracies, ratio={"image": 0.5}, steps=2, max_drop=0.01, multiple=1, recover=recover)
    assert [r["kept"] for r in details["rounds"]] == kept_rounds and [r["recoveries"] for r in details["rounds"]] == recoveries
    left = subject.model.encoders["image"].structure()["channels"]
    kept = sum(kept_rounds)  # each kept round removes a quarter of the channels; an undone one none
    assert left == [int(c * (1 - 0.25 * kept) + 0.5) for c in channels] and details["stopped_early"] == (not all(kept_rounds))


@pytest.mark.parametrize(
    ("backoff", "accuracies", "goals", "kept_share"),
    [
        (1, [0.945, 0.93, 0.945], [0.25, 0.5, 0.375], 0.375),  # round 2 fails; the cut halfway to it passes
        (2, [0.945, 0.93, 0.93, 0.942], [0.25, 0.5, 0.375, 0.3125], 0.3125),  # halved twice
        (1, [0.945, 0.93, 0.93], [0.25, 0.5, 0.375], 0.25),  # the smaller cut fails too: round 1 stays
    ],
)
def test_a_failed_pruning_round_is_tried_again_with_smaller_cuts(
    backoff: int, accuracies: list[float], goals: list[float], kept_share: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scripted fine-tunes (start 0.95, bound 0.01): a round past the bound is cut again halfway
    between the last share kept and the one that failed, up to `backoff` times; the first within
    the bound is kept and pruning stops there."""
    model = student(INPUTS, width=4.0, depth=2)
    channels = model.encoders["image"].structure()["channels"]
    subject, details = scripted_prune(monkeypatch, model, accuracies, ratio={"image": 0.5}, steps=2, max_drop=0.01, multiple=1, backoff=backoff)
    assert [r["goal"]["image"] for r in details["rounds"]] == goals
    assert subject.model.encoders["image"].structure()["channels"] == [int(c * (1 - kept_share) + 0.5) for c in channels]
    assert details["stopped_early"] and details["ratio"]["image"] == pytest.approx(kept_share, abs=0.02)


@pytest.mark.parametrize(
    ("width", "ratio", "steps", "accuracies", "goals", "left"),
    [
        # [12, 24, 24] in three rounds to 75%: the third ([4, 8, 8]) fails, and halfway (62.5%) rounds to
        # it too, so the cut tried is a quarter of the way (56.25%): [4, 12, 12]
        (1.5, 0.75, 3, [0.945, 0.945, 0.93, 0.945], [0.25, 0.5, 0.75, 0.5625], [4, 12, 12]),
        # [8, 16, 16] in two rounds to 60%: the second ([4, 8, 8]) fails; every cut between rounds to
        # the one that failed or to the first round's [4, 12, 12]: nothing more is tried
        (1.0, 0.6, 2, [0.945, 0.93], [0.3, 0.6], [4, 12, 12]),
    ],
)
def test_a_smaller_cut_that_rounds_to_the_failed_one_is_not_tried_again(
    width: float, ratio: float, steps: int, accuracies: list[float], goals: list[float], left: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Layers kept at multiples of 4: a smaller cut whose widths round to the cut that failed would
    only re-roll its fine-tune on the same validation samples; it is halved again instead."""
    model = student(INPUTS, width=width, depth=2)
    subject, details = scripted_prune(monkeypatch, model, accuracies, ratio={"image": ratio}, steps=steps, max_drop=0.01, multiple=4, backoff=1)
    assert [r["goal"]["image"] for r in details["rounds"]] == pytest.approx(goals)
    assert subject.model.encoders["image"].structure()["channels"] == left and details["stopped_early"]


def test_a_smaller_cut_is_smaller_in_every_encoder_the_failed_round_pruned(monkeypatch: pytest.MonkeyPatch) -> None:
    """The image encoder ([12, 24, 24]) to 75% and the audio one to 60% in three rounds: the third
    fails; halfway (62.5% and 50%) the audio encoder's cut is smaller but the image one rounds to
    [4, 8, 8] again, the cut that failed, so the cut tried is halved once more (image [4, 12, 12])."""
    model = student(INPUTS, width=1.5, depth=2)
    ratio = {"image": 0.75, "audio": 0.6}
    subject, details = scripted_prune(monkeypatch, model, [0.945, 0.945, 0.93, 0.945], ratio=ratio, steps=3, max_drop=0.01, multiple=4, backoff=1)
    assert [r["goal"] for r in details["rounds"]][-1] == pytest.approx({"image": 0.5625, "audio": 0.45})
    assert subject.model.encoders["image"].structure()["channels"] == [4, 12, 12]


@pytest.mark.parametrize(("drop_from", "kept"), [("step", True), ("recipe", False)])
def test_a_pruning_bound_may_count_from_where_the_recipe_began(drop_from: str, kept: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The recipe began at 0.96 and an earlier step left 0.95: a round at 0.945 is within one point
    of the step's start, not of the recipe's."""
    from racmkd.compress import steps

    monkeypatch.setattr(steps, "val_accuracy", lambda subject, ctx: 0.95)
    monkeypatch.setattr(steps, "finetune", lambda subject, ctx, options, desc: 0.945)
    subject = steps.Subject("tier", student(INPUTS, width=2.0, depth=2), dict.fromkeys(INPUTS), None, Path("."), start_accuracy=0.96)  # type: ignore[arg-type]
    prune = steps.Prune(steps.PruneOptions(ratio={"image": 0.5}, steps=1, max_drop=0.01, multiple=1, drop_from=drop_from))
    details = prune.apply(subject, None)  # type: ignore[arg-type]
    assert details["rounds"][0]["kept"] == kept and details["lowest_val_accuracy"] == pytest.approx({"step": 0.94, "recipe": 0.95}[drop_from])


def test_alignment_cuts_layers_to_multiples_of_four_and_the_record_rebuilds_them() -> None:
    model = with_running_stats(student(INPUTS, width=23 / 8, depth=2))  # a 23-channel stem, 46 and 92 channels after it
    before = {m: e.structure()["channels"] for m, e in model.encoders.items()}
    assert before["image"][:3] == [23, 46, 46]
    changed = align_channels(model, 4)
    assert {(c["before"], c["after"]) for c in changed} == {(23, 20), (46, 44), (92, 92)} - {(92, 92)}
    for m, encoder in model.encoders.items():
        assert encoder.structure()["channels"] == [c - c % 4 for c in before[m]]  # 92 stays: a multiple already
    x = batch()
    rebuilt = build(model.arch)
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt.eval()(x), model(x))
    assert align_channels(model, 4) == []  # aligned already: nothing to cut
    small = student(INPUTS, width=3 / 8, depth=1)  # 3-channel stems: fewer than the multiple, left whole
    assert align_channels(small, 4) == [{"modality": m, "layer": 1, "before": 6, "after": 4} for m in ("image", "audio")]
    pruned = prune_encoders(student(INPUTS, width=23 / 8, depth=2), 0.5, multiple=4)
    assert all(c % 4 == 0 for e in pruned.encoders.values() for c in e.structure()["channels"])
    gentle = prune_encoders(student(INPUTS, width=10 / 8, depth=2), 0.22, multiple=4)  # 10 and 20 channels lose 22%: 7.8 and 15.6 left
    assert gentle.encoders["image"].structure()["channels"] == [8, 16, 16]  # the nearest multiples, not 4 and 12 (rounded down)
    # Rounds count from the channels they started with: two rounds land where one would (rounding not compounded).
    once, twice = student(INPUTS, width=23 / 8, depth=2), student(INPUTS, width=23 / 8, depth=2)
    start = {m: e.structure()["channels"] for m, e in twice.encoders.items()}
    prune_encoders(once, 0.5, multiple=4)
    for ratio in (0.25, 0.5):
        prune_encoders(twice, ratio, multiple=4, reference=start)
    assert {m: e.structure()["channels"] for m, e in twice.encoders.items()} == {m: e.structure()["channels"] for m, e in once.encoders.items()}
    with pytest.raises(ValueError, match="has 1 layers; this encoder has 3"):
        prune_encoders(twice, 0.6, multiple=4, reference={"image": [8]})


def test_ratio_for_bytes_reaches_the_budget_or_says_it_cannot() -> None:
    model = student(INPUTS, width=4.0, depth=1)
    target = sum(p.numel() for p in model.parameters())  # a quarter of the bytes
    ratio = ratio_for_bytes(model, target)
    assert 0.3 < ratio < 0.7
    pruned = prune_encoders(model, ratio)
    assert 4 * sum(p.numel() for p in pruned.parameters()) <= target
    with pytest.raises(ValueError, match="cannot bring this model to 100 bytes"):
        ratio_for_bytes(student(INPUTS, width=1.0), 100)


# Low-rank -----------------------------------------------------------------------------------------


def test_lowrank_error_falls_as_rank_grows_and_vanishes_at_full_rank() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(24, 16)
    x = torch.randn(50, 24)
    with torch.no_grad():
        errors = [float((factorise(layer, r)(x) - layer(x)).norm()) for r in (1, 4, 8, 12, 16)]
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-4 * float(layer(x).detach().norm())
    conv = nn.Conv2d(12, 20, 1)
    image = torch.randn(2, 12, 5, 5)
    torch.testing.assert_close(factorise(conv, 12)(image), conv(image), atol=1e-5, rtol=1e-4)


def test_rank_for_energy_on_a_known_spectrum() -> None:
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert rank_for_energy(s, 0.6) == 1 and rank_for_energy(s, 0.9) == 2 and rank_for_energy(s, 1.0) == 3


def test_lowrank_model_records_ranks_and_checkpoints_rebuild_it() -> None:
    model = with_running_stats(student(INPUTS, width=4.0, depth=1))
    params = sum(p.numel() for p in model.parameters())
    model, report = lowrank_model(model, energy=0.5)
    assert any(r.rank for r in report) and sum(p.numel() for p in model.parameters()) < params
    rebuilt = build(model.arch)
    rebuilt.load_state_dict(model.state_dict())
    x = batch()
    torch.testing.assert_close(rebuilt.eval()(x), model(x))
    assert {r.layer: r.rank for r in report if r.rank} == model.arch["lowrank"]
    # Exported, a factorised layer's BatchNorm folds into its second convolution, as any layer's does.
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) and m.affine for m in folded.modules())  # (the input normalisation, not affine, stays)
    torch.testing.assert_close(folded(x), model.eval()(x), atol=1e-5, rtol=1e-4)


def test_lowrank_twice_lowers_each_pairs_rank_in_its_place() -> None:
    """A second lowrank cuts each pair the first made, as one layer (its product), to a lower rank:
    one level of pairs, which checkpoints rebuild, BatchNorm folds into and QAT runs on. Factorising
    the factors again nested pairs, and QAT's BatchNorm absorption failed on them."""
    model = with_running_stats(student(INPUTS, width=4.0, depth=2))
    model, first = lowrank_model(model, energy=0.6)
    once = {r.layer: r.rank for r in first if r.rank}
    pairs = {name: (model.get_submodule(name)[1].weight.detach().flatten(1) @ model.get_submodule(name)[0].weight.detach().flatten(1)) for name in once}
    model, second = lowrank_model(model, energy=0.6)
    twice = {r.layer: r.rank for r in second if r.rank}
    assert twice and set(twice) <= set(once) and all(twice[n] < once[n] for n in twice)
    assert model.arch["lowrank"] == {**once, **twice}  # the pairs' paths, no factor of a factor
    for name, rank in twice.items():
        pair = model.get_submodule(name)
        assert [type(m) for m in pair] == [nn.Conv2d, nn.Conv2d] and pair[0].out_channels == rank
        product = pair[1].weight.detach().flatten(1) @ pair[0].weight.detach().flatten(1)
        u, s, vh = torch.linalg.svd(pairs[name].double())
        best = (u[:, :rank] * s[:rank]) @ vh[:rank]  # the best rank-r approximation of the pair it replaced
        torch.testing.assert_close(product.double(), best, atol=1e-5, rtol=1e-4)
    report = {r.layer: r for r in second}
    assert all(report[n].params_before == once[n] * sum(report[n].shape) for n in twice)
    x = batch()
    rebuilt = build(model.arch)
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x))
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) and m.affine for m in folded.modules())
    torch.testing.assert_close(folded(x), model.eval()(x), atol=1e-5, rtol=1e-4)
    with fake_quantized(model):  # absorbs BatchNorm first
        assert model(x).shape == (3, 10)
    model, third = lowrank_model(model, energy=1.0)  # the whole spectrum of every pair: nothing to cut
    assert not any(r.rank for r in third) and model.arch["lowrank"] == {**once, **twice}


# Input reduction ----------------------------------------------------------------------------------


def test_input_reductions_shrink_the_input_and_keep_the_weights() -> None:
    image, audio = MODALITIES.create("image"), MODALITIES.create("audio")
    specs = {"image": image.spec(1), "audio": audio.spec(1)}  # 16x16 and 32 mels x 32 frames
    model = student({m: {"encoder": "dscnn2d", "shape": list(MODALITIES.create(m).feature_shape(s))} for m, s in specs.items()}, width=1.0, depth=1)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model, reduced = reduce_inputs(
        model, specs, {"image": image, "audio": audio}, {"image": {"resolution": 12, "crop": 20}, "audio": {"n_mels": 16, "n_frames": 16}}
    )
    assert reduced["image"].resolution == 12 and reduced["audio"].n_mels == 16
    assert model.arch["kwargs"]["inputs"]["audio"]["shape"] == [1, 16, 16]
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    x = {"image": torch.rand(2, 1, 12, 12), "audio": torch.randn(2, 1, 16, 16)}
    assert build(model.arch).eval()(x).shape == (2, 10)  # the pinned plan rebuilds for the smaller input
    with pytest.raises(ValueError, match="not a reduction"):
        audio.reduce(audio.spec(2), n_mels=64)
    with pytest.raises(ValueError, match="unknown input reduction"):
        image.reduce(image.spec(0), colour=3)
    # as a recipe may spell them
    for m, knobs in ((image, {"resolution": "12"}), (image, {"resolution": 12.5}), (audio, {"n_frames": 16.0}), (audio, {"bands": 5})):
        with pytest.raises(ValueError, match="expected a (whole number|list of whole numbers)"):
            m.reduce(m.spec(0), **knobs)


def test_an_input_step_caps_knobs_so_one_recipe_serves_every_tier() -> None:
    from types import SimpleNamespace

    from racmkd.compress.steps import Inputs, InputsOptions

    audio = MODALITIES.create("audio")
    step = Inputs(InputsOptions(reduce={"audio": {"n_frames": 24}}))
    high = SimpleNamespace(name="high", specs={"audio": audio.spec(1)})  # 32 frames: lowered to 24
    low = SimpleNamespace(name="low", specs={"audio": audio.spec(2)})  # 16 frames: within the cap, left alone
    assert step.knobs(high) == {"audio": {"n_frames": 24}} and step.knobs(low) == {}
    done = step.apply(low, ctx=None)  # nothing to lower: no fine-tune, nothing changed
    assert "skipped" in done and low.specs["audio"] == audio.spec(2)
    with pytest.raises(ValueError, match="does not use image"):
        Inputs(InputsOptions(reduce={"image": {"resolution": 8}})).knobs(low)


def test_band_selection_keeps_the_top_bands_in_frequency_order() -> None:
    assert most_informative([0.1, 0.5, -0.2, 0.9, 0.3], 3) == (1, 3, 4)
    audio = MODALITIES.create("audio")
    spec = audio.reduce(audio.spec(1), bands=[3, 7, 30])
    assert audio.feature_shape(spec) == (1, 3, 32)
    wave = audio.to_raw(np.sin(np.arange(8000) / 5.0).astype(np.float32), spec)
    full = audio.features(wave, audio.spec(1))
    torch.testing.assert_close(audio.features(wave, spec), full[:, :, [3, 7, 30]])


# Quantization -------------------------------------------------------------------------------------


def test_absorbed_batchnorm_and_fake_quantization() -> None:
    model = with_running_stats(student(INPUTS, width=1.0, depth=1))
    x = batch(8)
    reference = model(x)
    absorb_batchnorm(model)
    torch.testing.assert_close(model(x), reference, atol=1e-5, rtol=1e-4)  # the same function
    keys = set(model.state_dict())
    with fake_quantized(model):
        rounded = model(x)
        assert not torch.equal(rounded, reference)
        assert (rounded - reference).abs().max() < 0.2 * reference.abs().max()  # int8 rounding is small
        assert not parametrize.is_parametrized(model.fusion.presence)  # folded into a bias at export: never an int8 layer
        assert parametrize.is_parametrized(model.classifier)
        # The classifier's input is rounded as deployed: the embeddings, before the presence term (its bias there).
        assert model.fusion._forward_pre_hooks and not model.classifier._forward_pre_hooks
    assert set(model.state_dict()) == keys  # the rounding is gone, the float weights stay


def test_mixed_precision_keeps_the_most_sensitive_layers_within_budget() -> None:
    rows = [
        LayerSensitivity("a", "Conv", 100, 0.5, -0.01, 400, 105),
        LayerSensitivity("b", "Conv", 100, 0.01, 0.0, 400, 105),
        LayerSensitivity("c", "Gemm", 10, 0.2, 0.0, 40, 15),
    ]
    kept, total = choose_mixed_precision(rows, budget_bytes=225 + 25 + 295)
    assert kept == ["c", "a"] and total == 225 + 25 + 295
    with pytest.raises(ValueError, match="even all-int8"):
        choose_mixed_precision(rows, budget_bytes=100)


# Cross-layer equalization -------------------------------------------------------------------------


def spread_channels(model: nn.Module, factor: float = 8.0) -> None:
    """Make the image stem's first output channel `factor` times larger and the next layer read it
    `factor` times smaller: the same function, one channel far wider than the others."""
    body = model.encoders["image"].body
    with torch.no_grad():
        body[1][1].weight[0] *= factor
        body[1][1].bias[0] *= factor
        body[2][0].weight[0] /= factor  # depthwise: input channel 0 is its channel 0


def test_equalization_keeps_the_function_and_balances_every_layers_channels() -> None:
    from racmkd.compress.equalize import equalize_model

    torch.manual_seed(0)
    model = with_running_stats(student(INPUTS, width=2.0, depth=2))
    spread_channels(model)
    x = batch(16)
    reference = model(x)
    report = equalize_model(model)
    torch.testing.assert_close(model(x), reference, atol=1e-5, rtol=1e-4)  # ReLU commutes with a positive scale per channel
    assert set(report) == {"encoders.image", "encoders.audio"}
    for name, result in report.items():
        layers = result.layers
        assert result.converged and 1 < result.sweeps < 100
        # Every conv-BN-ReLU block of the body in one chain: stem, then depthwise and pointwise pairs.
        body = model.encoders[name.removeprefix("encoders.")].body
        assert [layer.layer for layer in layers] == [f"body.{i}" for i in range(1, len(body))] and len(layers) >= 5
        # The last block's outputs are left (they feed the classifier): only its inputs were scaled.
        assert all(layer.spread_after < layer.spread_before for layer in layers[:-1])
        assert max(layer.spread_after for layer in layers[:-1]) < 2.5
    stem = report["encoders.image"].layers[0]  # the channel made wide
    assert stem.spread_before > 4 and stem.spread_after < 0.5 * stem.spread_before
    only_audio = with_running_stats(student(INPUTS, width=2.0, depth=2))
    image_before = [p.clone() for p in only_audio.encoders["image"].parameters()]
    assert set(equalize_model(only_audio, ("encoders.audio",))) == {"encoders.audio"}
    assert all(torch.equal(a, b) for a, b in zip(image_before, only_audio.encoders["image"].parameters()))


def test_equalization_keeps_the_function_in_training_mode_with_negative_and_nearly_dead_channels() -> None:
    from racmkd.compress.equalize import equalize_model

    torch.manual_seed(0)
    model = with_running_stats(student(INPUTS, width=2.0, depth=1))
    body = model.encoders["image"].body
    with torch.no_grad():
        body[1][1].weight[1] = -body[1][1].weight[1]  # a negative BatchNorm scale: the folded weight's sign flips
        body[1][1].weight[2] = 1e-7  # a channel all but dead: balancing it would divide by almost nothing
        body[1][1].bias[2] = 0.3
    x = batch(16)
    original = copy.deepcopy(model)
    with torch.no_grad():
        largest_bias = max(float(b[1].bias.abs().max()) for b in body if isinstance(b, nn.Sequential))
    equalize_model(model)
    torch.testing.assert_close(model(x), original(x), atol=1e-5, rtol=1e-4)
    for bn in (m for net in (model, original) for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.train()  # batch statistics (and nothing random, as dropout would be): a scale per channel passes through them as well
    torch.testing.assert_close(model(x), original(x), atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        assert float(body[1][1].bias[2]) == pytest.approx(0.3)  # left as it was
        assert max(float(b[1].bias.abs().max()) for b in body if isinstance(b, nn.Sequential)) < 10 * largest_bias


def test_equalization_leaves_factorised_layers_and_keeps_the_function_around_them() -> None:
    """A low-rank factorised convolution ends a chain: its input channels are those of its first
    factor, which equalization does not scale."""
    from racmkd.compress.equalize import equalizable_chains, equalize_model

    torch.manual_seed(0)
    model = with_running_stats(lowrank_model(with_running_stats(student(INPUTS, width=2.0, depth=2)), energy=0.5)[0])
    factorised = [i for i, b in enumerate(model.encoders["audio"].body) if isinstance(b, nn.Sequential) and isinstance(b[0], nn.Sequential)]
    assert factorised
    named = {name for chain in equalizable_chains(model.encoders["audio"]) for name, _, _ in chain}
    assert not named & {f"body.{i}" for i in factorised}
    x = batch(16)
    reference = model(x)
    equalize_model(model)
    torch.testing.assert_close(model(x), reference, atol=1e-5, rtol=1e-4)


def test_equalized_weights_round_better_on_one_scale_per_layer() -> None:
    """What equalization is for: a layer's 4-bit weights on one scale (the export's
    per_tensor_scales) cost the encoder's output less once its channel ranges are balanced. (The
    stem, made wide: the last layer's outputs are not balanced, and the others are rounded in 8
    bits here, so its error is the one measured.)"""
    from racmkd.compress.equalize import equalize_model

    torch.manual_seed(0)
    plain = with_running_stats(student(INPUTS, width=2.0, depth=1))
    spread_channels(plain)
    equalized = copy.deepcopy(plain)
    equalize_model(equalized)
    image = batch(64)["image"]
    with torch.no_grad():
        reference = plain.encoders["image"](image)  # the image embedding, which both compute
        errors = {}
        for name, model in (("plain", plain), ("equalized", equalized)):
            with fake_quantized(model, weight_bits=4, activations=False, modules=("encoders.image.body.1",), per_tensor=True):
                errors[name] = float((model.encoders["image"](image) - reference).abs().mean())
    assert errors["equalized"] < 0.5 * errors["plain"]


def test_equalization_chains_stop_where_a_scale_would_not_pass_through() -> None:
    from racmkd.compress.equalize import equalizable_chains
    from racmkd.models.encoders import CNN2dEncoder, conv_bn_relu

    teacher_encoder = CNN2dEncoder((1, 16, 16), width=4)  # blocks separated by max pooling: one chain
    assert [[name for name, _, _ in chain] for chain in equalizable_chains(teacher_encoder)] == [["body.1", "body.3", "body.5"]]

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                conv_bn_relu(1, 8),
                conv_bn_relu(8, 8, groups=8),  # depthwise: joins
                conv_bn_relu(8, 8, groups=2),  # grouped, not depthwise: starts a new chain
                conv_bn_relu(8, 8, kernel=1),
                nn.AvgPool2d(2),  # a scale passes through it, but only max pooling is allowed
                conv_bn_relu(8, 4, kernel=1),
            )

    assert [[name for name, _, _ in chain] for chain in equalizable_chains(Encoder())] == [["body.0", "body.1"], ["body.2", "body.3"]]


# Export -------------------------------------------------------------------------------------------


def test_folding_batchnorm_keeps_the_function() -> None:
    model = with_running_stats(student(INPUTS, width=1.0, depth=2))
    x = batch()
    folded = fold_batchnorm(model)
    torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-4)
    affine = lambda net: [m for m in net.modules() if isinstance(m, nn.BatchNorm2d) and m.affine]  # noqa: E731 - (an input normalisation has no affine part: it stays)
    assert affine(model) and not affine(folded)


def test_ctrl_c_inside_the_exporter_is_an_interrupt_not_a_failed_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.export wraps what stops it in its own error: a Ctrl-C came out as "ONNX export failed
    (TorchExportError: ...)", exit code 2, instead of an interrupt (130)."""
    from collections import OrderedDict

    from racmkd.compress import export

    monkeypatch.setattr(export, "_GRAPHS", OrderedDict())

    def stopped(*args: object, **kwargs: object) -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as err:
            raise RuntimeError("Failed to export the model with torch.export. Next steps:") from err

    def failed(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Failed to export the model with torch.export.\nmore")

    modalities = {"image": MODALITIES.create("image")}
    specs = {"image": modalities["image"].spec(1)}
    model = with_running_stats(student({"image": {"encoder": "dscnn2d", "shape": list(modalities["image"].feature_shape(specs["image"]))}}, width=1.0, depth=1))
    monkeypatch.setattr(torch.onnx, "export", stopped)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(model, specs, modalities, tmp_path / "a.onnx")

    def terminated(*args: object, **kwargs: object) -> None:  # the CLI's SIGTERM handler raises SystemExit(143)
        try:
            raise SystemExit(143)
        except SystemExit as err:
            raise RuntimeError("Failed to export the model with torch.export. Next steps:") from err

    monkeypatch.setattr(torch.onnx, "export", terminated)
    with pytest.raises(SystemExit) as stop:
        export_onnx(model, specs, modalities, tmp_path / "a.onnx")
    assert stop.value.code == 143
    monkeypatch.setattr(torch.onnx, "export", failed)
    with pytest.raises(ExportError, match=r"a\.onnx: ONNX export failed \(RuntimeError: Failed to export the model with torch\.export\.\)$"):
        export_onnx(model, specs, modalities, tmp_path / "a.onnx")
    assert not (tmp_path / "a.onnx").exists()


def test_a_model_exported_again_reuses_its_graph_and_a_changed_one_does_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from collections import OrderedDict

    from racmkd.compress import export

    monkeypatch.setattr(export, "_GRAPHS", OrderedDict())  # (other tests' exports may hold this model's graph)
    traced: list[str] = []
    real = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: traced.append("export") or real(*args, **kwargs))
    modalities = {m: MODALITIES.create(m) for m in ("image", "audio")}
    specs = {"image": modalities["image"].spec(1), "audio": modalities["audio"].spec(1)}
    model = with_running_stats(
        student({m: {"encoder": "dscnn2d", "shape": list(modalities[m].feature_shape(s))} for m, s in specs.items()}, width=1.0, depth=1)
    )
    first = onnx.load(export_onnx(model, specs, modalities, tmp_path / "a.onnx", name="a"))
    second = onnx.load(export_onnx(model, specs, modalities, tmp_path / "b.onnx", name="b", extra_meta={"tier": "high"}))
    assert len(traced) == 1 and first.graph == second.graph  # one trace, two files ...
    assert read_contract(tmp_path / "b.onnx")["model"] == "b" and read_contract(tmp_path / "b.onnx")["tier"] == "high"  # ... each with its own contract
    export_onnx(model, specs, modalities, tmp_path / "audio.onnx", present=["audio"])  # another graph of the same weights
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1.0  # one weight changed
    changed = onnx.load(export_onnx(model, specs, modalities, tmp_path / "c.onnx", name="a"))
    assert len(traced) == 3 and changed.graph != first.graph
    x = {m: torch.randn(2, *modalities[m].feature_shape(s)) for m, s in specs.items()}
    np.testing.assert_allclose(session(tmp_path / "c.onnx").run(["logits"], {m: v.numpy() for m, v in x.items()})[0], model(x).detach().numpy(), atol=1e-4)


def test_export_metadata_round_trips_and_onnx_runtime_matches_pytorch(tmp_path: Path) -> None:
    modalities = {m: MODALITIES.create(m) for m in ("image", "audio")}
    specs = {"image": modalities["image"].spec(1), "audio": modalities["audio"].spec(1)}
    model = with_running_stats(
        student({m: {"encoder": "dscnn2d", "shape": list(modalities[m].feature_shape(s))} for m, s in specs.items()}, width=1.0, depth=1)
    )
    path = export_onnx(model, specs, modalities, tmp_path / "m.onnx", name="demo", extra_meta={"tier": "high"})
    contract = read_contract(path)
    assert contract["model"] == "demo" and contract["tier"] == "high" and list(contract["inputs"]) == ["image", "audio"]
    assert specs_from_contract(contract) == specs
    assert any("mel bands" in step for step in contract["inputs"]["audio"]["steps"])
    exported = onnx.load(path)  # nothing the exporter kept for debugging travels to the device
    assert not exported.graph.metadata_props and not any(n.metadata_props or n.doc_string for n in exported.graph.node)
    from racmkd.compress.export import CONTRACT_KEY, set_metadata
    from racmkd.runtime.predictor import OnnxPredictor

    wrong = json.loads(json.dumps(contract))  # a contract that no longer describes its graph is refused at load
    wrong["inputs"]["image"]["spec"]["resolution"] = specs["image"].resolution // 2
    set_metadata(exported, {CONTRACT_KEY: json.dumps(wrong)})
    onnx.save(exported, tmp_path / "wrong.onnx")
    with pytest.raises(ExportError, match="its graph takes"):
        OnnxPredictor(tmp_path / "wrong.onnx")
    x = {m: torch.randn(4, *modalities[m].feature_shape(s)) for m, s in specs.items()}
    out = session(path).run(["logits"], {m: v.numpy() for m, v in x.items()})[0]
    np.testing.assert_allclose(out, model(x).detach().numpy(), atol=1e-4)
    compact = compact_names(onnx.load(path))
    assert compact.ByteSize() < path.stat().st_size
    convs = [n for n in compact.graph.node if n.op_type == "Conv"]  # attributes that restate defaults are gone
    assert convs and not any(
        a.name in ("auto_pad", "dilations") or (a.name == "group" and a.i == 1) or (a.name == "strides" and set(a.ints) == {1})
        for n in convs
        for a in n.attribute
    )
    assert any(a.name == "strides" and set(a.ints) == {2} for n in convs for a in n.attribute) and all(
        any(a.name == "kernel_shape" for a in n.attribute) for n in convs
    )
    np.testing.assert_allclose(session(compact.SerializeToString()).run(["logits"], {m: v.numpy() for m, v in x.items()})[0], out, atol=1e-6)
    assert {"encoders.image", "encoders.audio"} <= set(module_weight_bytes(onnx.load(path)))
    audio_only = export_onnx(model, specs, modalities, tmp_path / "a.onnx", present=["audio"])
    assert [i.name for i in session(audio_only).get_inputs()] == ["audio"]
    reference = model.forward_head(model.fuse(model.encode({"audio": x["audio"]})[1])).detach().numpy()
    np.testing.assert_allclose(session(audio_only).run(["logits"], {"audio": x["audio"].numpy()})[0], reference, atol=1e-4)
    from torch.onnx._internal.exporter import _registration

    from racmkd.compress.export import _torchlib_registry

    # The two exports built torch's operator registry once (per opset), and left torch's own builder in place.
    assert _torchlib_registry.cache_info().currsize == 1 and _torchlib_registry.cache_info().hits >= 1
    assert "<lambda>" not in repr(_registration.ONNXRegistry.__dict__["from_torchlib"].__func__)


def test_a_teacher_exports_with_its_fusion_and_a_sensor_off(tmp_path: Path) -> None:
    from racmkd.models.multimodal import teacher

    modalities = {m: MODALITIES.create(m) for m in ("image", "audio")}
    specs = {"image": modalities["image"].spec(2), "audio": modalities["audio"].spec(3)}
    model = with_running_stats(
        teacher({m: {"encoder": "cnn2d", "shape": list(modalities[m].feature_shape(s))} for m, s in specs.items()}, width=4, embed_dim=8, fusion_hidden=16)
    )
    x = {m: torch.randn(3, *modalities[m].feature_shape(s)) for m, s in specs.items()}
    for present in (["image", "audio"], ["image"]):
        path = export_onnx(model, specs, modalities, tmp_path / f"{'+'.join(present)}.onnx", present=present)
        ops = {n.op_type for n in onnx.load(path).graph.node}
        assert not ops & {"Shape", "Expand", "ConstantOfShape"}  # the presence mask is folded away
        expected = model({m: x[m] for m in present}).detach().numpy()
        np.testing.assert_allclose(session(path).run(["logits"], {m: x[m].numpy() for m in present})[0], expected, atol=1e-4)


def test_a_modality_listed_twice_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`racmkd export --modality image --modality image`: the graph takes one input per modality,
    named after it; refused before tracing with the modality named, not inside torch.export."""
    modalities = {m: MODALITIES.create(m) for m in ("image", "audio")}
    specs = {m: modalities[m].spec(1) for m in modalities}
    model = student({m: {"encoder": "dscnn2d", "shape": list(modalities[m].feature_shape(s))} for m, s in specs.items()}, width=1.0, depth=1).eval()
    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: pytest.fail("traced a graph with a repeated input"))
    with pytest.raises(ExportError, match=r"twice\.onnx: image listed more than once .* name each modality once"):
        export_onnx(model, specs, modalities, tmp_path / "twice.onnx", present=["image", "audio", "image"])
    assert not (tmp_path / "twice.onnx").exists()


def test_an_export_removes_the_variants_an_earlier_one_left_that_it_did_not_write(tmp_path: Path) -> None:
    """An earlier export wrote fp32, int8 and int8 weights; this one fp32 only: the old int8 files
    would sit beside an export.json that lists none of them, deployable-looking and stale. Only this
    model's variants go: another model's and a subset's (`<name>-image.*`) stay."""
    from racmkd.compress.export import remove_unwritten_variants

    for name in (
        "critical.fp32.onnx",
        "critical.int8.onnx",
        "critical.int8-weights.onnx",
        "critical-image.int8.onnx",
        "high.int8.onnx",
        "critical.export.json",
        "critical.fp32.profile.json",
    ):
        (tmp_path / name).write_bytes(b"earlier")
    removed = remove_unwritten_variants(tmp_path, "critical", [tmp_path / "critical.fp32.onnx"])
    assert sorted(p.name for p in removed) == ["critical.int8-weights.onnx", "critical.int8.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "critical-image.int8.onnx",
        "critical.export.json",
        "critical.fp32.onnx",
        "critical.fp32.profile.json",
        "high.int8.onnx",
    ]
    assert remove_unwritten_variants(tmp_path, "critical", [tmp_path / "critical.fp32.onnx"]) == []  # nothing more to remove
    (tmp_path / "critical.int8.onnx").write_bytes(b"new")
    assert remove_unwritten_variants(tmp_path, "critical", [tmp_path / "critical.fp32.onnx", tmp_path / "critical.int8.onnx"]) == []  # written now: kept


def test_a_contract_from_before_the_audio_window_is_read_and_placed_as_it_learned(tmp_path: Path) -> None:
    """Contracts written since audio recordings are placed on their speech are racmkd-onnx/2 and say
    so in spec.window; a racmkd-onnx/1 file names no window and is read as it was made ("loudest").
    Both said /1 before: a reader that ignores keys it does not know placed /2's audio the old way."""
    from racmkd.compress.export import CONTRACT_FORMAT, CONTRACT_KEY, set_metadata

    audio = MODALITIES.create("audio")
    spec = audio.spec(3)
    model = with_running_stats(student({"audio": {"encoder": "dscnn2d", "shape": list(audio.feature_shape(spec))}}, width=0.5, depth=1))
    path = export_onnx(model, {"audio": spec}, {"audio": audio}, tmp_path / "new.onnx", name="m")
    contract = read_contract(path)
    assert contract["format"] == CONTRACT_FORMAT == "racmkd-onnx/2" and contract["inputs"]["audio"]["spec"]["window"] == "speech"
    old = json.loads(json.dumps(contract))
    old["format"] = "racmkd-onnx/1"
    del old["inputs"]["audio"]["spec"]["window"]
    written = onnx.load(path)
    for name, edited in (("old", old), ("future", {**contract, "format": "racmkd-onnx/9"})):
        set_metadata(written, {CONTRACT_KEY: json.dumps(edited)})
        onnx.save(written, tmp_path / f"{name}.onnx")
    assert specs_from_contract(read_contract(tmp_path / "old.onnx"))["audio"].window == "loudest"
    with pytest.raises(ExportError, match=r"future.onnx: its racmkd contract is not a racmkd-onnx/1 or racmkd-onnx/2 contract .*format 'racmkd-onnx/9'"):
        read_contract(tmp_path / "future.onnx")


def test_files_that_are_not_racmkd_models_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 not a protobuf \xff" * 10)
    with pytest.raises(ExportError, match="not an ONNX model"):
        read_contract(junk)
    with pytest.raises(ExportError, match="no such file"):
        read_contract(tmp_path / "missing.onnx")
    tiny = tmp_path / "tiny.onnx"  # protobuf reads b"x\n" as an empty message: no model, not "a model without a contract"
    tiny.write_bytes(b"x\n")
    with pytest.raises(ExportError, match=r"not an ONNX model \(no graph in it\); export it with `racmkd export`"):
        read_contract(tiny)
    # Protobuf reads 0 bytes, and many a short text, as a model with nothing in it: it was called
    # "an ONNX model without a racmkd contract".
    for content, message in ((b"", "an empty file"), (b"xx", "no graph")):
        junk.write_bytes(content)
        with pytest.raises(ExportError, match=message):
            read_contract(junk)
    with pytest.raises(ExportError, match="a folder, not a model file"):  # was "no such file"
        read_contract(tmp_path)
    plain = tmp_path / "plain.onnx"
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(graph), plain)
    with pytest.raises(ExportError, match="without a racmkd contract"):
        read_contract(plain)


# Recipes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([{"prnue": {}}, "export"], "Did you mean 'prune'"),
        ([{"prune": {"ratoi": 0.5}}, "export"], "Did you mean 'ratio'"),
        ([{"prune": {"ratio": "half"}}, "export"], "expected float or dict"),
        ([{"prune": {"drop_from": "start"}}, "export"], "drop_from must be step or recipe, got 'start'"),
        ([{"prune": {"recover": -1}}, "export"], "recover must be >= 0 fine-tunes, got -1"),
        (["prune"], "ends with exactly one export"),
        (["export", "prune", "export"], "ends with exactly one export"),
        (["lowrank", "prune", "export"], "prune after lowrank"),
        (["lowrank", "align", "export"], "align after lowrank"),
        ([{"align": {"multiple": 1}}, "export"], "multiple must be >= 2"),
        (["qat", "distill", "export"], "after qat would retrain"),
        (["qat", {"qat": {"weight_bits": 4, "activations": False}}, "export"], "qat 2 times: each would round the weights the one before trained"),
        ([{"prune": []}, "export"], r"steps\[0\]\.prune"),
        ([{"prune": False}, "export"], r"steps\[0\]\.prune"),
        ([["prune", "qat"], "export"], "one step name with its options"),
        # Values checked when the recipe is read, not when (after other tiers' work) the step runs.
        ([{"prune": {"importance": "bogus"}}, "export"], r"steps\[0\]\.prune: importance"),
        ([{"prune": {"target_bytes": 1000, "steps": 0}}, "export"], "prune: steps must be at least 1"),
        ([{"prune": {"ratio": 0.3, "target_bytes": 1000}}, "export"], "give ratio or target_bytes, not both"),
        ([{"prune": {"finetune": {"lr": -0.1}}}, "export"], "lr must be a positive number"),
        ([{"lowrank": {"energy": 1.5}}, "export"], "energy must be in"),
        ([{"export": {"min_agreement": 1.5}}], "min_agreement and max_accuracy_drop must be in"),
        ([{"export": {"int8": "mixed", "mixed_budget": 0.5}}], "impossible budget"),
        ([{"export": {"int8": "mixed", "mixed_budget": float("inf")}}], "must be a finite multiple"),
        ([{"qat": {"weight_bits": 2}}, "export"], r"steps\[0\]\.qat: weight_bits must be 8 or 4"),
        ([{"qat": {"activations": "no"}}, "export"], r"qat\.activations: expected true or false"),
        ([{"export": {"int8": "none", "int4_weights": True, "sensitivity_samples": 0}}], "for int4_weights and per_tensor_scales sensitivity_samples"),
        ([{"export": {"int8": "none", "per_tensor_scales": True, "sensitivity_samples": 0}}], "for int4_weights and per_tensor_scales sensitivity_samples"),
        ([{"export": {"int8_weights": False, "per_tensor_scales": True}}], "per_tensor_scales and bias_correction apply to the weights-only files"),
        ([{"export": {"int8_weights": False, "bias_correction": True}}], "per_tensor_scales and bias_correction apply to the weights-only files"),
        ([{"export": {"int4_modules": ["encoders.image"]}}], "int4_modules names modules .* with int4_weights False"),
        ([{"export": {"int4_weights": True, "int4_modules": [""]}}], "int4_modules names modules"),
        ([{"export": {"int8": "none", "bias_correction": True, "calibration_samples": 0}}], "for bias_correction calibration_samples"),
        (["equalize", "distill", "export"], r"\['distill'\] after equalize would retrain the balanced weights"),
        ([{"equalize": {"modules": ["head"]}}, "export"], r"steps\[0\]\.equalize: modules names encoders"),
        ([{"equalize": {"max_sweeps": 0}}, "export"], "max_sweeps must be at least 1"),
        ([{"qat": {"weight_bits": 4, "activations": False}}, "equalize", "export"], "equalize after a qat with activations: false"),
        ([{"qat": {"activations": False, "per_tensor": True}}, "equalize", "export"], "equalize after a qat with activations: false"),
        ([{"qat": {"activations": False}}, "equalize", "export"], "equalize after a qat with activations: false"),  # (8-bit weights-only grid too)
        ([{"qat": {"weight_bits": 4}}, "export"], "weight_bits 4 trains for the int4-weights file.* set activations: false"),
        # Steps that would do nothing, in silence (the log's NaN made compression.json strict JSON no more).
        ([{"qat": {"epochs": 0}}, "export"], "qat: epochs must be at least 1"),
        ([{"distill": {"epochs": 0}}, "export"], "distill: epochs must be at least 1"),
        ([{"prune": {"ratio": {}}}, "export"], "ratio is an empty mapping"),
        ([{"inputs": {"reduce": {}}}, "export"], "inputs: reduce names nothing to lower"),
        ([{"inputs": {"reduce": {"audio": {}}}}, "export"], "inputs: reduce names nothing to lower"),
        # Refused when read, not at the step after a `racmkd run`'s training (passed over by the check before it).
        ([{"prune": {"ratio": 1.5}}, "export"], r"steps\[0\]\.prune: the ratio must be in \[0, 0.95\], got 1.5"),
        ([{"prune": {"ratio": float("nan")}}, "export"], r"the ratio must be in \[0, 0.95\], got nan"),
        ([{"prune": {"ratio": {"imag": 0.5}}}, "export"], r"ratio names \['imag'\], no modality\. Did you mean 'image'"),
        ([{"bands": {"fraction": 2.0}}, "export"], r"steps\[0\]\.bands: set either keep \(a count\) or fraction"),
        ([{"bands": {"keep": 3, "fraction": 0.5}}, "export"], r"set either keep \(a count\) or fraction \(in \(0, 1\]\), not both"),
    ],
)
def test_recipe_validation_errors_name_the_problem(steps: list, message: str) -> None:
    with pytest.raises(RecipeError, match=message) as err:
        parse_recipe({"steps": steps}, "my-recipe.yaml")
    assert "my-recipe.yaml" in str(err.value)


def test_a_plugin_step_that_retrains_float_weights_is_refused_after_qat() -> None:
    """Which steps retrain float weights was a fixed set of racmkd's step names: a plugin's
    fine-tune after qat was taken, and undid it."""
    from dataclasses import dataclass

    from racmkd.compress.steps import Step
    from racmkd.registry import COMPRESSORS

    @dataclass(frozen=True)
    class PolishOptions:
        epochs: int = 1

    class Polish(Step):
        options_type = PolishOptions
        refines_weights = True

        def apply(self, subject, ctx):  # noqa: ANN001, ANN202
            return {}

    COMPRESSORS.register("polish")(Polish)
    try:
        with pytest.raises(RecipeError, match=r"\['polish'\] after qat would retrain"):
            parse_recipe({"steps": ["qat", "polish", "export"]}, "plugin.yaml")
        parse_recipe({"steps": ["polish", "qat", "export"]}, "plugin.yaml")  # before it: as it should be
    finally:
        COMPRESSORS.unregister("polish")


def test_an_impossible_lowrank_budget_fails_before_any_step_runs(tmp_path: Path) -> None:
    """Checked on the model the step will see: with nothing before it that changes the layers. After
    a prune, the step checks itself (the pruned model may meet a budget the whole one cannot)."""
    from racmkd.compress.recipe import check_recipe
    from racmkd.compress.steps import Subject

    model = with_running_stats(student(INPUTS, width=4.0, depth=1))
    subject = Subject("low", model, {}, None, tmp_path)  # (the checks read the model alone)
    weights = [p.detach().clone() for p in model.parameters()]
    impossible = parse_recipe({"steps": [{"distill": {"epochs": 1}}, {"lowrank": {"budget_bytes": 64}}, "export"]}, "small.yaml")
    with pytest.raises(RecipeError, match=r"small\.yaml: steps\[1\]\.lowrank: low-rank factorisation cannot bring this model to 64 bytes"):
        check_recipe(impossible, subject, None)
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True)) and "lowrank" not in model.arch  # tried on a copy
    check_recipe(parse_recipe({"steps": [{"lowrank": {"budget_bytes": 10**9}}, "export"]}, "roomy.yaml"), subject, None)
    # left to the step
    check_recipe(parse_recipe({"steps": [{"prune": {"ratio": 0.5}}, {"lowrank": {"budget_bytes": 64}}, "export"]}, "pruned.yaml"), subject, None)


def test_int4_modules_that_the_model_lacks_fail_before_any_step_runs(tmp_path: Path) -> None:
    from racmkd.compress.recipe import check_recipe
    from racmkd.compress.steps import Subject

    subject = Subject("low", with_running_stats(student(INPUTS, width=1.0, depth=1)), {}, None, tmp_path)
    export = {"export": {"int4_weights": True, "int4_modules": ["encoders.image", "encoders.imgae"]}}
    with pytest.raises(
        RecipeError,
        match=r"int4_modules \['encoders\.imgae'\] are no modules of this model's export; name its encoders \(encoders\.audio, encoders\.image\) or head",
    ):
        check_recipe(parse_recipe({"steps": [{"prune": {"ratio": 0.5}}, export]}, "typo.yaml"), subject, None)
    for modules in (["encoders.image"], ["head", "encoders.audio.body.1"]):
        check_recipe(parse_recipe({"steps": [{"export": {"int4_weights": True, "int4_modules": modules}}]}, "fine.yaml"), subject, None)
    qat = {"qat": {"weight_bits": 4, "activations": False, "modules": ["encoders.imgae"]}}
    with pytest.raises(RecipeError, match=r"typo\.yaml: steps\[1\]\.qat: modules \['encoders\.imgae'\] are no modules of this model's export"):
        check_recipe(parse_recipe({"steps": [{"prune": {"ratio": 0.5}}, qat, "export"]}, "typo.yaml"), subject, None)
    from racmkd.models.encoders import MobileNetV3SmallEncoder

    mixed = Subject("low", student(INPUTS), {}, None, tmp_path)
    mixed.model.encoders["audio"] = MobileNetV3SmallEncoder((1, 32, 32))  # hard-swish and inverted residuals: nothing to balance
    with pytest.raises(RecipeError, match=r"equalize: \['encoders\.audio'\] have no consecutive conv-BN-ReLU layers to balance"):
        check_recipe(parse_recipe({"steps": [{"equalize": {"modules": ["encoders.audio"]}}, "export"]}, "mbv3.yaml"), mixed, None)
    check_recipe(parse_recipe({"steps": [{"equalize": {"modules": ["encoders.image"]}}, "export"]}, "mbv3.yaml"), mixed, None)
    for wrong in ("encoders.imgae", "encoders.image.body.1"):
        with pytest.raises(
            RecipeError,
            match=rf"typo\.yaml: steps\[1\]\.equalize: modules \['{wrong}'\] are not encoders of this model; name whole encoders: encoders\.audio, encoders\.image",
        ):
            check_recipe(parse_recipe({"steps": [{"prune": {"ratio": 0.5}}, {"equalize": {"modules": [wrong]}}, "export"]}, "typo.yaml"), subject, None)


def test_each_steps_check_sees_the_inputs_the_steps_before_it_leave(tmp_path: Path) -> None:
    """`inputs` shrinking the audio to 16 mel bands, then `bands` keeping 24 of them: refused when
    the recipe is checked, not after the inputs step's fine-tune (checked against the 32-band input
    the recipe starts from, it passed)."""
    from types import SimpleNamespace

    from racmkd.compress.recipe import check_recipe
    from racmkd.compress.steps import Subject

    modalities = {m: MODALITIES.create(m) for m in ("image", "audio")}
    specs = {m: modalities[m].spec(1) for m in modalities}  # audio: 32 mels x 32 frames
    assert specs["audio"].n_mels == 32
    subject = Subject("high", student(INPUTS, width=1.0, depth=1), dict(specs), None, tmp_path)
    ctx = SimpleNamespace(dataset=SimpleNamespace(modalities=modalities))  # (the input checks read the modalities alone)
    shrink_then_keep = parse_recipe({"steps": [{"inputs": {"reduce": {"audio": {"n_mels": 16}}}}, {"bands": {"keep": 24}}, "export"]}, "bands.yaml")
    with pytest.raises(RecipeError, match=r"bands\.yaml: steps\[1\]\.bands: cannot keep 24 of the 16 bands"):
        check_recipe(shrink_then_keep, subject, ctx)
    check_recipe(parse_recipe({"steps": [{"inputs": {"reduce": {"audio": {"n_mels": 16}}}}, {"bands": {"keep": 12}}, "export"]}), subject, ctx)
    with pytest.raises(RecipeError, match=r"steps\[1\]\.bands: cannot keep 12 of the 8 bands"):  # a second band selection reads the first's count
        check_recipe(parse_recipe({"steps": [{"bands": {"keep": 8}}, {"bands": {"keep": 12}}, "export"]}), subject, ctx)
    check_recipe(parse_recipe({"steps": [{"bands": {"keep": 16}}, {"bands": {"fraction": 0.5}}, "export"]}), subject, ctx)
    # Fewer mel bands after band selection: the kept indices would name other frequencies (16 of 32 kept, then a cap of 24 bands).
    with pytest.raises(RecipeError, match=r"steps\[1\]\.inputs: .*lowering n_mels to 24 would keep other frequencies"):
        check_recipe(parse_recipe({"steps": [{"bands": {"keep": 16}}, {"inputs": {"reduce": {"audio": {"n_mels": 24}}}}, "export"]}), subject, ctx)
    assert subject.specs == specs  # the subject itself is left as it is


def test_a_byte_budget_in_reach_after_an_earlier_prune_is_left_to_its_step(tmp_path: Path) -> None:
    """A second prune's target_bytes is turned into a ratio on the model's layers: checked on the
    whole model it may be out of reach (95% of the channels removed still too big) although the
    model the step will see, pruned once already, reaches it."""
    import copy

    from racmkd.compress.prune import MAX_RATIO
    from racmkd.compress.recipe import check_recipe
    from racmkd.compress.steps import Subject

    model = with_running_stats(student(INPUTS, width=4.0, depth=1))
    subject = Subject("low", model, {"image": None, "audio": None}, None, tmp_path)  # (the checks read the model alone)

    def smallest_bytes(start: nn.Module) -> int:
        return 4 * sum(p.numel() for p in prune_encoders(copy.deepcopy(start), MAX_RATIO, multiple=4).parameters())

    whole, halved = smallest_bytes(model), smallest_bytes(prune_encoders(copy.deepcopy(model), 0.5, multiple=4))
    assert halved < whole  # the second prune's channels are counted from the first one's result
    budget = (whole + halved) // 2
    with pytest.raises(RecipeError, match=rf"steps\[0\]\.prune: pruning cannot bring this model to {budget} bytes"):
        check_recipe(parse_recipe({"steps": [{"prune": {"target_bytes": budget}}, "export"]}, "one-prune.yaml"), subject, None)
    two_prunes = parse_recipe({"steps": [{"prune": {"ratio": 0.5, "steps": 1}}, {"prune": {"target_bytes": budget}}, "export"]}, "two-prunes.yaml")
    check_recipe(two_prunes, subject, None)  # left to the second prune, which reaches it
    assert 4 * sum(p.numel() for p in model.parameters()) > whole  # the check pruned nothing


def test_every_shipped_recipe_parses() -> None:
    from racmkd.compress.recipe import load_recipe

    recipes = sorted((Path(__file__).parents[1] / "configs" / "recipes").glob("*.yaml"))
    assert recipes
    for path in recipes:
        assert load_recipe(path).steps[-1][0] == "export"


# A whole recipe on the tiny run --------------------------------------------------------------------


@pytest.fixture(scope="module")
def compressed_run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny run with its critical tier compressed by a short recipe and re-measured."""
    from racmkd.eval.report import evaluate_run
    from racmkd.pipeline import compress_students, open_run, prepare_data

    run = tmp_path_factory.mktemp("compressed") / "tiny"
    shutil.copytree(tiny_run, run)
    recipe = run / "recipe.yaml"
    recipe.write_text(
        "steps:\n"
        "  - prune: {ratio: 0.35, steps: 1, max_drop: 1.0, multiple: 1, finetune: {epochs: 1, samples: 512}}\n"
        "  - align: {multiple: 4, max_drop: 1.0, latency_iters: 30, finetune: {epochs: 1, samples: 256}}\n"
        "  - qat: {epochs: 1, samples: 256}\n"
        "  - equalize: {}\n"
        "  - export: {int8: mixed, int4_weights: true, per_tensor_scales: true, bias_correction: true, calibration_samples: 64, sensitivity_samples: 100, min_agreement: 0.9,"
        " max_accuracy_drop: 0.2, latency_iters: 30}\n"
    )
    run_dir, cfg = open_run(run)
    dataset = prepare_data(cfg)
    (run_dir / "edge").mkdir(exist_ok=True)
    (run_dir / "edge" / "bank.json").write_text("{}")  # a bank built from the tier's previous student: removed, not served
    (run_dir / "edge" / "live.json").write_text("{}")  # what `edge run` served: kept
    compress_students(cfg, dataset, run_dir, ["critical", "critical"], recipe)  # named twice: compressed once
    evaluate_run(run_dir, dataset)
    return run_dir


def test_a_cost_matched_baseline_gets_at_least_the_tiers_bytes(compressed_run: Path, tmp_path: Path) -> None:
    """The TinyML recipe sized to the compressed critical tier: its int8 artifact, as the suite
    deploys it, holds at least as many bytes as the tier's, and one channel narrower would not."""
    from racmkd.eval.baselines import SIZE_SLACK, deployed_bytes, int8_bytes, plain_cnn, train_extras
    from racmkd.models.checkpoint import load_model
    from racmkd.eval.deployed import deploy
    from racmkd.pipeline import checkpoint, open_run, prepare_data

    run = tmp_path / "tiny"
    shutil.copytree(compressed_run, run, ignore=shutil.ignore_patterns("edge", "onnx"))
    run_dir, cfg = open_run(run)
    dataset = prepare_data(cfg)
    trained, found = train_extras(cfg, dataset, run_dir, ("tinyml_critical",), transfer=False)
    assert trained == ["tinyml_critical"] and not found
    model, specs, modalities, meta = load_model(checkpoint(run_dir, "tinyml_critical"))
    target = deployed_bytes(run_dir, "critical")
    assert meta["matched"]["tier"] == "critical" and meta["matched"]["target_bytes"] == target and meta["trained_with"] == "labels"
    row = deploy(cfg, dataset, run_dir, "tinyml_critical", run_dir / "bench" / "onnx")
    deployed = row.artifact.stat().st_size
    copied = tmp_path / "copied"  # copied with its files' times (cp -a): its own export, not the original's file
    shutil.copytree(run_dir, copied)
    copied_row = deploy(cfg, dataset, copied, "tinyml_critical", copied / "bench" / "onnx")
    assert copied_row.artifact == copied / "bench" / "onnx" / row.artifact.name and copied_row.artifact.is_file()
    # the search's size is the deployed file's, within the slack
    assert row.format == "onnx-int8" and deployed >= target and abs(deployed - meta["matched"]["bytes_sized"]) < 0.01 * target
    width = meta["matched"]["width"]
    if width > 1:
        from racmkd.compress.quantize import calibration_inputs

        inputs = model.arch["kwargs"]["inputs"]
        assert (
            int8_bytes(plain_cnn(inputs, width - 1), specs, modalities, calibration_inputs(dataset, specs, 16), "tinyml_critical")
            < target * (1 + SIZE_SLACK) + 64
        )
    assert train_extras(cfg, dataset, run_dir, ("tinyml_critical",), transfer=False) == ([], ["tinyml_critical"])  # resumed: the tier is unchanged


def test_a_recipe_compresses_a_tier_and_logs_every_step(compressed_run: Path) -> None:
    from racmkd.eval.suite import compressed_with
    from racmkd.models.checkpoint import load_model

    folder = compressed_run / "compressed" / "critical"
    manifest = json.loads((folder / "compression.json").read_text())
    assert compressed_with(compressed_run, "critical", compressed_run / "recipe.yaml")  # what the file records reads back as the recipe
    assert [s["step"] for s in manifest["steps"]] == ["prune", "align", "qat", "equalize", "export"]
    assert sorted(p.name for p in (compressed_run / "edge").iterdir()) == ["live.json"]  # the bank made from the tier's previous student gone
    for step in manifest["steps"]:
        for key in ("params", "param_bytes_fp32", "flops", "val_accuracy"):
            assert key in step["before"] and key in step["after"]
    prune = manifest["steps"][0]
    student, _, _, _ = load_model(compressed_run / "checkpoints" / "critical.pt")
    assert prune["before"]["params"] == sum(p.numel() for p in student.parameters())  # from the checkpoint, once (the tier was named twice)
    assert prune["after"]["params"] < prune["before"]["params"] and prune["after"]["flops"] < prune["before"]["flops"]
    align = manifest["steps"][1]["details"]  # prune (multiple: 1) left a 22-channel stem: cut to 20
    assert align["kept"] and align["layers"] and all(layer["after"] % 4 == 0 and layer["after"] < layer["before"] for layer in align["layers"])
    assert set(align["latency_p50_ms"]) == {"before", "after"} and manifest["steps"][1]["after"]["params"] < prune["after"]["params"]
    equalize = manifest["steps"][3]
    assert equalize["details"]["max_logit_change"] < 1e-4  # the same function
    assert abs(equalize["after"]["val_accuracy"] - equalize["before"]["val_accuracy"]) < 0.002
    for result in equalize["details"]["encoders"].values():
        layers = result["layers"]
        assert result["converged"] and layers and all(layer["spread_after"] < layer["spread_before"] for layer in layers[:-1])
    fp32 = manifest["candidates"]["fp32"]["parity"]
    assert fp32["argmax_agreement"] == 1.0 and fp32["max_abs_logit_diff"] < 1e-3  # ONNX Runtime vs PyTorch
    int8 = manifest["candidates"]["int8"]["parity"]
    assert int8["argmax_agreement"] > 0.8
    judged = manifest["candidates"]["int8"]["validation_parity"]  # where its accuracy bound was judged
    assert judged["samples"] > 0 and 0 < judged["reference_accuracy"] <= 1 and judged["argmax_agreement"] > 0.8
    for c in manifest["candidates"].values():  # each candidate judged against the bound; one that missed it and was not chosen is not left as a deployable name
        assert (folder / c["path"]).is_file() and c["path"].endswith(".rejected.onnx") == (not c["meets_bound"] and c["path"] != manifest["artifact"])
    assert manifest["candidates"]["fp32"]["meets_bound"] and manifest["artifact"] in [c["path"] for c in manifest["candidates"].values() if c["meets_bound"]]
    weights_only = manifest["candidates"]["int8-weights"]
    assert weights_only["parity"]["argmax_agreement"] >= 0.9 and weights_only["bytes"] < manifest["candidates"]["fp32"]["bytes"]
    four = manifest["candidates"]["int4-weights"]  # every weight in 4 bits but the fewest the agreement needs in 8
    assert four["format"] == "onnx-int4-weights" and four["bytes"] < weights_only["bytes"] and four["parity"]["samples"] > 0
    int4 = manifest["steps"][-1]["details"]["int4_weights"]
    assert int4["layers"] and int4["kept_int8"] == four["kept_int8"] == int4["trials"][-1]["kept_int8"]
    assert [t["kept_int8"] for t in int4["trials"]] == [[r["weight"] for r in int4["layers"]][:n] for n in range(len(int4["trials"]))]
    # Clipped: the 4-bit weights whose lower-KL grid was the clipped one; none of those kept in 8 bits.
    assert four["clipped"] == int4["clipped"] == [r["weight"] for r in int4["layers"] if r["clipped"] and r["weight"] not in four["kept_int8"]]
    # One scale per layer where the agreement allows it, in both weights-only files.
    scales = manifest["steps"][-1]["details"]["per_tensor_scales"]
    for name in ("int8-weights", "int4-weights"):
        chosen = scales[name]
        assert chosen["layers"] and chosen["kept_per_channel"] == chosen["trials"][-1]["kept_per_channel"]
        ranked = [r["weight"] for r in chosen["layers"]]
        assert manifest["candidates"][name]["per_tensor"] == chosen["per_tensor"] == [w for w in ranked if w not in chosen["kept_per_channel"]]
        graph = onnx.load(folder / manifest["candidates"][name]["path"]).graph
        scalars = {i.name for i in graph.initializer if not i.dims}
        assert sum(n.input[1] in scalars for n in graph.node if n.op_type == "DequantizeLinear") == len(chosen["per_tensor"])
    assert scales["int8-weights"]["per_tensor"]  # the tiny model's 8-bit weights lose too little on one scale to keep any per channel
    for name in ("int8-weights", "int4-weights"):  # encoder biases corrected for the rounding, recorded for the variant bank
        shifts = manifest["candidates"][name]["bias_shift"]
        assert shifts and all(b.removeprefix("model.").startswith("encoders.") for b in shifts) and any(any(v != 0 for v in s) for s in shifts.values())
    mixed = manifest["steps"][-1]["details"]["mixed_precision"]
    assert mixed["layers"]  # per-layer sensitivity reported
    trials = mixed["trials"]  # layers kept in fp32 one at a time, most useful first, until the agreement holds
    assert [t["kept_fp32"] for t in trials] == [mixed["allowed_fp32"][:n] for n in range(len(trials))]
    assert mixed["kept_fp32"] == trials[-1]["kept_fp32"] or len(trials) == len(mixed["allowed_fp32"]) + 1
    assert all(t["agreement"] < t["needed"] for t in trials[:-1])  # it stopped at the first that met the bound (with its margin)
    assert trials[0]["needed"] > 0.9  # min_agreement 0.9 plus two standard errors
    assert (folder / manifest["artifact"]).is_file() and manifest["reason"]
    assert not list((compressed_run / "compressed").glob(".*"))  # no partial folders left


def test_a_damaged_record_or_a_model_answering_nan_is_named_with_its_fix(compressed_run: Path, tmp_path: Path) -> None:
    """`racmkd evaluate` on a hand-edited compression.json raised a TypeError traceback (steps: null)
    or printed `error: 'reason'`; on a checkpoint holding NaN, sklearn's "Input contains NaN"."""
    from racmkd.eval.report import measure, measure_compressed
    from racmkd.pipeline import open_run, prepare_data

    run_dir, cfg = open_run(compressed_run)
    dataset = prepare_data(cfg)
    source = run_dir / "compressed" / "critical"
    for name, edit in (("steps", lambda r: r.update(steps=None)), ("reason", lambda r: r.pop("reason"))):
        folder = tmp_path / name / "critical"
        shutil.copytree(source, folder)
        record = json.loads((folder / "compression.json").read_text())
        edit(record)
        (folder / "compression.json").write_text(json.dumps(record))
        with pytest.raises(
            ExportError,
            match=rf"critical/compression\.json: {name} missing or damaged; compress the tier again with `racmkd compress --run {re.escape(str(tmp_path))} --tier critical`",  # (its run named: without --run, runs/latest's)
        ):
            measure_compressed("critical_compressed", folder, run_dir, dataset, None)
    checkpoint = torch.load(run_dir / "checkpoints" / "critical.pt", weights_only=False)
    next(v for v in checkpoint["state_dict"].values() if v.is_floating_point()).view(-1)[0] = float("nan")
    torch.save(checkpoint, tmp_path / "critical.pt")
    with pytest.raises(ValueError, match=r"critical\.pt: on the test split \d+ of \d+ samples' logits hold NaN or infinite values; .*train it again"):
        measure("critical", tmp_path / "critical.pt", dataset)


def test_the_report_gains_a_compressed_row(compressed_run: Path, report_fields: list[str]) -> None:
    report = json.loads((compressed_run / "report.json").read_text())
    entry = report["models"]["critical_compressed"]
    for key in (*report_fields, "bytes_deployable", "format", "artifact", "compression_ratio"):
        assert key in entry, key
    assert entry["format"].startswith("onnx-") and (compressed_run / entry["artifact"]).is_file()
    assert entry["compression_ratio"] == pytest.approx(report["models"]["critical"]["bytes_fp32"] / entry["bytes_deployable"])
    assert entry["accuracy"] > 0.3  # chance is 0.1
    assert "## Compressed tiers" in (compressed_run / "report.md").read_text()


def test_the_deployed_artifact_predicts_from_raw_inputs(compressed_run: Path, tiny_dataset) -> None:  # noqa: ANN001
    from racmkd.models.checkpoint import load_model
    from racmkd.models.inference import predict_split

    predictor = racmkd.load(compressed_run, "critical_compressed")
    reference = racmkd.load(compressed_run, "critical")
    # On the test split's own raw inputs, the artifact answers as the compressed network does in PyTorch (within its int8 agreement bound).
    rows = torch.arange(40)
    raw = {m: values.numpy() for m, values in tiny_dataset.raw_batch("test", rows).items() if m in predictor.modalities}
    labels = [predictor.predict(**{m: values[i] for m, values in raw.items()})[0] for i in range(len(rows))]
    model, specs, _, _ = load_model(compressed_run / "compressed" / "critical" / "model.pt")
    (logits,), _ = predict_split(model, specs, tiny_dataset, "test", limit=len(rows))
    assert sum(label == int(answer) for label, answer in zip(labels, logits.argmax(1))) >= 36 and len(set(labels)) > 1
    image = np.zeros((28, 28), np.uint8)
    image[6:22, 12:15] = (np.random.default_rng(0).random((16, 3)) * 155 + 100).astype(np.uint8)  # a stroke (noise alone is no picture)
    audio = np.random.default_rng(1).standard_normal(6000).astype(np.float32) * 0.1 * (np.arange(6000) // 1000 % 2)  # bursts (steady noise is no speech)
    inputs = {m: v for m, v in (("image", image), ("audio", audio)) if m in predictor.modalities}
    label, probs = predictor.predict(**inputs)
    assert 0 <= label < 10 and probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert predictor.modalities == reference.modalities
    if len(predictor.modalities) > 1:
        with pytest.raises(ValueError, match="export a variant"):
            predictor.predict(**{predictor.modalities[0]: inputs[predictor.modalities[0]]})
    folder = compressed_run / "compressed" / "critical"  # the same artifact through racmkd.load: a path to an .onnx file is taken as the model
    artifact = folder / json.loads((folder / "compression.json").read_text())["artifact"]
    assert racmkd.load(artifact).predict(**inputs)[0] == label
    with pytest.raises(FileNotFoundError, match=r"\(compressed: critical\)\. Only the tiers' students are compressed"):
        racmkd.load(compressed_run, "teacher_compressed")
    # As a library: pickled and deep-copied (multiprocessing, joblib) as its file, opened again (a session pickles not).
    import copy
    import pickle

    predictor.note, predictor.name = "mine", "edge-critical"  # what a caller sets or changes travels with it
    for again in (pickle.loads(pickle.dumps(predictor)), copy.deepcopy(predictor)):
        assert again.predict(**inputs)[0] == label and again.session is not predictor.session and (again.note, again.name) == ("mine", "edge-critical")
    if "image" in predictor.modalities:  # whole pixels of any integer type (a list is int64), and a tensor that requires grad
        as_list = {**inputs, "image": image.tolist()}
        as_tensor = {**inputs, "image": torch.tensor(image / 255.0, requires_grad=True)}
        assert predictor.predict(**as_list)[0] == label == predictor.predict(**as_tensor)[0]
    with pytest.raises(FileNotFoundError, match=r"nope\.onnx: no such ONNX file"):  # (it said "no such run folder")
        racmkd.load(folder / "nope.onnx")
    assert {"load", "Predictor", "OnnxPredictor"} <= set(dir(racmkd))  # (lazy: in no listing, nor help())


def test_another_tiers_artifact_copied_over_a_tiers_is_refused(compressed_run: Path, tmp_path: Path) -> None:
    """compressed/high holding critical's files answered as high_compressed with critical's model."""
    shutil.copytree(compressed_run / "compressed" / "critical", tmp_path / "run" / "compressed" / "high")
    with pytest.raises(ExportError, match=r"the 'critical' tier's model, not 'high''s; compress the tier again"):
        racmkd.load(tmp_path / "run", "high_compressed")


def test_a_failing_recipe_leaves_nothing_half_written(compressed_run: Path, tmp_path: Path) -> None:
    from racmkd.pipeline import compress_students, open_run, prepare_data

    run_dir, cfg = open_run(compressed_run)
    before = (run_dir / "compressed" / "critical" / "compression.json").read_text()
    impossible = tmp_path / "impossible.yaml"
    impossible.write_text("steps:\n  - prune: {target_bytes: 64}\n  - export: {}\n")
    with pytest.raises(RecipeError, match="cannot bring this model to 64 bytes"):
        compress_students(cfg, prepare_data(cfg), run_dir, ["critical"], impossible)
    assert (run_dir / "compressed" / "critical" / "compression.json").read_text() == before
    assert not list((run_dir / "compressed").glob(".*"))


def test_an_experiment_compressed_elsewhere_leaves_the_runs_timings(compressed_run: Path, tmp_path: Path) -> None:
    """The compression benchmark compresses into experiments/<name>: its time replaced the run's own
    compress_students in timings.json (and outgrew the file's total)."""
    from racmkd.pipeline import compress_students, open_run, prepare_data

    run = tmp_path / "run"
    shutil.copytree(compressed_run, run, ignore=shutil.ignore_patterns("edge", "onnx"))
    run_dir, cfg = open_run(run)
    before = (run_dir / "timings.json").read_text()
    recipe = tmp_path / "export-only.yaml"
    recipe.write_text("steps:\n  - export: {int8: none, latency_iters: 5}\n")
    [written] = compress_students(cfg, prepare_data(cfg), run_dir, ["critical"], recipe, into="experiments/export-only")
    assert written == run_dir / "experiments" / "export-only" / "critical" and (written / "compression.json").is_file()
    assert (run_dir / "timings.json").read_text() == before


def test_int8_weights_leave_headroom_for_kernels_that_saturate(tmp_path: Path) -> None:
    """A convolution whose 8-bit weights sit at full scale and whose inputs reach the top of their
    range overflows the 16-bit pairwise sums of x86 int8 kernels without VNNI; the shipped artifact
    (7-bit weights) must match the float model wherever it runs."""
    import json

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from racmkd.compress.export import CONTRACT_KEY, session, set_metadata
    from racmkd.compress.quantize import WEIGHT_QMAX, quantize_int8

    rng = np.random.default_rng(0)
    weight = np.sign(rng.standard_normal((8, 1, 3, 3))).astype(np.float32)  # every weight at +-max
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
            helper.make_node("GlobalAveragePool", ["y"], ["p"]),
            helper.make_node("Flatten", ["p"], ["logits"]),
        ],
        "saturating",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 8])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    set_metadata(model, {CONTRACT_KEY: json.dumps({"format": "racmkd-onnx/1", "inputs": {"x": {}}})})
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(model, fp32)
    x = rng.uniform(0.0, 1.0, (256, 1, 8, 8)).astype(np.float32)
    x[:, :, 2:6, 2:6] = 1.0  # patches at the top of the range
    q = quantize_int8(fp32, tmp_path / "int8.onnx", {"x": x})
    reference, quantized = session(fp32).run(["logits"], {"x": x})[0], session(q).run(["logits"], {"x": x})[0]
    assert np.abs(quantized - reference).max() < 0.05 * np.abs(reference).max()
    assert WEIGHT_QMAX < 127


def test_a_trained_students_int8_model_keeps_its_fp32_models_answers(tiny_dataset, tmp_path: Path) -> None:  # noqa: ANN001
    """The issue's parity bound on a trained model, not random weights: a student trained on the
    tiny run's real images and recordings, exported, then int8 post-training quantized (static QDQ,
    calibrated on 256 training samples), agrees with its fp32 model on >= 99% of the test split."""
    from racmkd.compress.export import onnx_logits, parity
    from racmkd.compress.quantize import calibration_inputs, quantize_int8

    ds = tiny_dataset
    specs = {m: ds.modalities[m].spec(1) for m in ds.modalities}
    torch.manual_seed(0)
    model = student({m: {"encoder": "dscnn2d", "shape": list(ds.modalities[m].feature_shape(s))} for m, s in specs.items()}, width=2.0, depth=2)
    train = {m: torch.from_numpy(x) for m, x in calibration_inputs(ds, specs, len(ds.splits["train"])).items()}
    labels = ds.splits["train"].labels[: len(next(iter(train.values())))]
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(8):
        for rows in torch.randperm(len(labels)).split(64):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model({m: x[rows] for m, x in train.items()}), labels[rows]).backward()
            optimiser.step()
    model.eval()
    fp32 = export_onnx(model, specs, ds.modalities, tmp_path / "fp32.onnx", name="trained")
    int8 = quantize_int8(fp32, tmp_path / "int8.onnx", calibration_inputs(ds, specs, 256))
    reference, test_labels = onnx_logits(session(fp32), specs, ds, "test")
    quantized, _ = onnx_logits(session(int8), specs, ds, "test")
    result = parity(quantized, reference, test_labels)
    assert result.reference_accuracy > 0.9, result  # trained: the bound is about a model that works
    assert result.argmax_agreement >= 0.99 and result.accuracy >= result.reference_accuracy - 0.01, result
    # Rounded as QAT rounds: each convolution's output once, to its ReLU's range (the Relu fused
    # away; it was rounded before and after it), and the logits left float.
    graph = onnx.load(int8).graph
    assert not [n for n in graph.node if n.op_type == "Relu"]
    producer = {o: n for n in graph.node for o in n.output}
    assert producer[graph.output[0].name].op_type == "Gemm"


def exported_demo(folder: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """An fp32 export of a small image + audio student, and 64 random inputs for it. The student's
    weights are seeded: drawn from torch's global state, they depended on the tests run before
    (one of 140 draws failed the 4-bit test's comparison of two grids' errors)."""
    torch.manual_seed(0)
    modalities = {m: MODALITIES.create(m) for m in ("image", "audio")}
    specs = {"image": modalities["image"].spec(1), "audio": modalities["audio"].spec(1)}
    model = with_running_stats(
        student({m: {"encoder": "dscnn2d", "shape": list(modalities[m].feature_shape(s))} for m, s in specs.items()}, width=2.0, depth=2)
    )
    x = {m: np.random.default_rng(0).standard_normal((64, *modalities[m].feature_shape(s))).astype(np.float32) for m, s in specs.items()}
    return export_onnx(model, specs, modalities, folder / "fp32.onnx", name="demo"), x


def test_int8_weights_shrink_the_file_and_run_at_float_speed_settings(tmp_path: Path) -> None:
    from racmkd.compress.quantize import quantize_weights

    fp32, x = exported_demo(tmp_path)
    w8 = quantize_weights(fp32, tmp_path / "w8.onnx")
    assert read_contract(w8)["precision"] == "int8-weights" and read_contract(w8)["inputs"] == read_contract(fp32)["inputs"]
    graph = onnx.load(w8).graph
    dequantized = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    layers = [n for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert len(dequantized) == len(layers) and not any(n.op_type == "QuantizeLinear" for n in graph.node)
    int8_elements = sum(int(np.prod(i.dims)) for i in graph.initializer if i.data_type == onnx.TensorProto.INT8)
    float_weights = sum(int(np.prod(i.dims)) for i in onnx.load(fp32).graph.initializer if len(i.dims) >= 2)
    assert int8_elements == float_weights  # every weight matrix, and nothing else, is stored in int8
    assert w8.stat().st_size < 0.5 * fp32.stat().st_size
    # The session folds the weights back into floats at load instead of dequantizing per call.
    assert session(w8).get_session_options().get_session_config_entry("session.disable_quant_qdq") == "1"
    reference, quantized = session(fp32).run(["logits"], x)[0], session(w8).run(["logits"], x)[0]
    assert np.abs(quantized - reference).max() < 0.02 * np.abs(reference).max()
    assert (quantized.argmax(1) == reference.argmax(1)).mean() >= 0.95
    with pytest.raises(ExportError, match="already quantized"):
        quantize_weights(w8, tmp_path / "twice.onnx")
    assert not (tmp_path / "twice.onnx").exists()


def test_int4_weights_pack_two_to_a_byte_and_mix_with_8_bit_and_float_ones(tmp_path: Path) -> None:
    from racmkd.compress.artifacts import stored_bytes
    from racmkd.compress.quantize import layer_rows, layer_weights, quantize_weights
    from racmkd.resources.profile import graph_cost

    fp32, x = exported_demo(tmp_path)
    w8, w4 = quantize_weights(fp32, tmp_path / "w8.onnx"), quantize_weights(fp32, tmp_path / "w4.onnx", bits=4)
    contract = read_contract(w4)
    assert contract["precision"] == "int4-weights" and "weight_bits" not in contract and contract["inputs"] == read_contract(fp32)["inputs"]
    assert next(o.version for o in onnx.load(w4).opset_import if o.domain == "") == 21  # DequantizeLinear reads int4 from opset 21
    weights = {i.name: i for i in onnx.load(fp32).graph.initializer}
    layers = layer_weights(onnx.load(fp32))
    stored = [i for i in onnx.load(w4).graph.initializer if i.data_type == onnx.TensorProto.INT4]
    assert len(stored) == len(layers) and sum(stored_bytes(i) for i in stored) == sum((math.prod(weights[n].dims) + 1) // 2 for n in layers)
    # Bytes as the file stores them: two 4-bit weights to a byte, per module and in the profile.
    assert sum(module_weight_bytes(onnx.load(w4)).values()) < 0.7 * sum(module_weight_bytes(onnx.load(w8)).values())
    assert graph_cost(w4).weight_bytes == sum(stored_bytes(i) for i in onnx.load(w4).graph.initializer)
    assert graph_cost(w4).resident_weight_bytes == graph_cost(w8).resident_weight_bytes  # both folded to floats at load
    assert w4.stat().st_size < w8.stat().st_size
    reference, four = session(fp32).run(["logits"], x)[0], session(w4).run(["logits"], x)[0]
    eight = session(w8).run(["logits"], x)[0]
    assert np.abs(four - reference).max() < 0.3 * np.abs(reference).max()
    assert np.abs(four - reference).mean() > np.abs(eight - reference).mean()  # 15 levels round coarser than 255
    # Mixed widths: the named weight stays in 8 bits, another in fp32.
    first, second = list(layers)[:2]
    mixed = quantize_weights(fp32, tmp_path / "mixed.onnx", bits=4, bits_by_weight={first: 8, second: 32})
    by_name = {i.name: i.data_type for i in onnx.load(mixed).graph.initializer}
    assert by_name[f"{first}_int8"] == onnx.TensorProto.INT8 and by_name[second] == onnx.TensorProto.FLOAT and f"{second}_int4" not in by_name
    assert read_contract(mixed) == read_contract(w4)  # the widths are the stored tensors' types; no names to outlive compaction
    only8 = quantize_weights(fp32, tmp_path / "only8.onnx", bits=8, bits_by_weight={first: 32})
    assert read_contract(only8)["precision"] == "int8-weights" and next(o.version for o in onnx.load(only8).opset_import if o.domain == "") == 18
    with pytest.raises(ExportError, match="no layer weights named"):
        quantize_weights(fp32, tmp_path / "bad.onnx", bits=4, bits_by_weight={"encoders.nothing.weight": 8})
    with pytest.raises(ValueError, match="8 or 4 bits"):
        quantize_weights(fp32, tmp_path / "bad.onnx", bits=2)
    with pytest.raises(ValueError, match="no weight to quantize"):
        quantize_weights(fp32, tmp_path / "bad.onnx", bits=32)
    rows = layer_rows(fp32)
    with pytest.raises(ExportError, match=f"whole_rows for {first} must hold one row for each of its {len(rows[first])} output channels"):
        quantize_weights(fp32, tmp_path / "bad.onnx", bits=4, whole_rows={first: rows[first][1:]})
    with pytest.raises(ExportError, match="no layer weights named"):
        quantize_weights(fp32, tmp_path / "bad.onnx", bits=4, whole_rows={"encoders.nothing.weight": rows[first]})
    with pytest.raises(TypeError, match="a collection of names"):
        quantize_weights(fp32, tmp_path / "bad.onnx", bits=4, clipped=first)
    assert not (tmp_path / "bad.onnx").exists()
    # The grid taken from other rows (the whole layer's, for a graph with part of it): wider ones round coarser.
    wider = quantize_weights(fp32, tmp_path / "wider.onnx", bits=4, whole_rows={n: np.hstack([r, 3 * r]) for n, r in rows.items()})
    assert np.abs(session(wider).run(["logits"], x)[0] - reference).mean() > np.abs(four - reference).mean()


def test_4_bit_grids_clip_where_that_rounds_a_channel_better(tmp_path: Path) -> None:
    """8 bits span each channel's largest |w|; 4 bits the clip of it with the least squared
    rounding error: Gaussian rows of 200 weights round with about a quarter less error."""
    from racmkd.compress.quantize import CLIP_RATIOS, layer_rows, quantize_weights, weight_range

    rows = np.random.default_rng(0).standard_normal((64, 200)).astype(np.float32)
    rows[-1] = 0.0  # an all-zero channel
    largest = np.abs(rows).max(axis=1)

    def error(span: np.ndarray) -> np.ndarray:
        step = np.where(span > 0, span / 7, 1.0)[:, None]
        return ((np.clip(np.round(rows / step), -7, 7) * step - rows) ** 2).sum(axis=1)

    assert np.array_equal(weight_range(rows, 8), largest) and np.array_equal(weight_range(rows, 8, clip=True), largest)
    assert np.array_equal(weight_range(rows, 4), largest)  # unclipped: as 8 bits
    span = weight_range(rows, 4, clip=True)
    assert (span <= largest).all() and (span[:-1] >= largest[:-1] * CLIP_RATIOS.min() - 1e-6).all() and span[-1] == 0
    assert (error(span) <= error(largest) + 1e-9).all() and error(span).sum() < 0.85 * error(largest).sum()
    for ratio in CLIP_RATIOS:  # the least error of the ratios searched
        assert (error(span) <= error(largest * ratio) + 1e-6).all()
    # The file stores each 4-bit weight on its grid: clipped where named, else the largest |w|'s.
    fp32, _ = exported_demo(tmp_path)
    rows_of = layer_rows(fp32)
    clipped = list(rows_of)[::2]
    w4 = onnx.load(quantize_weights(fp32, tmp_path / "w4.onnx", bits=4, clipped=clipped))
    stored = {i.name: onnx.numpy_helper.to_array(i) for i in w4.graph.initializer}
    for name, fp32_rows in rows_of.items():
        span = weight_range(fp32_rows, 4, clip=name in clipped)
        np.testing.assert_allclose(stored[f"{name}_scale"], np.where(span > 0, span / 7, 1.0), rtol=1e-6)
    assert any((weight_range(rows_of[n], 4, clip=True) < np.abs(rows_of[n]).max(axis=1)).any() for n in clipped)  # some clip took effect
    with pytest.raises(ExportError, match="no layer weights named"):
        quantize_weights(fp32, tmp_path / "bad.onnx", bits=4, clipped=["encoders.nothing.weight"])


def test_int4_weights_keep_in_8_bits_only_as_many_layers_as_the_agreement_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from racmkd.compress.quantize import fewest_int8_weights, int4_weight_sensitivity, mean_kl, quantize_weights

    modalities = {"image": MODALITIES.create("image")}
    specs = {"image": modalities["image"].spec(1)}
    model = with_running_stats(student({"image": {"encoder": "dscnn2d", "shape": list(modalities["image"].feature_shape(specs["image"]))}}, width=1.0, depth=1))
    fp32 = export_onnx(model, specs, modalities, tmp_path / "fp32.onnx", name="demo")
    x = {"image": np.random.default_rng(0).standard_normal((200, *modalities["image"].feature_shape(specs["image"]))).astype(np.float32)}
    labels = np.random.default_rng(1).integers(0, 10, 200)
    ranked = int4_weight_sensitivity(fp32, x, labels)
    assert len(ranked) >= 3 and all(r.kl >= 0 and r.bytes_saved == r.elements // 2 for r in ranked)
    reference = session(fp32).run(["logits"], x)[0]
    for r in ranked[:2]:  # each on the grid of the two that changes the outputs less
        kl = {
            clip: mean_kl(
                reference,
                session(quantize_weights(fp32, tmp_path / "one.onnx", bits=32, bits_by_weight={r.weight: 4}, clipped=[r.weight] if clip else [])).run(
                    ["logits"], x
                )[0],
            )
            for clip in (False, True)
        }
        assert r.kl == pytest.approx(min(kl.values())) and r.clipped == (kl[True] < kl[False])
    assert [r.kl / r.bytes_saved for r in ranked] == sorted((r.kl / r.bytes_saved for r in ranked), reverse=True)  # most damaging per byte first
    names = [r.weight for r in ranked]
    kept, trials = fewest_int8_weights(fp32, x, names, min_agreement=0.0)  # all-4-bit is enough
    assert kept == [] and len(trials) == 1
    kept, trials = fewest_int8_weights(fp32, x, names, min_agreement=1.01)  # nothing is: every layer in 8 bits
    assert kept == names and [t["kept_int8"] for t in trials] == [names[:n] for n in range(len(names) + 1)]
    all8 = session(quantize_weights(fp32, tmp_path / "w8.onnx")).run(["logits"], x)[0].argmax(1)
    assert trials[-1]["agreement"] == pytest.approx(float((all8 == session(fp32).run(["logits"], x)[0].argmax(1)).mean()))
    # Weights outside the choice (`int4_modules`' others) stay in 8 bits in every trial.
    from racmkd.compress import quantize

    built = []
    real = quantize.weights_only_model
    monkeypatch.setattr(quantize, "weights_only_model", lambda *a, **kw: built.append(kw["bits_by_weight"]) or real(*a, **kw))
    fixed, choices = names[:1], names[1:]
    kept, trials = fewest_int8_weights(fp32, x, choices, min_agreement=1.01, fixed_int8=fixed)
    assert kept == choices and [t["kept_int8"] for t in trials] == [choices[:n] for n in range(len(choices) + 1)]
    assert built == [dict.fromkeys([*fixed, *choices[:n]], 8) for n in range(len(choices) + 1)]


def test_int4_modules_name_layers_by_module() -> None:
    from racmkd.compress.quantize import in_modules

    assert in_modules("encoders.image.body.1.0.weight", ("encoders.image",)) and in_modules("model.head.weight", ("head",))
    assert not in_modules("encoders.imagery.body.1.0.weight", ("encoders.image",))  # a module's name, not any prefix
    assert not in_modules("encoders.audio.body.1.0.weight", ("encoders.image", "head"))
    assert in_modules("encoders.audio.body.1.0.weight", ())  # none named: every layer


def test_a_layer_on_one_scale_stores_a_scalar_for_the_whole_tensor(tmp_path: Path) -> None:
    """`per_tensor` weights round on one grid, the largest |w| of the whole layer (clipped, in 4
    bits, as one row), stored as one scalar with no axis: fewer bytes, coarser rounding."""
    from racmkd.compress.quantize import layer_rows, quantize_weights, weight_range

    fp32, x = exported_demo(tmp_path)
    rows = layer_rows(fp32)
    one = [n for n, r in rows.items() if len(r) > 1][:3]
    for bits, qmax in ((8, 127), (4, 7)):
        per_channel = quantize_weights(fp32, tmp_path / f"c{bits}.onnx", bits=bits, clipped=one if bits == 4 else [])
        per_layer = quantize_weights(fp32, tmp_path / f"t{bits}.onnx", bits=bits, clipped=one if bits == 4 else [], per_tensor=one)
        graph = onnx.load(per_layer).graph
        stored = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
        axes = {n.input[0]: [a.name for a in n.attribute] for n in graph.node if n.op_type == "DequantizeLinear"}
        for name, by_channel in rows.items():
            scale, q = stored[f"{name}_scale"], stored[f"{name}_int{bits}"].astype(np.float32)
            if name in one:
                assert scale.shape == () and axes[f"{name}_int{bits}"] == []
                expected = (
                    np.abs(by_channel).max() if bits == 8 else weight_range(by_channel.reshape(1, -1), 4, clip=True)[0]
                )  # 4 bits: the clip of all rows as one
                assert scale == pytest.approx(expected / qmax, rel=1e-6) and np.abs(q).max() == qmax
            else:
                assert scale.shape == (len(by_channel),) and axes[f"{name}_int{bits}"] == ["axis"]
        saved = sum(4 * (len(rows[n]) - 1) for n in one)
        assert per_channel.stat().st_size - per_layer.stat().st_size >= saved  # the scales, and the axis attributes
        # Rounding on the whole layer's grid is coarser where the channels' ranges differ.
        fine = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(per_channel).graph.initializer}
        differing = [n for n in one if np.abs(rows[n]).max(axis=1).max() > 1.5 * np.abs(rows[n]).max(axis=1).min()]
        assert differing
        for name in differing:
            weight = onnx.numpy_helper.to_array(next(i for i in onnx.load(fp32).graph.initializer if i.name == name))
            shape = (-1,) + (1,) * (weight.ndim - 1)
            coarse_error = ((stored[f"{name}_int{bits}"].astype(np.float32) * stored[f"{name}_scale"] - weight) ** 2).sum()
            fine_error = ((fine[f"{name}_int{bits}"].astype(np.float32) * fine[f"{name}_scale"].reshape(shape) - weight) ** 2).sum()
            assert coarse_error > fine_error
        assert (session(per_layer).run(["logits"], x)[0].argmax(1) == session(fp32).run(["logits"], x)[0].argmax(1)).mean() > 0.8
    with pytest.raises(TypeError, match="per_tensor names weights"):
        quantize_weights(fp32, tmp_path / "bad.onnx", per_tensor=one[0])
    with pytest.raises(ExportError, match="left in fp32 have no scale to share"):
        quantize_weights(fp32, tmp_path / "bad.onnx", bits_by_weight={one[0]: 32}, per_tensor=one[:1])
    with pytest.raises(ExportError, match="no layer weights named"):
        quantize_weights(fp32, tmp_path / "bad.onnx", per_tensor=["encoders.nothing.weight"])
    assert not (tmp_path / "bad.onnx").exists()


def test_one_scale_per_layer_only_where_the_agreement_allows(tmp_path: Path) -> None:
    from racmkd.compress.quantize import fewest_per_channel_layers, layer_rows, mean_kl, quantize_weights, scale_sensitivity

    fp32, x = exported_demo(tmp_path)
    rows = layer_rows(fp32)
    kept8 = {list(rows)[0]: 8, list(rows)[1]: 32}
    ranked = scale_sensitivity(fp32, x, 4, kept8)
    assert {r.weight for r in ranked} == set(list(rows)[:1] + list(rows)[2:])  # the fp32 one has no scale
    assert all(r.bytes_saved == 4 * (r.channels - 1) for r in ranked)
    reference = session(fp32).run(["logits"], x)[0]
    first = ranked[0]
    kl = {
        flag: mean_kl(
            reference,
            session(
                quantize_weights(
                    fp32, tmp_path / "one.onnx", bits=32, bits_by_weight={first.weight: kept8.get(first.weight, 4)}, per_tensor=[first.weight] if flag else []
                )
            ).run(["logits"], x)[0],
        )
        for flag in (False, True)
    }
    assert first.kl == pytest.approx(kl[True] - kl[False])  # at the layer's own width, against its scales per channel
    assert [r.kl / r.bytes_saved for r in ranked] == sorted((r.kl / r.bytes_saved for r in ranked), reverse=True)
    names = [r.weight for r in ranked]
    kept, trials = fewest_per_channel_layers(fp32, x, names, 0.0, 4, kept8)  # one scale everywhere is enough
    assert kept == [] and len(trials) == 1
    kept, trials = fewest_per_channel_layers(fp32, x, names, 1.01, 4, kept8)  # nothing is: every layer per channel
    assert kept == names and [t["kept_per_channel"] for t in trials] == [names[:n] for n in range(len(names) + 1)]
    per_channel = session(quantize_weights(fp32, tmp_path / "c.onnx", bits=4, bits_by_weight=kept8)).run(["logits"], x)[0].argmax(1)
    assert trials[-1]["agreement"] == pytest.approx(float((per_channel == reference.argmax(1)).mean()))


def onnx_dims(path: Path, name: str) -> tuple[int, ...]:
    return tuple(next(i for i in onnx.load(path).graph.initializer if i.name == name).dims)


def test_bias_correction_gives_each_rounded_encoder_layer_back_its_mean_output(tmp_path: Path) -> None:
    """`bias_shifts` on a 4-bit model: after the shifts, each rounded encoder layer's output has the
    fp32 model's mean per channel on the calibration samples (it did not before); the classifier
    and a layer left in fp32 keep their biases."""
    from racmkd.compress.quantize import _layer_outputs, bias_shifts, layer_weights, quantize_weights, weights_only_model

    fp32, x = exported_demo(tmp_path)
    layers = layer_weights(onnx.load(fp32))
    encoder = [n for n in layers if n.removeprefix("model.").startswith("encoders.")]
    left = encoder[1]
    formats = {"bits": 4, "bits_by_weight": {left: 32}}
    plain = quantize_weights(fp32, tmp_path / "plain.onnx", **formats)
    shifts = bias_shifts(fp32, plain, x)
    corrected_layers = [n for n in encoder if n != left and len(layers[n].input) > 2]
    assert set(shifts) == {layers[n].input[2] for n in corrected_layers} and corrected_layers
    outputs = [layers[n].output[0] for n in corrected_layers]
    path, returned = weights_only_model(fp32, tmp_path / "fixed.onnx", x, **formats)
    assert returned.keys() == shifts.keys() and all(np.array_equal(returned[k], shifts[k]) for k in shifts)
    reference = _layer_outputs(onnx.load(fp32), outputs, x)
    before, after = _layer_outputs(onnx.load(plain), outputs, x), _layer_outputs(onnx.load(path), outputs, x)

    def mean_gap(got: dict, out: str) -> float:
        return float(np.abs((reference[out] - got[out]).mean(axis=(0, 2, 3))).max())

    scale = max(float(np.abs(reference[o]).mean()) for o in outputs)
    assert all(mean_gap(after, o) < 1e-4 * scale for o in outputs)
    assert max(mean_gap(before, o) for o in outputs) > 1e-2 * scale  # 4-bit rounding had moved them
    stored = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}
    original = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(fp32).graph.initializer}
    for name in {layers[n].input[2] for n in layers if len(layers[n].input) > 2} - set(shifts):  # the classifier's, the fp32 layer's
        if name in original:
            np.testing.assert_array_equal(stored[name], original[name])
    # Nothing to correct (no encoder weight rounded): no shifts, the file as quantized.
    assert weights_only_model(fp32, tmp_path / "head.onnx", x, bits=32, bits_by_weight={n: 8 for n in layers if n not in encoder})[1] == {}
    with pytest.raises(ExportError, match=f"bias_shift names '{encoder[0]}'"):  # a weight, gone into 8 bits: no bias to shift
        quantize_weights(fp32, tmp_path / "bad.onnx", bits=8, bias_shift={encoder[0]: np.zeros(onnx_dims(fp32, encoder[0]))})
    with pytest.raises(ExportError, match="bias_shift names 'nothing'"):
        quantize_weights(fp32, tmp_path / "bad.onnx", bias_shift={"nothing": np.zeros(3)})
    first = next(iter(shifts))
    with pytest.raises(ExportError, match=f"bias_shift names '{first}'"):
        quantize_weights(fp32, tmp_path / "bad.onnx", bias_shift={first: np.zeros(len(shifts[first]) + 1)})
    assert not (tmp_path / "bad.onnx").exists()


def test_fake_quantization_to_4_bit_weights_leaves_activations_float() -> None:
    model = with_running_stats(student(INPUTS, width=1.0, depth=1))
    x = batch(8)
    absorb_batchnorm(model)
    reference = model(x)
    with fake_quantized(model, weight_bits=8):
        eight = model(x)
    with fake_quantized(model, weight_bits=4, activations=False):
        four = model(x)
        assert not any(m._forward_pre_hooks for m in model.modules())  # no layer input rounded
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        w = conv.weight.detach().reshape(conv.weight.shape[0], -1)
        levels = torch.round(w / (w.abs().amax(dim=1, keepdim=True) / 7))
        torch.testing.assert_close(w, levels * (w.abs().amax(dim=1, keepdim=True) / 7))  # on the 4-bit grid
        assert levels.abs().max() == 7
    assert (four - reference).abs().mean() > (eight - reference).abs().mean() > 0
    with fake_quantized(model, weight_bits=8, activations=False):  # the int8-weights files' grid: 127 levels each side
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        w = conv.weight.detach().reshape(conv.weight.shape[0], -1)
        assert torch.round(w / (w.abs().amax(dim=1, keepdim=True) / 127)).abs().max() == 127
    with pytest.raises(ValueError, match="8 or 4 bits, not 2"):
        with fake_quantized(model, weight_bits=2):
            pass


@pytest.mark.parametrize("bits", [8, 4])
def test_qat_for_weights_only_files_computes_what_the_file_computes(bits: int, tmp_path: Path) -> None:
    """QAT's forward with float activations is the deployed weights-only model: the same rounded
    weights, and the presence term through the float classifier weight, as the export folds it."""
    from racmkd.compress.quantize import quantize_weights

    modalities = {m: MODALITIES.create(m) for m in ("image", "audio")}
    specs = {m: modalities[m].spec(1) for m in modalities}
    model = with_running_stats(
        student({m: {"encoder": "dscnn2d", "shape": list(modalities[m].feature_shape(s))} for m, s in specs.items()}, width=2.0, depth=2)
    )
    model.eval()  # (its presence map as initialised, |w| up to 0.7: trained students' reach 0.8-0.9)
    g = torch.Generator().manual_seed(2)
    x = {m: torch.randn(32, *modalities[m].feature_shape(s), generator=g) for m, s in specs.items()}
    deployed = quantize_weights(export_onnx(model, specs, modalities, tmp_path / "fp32.onnx"), tmp_path / "w.onnx", bits=bits)
    expected = session(deployed).run(["logits"], {m: v.numpy() for m, v in x.items()})[0]
    with fake_quantized(model, weight_bits=bits, activations=False), torch.no_grad():
        trained = model(x).numpy()
        other = torch.randn(4, model.classifier.in_features, generator=g)  # the classifier on its own, after a whole forward:
        torch.testing.assert_close(model.classifier(other), other @ model.classifier.weight.T + model.classifier.bias)  # no stale presence term
    assert np.abs(trained - expected).max() < 1e-4 * np.abs(expected).max()


def test_qat_for_4_bit_modules_on_one_scale_computes_what_the_file_computes(tmp_path: Path) -> None:
    """`modules` and `per_tensor` train for the file an export with `int4_modules` and
    `per_tensor_scales` writes: 4 bits in the named encoder, 8 elsewhere, one scale per layer."""
    from racmkd.compress.quantize import layer_weights, quantize_weights
    from racmkd.compress.steps import QATOptions

    modalities = {m: MODALITIES.create(m) for m in ("image", "audio")}
    specs = {m: modalities[m].spec(1) for m in modalities}
    model = with_running_stats(
        student({m: {"encoder": "dscnn2d", "shape": list(modalities[m].feature_shape(s))} for m, s in specs.items()}, width=2.0, depth=2)
    ).eval()
    g = torch.Generator().manual_seed(3)
    x = {m: torch.randn(32, *modalities[m].feature_shape(s), generator=g) for m, s in specs.items()}
    fp32 = export_onnx(model, specs, modalities, tmp_path / "fp32.onnx")
    weights = list(layer_weights(onnx.load(fp32)))
    outside = {w: 8 for w in weights if not w.removeprefix("model.").startswith("encoders.image.")}
    assert outside and len(outside) < len(weights)
    deployed = quantize_weights(fp32, tmp_path / "w.onnx", bits=4, bits_by_weight=outside, per_tensor=weights)
    expected = session(deployed).run(["logits"], {m: v.numpy() for m, v in x.items()})[0]
    with fake_quantized(model, weight_bits=4, activations=False, modules=("encoders.image",), per_tensor=True), torch.no_grad():
        trained = model(x).numpy()
        image = next(m for m in model.encoders["image"].modules() if isinstance(m, torch.nn.Conv2d))
        audio = next(m for m in model.encoders["audio"].modules() if isinstance(m, torch.nn.Conv2d))
        for layer, qmax in ((image, 7), (audio, 127)):  # one grid for the whole layer, its width the module's
            w = layer.weight.detach()
            levels = torch.round(w / (w.abs().max() / qmax))
            assert levels.abs().max() == qmax and torch.allclose(w, levels * (w.abs().max() / qmax))
    assert np.abs(trained - expected).max() < 1e-4 * np.abs(expected).max()
    with pytest.raises(ValueError, match=r"no modules named \['encoders.imu'\]"):
        with fake_quantized(model, weight_bits=4, activations=False, modules=("encoders.imu",)):
            pass
    with pytest.raises(ValueError, match="weight_bits 8"):
        with fake_quantized(model, weight_bits=8, modules=("encoders.image",)):
            pass
    with pytest.raises(ValueError, match="qat: modules names modules"):
        QATOptions(modules=("encoders.image",))
    with pytest.raises(ValueError, match="set activations: false"):  # (no artifact rounds 4-bit weights and int8 activations)
        QATOptions(weight_bits=4, modules=("encoders.image",))
    with pytest.raises(ValueError, match="set activations: false"):  # (the int8 graph keeps per-channel scales)
        QATOptions(per_tensor=True)
    # A teacher's export builds `head` from its fusion MLP and classifier: head.0 and head.2.
    from racmkd.models.multimodal import teacher

    fused = teacher({m: {"encoder": "cnn2d", "shape": list(modalities[m].feature_shape(s))} for m, s in specs.items()}, width=4, embed_dim=8, fusion_hidden=16)
    with fake_quantized(fused, weight_bits=4, activations=False, modules=("head.0",)):
        project, classifier = fused.fusion.project.weight.detach(), fused.classifier.weight.detach()
        assert torch.round(project / (project.abs().amax(dim=1, keepdim=True) / 7)).abs().max() == 7  # 4 bits
        assert torch.round(classifier / (classifier.abs().amax(dim=1, keepdim=True) / 127)).abs().max() == 127  # 8 bits


def test_the_artifact_is_the_fastest_within_the_bound_and_the_smallest_of_a_speed_tie() -> None:
    from racmkd.compress.steps import ExportOptions, choose_artifact

    def candidate(p50: float, size: int, agreement: float = 1.0) -> dict:
        return {"latency_ms": {"p50": p50}, "bytes": size, "parity": {"argmax_agreement": agreement, "accuracy": 0.9, "reference_accuracy": 0.9}}

    options = ExportOptions()
    tied = {"fp32": candidate(0.100, 4000), "int8": candidate(0.150, 1200), "int8-weights": candidate(0.102, 1500)}
    chosen, reason = choose_artifact(tied, options)
    assert chosen == "int8-weights" and "as fast" in reason
    faster = {"fp32": candidate(0.100, 4000), "int8": candidate(0.060, 1200), "int8-weights": candidate(0.101, 1500)}
    assert choose_artifact(faster, options)[0] == "int8"
    missed = {"fp32": candidate(0.100, 4000), "int8": candidate(0.060, 1200, agreement=0.9), "int8-weights": candidate(0.200, 1500)}
    chosen, reason = choose_artifact(missed, options)
    assert chosen == "fp32" and "int8 misses the bound (test agreement 0.9000 < 0.99)" in reason  # the failed condition alone, not "... or accuracy drop"
    assert {k: c["meets_bound"] for k, c in missed.items()} == {"fp32": True, "int8": False, "int8-weights": True}
    assert choose_artifact(missed, ExportOptions(prefer="smaller"))[0] == "int8-weights"
    missed["int8"]["parity"] = {"argmax_agreement": 0.995, "accuracy": 0.85, "reference_accuracy": 0.9}
    assert "int8 misses the bound (test accuracy drop +0.0500 > 0.01)" in choose_artifact(missed, options)[1]
    # The export step's candidates carry their validation parity: the accuracy bound, which chooses
    # what ships, is judged there (test labels only report); agreement, label-free, stays on test.
    missed["int8"]["validation_parity"] = {"argmax_agreement": 0.995, "accuracy": 0.895, "reference_accuracy": 0.9}
    assert choose_artifact(missed, options)[0] == "int8" and missed["int8"]["meets_bound"]
    missed["int8"]["parity"], missed["int8"]["validation_parity"]["accuracy"] = {"argmax_agreement": 0.995, "accuracy": 0.9, "reference_accuracy": 0.9}, 0.88
    chosen, reason = choose_artifact(missed, options)
    assert chosen == "fp32" and "int8 misses the bound (validation accuracy drop +0.0200 > 0.01)" in reason


def test_a_file_that_missed_its_bound_is_deployed_only_as_the_last_resort_and_never_named_rejected(tmp_path: Path) -> None:
    """fp32 must agree with PyTorch's argmax on every test sample; one that does not (a near tie
    flipped) competes no more than an int8 model that missed its bound, and is deployed only when
    nothing met its bound, with the reason saying so. Only files neither within their bound nor
    chosen are renamed *.rejected.onnx."""
    from racmkd.compress.steps import ExportOptions, choose_artifact, set_aside_rejected

    def candidates(folder: str, fp32_agreement: float, weights_agreement: float) -> dict:
        made = {}
        for name, agreement, p50, size in (("fp32", fp32_agreement, 0.020, 4000), ("int8-weights", weights_agreement, 0.050, 1500)):
            path = tmp_path / folder / f"{name}.onnx"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(b"model")
            made[name] = {
                "path": path,
                "latency_ms": {"p50": p50},
                "bytes": size,
                "parity": {"argmax_agreement": agreement, "accuracy": 0.9, "reference_accuracy": 0.9, "max_abs_logit_diff": 2e-5},
            }
        return made

    def names(made: dict) -> dict[str, str]:
        return {k: c["path"].name for k, c in made.items() if c["path"].is_file()}

    nothing_met = candidates("nothing-met", fp32_agreement=0.9999, weights_agreement=0.97)
    chosen, reason = choose_artifact(nothing_met, ExportOptions())
    set_aside_rejected(nothing_met, chosen)
    assert chosen == "fp32" and "fp32 misses its bound" in reason and "no candidate is within its bound" in reason
    assert names(nothing_met) == {"fp32": "fp32.onnx", "int8-weights": "int8-weights.rejected.onnx"}

    fp32_missed = candidates("fp32-missed", fp32_agreement=0.9999, weights_agreement=0.995)
    chosen, reason = choose_artifact(fp32_missed, ExportOptions())  # fp32 is the faster, but out of its bound
    set_aside_rejected(fp32_missed, chosen)
    assert chosen == "int8-weights" and "fp32 misses its bound" in reason
    assert names(fp32_missed) == {"fp32": "fp32.rejected.onnx", "int8-weights": "int8-weights.onnx"}

    all_met = candidates("all-met", fp32_agreement=1.0, weights_agreement=0.995)
    chosen, reason = choose_artifact(all_met, ExportOptions())
    set_aside_rejected(all_met, chosen)
    assert chosen == "fp32" and "misses" not in reason
    assert names(all_met) == {"fp32": "fp32.onnx", "int8-weights": "int8-weights.onnx"}


def test_a_faster_p50_that_the_paired_rounds_do_not_back_is_a_speed_tie() -> None:
    """A bench run deployed a tier's fp32 model (twice the bytes) over its int8-weights twin on a p50
    10% lower, from rounds that went either way: noise, which must not decide the artifact."""
    from racmkd.compress.steps import ExportOptions, choose_artifact
    from racmkd.measure.cost import clearly_faster

    def candidate(p50: float, size: int, rounds: list[float]) -> dict:
        return {"latency_ms": {"p50": p50, "rounds": rounds}, "bytes": size, "parity": {"argmax_agreement": 1.0, "accuracy": 0.9, "reference_accuracy": 0.9}}

    split = [0.040, 0.060] * 15  # each wins half of the 30 rounds against the other's [0.050, 0.050, ...]
    noisy = {"fp32": candidate(0.047, 23749, split), "int8-weights": candidate(0.052, 11857, [0.050] * 30)}
    chosen, reason = choose_artifact(noisy, ExportOptions())
    assert chosen == "int8-weights" and "paired timing rounds" in reason
    steady = {"fp32": candidate(0.047, 23749, [0.047] * 27 + [0.060] * 3), "int8-weights": candidate(0.052, 11857, [0.052] * 30)}
    assert choose_artifact(steady, ExportOptions())[0] == "fp32"  # 27 of 30 rounds: a real difference
    assert not clearly_faster({"p50": 0.049}, {"p50": 0.050})  # within 5%, whatever the rounds
    assert clearly_faster({"p50": 0.040}, {"p50": 0.050})  # no rounds kept: the p50s decide
    assert clearly_faster({"p50": 0.040, "rounds": [0.060] * 30}, {"p50": 0.050, "rounds": [0.050] * 10})  # not paired: the p50s decide
    assert not clearly_faster({"p50": 0.040, "rounds": [0.060] * 30}, {"p50": 0.050, "rounds": [0.050] * 30})  # paired, and lost every round


def test_mixed_precision_keeps_in_fp32_only_as_many_layers_as_the_agreement_needs(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from racmkd.compress.export import CONTRACT_KEY, set_metadata
    from racmkd.compress.quantize import fewest_float_layers, preprocess, quantizable_nodes

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1]),
            helper.make_node("GlobalAveragePool", ["y"], ["p"]),
            helper.make_node("Flatten", ["p"], ["logits"]),
        ],
        "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [
            numpy_helper.from_array(rng.standard_normal((6, 1, 3, 3)).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.standard_normal((10, 6, 3, 3)).astype(np.float32), "w2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    set_metadata(model, {CONTRACT_KEY: json.dumps({"format": "racmkd-onnx/1", "inputs": {"x": {}}})})
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(model, fp32)
    x = {"x": rng.standard_normal((200, 1, 8, 8)).astype(np.float32)}
    layers = [n.name for n in quantizable_nodes(preprocess(fp32, tmp_path / "pre.onnx"))]
    assert len(layers) == 2
    kept, trials = fewest_float_layers(fp32, x, x, layers, min_agreement=0.0)  # all-int8 is enough
    assert kept == [] and len(trials) == 1 and 0.5 < trials[0]["agreement"] < 1.0 + 1e-9
    kept, trials = fewest_float_layers(fp32, x, x, layers, min_agreement=1.01)  # nothing is: every layer stays fp32
    assert kept == layers and [t["kept_fp32"] for t in trials] == [[], layers[:1], layers]
    assert trials[-1]["agreement"] == 1.0  # nothing quantized: the fp32 model itself


def test_an_fp32_export_that_does_not_compute_what_pytorch_does_is_refused(tmp_path: Path) -> None:
    from racmkd.compress.export import fp32_parity

    rng = np.random.default_rng(0)
    reference = rng.normal(size=(50, 10)).astype(np.float32)
    labels = reference.argmax(1)
    assert fp32_parity(reference + 2e-5, reference, labels, tmp_path / "m.onnx").argmax_agreement == 1.0  # rounding
    for wrong in (reference + 0.01, reference * np.nan):  # e.g. a mis-folded batch norm; damaged weights
        with pytest.raises(ExportError, match="m.onnx: its logits differ from PyTorch's"):
            fp32_parity(wrong, reference, labels, tmp_path / "m.onnx")
