"""Distillation losses as pure functions on tensors, registered by name in LOSSES.

Each takes the tensors it compares and returns a scalar; none knows about models or layers.
Which outputs feed which loss is declared once, in racmkd.distill.trainer.LOSS_INPUTS.
Equation numbers refer to the seed paper (RA-CMKD capstone report).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from racmkd.registry import LOSSES


@LOSSES.register("task")
def task_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy against the labels: the L_task term of eq. 28."""
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


@LOSSES.register("kd")
def response_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. 2015: KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over the batch."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * temperature**2


def reliability_weights(teacher_logits: list[torch.Tensor], labels: torch.Tensor, prior: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample weights over K teachers (B, K) for eq. 3: a teacher is as reliable on a sample as
    the probability it gives the true class; w_k ∝ prior_k * exp(p_k(y) / temperature)."""
    p_true = torch.stack([F.softmax(t, dim=1).gather(1, labels[:, None]).squeeze(1) for t in teacher_logits], dim=1)  # (B, K)
    return F.softmax(p_true / temperature + torch.log(prior.clamp_min(1e-12))[None, :], dim=1)


@LOSSES.register("multi_teacher")
def multi_teacher_kd(student_logits: torch.Tensor, teacher_logits: list[torch.Tensor], weights: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 3: sum_k w_k KL(p_t_k || p_s), temperature-scaled like `response_kd`; `weights` is (B, K)
    and sums to one over the teachers."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    per_teacher = []
    for logits in teacher_logits:
        log_p_t = F.log_softmax(logits / temperature, dim=1)
        per_teacher.append((log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1))  # (B,)
    return (torch.stack(per_teacher, dim=1) * weights).sum(dim=1).mean() * temperature**2


@LOSSES.register("feature")
def feature_kd(projected_student: torch.Tensor, teacher_features: torch.Tensor, projection_weights: list[torch.Tensor], cost: float) -> torch.Tensor:
    """Eq. 27: D(phi_t, T(phi_s)) + lambda * C(T). D is the squared distance between the teacher's
    features and the student's after the learned projection T, both scaled to unit length so that
    the term does not depend on the teacher's feature scale (it lies in [0, 4]); C(T) is the mean
    absolute weight of the projection, a differentiable stand-in for how many weights it needs."""
    distance = (F.normalize(projected_student, dim=1) - F.normalize(teacher_features, dim=1)).pow(2).sum(dim=1).mean()
    if not projection_weights or cost == 0:
        return distance
    return distance + cost * torch.cat([w.abs().flatten() for w in projection_weights]).mean()


def _pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x, x).clamp_min(1e-12)


@LOSSES.register("rkd")
def relational_kd(student_features: torch.Tensor, teacher_features: torch.Tensor, distance_weight: float = 1.0, angle_weight: float = 2.0) -> torch.Tensor:
    """Park et al. 2019: match the normalised pairwise distances and the angles of triplets of the
    batch, in each model's own feature space (so dimensions need not agree). A batch of one has no
    pairs: nothing to match (zero, not the NaN of an empty mean)."""
    if len(student_features) < 2:
        return student_features.sum() * 0.0
    with torch.no_grad():
        t_dist = _pairwise_distances(teacher_features)
        t_dist = t_dist / t_dist[t_dist > 1e-6].mean().nan_to_num(1.0)  # all in one point: no scale to divide by
    s_dist = _pairwise_distances(student_features)
    s_dist = s_dist / s_dist[s_dist > 1e-6].mean().nan_to_num(1.0)
    off_diagonal = ~torch.eye(len(s_dist), dtype=torch.bool, device=s_dist.device)
    loss_distance = F.smooth_l1_loss(s_dist[off_diagonal], t_dist[off_diagonal])

    def angles(x: torch.Tensor) -> torch.Tensor:
        diff = F.normalize(x[None, :, :] - x[:, None, :], p=2, dim=2)  # (B, B, D)
        return torch.bmm(diff, diff.transpose(1, 2)).flatten()

    with torch.no_grad():
        t_angle = angles(teacher_features)
    loss_angle = F.smooth_l1_loss(angles(student_features), t_angle)
    return distance_weight * loss_distance + angle_weight * loss_angle


@LOSSES.register("similarity")
def similarity_preserving(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Tung & Mori 2019: the batch's row-normalised similarity matrices should agree:
    ||G_s - G_t||_F^2 / B^2 with G = normalise_rows(F F^T)."""
    g_s = F.normalize(student_features.flatten(1) @ student_features.flatten(1).T, dim=1)
    g_t = F.normalize(teacher_features.flatten(1) @ teacher_features.flatten(1).T, dim=1)
    return (g_s - g_t).pow(2).sum() / len(g_s) ** 2


@LOSSES.register("contrastive")
def contrastive_alignment(projected_student: torch.Tensor, teacher_features: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Eq. 2, InfoNCE: each student embedding must pick its own sample's teacher embedding out of
    the batch (cosine similarity / temperature, cross-entropy on the diagonal)."""
    s = F.normalize(projected_student, dim=1)
    t = F.normalize(teacher_features, dim=1)
    logits = s @ t.T / temperature  # (B, B)
    return F.cross_entropy(logits, torch.arange(len(s), device=s.device))


def attention_map(feature_map: torch.Tensor, size: tuple[int, int], p: float = 2.0) -> torch.Tensor:
    """Zagoruyko & Komodakis 2017: channel mean of |F|^p, resized to `size`, flattened and L2-normalised."""
    attention = feature_map.abs().pow(p).mean(dim=1, keepdim=True)
    attention = F.adaptive_avg_pool2d(attention, size)
    return F.normalize(attention.flatten(1), dim=1)


@LOSSES.register("attention")
def attention_transfer(student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor]) -> torch.Tensor:
    """Eq. 4: squared distance between normalised spatial attention maps of matching encoders,
    compared at the smaller of the two resolutions, averaged over the pairs."""
    losses = []
    for s, t in zip(student_maps, teacher_maps):
        size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
        losses.append((attention_map(s, size) - attention_map(t, size)).pow(2).sum(dim=1).mean())
    return torch.stack(losses).mean() if losses else torch.zeros(())


@LOSSES.register("group_sparsity")
def group_sparsity(weights: list[torch.Tensor]) -> torch.Tensor:
    """L_resource of eq. 28: group lasso over output channels (sum of each channel's weight L2
    norm, averaged over channels); it drives whole channels to zero so they can be pruned."""
    norms = [w.flatten(1).norm(dim=1) for w in weights]
    return torch.cat(norms).mean() if norms else torch.zeros(())


@LOSSES.register("emd")
def earth_movers_feature_kd(projected_student: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """EMD-KD: the earth mover's distance between the batch's distribution of (projected) student
    features and the teacher's, each a uniform point cloud of unit vectors with squared Euclidean
    ground cost. Unlike `feature`, no sample must land on its own teacher point: the student has to
    match where the teacher's features lie as a whole. The transport plan is exact (POT's network
    simplex) and held fixed; the gradient flows through the ground costs."""
    import ot  # POT, imported here: only this loss needs it

    with torch.autocast(projected_student.device.type, enabled=False):  # a bf16 student's autocast would make the costs bf16, which POT cannot read
        s = F.normalize(projected_student.float(), dim=1)
        t = F.normalize(teacher_features.float(), dim=1).detach()
        uniform_s = torch.full((len(s),), 1.0 / len(s), dtype=s.dtype, device=s.device)
        uniform_t = torch.full((len(t),), 1.0 / len(t), dtype=t.dtype, device=t.device)
        return ot.emd2(uniform_s, uniform_t, ot.dist(s, t))
