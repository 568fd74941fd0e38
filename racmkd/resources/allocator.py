"""Which modalities to process, at which tier, right now: the seed paper's eq. 26, solved exactly.

    maximise   U(x) = sum over S of Pr_w(S) * P(x | S)
    subject to sum_m R_m(x_m) <= R_available     for every resource (latency, memory, energy)
               x_m at tier >= min tier            for every modality marked critical

A configuration x picks one variant per modality or leaves it off. A variant is one tier's encoder
for one modality together with its share of that tier's classifier: a student's logits are a sum
of one term per modality (its classifier is linear over the concatenated embeddings), so the
variants of a configuration run one after the other and their costs add up exactly (latency,
memory, energy, each measured per variant). Variants of different tiers can be combined; every
combination's accuracy P(x | S), with only the modalities S present, is measured on validation
data (runtime/variants.py), so nothing here is a guess.

The weights w_m = priority_m x quality_m (quality 0 for a missing or silent input) enter as the
chance that modality m's input is usable: Pr_w(S) = prod_{m in S} w_m prod_{m in A(x) \\ S} (1 - w_m),
so U is the accuracy to expect from x. Were accuracies additive over modalities, U would be
exactly eq. 26's sum_m w_m P_m(R_m); they are not (fusion), so the measured table is used whole.

Exactness: every configuration is scored (prod_m (|tiers_m| + 1) of them: 25 for two modalities
and four tiers, 125 for three) and ranked once per set of weights; a decision scans the ranking
for the first configuration within the budget. Ranking is cached per weights, so a decision costs
microseconds. `Hysteresis` keeps decisions stable and `LatencyController` (a PID) feeds observed
latency back into the budget.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from simple_pid import PID

from racmkd.config import ConfigError, PIDGains

RESOURCES = ("latency_ms", "memory_bytes", "energy_mj")


@dataclass(frozen=True)
class Variant:
    """One tier's encoder for one modality, with its measured costs (one thread, no other load)."""

    modality: str
    tier: str
    latency_ms: float  # p50, raw input to its logits term, preprocessing included
    memory_bytes: int  # resident while loaded and running
    energy_mj: float  # per inference (estimated unless RAPL was readable)
    path: str = ""  # its ONNX file, relative to the bank folder

    @property
    def id(self) -> str:
        return f"{self.tier}/{self.modality}"


Configuration = tuple[Variant | None, ...]  # one entry per modality of the table, None = off


@dataclass(frozen=True)
class Costs:
    latency_ms: float
    memory_bytes: float
    energy_mj: float

    def fits(self, budget: Budget, slack: float = 0.0) -> bool:
        """Within the budget on every resource, with `slack` (a fraction) to spare."""
        return all(getattr(self, r) <= getattr(budget, r) * (1.0 - slack) for r in RESOURCES)

    def over(self, budget: Budget) -> list[str]:
        """The resources this exceeds."""
        return [r for r in RESOURCES if getattr(self, r) > getattr(budget, r)]


@dataclass(frozen=True)
class Budget:
    """What the runtime may spend on one request, in the variants' own (unloaded) units: the latency
    budget is already divided by the predicted slowdown from other programs' CPU load."""

    latency_ms: float = math.inf
    memory_bytes: float = math.inf
    energy_mj: float = math.inf
    slowdown: float = 1.0  # for the record: how much slower than measured the CPU is expected to run

    def scaled(self, factor: float) -> Budget:
        return Budget(self.latency_ms * factor, self.memory_bytes * factor, self.energy_mj * factor, self.slowdown)

    def as_dict(self) -> dict[str, float]:
        return {r: getattr(self, r) for r in (*RESOURCES, "slowdown")}


@dataclass(frozen=True)
class ProfileTable:
    """The measured variants and the accuracy of every configuration (key: one tier name or None
    per modality, in `modalities` order)."""

    modalities: tuple[str, ...]
    tiers: tuple[str, ...]  # most capable first
    variants: tuple[Variant, ...]
    accuracy: dict[tuple[str | None, ...], float]

    def options(self, modality: str) -> list[Variant | None]:
        return [None, *(v for v in self.variants if v.modality == modality)]

    def key(self, config: Configuration) -> tuple[str | None, ...]:
        return tuple(v.tier if v is not None else None for v in config)

    def accuracy_of(self, config: Configuration, present: Iterable[str] | None = None) -> float:
        """Measured accuracy of `config` with only `present` modalities given (default: all)."""
        keep = set(self.modalities if present is None else present)
        key = tuple(v.tier if v is not None and m in keep else None for m, v in zip(self.modalities, config))
        if all(k is None for k in key):
            return 0.0  # nothing to answer from
        return self.accuracy[key]


def config_costs(config: Configuration) -> Costs:
    """Variants run one after the other: their costs add up."""
    active = [v for v in config if v is not None]
    return Costs(sum(v.latency_ms for v in active), sum(v.memory_bytes for v in active), sum(v.energy_mj for v in active))


def describe(table: ProfileTable, config: Configuration) -> str:
    parts = [f"{m}={v.tier}" for m, v in zip(table.modalities, config) if v is not None]
    return ", ".join(parts) or "nothing"


@dataclass(frozen=True)
class Decision:
    """A chosen configuration, what it is worth, what it costs, and why it was chosen."""

    config: Configuration
    utility: float
    costs: Costs
    feasible: bool  # False: nothing fitted the budget, this is the fallback
    reason: str = ""


class Allocator:
    """Exact solver of eq. 26 over a measured profile table."""

    def __init__(self, table: ProfileTable, critical: dict[str, str] | None = None) -> None:
        self.table = table
        self.critical = dict(critical or {})
        for m, tier in self.critical.items():
            if m not in table.modalities:
                raise ConfigError(f"runtime.critical: {m!r} is not a modality of this runtime ({', '.join(table.modalities)})")
            if tier not in table.tiers:
                raise ConfigError(f"runtime.critical.{m}: unknown tier {tier!r}; choose one of {', '.join(table.tiers)}")
        self.configs = [c for c in itertools.product(*(table.options(m) for m in table.modalities)) if self._allowed(c)]
        if not self.configs:
            raise ConfigError(f"runtime.critical {self.critical}: no variant satisfies it (variants: {', '.join(v.id for v in table.variants)})")
        self.costs = {c: config_costs(c) for c in self.configs}
        self._ranked: dict[tuple[float, ...], list[tuple[float, Configuration]]] = {}

    def _allowed(self, config: Configuration) -> bool:
        if all(v is None for v in config):
            return False  # an answer needs at least one input processed
        for m, v in zip(self.table.modalities, config):
            if m in self.critical and (v is None or self.table.tiers.index(v.tier) > self.table.tiers.index(self.critical[m])):
                return False
        return True

    def weights(self, priorities: dict[str, float] | None = None, quality: dict[str, float] | None = None) -> tuple[float, ...]:
        """w_m = priority_m x quality_m, clipped to [0, 1], in table order."""
        p, q = priorities or {}, quality or {}
        return tuple(min(1.0, max(0.0, p.get(m, 1.0) * q.get(m, 1.0))) for m in self.table.modalities)

    def utility(self, config: Configuration, weights: tuple[float, ...]) -> float:
        """Expected accuracy of `config` when modality m's input is usable with chance w_m."""
        active = [i for i, v in enumerate(config) if v is not None]
        total = 0.0
        for r in range(1, len(active) + 1):
            for subset in itertools.combinations(active, r):
                chance = math.prod(weights[i] if i in subset else 1.0 - weights[i] for i in active)
                if chance > 0:
                    total += chance * self.table.accuracy_of(config, [self.table.modalities[i] for i in subset])
        return total

    def ranking(self, weights: tuple[float, ...]) -> list[tuple[float, Configuration]]:
        """Every allowed configuration, best first (ties: the faster, then the smaller)."""
        key = tuple(round(w, 4) for w in weights)
        if key not in self._ranked:
            scored = [(self.utility(c, key), c) for c in self.configs]
            scored.sort(key=lambda uc: (-round(uc[0], 9), self.costs[uc[1]].latency_ms, self.costs[uc[1]].memory_bytes))
            if len(self._ranked) > 256:
                self._ranked.clear()
            self._ranked[key] = scored
        return self._ranked[key]

    def solve(self, budget: Budget, weights: tuple[float, ...], exclude: frozenset[str] = frozenset(), slack: float = 0.0) -> Decision:
        """The best configuration within `budget` (with `slack` to spare), not using the variants in
        `exclude` (ids) nor modalities whose weight is 0; when none fits, the cheapest usable one,
        marked infeasible (the runtime degrades instead of refusing)."""
        usable = [
            (u, c) for u, c in self.ranking(weights)
            if not any(v is not None and (v.id in exclude or weights[i] == 0.0) for i, v in enumerate(c))
        ]
        if not usable:  # every weight is zero or every variant excluded: fall back to whatever still runs
            usable = [(u, c) for u, c in self.ranking(weights) if not any(v is not None and v.id in exclude for v in c)]
        if not usable:
            raise RuntimeError(f"no configuration is left: every variant is excluded ({', '.join(sorted(exclude))})")
        for u, c in usable:
            if self.costs[c].fits(budget, slack):
                return Decision(c, u, self.costs[c], True, f"best within budget: {describe(self.table, c)}")
        u, c = min(usable, key=lambda uc: (self.costs[uc[1]].latency_ms, -uc[0]))
        return Decision(c, u, self.costs[c], False, f"nothing fits ({', '.join(self.costs[c].over(budget))} over); cheapest: {describe(self.table, c)}")


def brute_force(table: ProfileTable, budget: Budget, weights: tuple[float, ...], critical: dict[str, str] | None = None) -> float | None:
    """The best utility within budget found by trying every configuration (a reference for tests)."""
    allocator = Allocator(table, critical)
    allowed = [c for c in itertools.product(*(table.options(m) for m in table.modalities)) if allocator._allowed(c)]
    weighted = [c for c in allowed if not any(v is not None and weights[i] == 0.0 for i, v in enumerate(c))]
    best = None
    for config in weighted or allowed:  # a modality with weight 0 is not worth running, unless nothing else is allowed
        if config_costs(config).fits(budget):
            u = allocator.utility(config, weights)
            best = u if best is None else max(best, u)
    return best


@dataclass
class Hysteresis:
    """Step down at once when the current configuration no longer fits; step up only when a better
    one has fitted with `margin` to spare on every resource for `window_s` seconds."""

    margin: float = 0.2
    window_s: float = 1.0
    _pending: Configuration | None = field(default=None, repr=False)
    _since: float = 0.0

    def choose(self, now: float, current: Decision | None, allocator: Allocator, budget: Budget, weights: tuple[float, ...], exclude: frozenset[str] = frozenset()) -> tuple[Decision, str]:
        best = allocator.solve(budget, weights, exclude)
        if current is None:
            self._pending = None
            return best, "start"
        current_costs = allocator.costs.get(current.config, config_costs(current.config))
        current_now = Decision(current.config, allocator.utility(current.config, weights), current_costs, current_costs.fits(budget), current.reason)
        uses_excluded = any(v is not None and v.id in exclude for v in current.config)
        if uses_excluded or not current_now.feasible:
            self._pending = None
            if best.config == current.config:
                return current_now, "over budget, nothing cheaper fits"
            why = "a variant failed" if uses_excluded else f"over budget on {', '.join(current_costs.over(budget))}"
            return best, f"step down at once: {why}"
        up = allocator.solve(budget, weights, exclude, slack=self.margin)
        if not up.feasible or up.utility <= current_now.utility + 1e-9 or up.config == current.config:
            self._pending = None
            return current_now, "stay"
        if self._pending != up.config:
            self._pending, self._since = up.config, now
            return current_now, f"step up pending: {describe(allocator.table, up.config)}"
        if now - self._since >= self.window_s:
            self._pending = None
            return up, f"step up: fitted with {self.margin:.0%} headroom for {now - self._since:.2f} s"
        return current_now, f"step up pending: {describe(allocator.table, up.config)}"


class LatencyController:
    """PID on observed latency / target: its output scales the latency budget the allocator plans
    with (1 = the target as it is; lower when requests run slower than the model predicts)."""

    def __init__(self, gains: PIDGains, target_ms: float) -> None:
        if target_ms <= 0:
            raise ConfigError(f"runtime.latency_target_ms must be positive, got {target_ms}")
        self.gains, self.target_ms = gains, target_ms
        self.pid = PID(gains.kp, gains.ki, gains.kd, setpoint=gains.setpoint, sample_time=None, output_limits=(gains.min_scale, gains.max_scale), starting_output=gains.max_scale)
        self.scale = gains.max_scale
        self._last: float | None = None

    def update(self, observed_ms: float, now: float) -> float:
        dt = 1e-3 if self._last is None else max(now - self._last, 1e-6)
        self._last = now
        self.scale = float(self.pid(observed_ms / self.target_ms, dt=dt))
        return self.scale

    def state(self) -> dict[str, Any]:
        p, i, d = self.pid.components
        return {"scale": self.scale, "p": p, "i": i, "d": d, "setpoint": self.gains.setpoint}
