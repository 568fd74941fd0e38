"""Trainer pieces: modality dropout, frozen modules, precision, the adaptive objective."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from racmkd.config import ConfigError, DistillConfig, Schedule, TrainConfig
from racmkd.distill.adaptive import ObjectiveWeights, budget_position, objective_weights
from racmkd.distill.trainer import Job, Mix, attach_projection, objective, presence_masks, resolve_precision, train_mode
from racmkd.models.multimodal import student, teacher

INPUTS = {"image": {"encoder": "dscnn2d", "shape": [1, 8, 8]}, "audio": {"encoder": "dscnn2d", "shape": [1, 16, 16]}}


def test_presence_masks_never_hide_every_modality() -> None:
    masks = presence_masks(["image", "audio"], 5000, 0.9, torch.Generator().manual_seed(0))
    assert masks is not None
    present = masks["image"] + masks["audio"]
    assert float(present.min()) >= 1.0
    assert 0.05 < float((present == 1).float().mean()) and float(masks["image"].mean()) < 0.6
    assert presence_masks(["audio"], 10, 0.5, torch.Generator()) is None
    assert presence_masks(["image", "audio"], 10, 0.0, torch.Generator()) is None


def test_budget_position_and_schedules() -> None:
    budgets = [1 << 20, 1 << 18, 1 << 16, 1 << 14]
    assert budget_position(1 << 20, budgets) == 1.0 and budget_position(1 << 14, budgets) == 0.0
    assert math.isclose(budget_position(1 << 16, budgets), 1 / 3)
    w = objective_weights(DistillConfig(temperature=Schedule(4.0, 1.0), gamma=Schedule(0.0, 3.0)), 1 << 16, budgets)
    assert math.isclose(w.temperature, 3.0) and math.isclose(w.gamma, 1.0)


def test_objective_without_teacher_is_cross_entropy() -> None:
    model = student(INPUTS, width=0.5)
    x = {"image": torch.randn(4, 1, 8, 8), "audio": torch.randn(4, 1, 16, 16)}
    labels = torch.tensor([0, 1, 2, 3])
    out = model.forward_features(x)
    logits = model.forward_head(out["fused"])
    job = Job("s", model, {}, TrainConfig())
    loss, terms = objective(job, out, logits, labels, [], [])
    assert torch.allclose(loss, nn.functional.cross_entropy(logits, labels)) and set(terms) == {"task"}


def test_distilled_objective_combines_the_weighted_terms() -> None:
    model = student(INPUTS, width=0.5)
    big = teacher({k: {**v, "encoder": "cnn2d"} for k, v in INPUTS.items()}, width=4, embed_dim=8, fusion_hidden=16)
    x = {"image": torch.randn(6, 1, 8, 8), "audio": torch.randn(6, 1, 16, 16)}
    labels = torch.arange(6)
    t_out = big.forward_features(x)
    t_logits = big.forward_head(t_out["fused"])
    out = model.forward_features(x)
    logits = model.forward_head(out["fused"])
    cfg = DistillConfig(distill_losses={"kd": 1.0}, align_losses={"feature": 1.0})
    job = Job("s", model, {}, TrainConfig(), ObjectiveWeights(0.5, 2.0, 3.0, 0.1, 2.0, 1.0), cfg)
    attach_projection(job, big)
    assert job.projection is not None and job.projection.out_features == 16
    loss, terms = objective(job, out, logits, labels, [t_out], [t_logits])
    expected = 0.5 * terms["task"] + 2.0 * terms["distill"] + 3.0 * terms["align"] + 0.1 * terms["resource"]
    assert math.isclose(float(loss.detach()), expected, rel_tol=1e-5) and terms["distill"] > 0 and terms["align"] > 0


def test_every_alignment_loss_takes_a_teacher_that_answered_in_bf16() -> None:
    # Teachers answer in bf16 where the CPU has it; students train in fp32 by default. contrastive
    # (a matmul) and rkd (torch.cdist) refused the mixed dtypes, at the first step after the teachers.
    model = student(INPUTS, width=0.5)
    big = teacher({k: {**v, "encoder": "cnn2d"} for k, v in INPUTS.items()}, width=4, embed_dim=8, fusion_hidden=16)
    x = {"image": torch.randn(6, 1, 8, 8), "audio": torch.randn(6, 1, 16, 16)}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        t_out = big.forward_features(x)
        t_logits = big.forward_head(t_out["fused"])
    assert t_out["fused"].dtype == t_logits.dtype == torch.bfloat16
    out = model.forward_features(x)
    logits = model.forward_head(out["fused"])
    for align in ("contrastive", "rkd", "similarity", "feature", "emd"):
        job = Job(
            "s", model, {}, TrainConfig(), ObjectiveWeights(0.5, 1.0, 1.0, 0.0, 2.0, 1.0), DistillConfig(distill_losses={"kd": 1.0}, align_losses={align: 1.0})
        )
        attach_projection(job, big)
        loss, terms = objective(job, out, logits, torch.arange(6), [t_out], [t_logits])
        assert loss.dtype == torch.float32 and math.isfinite(float(loss.detach())) and terms["align"] >= 0, align


def test_frozen_modules_stay_in_eval_mode() -> None:
    model = teacher({k: {**v, "encoder": "cnn2d"} for k, v in INPUTS.items()}, width=4, embed_dim=8, fusion_hidden=16)
    model.encoders["audio"].requires_grad_(False)
    train_mode(model)
    assert model.fusion.training and model.encoders["image"].training
    assert not any(m.training for m in model.encoders["audio"].modules())


def test_precision_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    for supported, expected in ((lambda: True, "bf16"), (lambda: False, "fp32")):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", supported)
        assert resolve_precision("auto") == expected

    def unknown() -> bool:
        raise RuntimeError("no such op in this build")

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", unknown)
    assert resolve_precision("auto") == "fp32"  # a build that cannot say: the safe choice
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert resolve_precision("auto") == "fp32"  # no oneDNN: no bf16 kernels to run
    with pytest.raises(ValueError, match="choose auto, bf16 or fp32"):
        resolve_precision("fp8")


def test_mix_blends_inputs_and_targets_alike() -> None:
    mix = Mix(torch.tensor([1, 0, 2]), 0.75)
    x = {"image": torch.tensor([[0.0], [4.0], [8.0]])}
    assert torch.allclose(mix.inputs(x)["image"], torch.tensor([[1.0], [3.0], [8.0]]))
    logits, labels = torch.randn(3, 10), torch.tensor([3, 5, 7])
    ce = nn.functional.cross_entropy
    assert torch.allclose(mix.task(logits, labels, 0.0), 0.75 * ce(logits, labels) + 0.25 * ce(logits, labels[[1, 0, 2]]))
    drawn = [Mix.draw(8, 0.4, torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert drawn[0].weight == drawn[1].weight != drawn[2].weight and 0.0 <= drawn[0].weight <= 1.0
    assert sorted(drawn[0].permutation.tolist()) == list(range(8))


def test_a_teacher_is_scored_on_both_labels_of_a_mixed_sample() -> None:
    from racmkd.distill.trainer import LossInputs, teacher_reliability

    labels, permutation = torch.tensor([0, 1]), torch.tensor([1, 0])
    sees_the_second = torch.tensor([[0.0, 9.0], [9.0, 0.0]])  # right about the sample that dominates the mixture
    uniform = torch.zeros(2, 2)
    inputs = LossInputs(labels, {}, uniform, [], [sees_the_second, uniform], None, [], 2.0, DistillConfig(), Mix(permutation, 0.1))
    weights = teacher_reliability(inputs)
    assert (weights[:, 0] > weights[:, 1]).all() and torch.allclose(weights.sum(dim=1), torch.ones(2))  # it was 0.27 against 0.73


def test_mixup_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match="mixup"):
        TrainConfig(mixup=-0.1)
