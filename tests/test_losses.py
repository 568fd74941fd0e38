"""Every registered loss against a hand-computed value, and zero (or its minimum) where it should be."""

from __future__ import annotations

import math

import pytest
import torch


from racmkd.distill.losses import attention_map, reliability_weights
from racmkd.registry import LOSSES


def test_task_is_cross_entropy() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    expected = (-math.log(math.e**2 / (math.e**2 + 1)) - math.log(0.5)) / 2
    assert math.isclose(float(LOSSES.get("task")(logits, torch.tensor([0, 1]))), expected, rel_tol=1e-6)


def test_kd_matches_the_formula_and_vanishes_on_equal_logits() -> None:
    kd = LOSSES.get("kd")
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    # T = 1: p_t = (3/4, 1/4), p_s = (1/2, 1/2) -> KL = 3/4 ln(3/2) + 1/4 ln(1/2)
    assert math.isclose(float(kd(s, t, 1.0)), 0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel_tol=1e-5)
    # T = 2 divides the logits, then multiplies by T^2 = 4
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    expected = 4 * (p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5))
    assert math.isclose(float(kd(s, t, 2.0)), expected, rel_tol=1e-5)
    assert float(kd(t, t, 4.0)) == pytest.approx(0.0, abs=1e-7)


def test_multi_teacher_weights_and_reduction() -> None:
    s = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    t1, t2 = torch.tensor([[2.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 2.0], [3.0, 0.0]])
    one_hot = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert math.isclose(float(LOSSES.get("multi_teacher")(s, [t1, t2], one_hot, 3.0)), float(LOSSES.get("kd")(s, t1, 3.0)), rel_tol=1e-5)
    half = torch.full((2, 2), 0.5)
    mixed = LOSSES.get("multi_teacher")(s, [t1, t2], half, 1.0)
    assert math.isclose(float(mixed), 0.5 * float(LOSSES.get("kd")(s, t1, 1.0)) + 0.5 * float(LOSSES.get("kd")(s, t2, 1.0)), rel_tol=1e-5)


def test_reliability_prefers_the_teacher_that_is_right() -> None:
    labels = torch.tensor([0])
    right, wrong = torch.tensor([[5.0, 0.0]]), torch.tensor([[0.0, 5.0]])
    w = reliability_weights([right, wrong], labels, torch.ones(2), temperature=0.1)
    assert w.shape == (1, 2) and math.isclose(float(w.sum()), 1.0, rel_tol=1e-6) and float(w[0, 0]) > 0.99
    even = reliability_weights([right, right], labels, torch.tensor([3.0, 1.0]), temperature=0.1)
    assert torch.allclose(even, torch.tensor([[0.75, 0.25]]))


def test_feature_kd_distance_plus_projection_cost() -> None:
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    assert float(LOSSES.get("feature")(a, a, [], 1.0)) == 0.0
    w = torch.tensor([[2.0, -2.0]])
    assert math.isclose(float(LOSSES.get("feature")(a, b, [w], 0.5)), 1.0 + 0.5 * 2.0)


def test_relational_kd_is_zero_for_scaled_features_and_positive_otherwise() -> None:
    t = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    rkd = LOSSES.get("rkd")
    assert float(rkd(3.0 * t, t)) == pytest.approx(0.0, abs=1e-6)  # distances normalised, angles scale-free
    assert float(rkd(torch.randn(6, 4, generator=torch.Generator().manual_seed(1)), t)) > 0.01
    # A last batch of one has no pairs, and a teacher whose features collapse to one point no scale:
    # finite either way (a NaN made the epoch's logged loss NaN).
    assert float(rkd(torch.randn(1, 4), t[:1])) == 0.0 and math.isfinite(float(rkd(torch.randn(6, 4), torch.ones(6, 4))))


def test_relational_kd_hand_value() -> None:
    """Three points on a line (student) against an equilateral triangle (teacher).
    Distances, each over its mean: student 1, 2, 1 / (4/3) = 0.75, 1.5, 0.75; teacher all 1; smooth L1
    over the 6 ordered pairs: (4 * 0.5 * 0.25**2 + 2 * 0.5 * 0.5**2) / 6 = 0.0625.
    Angles, <e_ij, e_ik> over all 27 (i, j, k) (0 where j or k is i): the teacher's 0.5 at every
    vertex (60 degrees) against the student's 1, -1 (the middle point) and 1: smooth L1 of 0.5 four
    times (0.125 each) and of 1.5 twice (1.0 each), 2.5 / 27."""
    student = torch.tensor([[0.0], [1.0], [2.0]])
    teacher = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    rkd = LOSSES.get("rkd")
    assert float(rkd(student, teacher, distance_weight=1.0, angle_weight=0.0)) == pytest.approx(0.0625)
    assert float(rkd(student, teacher, distance_weight=0.0, angle_weight=1.0)) == pytest.approx(2.5 / 27)
    assert float(rkd(student, teacher)) == pytest.approx(0.0625 + 2 * 2.5 / 27)  # the default weights 1 and 2


def test_similarity_preserving_hand_value() -> None:
    sp = LOSSES.get("similarity")
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # G_t = I; G_s = normalise_rows(ones) = all 1/sqrt(2): ||G_s - G_t||^2 = 2 (1/sqrt2 - 1)^2 + 2 (1/2)
    expected = (2 * (1 / math.sqrt(2) - 1) ** 2 + 2 * 0.5) / 4
    assert math.isclose(float(sp(s, t)), expected, rel_tol=1e-6)
    assert float(sp(2 * t, t)) == pytest.approx(0.0, abs=1e-7)


def test_contrastive_hand_value_and_alignment_lowers_it() -> None:
    nce = LOSSES.get("contrastive")
    s = t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # logits = I / 0.1: each row softmax of (10, 0) -> -log(e^10 / (e^10 + 1))
    assert math.isclose(float(nce(s, t, 0.1)), math.log1p(math.exp(-10)), rel_tol=1e-3)  # float32 softmax
    feats = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    assert float(nce(feats, feats)) < float(nce(feats.roll(1, 0), feats))


def test_attention_transfer_zero_for_same_maps_and_hand_value() -> None:
    at = LOSSES.get("attention")
    maps = torch.rand(2, 4, 6, 6)
    assert float(at([maps], [maps * 5.0])) == pytest.approx(0.0, abs=1e-7)  # normalised: scale-free
    a = torch.zeros(1, 1, 1, 2)
    a[0, 0, 0, 0] = 1.0
    b = torch.zeros(1, 1, 1, 2)
    b[0, 0, 0, 1] = 1.0
    assert math.isclose(float(at([a], [b])), 2.0, rel_tol=1e-6)  # orthogonal unit vectors: distance^2 = 2
    assert attention_map(torch.rand(3, 5, 8, 8), (4, 4)).shape == (3, 16)


def test_group_sparsity_hand_value() -> None:
    w = torch.zeros(2, 1, 1, 2)
    w[0, 0, 0] = torch.tensor([3.0, 4.0])  # norm 5; the second channel is all zero
    assert math.isclose(float(LOSSES.get("group_sparsity")([w])), 2.5)
    assert float(LOSSES.get("group_sparsity")([torch.zeros(3, 2)])) == 0.0


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_has_a_gradient(name: str) -> None:
    """Parametrized over the registry: a newly registered loss is checked for free."""
    from racmkd.config import DistillConfig
    from racmkd.distill.trainer import LOSS_INPUTS, LossInputs

    g = torch.Generator().manual_seed(0)
    student_logits = torch.randn(8, 10, generator=g, requires_grad=True)
    fused = torch.randn(8, 12, generator=g, requires_grad=True)
    maps = {"image": torch.randn(8, 4, 6, 6, generator=g, requires_grad=True)}
    teacher = {"fused": torch.randn(8, 12, generator=g), "maps": {"image": torch.randn(8, 16, 3, 3, generator=g)}}
    labels = torch.randint(10, (8,), generator=g)
    proj_w = torch.randn(12, 12, generator=g, requires_grad=True)
    inputs = LossInputs(
        labels,
        {"fused": fused, "maps": maps},
        student_logits,
        [teacher, teacher],
        [torch.randn(8, 10, generator=g)] * 2,
        fused @ proj_w,
        [proj_w],
        2.0,
        DistillConfig(),
    )
    if name == "task":
        loss = LOSSES.get(name)(student_logits, labels)
    elif name == "group_sparsity":
        loss = LOSSES.get(name)([proj_w])
    else:
        loss = LOSSES.get(name)(*LOSS_INPUTS[name](inputs))
    loss.backward()
    grads = [t.grad for t in (student_logits, fused, maps["image"], proj_w) if t.grad is not None]
    assert loss.dim() == 0 and torch.isfinite(loss) and grads and any(float(g.abs().sum()) > 0 for g in grads)


def test_emd_ignores_which_sample_is_which_but_not_where_features_lie() -> None:
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(16, 8, generator=g)
    shuffled = teacher[torch.randperm(16, generator=g)]
    emd = LOSSES.get("emd")
    assert float(emd(shuffled, teacher)) == pytest.approx(0.0, abs=1e-6)  # same cloud, other order: nothing to move
    assert float(LOSSES.get("feature")(shuffled, teacher, [], 0.0)) > 0.5  # the per-sample loss does see the order
    moved = emd(teacher + 0.5 * torch.randn(16, 8, generator=g), teacher)
    assert 0 < float(moved) <= 4.0  # unit vectors: a squared distance is at most 4
    # One point each: the EMD is the squared distance of the two unit vectors.
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert float(emd(a, b)) == pytest.approx(2.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a bf16 student's step: POT cannot read bf16 costs
        assert float(emd(shuffled, teacher)) == pytest.approx(0.0, abs=1e-6)
