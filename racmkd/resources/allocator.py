"""Which modalities to process, at which tier, right now: the seed paper's eq. 26, solved exactly.

    maximise   U(x) = sum over S of Pr_w(S) * P(x | S)
    subject to sum_m R_m(x_m) <= R_available     for every resource (latency, memory, energy)
               x_m at tier >= min tier            for every modality marked critical (while its
                                                  input is there and such a variant works)

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

When none of x's inputs is usable, the runtime does not leave the request unanswered: it answers
from the inputs the request did bring alive, with the configuration `solve` chooses for those in
the memory x leaves (`answer_for`, EdgeRuntime.infer). So x is worth U(x) plus, for each set T of
the other inputs, the chance that none of x's is usable and exactly T is (by quality alone: see
`fallbacks`), times what that answer is worth. Counted as unanswered, a
microphone silent every other request priced audio-only at half its accuracy, below image-only
(0.62): on a load where one modality fits, the runtime served image-only (0.586 SLO-accuracy) where
audio-only, answered from the image while the audio was silent, gets 0.757 (measured).

Exactness: every configuration is scored (prod_m (|tiers_m| + 1) of them: 25 for two modalities
and four tiers, 125 for three) and ranked once per set of weights, by a bound on its worth (the
fallback's answers counted at the most accurate configuration of their inputs); a decision scans
the ranking, worth taken exactly, until the bound falls to the best found. Ranking is cached per
weights, so a decision costs microseconds. `Hysteresis` keeps decisions stable and
`LatencyController` (a PID) feeds observed latency back into the budget.

Two objectives (`runtime.objective`):
- `accuracy`: eq. 26 as written, latency a hard constraint like memory and energy.
- `slo` (the default): what a service level asks for, the chance of answering correctly *within the
  latency target*: U(x) x P(x meets the deadline), memory and energy still hard constraints. A hard
  latency budget is a cliff: when the fused configuration is predicted 5% over it, eq. 26 falls back
  to an image-only one (62% accurate) although the fused one would have met the deadline nine times
  in ten (95% accurate). P(x meets the deadline) comes from `DeadlineRisk`: how far recent requests'
  observed latencies strayed from their predictions (host jitter, the load forecast's error), so the
  runtime learns how much headroom this device needs. Both objectives are solved exactly.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import itertools
import math
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from simple_pid import PID

from racmkd.config import ConfigError, PIDGains
from racmkd.utils import percentile

RESOURCES = ("latency_ms", "memory_bytes", "energy_mj")
HARD_RESOURCES = ("memory_bytes", "energy_mj")  # never traded for latency: over the latency budget an answer comes late; over these it may not come at all


@dataclass(frozen=True)
class Variant:
    """One tier's encoder for one modality, with its measured costs (one thread, no other load)."""

    modality: str
    tier: str
    latency_ms: float  # p95 as the bank loads it (a deadline is about the tail), raw input to its logits term, preprocessing included
    memory_bytes: int  # resident while loaded and running
    energy_mj: float  # per inference (estimated: E = a * FLOPs + b * bytes moved + c * time)
    path: str = ""  # its ONNX file, relative to the bank folder
    latency_p50_ms: float = math.nan  # its median (what a request typically costs; the deadline risk adds the tail); nan: latency_ms

    @functools.cached_property
    def typical_ms(self) -> float:  # cached: read on every request's feedback
        return self.latency_ms if math.isnan(self.latency_p50_ms) else self.latency_p50_ms

    @functools.cached_property
    def id(self) -> str:  # cached: read several times on every request's path
        return f"{self.tier}/{self.modality}"


Configuration = tuple[Variant | None, ...]  # one entry per modality of the table, None = off
# A configuration's utility and its fallbacks (Allocator.fallbacks: each set of other inputs
# answering when none of its own is usable, with its chance), as a ranking keeps them.
Prospect = tuple[float, list[tuple[float, frozenset[str]]]]


@dataclass(frozen=True)
class Costs:
    latency_ms: float  # the variants' p95s added up: the hard latency constraint's (objective accuracy)
    memory_bytes: float
    energy_mj: float
    typical_ms: float = math.nan  # their medians added up: what the deadline risk scales (objective slo)

    def fits(self, budget: Budget, slack: float = 0.0, resources: tuple[str, ...] = RESOURCES) -> bool:
        """Within the budget on every one of `resources`, with `slack` (a fraction) to spare."""
        return all(getattr(self, r) <= getattr(budget, r) * (1.0 - slack) for r in resources)

    def over(self, budget: Budget) -> list[str]:
        """The resources this exceeds."""
        return [r for r in RESOURCES if getattr(self, r) > getattr(budget, r)]

    def overshoot(self, budget: Budget) -> float:
        """The largest ratio of cost to budget over the resources (at most 1: it fits). A budget of
        zero counts as a tiny one, so that with nothing left the cheapest configuration still wins."""
        ratios = [0.0]
        for r in RESOURCES:
            cost, limit = getattr(self, r), getattr(budget, r)
            if not math.isinf(limit):
                ratios.append(cost / max(limit, 1e-9))
        return max(ratios)


@dataclass(frozen=True)
class Budget:
    """What the runtime may spend on one request, in the variants' own (unloaded) units: the latency
    budget is already divided by the predicted slowdown from other programs' CPU load."""

    latency_ms: float = math.inf
    memory_bytes: float = math.inf
    energy_mj: float = math.inf
    slowdown: float = 1.0  # for the record: how much slower than measured the CPU is expected to run

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
    return Costs(sum(v.latency_ms for v in active), sum(v.memory_bytes for v in active), sum(v.energy_mj for v in active), sum(v.typical_ms for v in active))


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


class DeadlineRisk:
    """How likely a configuration is to meet the latency target, learnt from recent requests.

    Each request's observed latency is divided by what the runtime predicts for it (its variants'
    median unloaded latencies plus the runtime's own cost, times the slowdown the load reading
    predicted). A configuration typically costing `cost_ms` against a budget `budget_ms` (both
    unloaded, net of the runtime's own `overhead_ms`) meets the deadline when ratio x (cost +
    overhead) <= budget + overhead; its chance is the share of recent ratios for which that holds.
    Medians, not p95s: the ratios are the tail. On p95s, a configuration whose variants' p95 lies
    further above their median than the one the ratios were learnt on is priced too high (and one
    closer, too low): the high tier's audio variant has the widest spread.

    How far latencies stray depends on the load: on an idle core a request runs as measured, on a
    busy one it waits on the scheduler and on a load that moved since the last reading. So the
    ratios are kept per load band (the predicted slowdown's power of two: 1-2x, 2-4x, ... 32x and
    more), and a decision uses its own band's once it holds `min_samples`, else all bands'. Until
    `min_samples` requests are in at all, the ratio is taken to be exactly 1: the hard constraint.

    A band no request has fallen in for `memory_s` seconds (of the `now` given to `observe` and
    `forget_left`) is forgotten whole: a load band is left for minutes at a time, and what its last
    requests saw is no news by the time it comes back. The requests caught by a sudden rise of the
    load, before the next reading told of it, ran up to 14x over their predictions; kept in the
    idle band's window until 128 requests there replaced them, they priced every fused
    configuration as late one time in twenty when the load fell back 40 s later, and held the
    runtime on cheaper ones for 10 s (the sudden trace). The band in use is never trimmed by age (a
    device that serves a request a second keeps its window), and the all-bands window, the latest
    requests whatever their age, is what a band short of samples falls back on.

    Requests are kept as they came (latency over the predicted slowdown, and the variants' cost),
    not as ratios: a ratio is taken at decision time, against the runtime's own cost as known then
    (`overhead_ms`, which the runtime learns from its requests and sets here). Ratios fixed at
    observation mixed two models of that cost: on a host running 3x slower than when the bank was
    measured, the first 32 requests' ratios (3.4x, against the bank's figure) stayed in the window
    after the runtime had learnt its cost (0.71 ms), and priced the fused configuration as late one
    time in three: the runtime stepped down to a single modality for seconds with every request
    well within its deadline (the real-load benchmark's idle phase)."""

    BANDS = 6

    def __init__(self, overhead_ms: float = 0.0, window: int = 128, min_samples: int = 20, memory_s: float = math.inf) -> None:
        self._overhead_ms, self.min_samples, self.memory_s = max(0.0, overhead_ms), min_samples, memory_s
        # Per request: (observed latency / predicted slowdown, its variants' unloaded cost), in ms.
        self._samples: list[deque[tuple[float, float]]] = [deque(maxlen=window) for _ in range(self.BANDS)]
        self._last_seen = [math.nan] * self.BANDS  # when each band last had a request (NaN: never, or no time given)
        self._next_forget = -math.inf  # no band can be forgotten before then (forget_left runs on every request: it looks only then)
        self._recent: deque[tuple[float, float]] = deque(maxlen=window)  # every band's, the latest first out
        self._sorted: dict[int, list[float]] = {}  # band (-1: all) -> its ratios sorted, on demand: decisions are rarer than requests

    @property
    def overhead_ms(self) -> float:
        """The runtime's own cost per request (unloaded), which every ratio is taken against."""
        return self._overhead_ms

    @overhead_ms.setter
    def overhead_ms(self, value: float) -> None:
        value = max(0.0, value)  # (a cost: a negative one would leave the ratios' denominators at zero)
        if value != self._overhead_ms:
            self._overhead_ms = value
            self._sorted.clear()  # the ratios change with it

    @classmethod
    def band(cls, slowdown: float) -> int:
        return min(cls.BANDS - 1, max(0, int(math.floor(math.log2(max(slowdown, 1.0))))))

    def observe(self, observed_ms: float, cost_ms: float, slowdown: float = 1.0, now: float = math.nan) -> None:
        """Learn from one request: it took `observed_ms` with variants whose median unloaded
        latencies sum to `cost_ms`, under a predicted `slowdown` (`now`: when, on the clock the
        runtime plans with; NaN: its band is never forgotten)."""
        if cost_ms > 0 and slowdown > 0 and math.isfinite(observed_ms):
            sample = (observed_ms / slowdown, cost_ms)
            band = self.band(slowdown)
            self._samples[band].append(sample)
            self._last_seen[band] = now
            if now + self.memory_s < self._next_forget:  # (the first band seen since all were forgotten)
                self._next_forget = now + self.memory_s
            self._recent.append(sample)
            self._sorted.clear()
        self.forget_left(now)

    def forget_left(self, now: float) -> None:
        """Forget the bands no request has fallen in for `memory_s` seconds before `now`."""
        if not now > self._next_forget:  # (NaN: nothing to do)
            return
        for band, seen in enumerate(self._last_seen):
            if now - seen > self.memory_s:  # (NaN compares False: kept)
                self._samples[band].clear()
                self._last_seen[band] = math.nan
                self._sorted.clear()
        # (a band seen since only moves it later)
        self._next_forget = min((seen for seen in self._last_seen if not math.isnan(seen)), default=math.inf) + self.memory_s

    def __len__(self) -> int:
        return len(self._recent)

    def _ratios(self, samples: Iterable[tuple[float, float]]) -> list[float]:
        """Observed over predicted latency, sorted, against the runtime's cost as known now."""
        return sorted(observed / max(cost + self._overhead_ms, 1e-9) for observed, cost in samples)

    def _distribution(self, slowdown: float) -> list[float]:
        band = self.band(slowdown)
        key = band if len(self._samples[band]) >= self.min_samples else -1
        ratios = self._sorted.get(key)
        if ratios is None:
            ratios = self._sorted[key] = self._ratios(self._samples[band] if key >= 0 else self._recent)
        return ratios

    def chance(self, cost_ms: float, budget_ms: float, slowdown: float = 1.0) -> float:
        """P(a configuration of unloaded latency `cost_ms` meets a latency budget of `budget_ms`
        at a predicted `slowdown`)."""
        allowed = (budget_ms + self.overhead_ms) / max(cost_ms + self.overhead_ms, 1e-9)
        if len(self._recent) < self.min_samples:
            return 1.0 if cost_ms <= budget_ms else 0.0
        ratios = self._distribution(slowdown)
        return bisect.bisect_right(ratios, allowed) / len(ratios)

    def state(self) -> dict[str, Any]:
        def quantiles(samples: Iterable[tuple[float, float]]) -> dict[str, float]:
            ordered = self._ratios(samples)
            return (
                {"samples": len(ordered), "ratio_p50": percentile(ordered, 50), "ratio_p95": percentile(ordered, 95), "ratio_max": ordered[-1]}
                if ordered
                else {"samples": 0}
            )

        return {"all": quantiles(self._recent), **{f"slowdown {2**b}x+": quantiles(r) for b, r in enumerate(self._samples) if r}}


class NoConfigurationError(RuntimeError):
    """Nothing can run: every variant of every modality the request brought is excluded."""


class Allocator:
    """Exact solver of eq. 26 over a measured profile table; with a `risk`, of its SLO form (the
    module docstring): expected accuracy x the chance of meeting the deadline."""

    def __init__(
        self, table: ProfileTable, critical: dict[str, str] | None = None, risk: DeadlineRisk | None = None, priorities: dict[str, float] | None = None
    ) -> None:
        self.table = table
        self.risk = risk
        self.critical = dict(critical or {})
        self.priorities = dict(priorities or {})
        unknown = sorted(set(priorities or {}) - set(table.modalities))
        if unknown:  # (ignored, silently, where a critical modality the runtime lacks was refused)
            raise ConfigError(f"runtime.priorities: {unknown} are no modalities of this runtime ({', '.join(table.modalities)})")
        if priorities is not None and not any(priorities.get(m, 1.0) > 0 for m in table.modalities):
            raise ConfigError(f"runtime.priorities {priorities}: every modality at 0 leaves the allocator nothing to maximise; give one a priority above 0")
        for m, tier in self.critical.items():
            if m not in table.modalities:
                raise ConfigError(f"runtime.critical: {m!r} is not a modality of this runtime ({', '.join(table.modalities)})")
            if tier not in table.tiers:
                raise ConfigError(f"runtime.critical.{m}: unknown tier {tier!r}; choose one of {', '.join(table.tiers)}")
            if not any(v.modality == m and table.tiers.index(v.tier) <= table.tiers.index(tier) for v in table.variants):
                raise ConfigError(f"runtime.critical.{m}: no {m} variant at tier {tier} or above (variants: {', '.join(v.id for v in table.variants)})")
        # Every configuration that processes something; the critical constraint is applied per decision.
        self.configs = [c for c in itertools.product(*(table.options(m) for m in table.modalities)) if any(v is not None for v in c)]
        self._all_modalities = frozenset(table.modalities)
        self.costs = {c: config_costs(c) for c in self.configs}
        self._ranked: dict[tuple[float, ...], tuple[list[tuple[float, Configuration]], dict[Configuration, Prospect]]] = {}
        # The most accurate configuration over each set of modalities (every input usable): what an
        # answer from those inputs alone can be worth at most (the ranking's bound).
        self._ceiling = {
            frozenset(subset): max(
                (a for key, a in table.accuracy.items() if all(k is None or m in subset for m, k in zip(table.modalities, key))), default=0.0
            )
            for r in range(len(table.modalities) + 1)
            for subset in itertools.combinations(table.modalities, r)
        }
        self._eligible: dict[tuple[Any, ...], tuple[list[tuple[float, Configuration]], str, frozenset[Configuration]]] = {}

    def weights(self, priorities: dict[str, float] | None = None, quality: dict[str, float] | None = None) -> tuple[float, ...]:
        """w_m = priority_m x quality_m, clipped to [0, 1], in table order (`priorities`: default, the allocator's)."""
        p, q = self.priorities if priorities is None else priorities, quality or {}
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

    def fallbacks(self, config: Configuration, weights: tuple[float, ...], available: Collection[str] | None = None) -> list[tuple[float, frozenset[str]]]:
        """When none of `config`'s inputs is usable, the runtime answers from the others it can use:
        each set of those, with its chance (that none of `config`'s is usable included). The chance
        an input is usable here is its quality alone, its weight over its priority: a priority says
        how much a modality's answers count, not how often its input is dead (taken as such, audio
        at priority 0.1 was priced as answered from the image nine times in ten, and the priority
        no longer kept image-only ahead of audio-only)."""
        mods = self.table.modalities
        quality = [min(1.0, w / p) if (p := self.priorities.get(m, 1.0)) > 0 else 0.0 for m, w in zip(mods, weights)]
        none_usable = math.prod(1.0 - quality[i] for i, v in enumerate(config) if v is not None)
        others = [i for i, v in enumerate(config) if v is None and quality[i] > 0 and (available is None or mods[i] in available)]
        if none_usable <= 0 or not others:
            return []
        out = []
        for usable in itertools.product([False, True], repeat=len(others)):
            chance = none_usable * math.prod(quality[i] if bit else 1.0 - quality[i] for i, bit in zip(others, usable))
            if chance > 0 and any(usable):
                out.append((chance, frozenset(mods[i] for i, bit in zip(others, usable) if bit)))
        return out

    def ranking(self, weights: tuple[float, ...]) -> list[tuple[float, Configuration]]:
        """Every configuration, best first by a bound on its worth (its utility, and its fallbacks'
        answers at their inputs' most accurate configuration; ties: the faster, then the smaller);
        cached per weights."""
        return self._ranking(weights)[0]

    def _ranking(self, weights: tuple[float, ...]) -> tuple[list[tuple[float, Configuration]], dict[Configuration, Prospect]]:
        """`ranking`, and every configuration's utility and fallbacks (every modality available), cached with it."""
        key = tuple(round(w, 4) for w in weights)
        hit = self._ranked.get(key)
        if hit is None:
            prospects = {c: (self.utility(c, key), self.fallbacks(c, key)) for c in self.configs}
            scored = [(u + sum(chance * self._ceiling[present] for chance, present in falls), c) for c, (u, falls) in prospects.items()]
            scored.sort(key=lambda uc: (-round(uc[0], 9), self.costs[uc[1]].latency_ms, self.costs[uc[1]].memory_bytes))
            if len(self._ranked) > 256:
                self._ranked = {}
            hit = self._ranked[key] = (scored, prospects)
        return hit

    def honoured_critical(self, exclude: frozenset[str], available: Collection[str]) -> dict[str, int]:
        """The critical modalities that can be honoured (their input is there and a variant at or
        above the minimum tier still works), with that tier's rank."""
        out = {}
        for m, tier in self.critical.items():
            rank = self.table.tiers.index(tier)
            if m in available and any(v.modality == m and v.id not in exclude and self.table.tiers.index(v.tier) <= rank for v in self.table.variants):
                out[m] = rank
        return out

    def eligible(self, weights: tuple[float, ...], exclude: frozenset[str], available: frozenset[str]) -> tuple[list[tuple[float, Configuration]], str]:
        """The ranking (best first) cut to what `solve` may choose from, and a note on critical
        modalities it cannot honour; cached per arguments (they change far less often than the
        budget, and a decision runs between two requests: the less it touches, the less it slows
        the next one)."""
        ranking, note, _ = self._eligible_entry(weights, exclude, available)
        return ranking, note

    def allowed(self, weights: tuple[float, ...], exclude: frozenset[str]) -> frozenset[Configuration]:
        """The configurations `solve` may choose from with every modality available, as a set."""
        return self._eligible_entry(weights, exclude, frozenset(self.table.modalities))[2]

    def _eligible_entry(
        self, weights: tuple[float, ...], exclude: frozenset[str], available: frozenset[str]
    ) -> tuple[list[tuple[float, Configuration]], str, frozenset[Configuration]]:
        """`eligible`'s ranking and note, and the same configurations as a set (`allowed`), cached."""
        key = (tuple(weights), frozenset(exclude), available)  # (frozenset of a frozenset is itself: no copy)
        hit = self._eligible.get(key)
        if hit is not None:
            return hit
        candidates = [(u, c) for u, c in self.ranking(weights) if all(v is None or (v.id not in exclude and v.modality in available) for v in c)]
        if not candidates:
            raise NoConfigurationError(f"no variant can run with inputs {sorted(available)}; excluded: {', '.join(sorted(exclude)) or 'none'}")
        there = {m for m, w in zip(self.table.modalities, weights) if w > 0 and m in available}  # a dead input (weight 0) is no more there than a missing one
        critical = self.honoured_critical(exclude, there)
        index = {m: i for i, m in enumerate(self.table.modalities)}
        candidates = [
            (u, c) for u, c in candidates if all(c[index[m]] is not None and self.table.tiers.index(c[index[m]].tier) <= rank for m, rank in critical.items())
        ]
        weighted = [(u, c) for u, c in candidates if not any(v is not None and weights[i] == 0.0 for i, v in enumerate(c))]
        note = "" if len(critical) == len(self.critical) else f" (critical {', '.join(sorted(set(self.critical) - set(critical)))} unavailable)"
        if len(self._eligible) > 256:
            self._eligible = {}
        ranking = weighted or candidates
        hit = self._eligible[key] = (ranking, note, frozenset(c for _, c in ranking))
        return hit

    def solve(
        self, budget: Budget, weights: tuple[float, ...], exclude: frozenset[str] = frozenset(), slack: float = 0.0, available: set[str] | None = None
    ) -> Decision:
        """The best configuration within `budget` (with `slack` to spare) that uses only the
        `available` modalities (default: all), none of the variants in `exclude` (ids), no modality
        of weight 0 unless nothing else can run, and every critical modality that can be honoured
        at or above its tier. When none fits: of those within the memory and energy budgets (if
        any), the one that overshoots its budget least (the largest ratio of cost to budget over the
        resources), marked infeasible, so the runtime degrades instead of refusing. Raises
        NoConfigurationError when nothing can run at all."""
        usable = frozenset(self.table.modalities if available is None else available)
        candidates, note = self.eligible(weights, exclude, usable)
        answers: dict[tuple[frozenset[str], float], Decision | None] = {}  # the fallbacks' answers, worked out once per decision
        prospects = self._ranking(weights)[1]
        best: tuple[float, Configuration] | None = None
        for bound, c in candidates:  # best bound first; a later one must be worth more, or as much for less time, then memory
            if best is not None and bound < best[0] - 1e-9:
                break  # worth is at most the bound: nothing further down can win (the search stays exact)
            worth, fits = self._worth(c, prospects[c], budget, weights, exclude, usable, slack, answers)
            if (
                fits
                and (self.risk is None or worth > 0)
                and (best is None or worth > best[0] + 1e-9 or (worth >= best[0] - 1e-9 and self._cheaper(c, best[1])))
            ):
                best = (worth, c)
        if best is not None:
            worth, c = best
            if self.risk is None:
                return Decision(c, worth, self.costs[c], True, f"best within budget: {describe(self.table, c)}{note}")
            chance = self.risk.chance(self.costs[c].typical_ms, budget.latency_ms, budget.slowdown)
            return Decision(
                c, worth, self.costs[c], True, f"best expected SLO-accuracy: {describe(self.table, c)} (meets the deadline with p={chance:.2f}){note}"
            )
        c = min(
            (c for _, c in candidates), key=lambda c: (not self.costs[c].fits(budget, 0.0, HARD_RESOURCES), self.costs[c].overshoot(budget), -prospects[c][0])
        )
        return Decision(
            c,
            prospects[c][0],
            self.costs[c],
            False,
            f"nothing fits ({', '.join(self.costs[c].over(budget)) or 'latency'} over); least over budget: {describe(self.table, c)}{note}",
        )

    def _cheaper(self, config: Configuration, than: Configuration) -> bool:
        """Faster, or as fast and smaller (the ranking's order of a tie)."""
        a, b = self.costs[config], self.costs[than]
        return (a.latency_ms, a.memory_bytes) < (b.latency_ms, b.memory_bytes)

    def deadline_chance(self, config: Configuration, budget: Budget) -> float:
        """The chance that `config` meets the latency budget: the deadline risk's (1 without one:
        latency is then a hard budget, fitted or not)."""
        if self.risk is None:
            return 1.0
        return self.risk.chance((self.costs.get(config) or config_costs(config)).typical_ms, budget.latency_ms, budget.slowdown)

    def _slo_score(self, utility: float, config: Configuration, budget: Budget, slack: float = 0.0) -> tuple[float, float]:
        """(expected SLO-accuracy, chance of meeting the deadline) of a configuration; 0 when it is
        over the memory or energy budget (those stay hard)."""
        assert self.risk is not None
        costs = self.costs.get(config) or config_costs(config)
        if not costs.fits(budget, slack, HARD_RESOURCES):
            return 0.0, 0.0
        chance = self.deadline_chance(config, budget)  # the risk is the latency's margin: no slack on top
        return utility * chance, chance

    def better_than(
        self, worth: float, budget: Budget, weights: tuple[float, ...], exclude: frozenset[str] = frozenset(), slack: float = 0.0
    ) -> dict[Configuration, float]:
        """Every configuration `solve` may choose from that is worth more than `worth` (the objective
        `solve` maximises) within `budget` with `slack` to spare, with what it is worth; best first."""
        usable = frozenset(self.table.modalities)
        candidates, _ = self.eligible(weights, exclude, usable)
        answers: dict[tuple[frozenset[str], float], Decision | None] = {}
        prospects = self._ranking(weights)[1]
        out: dict[Configuration, float] = {}
        for bound, c in candidates:  # best bound first: worth is at most the bound, so the rest cannot be worth more
            if bound <= worth + 1e-9:
                break
            score, fits = self._worth(c, prospects[c], budget, weights, exclude, usable, slack, answers)
            if fits and score > worth + 1e-9:
                out[c] = score
        return dict(sorted(out.items(), key=lambda cs: -cs[1]))

    def evaluate(
        self, config: Configuration, budget: Budget, weights: tuple[float, ...], slack: float = 0.0, exclude: frozenset[str] = frozenset()
    ) -> tuple[float, bool]:
        """What `config` is worth under `budget` (the objective `solve` maximises, its fallbacks'
        answers counted, without the variants in `exclude`) and whether it is within the budget's
        hard constraints with `slack` to spare (every resource; with a risk, memory and energy, and
        some chance of meeting the deadline)."""
        prospect = self._ranking(weights)[1].get(config) or (self.utility(config, weights), self.fallbacks(config, weights))
        return self._worth(config, prospect, budget, weights, exclude, frozenset(self.table.modalities), slack, {})

    def expected_accuracy(
        self,
        config: Configuration,
        budget: Budget,
        weights: tuple[float, ...],
        exclude: frozenset[str] = frozenset(),
        answer: Callable[[frozenset[str]], Configuration | None] | None = None,
    ) -> float:
        """The accuracy to expect from `config` with inputs usable by `weights`, the answers from the
        other inputs when none of its own is usable counted (the deadline left out: an answer over
        the budget counts, as the configuration's own do). `answer`: the configuration answering a
        request with only those inputs (None: nothing can); default `answer_for`'s."""
        if answer is None:
            answers: dict[tuple[frozenset[str], float], Decision | None] = {}

            def answer(present: frozenset[str]) -> Configuration | None:
                decision = self._answering(config, present, budget, exclude, answers)
                return None if decision is None else decision.config

        total = self.utility(config, weights)
        for chance, present in self.fallbacks(config, weights):
            answering = answer(present)
            total += chance * (self.answer_utility(answering, present) if answering is not None else 0.0)
        return total

    def answer_for(self, config: Configuration, present: Collection[str], budget: Budget, exclude: frozenset[str] = frozenset()) -> Decision:
        """How the runtime answers a request that brought only the `present` inputs usable, none of
        `config`'s (the configuration in force): the best over those inputs within `budget`, its
        memory beside `config`'s (whose sessions stay loaded), weighed with those inputs live (the
        request brought them: chosen by the running weights, a text input at 0.1 of its weight lost
        low image + low text, 0.8, to high image alone, 0.6). Raises NoConfigurationError when
        nothing can run on them."""
        return self._answer(config, present, budget, exclude)

    def _answer(self, config: Configuration, present: Collection[str], budget: Budget, exclude: frozenset[str]) -> Decision:
        """The solve behind `answer_for` (the runtime's call); the pricing memoises it (`_answering`)."""
        return self.solve(self._beside(budget, config), self._live(present), exclude, available=set(present))

    def answer_utility(self, answer: Configuration, present: Collection[str]) -> float:
        """What an answer from the `present` inputs (all live) is worth: its accuracy, each
        modality's answers counted at its priority as in every configuration's utility."""
        return self.utility(answer, self._live(present))

    def _live(self, present: Collection[str]) -> tuple[float, ...]:
        """The weights of a request whose `present` inputs are live and the others not there."""
        return tuple(min(1.0, self.priorities.get(m, 1.0)) if m in present else 0.0 for m in self.table.modalities)

    def _beside(self, budget: Budget, config: Configuration) -> Budget:
        """`budget` with the memory `config` holds taken off (what a fallback's sessions may hold)."""
        return dataclasses.replace(budget, memory_bytes=budget.memory_bytes - (self.costs.get(config) or config_costs(config)).memory_bytes)

    def _worth(
        self,
        config: Configuration,
        prospect: Prospect,
        budget: Budget,
        weights: tuple[float, ...],
        exclude: frozenset[str],
        usable: frozenset[str],
        slack: float,
        answers: dict[tuple[frozenset[str], float], Decision | None],
    ) -> tuple[float, bool]:
        """`evaluate` with the modalities `usable`, given `config`'s utility and fallbacks with
        every modality usable (`prospect`), the fallbacks' answering configurations kept in
        `answers` (one decision weighs many configurations whose fallbacks share inputs)."""
        utility, fallbacks = prospect
        worth, fits = self._score(utility, config, budget, slack)
        if not fits or not fallbacks:
            return worth, fits
        if usable != self._all_modalities:
            fallbacks = self.fallbacks(config, weights, usable)
        for chance, present in fallbacks:
            answering = self._answering(config, present, budget, exclude, answers)
            if answering is not None and answering.feasible:  # (else late, or over the memory or energy budget: worth nothing)
                worth += chance * self._score(self.answer_utility(answering.config, present), answering.config, budget, 0.0)[0]
        return worth, True

    def _answering(
        self,
        config: Configuration,
        present: frozenset[str],
        budget: Budget,
        exclude: frozenset[str],
        answers: dict[tuple[frozenset[str], float], Decision | None],
    ) -> Decision | None:
        """`answer_for`, memoised in `answers` by the inputs and the memory left beside `config`;
        None when nothing can run on them."""
        key = (present, self._beside(budget, config).memory_bytes)
        if key not in answers:
            try:
                answers[key] = self._answer(config, present, budget, exclude)
            except NoConfigurationError:
                answers[key] = None
        return answers[key]

    def _score(self, utility: float, config: Configuration, budget: Budget, slack: float) -> tuple[float, bool]:
        """What `config` is worth when its own inputs are usable with chance `utility` describes (its
        utility), and whether it is within the budget (`evaluate` without fallbacks)."""
        if self.risk is None:
            return utility, (self.costs.get(config) or config_costs(config)).fits(budget, slack)
        score, _ = self._slo_score(utility, config, budget, slack)
        return score, score > 0


BACK_FROM, BACK_AT = 0.75, 0.9  # an input's weight, of the most it has had: gone below the first, back above the second (Hysteresis)
SETTLE_WINDOWS = 10  # a switch worth less than the hysteresis's gain more waits this many step-up windows
CERTAIN = 0.999  # a deadline met with this chance is certain: a worth that does not drift (Hysteresis)


@dataclass
class Hysteresis:
    """Step down at once when the current configuration no longer fits; step up only to a better
    one that has fitted with `margin` to spare on every resource for `window_s` seconds without a
    break (of those, the best now); leave a fallback (chosen when nothing fitted) at once when
    something fits again.

    Every better configuration is timed on its own. While the load falls, each reading makes a
    richer configuration fit: timing only the best (restarting the clock at every new best) held a
    poor configuration for seconds after the load had gone, and timing only the first one pending
    climbed one step per window (image only, then audio only, then both at low tiers, ... a second
    each, after the sudden trace's drop and on each descent of the periodic one).

    An input that had gone dead when the current configuration was chosen (its weight at most
    BACK_FROM of the most it has had) and has come back (at least BACK_AT of it, for the whole
    step-up window without a break) is a reason to leave at once for the best that fits, margin or
    not, as a critical modality's is: on a load that never left the margin, a microphone back after
    5 s of silence was never used again (0.598 against 0.938 with it). Back for a window, not for a
    few requests: two silent requests in ten brought it back five requests later, and it flapped
    (6.2 switches per 100 requests on the sudden trace against 0.4).

    With the SLO objective a configuration's worth moves with the deadline odds, and those drift by
    a point or two from one reading to the next on a loaded device: two configurations' scores
    cross again and again. A switch nothing forces (a step up; a step down to one better for less)
    is taken at once or after the window only when it is worth `gain` more; one worth less than
    that more waits SETTLE_WINDOWS windows, better than the configuration in force all along.
    Without it the runtime stepped down to the cheaper configuration each time it scored more and
    back up a window after the richer one did: 55 switches in 120 s on the constant critical trace,
    among three audio tiers, at 0.85 point under holding one; with it 17 (the bank of a `make
    run`, its costs; docs/runtime.md). A configuration sure to meet its deadline (CERTAIN) is worth
    its accuracy, which does not drift: no gain is asked of a switch to it (adjacent audio tiers
    differ by less than 0.01, and with the gain each step up between them on an idle device waited
    10 s: periodic 0.976 -> 0.9725)."""

    margin: float = 0.2
    window_s: float = 1.0
    gain: float = 0.01
    # better than the current one, fitting with the margin -> (since when, since when by `gain` more
    # (inf: not now)), without a break
    _fitting: dict[Configuration, tuple[float, float]] = field(default_factory=dict, repr=False)
    _pending: Configuration | None = field(default=None, repr=False)
    _chosen_with: tuple[float, ...] | None = field(default=None, repr=False)  # the weights when the current configuration was chosen
    _back_since: dict[int, float] = field(default_factory=dict, repr=False)  # modality index -> since when it has been back, without a break
    _back_tried: bool = field(default=False, repr=False)  # whether a decision has weighed the inputs back since their window ended
    _full: dict[int, float] = field(default_factory=dict, repr=False)  # each modality's largest weight seen

    @property
    def pending(self) -> Configuration | None:
        """The configuration the runtime steps up to next if nothing changes (of those waiting out
        their window, the first whose window ends), if any: the runtime loads its sessions meanwhile."""
        fitting = self._fitting
        return min(fitting, key=lambda c: self._ready_at(fitting[c])) if fitting else None  # (min keeps the first of a tie: the best)

    def _ready_at(self, since: tuple[float, float]) -> float:
        """When a configuration better since `since` (its `_fitting` entry) has waited long enough."""
        better_since, by_the_gain_since = since
        return min(by_the_gain_since + self.window_s, better_since + SETTLE_WINDOWS * self.window_s)

    @property
    def best_pending(self) -> Configuration | None:
        """The best configuration waiting out its window (its sessions load meanwhile too)."""
        return self._pending

    def due(self, now: float) -> bool:
        """Whether a better configuration has waited out its window (the runtime then re-plans, even
        if no new reading came: steady readings notify nobody)."""
        fitting, back = self._fitting, self._back_since  # (read once: another thread's decision may replace them meanwhile; neither is changed in place)
        if back and not self._back_tried and now - min(back.values()) >= self.window_s:
            return True  # an input back for its window: weighed once (a steady device brings no other decision)
        return bool(fitting) and now >= min(map(self._ready_at, fitting.values()))

    def _wait_no_more(self) -> None:
        self._fitting, self._pending = {}, None

    def state(self) -> tuple[Any, ...]:
        """What the windows are, and the weights the configuration in force was chosen with (a
        snapshot: `choose` replaces each, never changes one in place)."""
        return self._fitting, self._pending, self._chosen_with, self._back_since, self._back_tried

    def restore(self, state: tuple[Any, ...]) -> None:
        """Put back a `state()`: a switch `choose` picked that has not landed (its sessions load)
        leaves the windows as they were, so that a decision meanwhile does not start them again,
        nor takes an input that came back for one that was always there."""
        self._fitting, self._pending, self._chosen_with, self._back_since, self._back_tried = state

    def choose(
        self, now: float, current: Decision | None, allocator: Allocator, budget: Budget, weights: tuple[float, ...], exclude: frozenset[str] = frozenset()
    ) -> tuple[Decision, str]:
        """`_choose`, and what the weights were when the configuration it returns was chosen."""
        for i, w in enumerate(weights):
            self._full[i] = max(self._full.get(i, 0.0), w)
        decision, why = self._choose(now, current, allocator, budget, weights, exclude)
        if current is not None and decision.config == current.config and self._chosen_with is not None and len(self._chosen_with) == len(weights):
            returning = {
                i for i, (was, w) in enumerate(zip(self._chosen_with, weights)) if was <= BACK_FROM * self._full[i] and 0 < w and w >= BACK_AT * self._full[i]
            }
            if returning != self._back_since.keys():
                self._back_tried = False
            self._back_since = {i: self._back_since.get(i, now) for i in returning}  # (a new table: `state` holds the old one)
            back = [allocator.table.modalities[i] for i, since in self._back_since.items() if now - since >= self.window_s]
            self._back_tried = self._back_tried or bool(back)
            best = allocator.solve(budget, weights, exclude) if back else None
            if (
                best is not None
                and best.feasible
                and best.config != current.config
                and best.utility > decision.utility + 1e-9
                and any(v is not None and v.modality in back for v in best.config)
            ):
                self._wait_no_more()
                decision, why = best, f"recover at once: {', '.join(back)} came back"
        if current is None or decision.config != current.config or self._chosen_with is None:
            self._chosen_with, self._back_since, self._back_tried = weights, {}, False
        return decision, why

    def _choose(
        self, now: float, current: Decision | None, allocator: Allocator, budget: Budget, weights: tuple[float, ...], exclude: frozenset[str] = frozenset()
    ) -> tuple[Decision, str]:
        """The configuration to serve at `now`, and why, given the one serving (`current`): the
        best under `budget` at once when the current one breaks the budget or the rules (a failed
        variant, a dead input, a critical modality back) or when the best costs no more; a better
        one only after it has fitted with the margin for the whole window (the windows are kept
        between calls); else the current one, re-scored."""
        best = allocator.solve(budget, weights, exclude)
        if current is None:
            self._wait_no_more()
            return best, "start"
        current_costs = allocator.costs.get(current.config) or config_costs(current.config)
        worth, fits = allocator.evaluate(current.config, budget, weights, exclude=exclude)
        current_now = Decision(current.config, worth, current_costs, fits, current.reason)
        uses_excluded = any(v is not None and v.id in exclude for v in current.config)
        # Not one `solve` may choose now: it lacks a critical modality whose input came back, or uses
        # one whose input went dead. Held as long as it fitted, a critical modality dropped during a
        # short outage was a step up away, waiting for headroom a tight budget never gave.
        breaks_rules = not uses_excluded and current.config not in allocator.allowed(weights, exclude)
        if uses_excluded or breaks_rules or not current_now.feasible:
            self._wait_no_more()
            if best.config == current.config:
                return current_now, "over budget, nothing cheaper fits"
            why = (
                "a variant failed"
                if uses_excluded
                else "the critical modalities or the live inputs changed"
                if breaks_rules
                else f"over budget on {', '.join(current_costs.over(budget)) or 'latency'}"
            )
            return best, f"step down at once: {why}"

        def gain_over_current(config: Configuration) -> float:
            """What a switch to `config` must be worth more: nothing where its worth cannot drift."""
            return 0.0 if allocator.deadline_chance(config, budget) >= CERTAIN else self.gain  # (always 0 with `objective: accuracy`)

        if (
            best.config != current.config
            and best.feasible
            and best.utility > current_now.utility + max(gain_over_current(best.config), 1e-9)
            and best.costs.latency_ms <= current_costs.latency_ms
            and all(getattr(best.costs, r) <= getattr(current_costs, r) or best.costs.fits(budget, self.margin, (r,)) for r in HARD_RESOURCES)
        ):
            # Better for no more time, and no more memory or energy than the current one unless it
            # fits those with the margin to spare (with the SLO objective: the deadline has grown
            # too likely to be missed): nothing to wait for. (A cheaper, safer configuration that
            # held a few more KB while memory was plentiful waited out the step-up window.)
            self._wait_no_more()
            return best, "step down at once: better for less"
        if not current.feasible and best.feasible and best.config != current.config:
            # A fallback chosen when nothing fitted is no state to hold on to; but the budget is
            # climbing back from nothing, so the way out is what fits with the margin when anything
            # does (what barely fits now is over again at the next dip: the flapping a sudden drop causes).
            self._wait_no_more()
            up = allocator.solve(budget, weights, exclude, slack=self.margin)
            if up.feasible:
                return up, f"recover at once: fits with {self.margin:.0%} headroom"
            return best, "recover at once: a configuration fits again"
        better = allocator.better_than(current_now.utility, budget, weights, exclude, self.margin)
        better.pop(current.config, None)  # (its score against itself: equal but for rounding)
        was = self._fitting

        def since(c: Configuration, worth: float) -> tuple[float, float]:
            better_since, by_the_gain_since = was.get(c, (now, math.inf))
            return better_since, (min(by_the_gain_since, now) if worth > current_now.utility + gain_over_current(c) else math.inf)

        self._fitting = {c: since(c, worth) for c, worth in better.items()}  # (a new table: `state` holds the old one)
        ready = [c for c, since in self._fitting.items() if now >= self._ready_at(since)]
        chosen = max(ready, key=better.__getitem__) if ready else None  # (max keeps the first of a tie: better is best first)
        if chosen is not None:
            better_since, by_the_gain_since = self._fitting[chosen]
            by_the_gain = now >= by_the_gain_since + self.window_s
            waited = now - (by_the_gain_since if by_the_gain else better_since)
            # Those better still wait on: their windows with the margin go on (they fitted all along),
            # their settling starts again (they were better than the configuration left, not this one).
            self._fitting = {c: (now, by_gain) for c, (_, by_gain) in self._fitting.items() if better[c] > better[chosen] + 1e-9}
        self._pending = max(self._fitting, key=better.__getitem__) if self._fitting else None
        if chosen is not None:
            decision = Decision(
                chosen,
                better[chosen],
                allocator.costs.get(chosen) or config_costs(chosen),
                True,
                f"fitted with {self.margin:.0%} headroom: {describe(allocator.table, chosen)}",
            )
            if not by_the_gain:
                return decision, f"settled: better by less than {self.gain:g} for {waited:.2f} s"
            return decision, f"step up: fitted with {self.margin:.0%} headroom for {waited:.2f} s"
        if self._pending is None:
            return current_now, "stay"
        return current_now, f"step up pending: {describe(allocator.table, self._pending)}"


PID_STEP_MAX_S = 1.0  # the longest time one PID step integrates its period's error over


class LatencyController:
    """PID on observed latency / target: its output scales the latency budget the allocator plans
    with (1 = the target as it is; lower when requests run slower than the model predicts)."""

    def __init__(self, gains: PIDGains, target_ms: float) -> None:
        if target_ms <= 0:
            raise ConfigError(f"runtime.latency_target_ms must be positive, got {target_ms}")
        self.gains, self.target_ms = gains, target_ms
        self.pid = PID(
            gains.kp,
            gains.ki,
            gains.kd,
            setpoint=gains.setpoint,
            sample_time=None,
            output_limits=(gains.min_scale, gains.max_scale),
            starting_output=gains.max_scale,
        )
        self.scale = gains.max_scale
        self._last: float | None = None  # when the PID last stepped
        self._sum, self._count = 0.0, 0  # observed latency / target since then
        self._first = 0.0  # when the period's first request came
        self.ignored = 0  # feedback passed over: a latency or time that was not a finite number

    def update(self, observed_ms: float, now: float) -> float:
        """Record one request's latency; the PID steps on the mean of a period (at once on the first
        request) once `gains.interval_s` has passed since its last step and the period holds
        `gains.min_requests` requests. A period whose first request is PID_STEP_MAX_S old (or
        `interval_s`, if longer) when the next comes is stepped on as it stands, and that request
        starts the next: at a few requests a second a period would wait seconds for its count, and
        a burst's requests would wait through an idle hour to be averaged with the next ones. A
        latency or time that is not a finite number is passed over: one NaN taken in would stay in
        the PID's integral for good, and the budget with it (zero: nothing would fit again)."""
        if not (math.isfinite(observed_ms) and math.isfinite(now)):
            self.ignored += 1
            return self.scale
        # Threads read their clocks before they queue for the runtime's lock: a time older than one
        # already stepped on counts as that one (simple-pid raised on the negative step, out of a
        # predict whose answer was ready).
        now = max(now, self._last if self._last is not None else now, self._first if self._count else now)
        if self._count and now - self._first >= max(PID_STEP_MAX_S, self.gains.interval_s):
            self._step(now)
        if self._count == 0:
            self._first = now
        self._sum += observed_ms / self.target_ms
        self._count += 1
        if self._last is None or (now - self._last >= self.gains.interval_s and self._count >= self.gains.min_requests):
            self._step(now)
        return self.scale

    def _step(self, now: float) -> None:
        """The PID's step on the period's mean; the next period starts empty."""
        # A period's mean stands for at most PID_STEP_MAX_S of the integral: after an idle gap (30 s
        # without requests), one slow request taken over the whole gap drove the budget to its floor.
        dt = 1e-3 if self._last is None else max(1e-3, min(now - self._last, PID_STEP_MAX_S))
        self._last = now
        self.scale = float(self.pid(self._sum / self._count, dt=dt))
        self._sum, self._count = 0.0, 0

    def state(self) -> dict[str, Any]:
        p, i, d = self.pid.components
        return {"scale": self.scale, "p": p, "i": i, "d": d, "setpoint": self.gains.setpoint, "ignored": self.ignored}
