"""The resource-adaptive weights of the seed's eq. 28.

    L = alpha(R) L_task + beta(R) L_distill + gamma(R) L_align + delta(R) L_resource

R is the tier's budget, placed on [0, 1] by its log-position between the smallest and the largest
budget of the run (0 = the critical tier, 1 = the high tier). Each weight, and the distillation
temperature, moves linearly in that position between its `low` and `high` configured values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from racmkd.config import DistillConfig, Schedule


@dataclass(frozen=True)
class ObjectiveWeights:
    """The weights of eq. 28 and the temperature, for one tier."""

    alpha: float
    beta: float
    gamma: float
    delta: float
    temperature: float
    position: float  # R on [0, 1]


def budget_position(budget: int, budgets: list[int]) -> float:
    """log-position of `budget` between the smallest (0) and the largest (1) of `budgets`."""
    lo, hi = min(budgets), max(budgets)
    if hi == lo:
        return 1.0
    return min(1.0, max(0.0, math.log(budget / lo) / math.log(hi / lo)))


def at(schedule: Schedule, position: float) -> float:
    """The scheduled value at `position` on [0, 1]."""
    return schedule.low + (schedule.high - schedule.low) * position


def objective_weights(cfg: DistillConfig, budget: int, budgets: list[int]) -> ObjectiveWeights:
    """Eq. 28's weights for a tier with `budget` among the run's `budgets`."""
    r = budget_position(budget, budgets)
    return ObjectiveWeights(at(cfg.alpha, r), at(cfg.beta, r), at(cfg.gamma, r), at(cfg.delta, r), at(cfg.temperature, r), r)
