"""The resource-aware edge runtime: every variant preloaded, the allocator's choice served, never a
dropped request.

    monitor --(state)--> budget --> allocator + hysteresis --> current configuration (a pointer)
    request --> the configuration's variants whose inputs arrived --> sum of logit shares --> answer
                                  \\-- a variant fails: exclude it, re-solve, go on --/
    observed latency --> PID --> latency budget scale
                     \\-> deadline risk (observed / predicted) --> the allocator's chance of meeting the deadline

- Budget from a reading (`budget_for`): the latency target x the PID's scale, divided by the
  slowdown other programs' CPU load predicts (processor sharing: the share of a core left to us is
  cores x (1 - their load), at least `contention_floor`); free memory beyond a reserve, times the
  runtime's share of it; on battery, an energy budget per request.
- Switching tier or modality set is a pointer swap: sessions are loaded at start (when they fit
  the memory budget), else on first use and evicted least recently used; a step up's sessions load
  while the hysteresis holds it back, so that it too is a swap when it comes. Sessions load one at
  a time (`_load_lock`) and never under the runtime's lock: requests, their feedback, other
  decisions and `state()` go on meanwhile (a load takes milliseconds to seconds, a decision ~0.3 ms);
  a decision made on a request's thread has a background thread load what it needs.
- Adaptation time: from the moment a reading arrives (`MonitorState.observed_at`) to the new
  configuration being in place with its sessions loaded. Python's cyclic garbage collector waits
  meanwhile (`collector_held`): one of its collections took up to 6 ms, a switch 0.2-0.5 ms.
- Input quality: a missing input, or a dead one (constant image or noise alone, silent audio or
  steady hum or hiss, a frozen sensor: see FROZEN_AFTER and THOROUGH_EVERY), has quality 0; a
  running average per modality weights the allocator, and a request is answered from the inputs it
  brought.
- An input the configuration in force does not use is left unread (not checked, not converted: an
  image-only request spent 11 of ~60 us of CPU on the audio it did not use), except on one request
  in `UNUSED_LOOK_EVERY` and on every request while its quality is doubtful, which read it to
  follow its quality, and when the answer comes to need it: when nothing the configuration uses
  came in alive, or a variant failed.
- A bad input (malformed, out of range, one that makes the model compute NaN), used or not, counts
  as dead and is passed over while the others can answer, noted in the answer's fallbacks where
  the answer would have used it; it is the request's ValueError when nothing else can answer.
  Refused whenever the configuration used it, a faulty sensor failed every request until the load
  moved the runtime off it (never, since its quality did not fall).
- No torch: preprocessing is the modalities' numpy signals (racmkd.data.signals), inference ONNX
  Runtime.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from pathlib import Path
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from racmkd.compress.artifacts import session
from racmkd.config import RunConfig, RuntimeConfig
from racmkd.data.signals import Signal, came_in_dead
from racmkd.registry import SIGNALS
from racmkd.resources.allocator import (
    Allocator,
    Budget,
    Configuration,
    Decision,
    DeadlineRisk,
    Hysteresis,
    LatencyController,
    NoConfigurationError,
    Variant,
    config_costs,
    describe,
)
from racmkd.resources.monitor import MonitorState, ResourceMonitor, collector_held
from racmkd.resources.sources import MB, ResourceSnapshot
from racmkd.runtime.bank import Bank, load_bank
from racmkd.utils import Window

log = logging.getLogger(__name__)

OVERHEAD_WINDOW = 256  # requests the runtime's own cost is learnt from
OVERHEAD_MIN_SAMPLES = 32  # before that many, the bank's figure stands
OVERHEAD_REPLAN_MS = 0.02  # the budget is recomputed when the learnt cost moves this far from the one it was planned with
RISK_LOOK_EVERY = 16  # with objective slo, one request in this many looks at the deadline risk
# ... and re-plans when a watched configuration's chance of meeting the deadline moved this far since
# the decision. At 0.05 host noise re-planned: a 3-minute soak (periodic trace, target 0.78 ms) made
# 50 such decisions, 80 switches (52 without), accuracy 0.976 (0.982); at 0.1, 3 decisions, 56
# switches, 0.984. (Trace replays moved within their noise either way.)
RISK_REPLAN = 0.1
QUALITY_STEP_MARGIN = 0.15  # how far an input's running quality moves from the step the weights took before they take another (steps of 0.05)
UNUSED_LOOK_EVERY = 16  # an input the configuration in force does not use is read on one request in this many (its quality tracked), else left unread
# An input that came byte for byte the same on this many requests after its first, while another
# input of those requests changed, is a frozen sensor (a camera stuck on one frame): counted dead.
# No live sensor repeats itself exactly; taken as live, a frozen camera beside a live microphone
# scored 0.550 on 300 test pairs, the microphone alone 0.953 (make-run bank).
FROZEN_AFTER = 3
# An input is judged thoroughly (`Signal.looks_live`: hum or hiss for speech, noise for a picture)
# on one request in this many, and on every request while its quality is doubtful: ~50 us a
# request for image and audio both, a fifth of a request's work here, which the runtime learns as
# its own cost and takes off every latency budget (26x that on the critical level's slowdown).
# A microphone gone to hum is then fused for at most this many requests before its quality falls.
THOROUGH_EVERY = 8
QUALITY_DOUBTFUL = 0.95  # an input's running quality under this: read and judged thoroughly on every request
RETRY_FIRST_S, RETRY_MAX_S = 30.0, 600.0  # a variant that raised is tried again after 30 s, 60 s, 120 s, ... at most every 10 minutes
FEEDBACK_WAIT_S = 0.002  # a request's feedback waits this long for the lock (a decision holds it ~0.3 ms): then it is dropped
SWITCH_ATTEMPTS = 4  # a switch whose sessions loaded while other decisions were made is decided again, at most this often


@dataclass
class Answer:
    """One request's answer and how it was produced."""

    label: int
    probabilities: np.ndarray
    variants: list[str]  # the variants that answered
    latency_ms: float  # wall time of this request in the runtime (preprocessing included)
    fallbacks: list[str] = field(default_factory=list)  # what went wrong and was worked around
    work_ms: float = math.nan  # this thread's CPU time on the request: its work, without waiting for a CPU under load


class NoVariantError(RuntimeError):
    """No variant could answer a request (all failed, or no input this runtime can use)."""


class VariantsFailedError(NoVariantError):
    """Every variant that could answer the inputs given has failed: the device's fault, not the
    request's (a server answers 503, not 4xx)."""


def budget_for(snapshot: ResourceSnapshot | None, config: RuntimeConfig, scale: float = 1.0, resident_bytes: int = 0, overhead_ms: float = 0.0) -> Budget:
    """What one request may spend under these readings (see the module docstring). The memory the
    runtime's loaded sessions already hold (`resident_bytes`) is not free, but it is the runtime's
    to spend: it counts back into the budget. `overhead_ms` (unloaded) is what a request costs
    beyond its variants' measured latencies (the runtime's own work): it comes off the latency budget."""
    if snapshot is None:
        return Budget(max(0.0, config.latency_target_ms * scale - overhead_ms))
    slowdown = 1.0 / snapshot.cpu_share(config.contention_floor)
    memory = math.inf
    if snapshot.memory_available_bytes is not None:
        memory = max(0.0, snapshot.memory_available_bytes + resident_bytes - config.memory_reserve_bytes) * config.memory_share
    energy = math.inf
    if config.energy_budget_mj > 0 and snapshot.power_plugged is False:
        low = snapshot.battery_percent is not None and snapshot.battery_percent < config.low_battery_percent
        energy = config.energy_budget_mj * (0.5 if low else 1.0)
    return Budget(max(0.0, config.latency_target_ms * scale / slowdown - overhead_ms), memory, energy, slowdown)


class EdgeRuntime:
    """Serves requests with the variants the allocator chooses; `pinned` fixes one configuration
    (modality -> tier or None) instead, for static baselines. `bank` is a loaded Bank or its folder
    (<run>/edge), `config` the runtime's settings or a whole run's config (its `runtime` is read)."""

    def __init__(
        self,
        bank: Bank | str | Path,
        config: RuntimeConfig | RunConfig | None = None,
        monitor: ResourceMonitor | None = None,
        clock: Callable[[], float] = time.monotonic,
        pinned: dict[str, str | None] | None = None,
        background_loads: bool = True,
    ) -> None:
        if isinstance(bank, (str, Path)):  # (a folder was an AttributeError: 'str' object has no attribute 'table')
            bank = load_bank(Path(bank))
        if isinstance(config, RunConfig):  # (a run's config was an AttributeError on 'objective')
            config = config.runtime
        if not isinstance(bank, Bank) or not (config is None or isinstance(config, RuntimeConfig)):
            raise TypeError(
                f"EdgeRuntime(bank, config): a Bank or its folder, and a RuntimeConfig or RunConfig; got {type(bank).__name__} and {type(config).__name__}"
            )
        self.bank, self.config, self.clock = bank, config or RuntimeConfig(), clock
        # Decisions made on a request's thread (its feedback, its inputs' quality, a failure) hand
        # the loading of sessions to a background thread (see `_load_in_background`); a replay on a
        # modelled clock (racmkd simulate) loads where it decides, so that it replays alike.
        self.background_loads = background_loads
        self.table = bank.table
        # a request's cost beyond its variants': the bank's figure until requests tell (`_learn_overhead`)
        self.overhead_ms = float(bank.data.get("request_overhead_ms", 0.0))
        self._overheads = Window(OVERHEAD_WINDOW)  # recent requests' work beyond their variants' latencies
        self._overhead_count = 0  # requests learnt from (the window holds the last OVERHEAD_WINDOW)
        self.risk = DeadlineRisk(self.overhead_ms, memory_s=self.config.risk_memory_s) if self.config.objective == "slo" else None
        self.allocator = Allocator(self.table, self.config.critical, self.risk, self.config.priorities)
        self._variants = {v.id: v for v in self.table.variants}  # id -> variant
        self.hysteresis = Hysteresis(self.config.step_up_margin, self.config.step_up_window_s, self.config.switch_gain)
        self.controller = LatencyController(self.config.pid, self.config.latency_target_ms)
        self.modalities: dict[str, Signal] = {m: SIGNALS.create(m) for m in self.table.modalities}
        # Raw inputs are checked against one variant's spec per modality (their raw forms agree: sample
        # rate, length, window; `load_bank` checks); None where every variant for it is unreadable. Public: the edge server checks
        # a request's inputs against them before it is queued.
        self.raw_specs = {
            m: next((bank.specs[v.id] for v in self.table.variants if v.modality == m and bank.specs.get(v.id) is not None), None)
            for m in self.table.modalities
        }
        self.quality = {m: 1.0 for m in self.table.modalities}
        self._quality_planned = dict(self.quality)  # what the weights take (see _observe_quality)
        self._refused: set[str] = set()  # inputs refused as bad (warned once), see infer
        # modality -> (its last input's hash, the request it first came on, how many reads since
        # have brought it again, the request it last changed on: None before it ever has): see FROZEN_AFTER
        self._seen: dict[str, tuple[int, int, int, int | None]] = {}
        self.inputs_passed_over: Counter[str] = Counter()  # bad inputs passed over since the start, by modality (state(), /metrics)
        self.failed: dict[str, str] = {
            v.id: f"its file could not be read: {bank.damaged.get(v.id, 'no input spec')}" for v in self.table.variants if bank.specs.get(v.id) is None
        }
        self._retry_at: dict[str, float] = {}  # variant id -> when a failed variant may be tried again (see _fail)
        self._strikes: dict[str, int] = {}  # variant id -> failures so far (the retry delay doubles with each)
        self.decisions: deque[dict[str, Any]] = deque(maxlen=200)
        self.decision_count = 0  # decisions recorded so far (the deque keeps the last 200)
        self.feedback_dropped = 0  # observations passed over: the lock busy past FEEDBACK_WAIT_S (see feedback)
        # The last 10,000 switches' and decisions' figures, in arrays of their full size from the start (see Window)
        self.adaptation_ms = Window(10_000)
        self.switch_loads = Window(10_000, np.int64)  # per switch (as adaptation_ms): sessions it had to load
        self.decision_ms = Window(10_000)
        self.snapshot: ResourceSnapshot | None = None  # the reading to plan with (the monitor's worst case)
        self.reading: ResourceSnapshot | None = None  # the latest reading as it is (what evictions go by)
        self.level = "unknown"
        self.budget = budget_for(None, self.config, self.controller.scale, overhead_ms=self.overhead_ms)
        self._planned_overhead_ms = self.overhead_ms  # the runtime's own cost the budget in force was computed with
        self._planned_scale = self.controller.scale  # the PID's budget scale the budget in force was computed with
        self._planned_chances: tuple[float, ...] | None = None  # the watched configurations' chances after the decision (None: to be taken)
        self._since_decision = 0  # requests fed back since the last decision
        # the configuration the risk is watched for besides the one in force: the most accurate (its chance rising again is the way back up)
        self._most_accurate = max(self.allocator.configs, key=self.table.accuracy_of)
        self._sessions: dict[str, Any] = {}  # variant id -> its loaded session
        self._last_used: dict[str, int] = {}  # variant id -> the request that last ran it (eviction order)
        self._requests = 0
        self._biases: dict[tuple[str, ...], np.ndarray] = {}  # tiers of the variants used -> their mean bias
        # (inputs usable, configuration in force, variants excluded) -> the configuration answering such a request, under self.budget (`_answer`)
        self._answers: dict[tuple[frozenset[str], Configuration, frozenset[str]], Configuration] = {}
        self._protected: dict[str, int] = {}  # variant id -> loads or switches under way that need its session (never evicted meanwhile)
        self._lock = threading.RLock()  # decisions, failures, the loaded sessions; never held while a session loads
        self._load_lock = threading.Lock()  # one session loads at a time; taken before self._lock, never under it
        self._decisions_made = 0  # decisions made so far: a switch that loaded its sessions goes ahead only if none came meanwhile
        self._switches_loading: dict[Configuration, tuple[float, frozenset[str]]] = {}  # switch loading -> since when, sessions it loads
        self._background: threading.Thread | None = None  # the thread loading for decisions made on requests' threads
        self._background_due: tuple[str, float | None] | None = None  # the decision it is to make next (the newest asked for)
        self._closed = False  # closed: no background decision starts or goes on (a replaced runtime's)
        self._unsubscribe: Callable[[], None] | None = None
        self._applied_at = 0.0  # observed_at of the monitor reading planned with
        self.pinned = self._pinned_config(pinned) if pinned is not None else None
        self.monitor = monitor
        seen = monitor.state if monitor is not None else None
        if seen is not None:
            self.snapshot, self.reading, self.level = seen.planning(), seen.raw, seen.level
            self._applied_at = seen.observed_at
            self.budget = budget_for(self.snapshot, self.config, self.controller.scale, overhead_ms=self.overhead_ms)
        self.current: Decision = self._initial_decision()
        if self.config.preload and self.pinned is None:  # a pinned runtime holds its configuration alone (a fallback loads on use)
            self._preload()
        self._ensure_loaded(self.current.config)
        while self.pinned is None and self._holds_failed(self.current.config):  # a session that would not load: plan without it
            self.current = self._initial_decision()  # (the failed set has grown, or this configuration loads: this ends)
            self._ensure_loaded(self.current.config)
        if monitor is not None:
            self._unsubscribe = monitor.subscribe(self.on_resources)
            # A reading published while the sessions loaded reached no subscriber; the monitor tells
            # only of changes, so on a steady device nothing would bring it again.
            latest = monitor.state
            if latest is not None and latest is not seen:
                self.on_resources(latest)

    # Configurations ------------------------------------------------------------------------------------

    def _pinned_config(self, pinned: dict[str, str | None]) -> Configuration:
        unknown = set(pinned) - set(self.table.modalities)
        if unknown:
            raise ValueError(f"pinned configuration names {sorted(unknown)}; the bank's modalities are {list(self.table.modalities)}")
        config = []
        for m in self.table.modalities:
            tier = pinned.get(m)
            if tier is not None and f"{tier}/{m}" not in self._variants:
                raise ValueError(f"pinned configuration: no variant {tier}/{m} in the bank (variants: {', '.join(self._variants)})")
            config.append(self._variants[f"{tier}/{m}"] if tier is not None else None)
        if all(v is None for v in config):
            raise ValueError("pinned configuration processes no modality")
        return tuple(config)

    def _initial_decision(self) -> Decision:
        if self.pinned is not None:
            return Decision(self.pinned, self.allocator.utility(self.pinned, self.weights()), config_costs(self.pinned), True, "pinned")
        try:
            return self.allocator.solve(self.budget, self.weights(), frozenset(self.failed))
        except NoConfigurationError as err:
            raise NoVariantError(
                f"{self.bank.folder}: no variant can be used ({err}; failures: {self.failed}). Rebuild the bank with `racmkd edge build`."
            ) from None

    def weights(self) -> tuple[float, ...]:
        return self.allocator.weights(self.config.priorities, self._quality_planned)

    def expected_accuracy(self, decision: Decision | None = None) -> float:
        """The current configuration's (or `decision`'s) accuracy to expect with the inputs' present
        quality, the answers from the other inputs when its own are dead counted (with the SLO
        objective the decision's utility also counts the chance of meeting the deadline; this does
        not: offloading weighs latency apart)."""
        with self._lock:  # (the deadline risk's windows are fed under it: read unlocked, a request's feedback changed them mid-sort)
            config = (decision or self.current).config

            def answer(present: frozenset[str]) -> Configuration | None:
                try:
                    return self._answer(present, config)
                except NoConfigurationError:
                    return None

            return self.allocator.expected_accuracy(config, self.budget, self.weights(), answer=answer)

    def cost_ms(self, variant_ids: list[str]) -> float:
        """What these variants typically cost together, unloaded: their median latencies added up."""
        return sum(self._variants[v].typical_ms for v in variant_ids)

    def describe(self, config: Configuration | None = None) -> str:
        return describe(self.table, self.current.config if config is None else config)

    # Sessions ------------------------------------------------------------------------------------------

    def _preload(self) -> None:
        """Load every variant when they fit the memory budget together (by the latest reading, as
        evictions go) and `runtime.max_loaded` allows them all; else they load on first use."""
        usable = [v for v in self.table.variants if v.id not in self.failed]
        total = sum(v.memory_bytes for v in usable)
        limit = self._memory_limit()
        if total > limit:
            log.info("variants need %.1f MB, more than the memory budget (%.1f MB): loading them on first use", total / MB, limit / MB)
            return
        if self.config.max_loaded and len(usable) > self.config.max_loaded:  # (each load past it would evict one loaded before)
            log.info("%d variants, runtime.max_loaded %d: loading them on first use", len(usable), self.config.max_loaded)
            return
        for v in self.table.variants:
            if v.id not in self.failed:
                try:
                    self._session(v)
                except Exception:  # noqa: BLE001 - recorded in self.failed by _session
                    continue

    def resident_bytes(self) -> int:
        """Memory the loaded sessions hold (the variants' measured resident memory)."""
        return sum(self._variants[vid].memory_bytes for vid in tuple(self._sessions))  # (a copy: a load may add one meanwhile)

    def _session(self, variant: Variant) -> Any:
        """The variant's session, loaded if it is not. A loaded one is read without a lock (a dict
        read is atomic): this is on every request's path. A load holds `_load_lock`, not the
        runtime's lock (see the module docstring): the caller must not hold that one."""
        self._last_used[variant.id] = self._requests
        sess = self._sessions.get(variant.id)
        if sess is not None:
            return sess
        with self._load_lock:
            sess = self._sessions.get(variant.id)
            if sess is not None:  # loaded by another thread while this one waited
                return sess
            try:
                sess = session(self.bank.path(variant), self.config.threads)
                # A variant's first run sets up its session's buffers and its features' matrices
                # (milliseconds): done here, not on a request.
                signal, spec = self.modalities[variant.modality], self.bank.specs[variant.id]
                sess.run(None, {variant.modality: signal.features(signal.blank(spec), spec)})
            except Exception as err:  # noqa: BLE001 - a damaged file must not stop the runtime
                self._fail(variant, f"cannot load {variant.path}: {err}")
                raise
            with self._lock:
                if variant.id not in self.failed:  # (failed meanwhile, by a request: not kept, loaded again when tried again)
                    self._sessions[variant.id] = sess
                    self._evict()
            return sess

    def _memory_limit(self) -> float:
        """The memory the loaded sessions may hold. It goes by the latest reading, not the planning
        one: planning takes the forecast's worst case, right for choosing what runs, but after a
        sudden drop the trend overshoots (to zero free memory) and evicting by it would throw away
        sessions the device still has room for, each to be reloaded, in milliseconds, on the way back."""
        reading = self.reading if self.reading is not None else self.snapshot
        if reading is not None and reading.memory_available_bytes is None and self.snapshot is not None:
            reading = self.snapshot  # (a reading gone missing: the monitor holds its last value there, not in the raw one)
        return budget_for(reading, self.config, resident_bytes=self.resident_bytes()).memory_bytes

    def _evict(self) -> None:
        """Drop least recently used sessions (never the current configuration's, nor the pending step up's) while more are
        loaded than `runtime.max_loaded` or they hold more memory than the latest reading allows."""
        limit = self.config.max_loaded or len(self.table.variants)
        # (and the step up's sessions)
        keep = {v.id for config in (self.current.config, self.hysteresis.pending or ()) for v in config if v is not None} | self._protected.keys()
        memory = self._memory_limit()
        for vid in sorted(self._sessions, key=lambda v: self._last_used.get(v, -1)):
            if len(self._sessions) <= limit and self.resident_bytes() <= memory:
                break
            if vid not in keep:
                del self._sessions[vid]

    def _fits_loaded(self, config: Configuration) -> bool:
        """Whether a configuration's sessions could be loaded beside those loaded now without
        evicting any (by count and by memory)."""
        new = [v for v in config if v is not None and v.id not in self._sessions and v.id not in self.failed]
        limit = self.config.max_loaded or len(self.table.variants)
        return len(self._sessions) + len(new) <= limit and self.resident_bytes() + sum(v.memory_bytes for v in new) <= self._memory_limit()

    def _ensure_loaded(self, config: Configuration) -> None:
        """Load a configuration's sessions (none of them evicted while the others load). Not under
        the runtime's lock (see `_session`)."""
        with self._protecting(config):
            for v in config:
                if v is not None and v.id not in self.failed:
                    try:
                        self._session(v)
                    except Exception:  # noqa: BLE001 - recorded in self.failed by _session
                        continue

    @contextlib.contextmanager
    def _protecting(self, config: Configuration) -> Iterator[None]:
        """Keep a configuration's sessions from eviction while this lasts (loads and switches on
        several threads each protect their own)."""
        ids = [v.id for v in config if v is not None]
        with self._lock:
            for vid in ids:
                self._protected[vid] = self._protected.get(vid, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                for vid in ids:
                    if self._protected[vid] == 1:
                        del self._protected[vid]
                    else:
                        self._protected[vid] -= 1

    def _all_loaded(self, config: Configuration) -> bool:
        return all(v is None or v.id in self._sessions for v in config)

    def _holds_failed(self, config: Configuration) -> bool:
        return any(v is not None and v.id in self.failed for v in config)

    def loaded(self) -> list[str]:
        return list(self._sessions)

    def failed_for_good(self) -> set[str]:
        """Variants excluded with no retry due: a file that could not be read at start, weights
        that compute NaN. (The others are tried again, `_fail`.)"""
        with self._lock:
            return set(self.failed) - set(self._retry_at)

    def _fail(self, variant: Variant, reason: str, for_good: bool = False) -> None:
        """Exclude a variant. Weights that compute NaN stay excluded (`for_good`); anything else that
        raised may have been passing (an allocation refused while memory ran short, a sensor
        glitch): it is tried again after RETRY_FIRST_S, then twice as long after each new failure,
        at most RETRY_MAX_S, so that months on a device do not end on the smallest tier."""
        with self._lock:
            if variant.id in self.failed and not for_good:
                return  # already excluded, one strike: a failed load is recorded where it happens, then seen again by the request
            if variant.id not in self.failed:
                log.warning("variant %s failed and is excluded: %s", variant.id, reason)
            self.failed[variant.id] = reason
            self._sessions.pop(variant.id, None)
            if for_good:
                self._retry_at.pop(variant.id, None)
                return
            strikes = self._strikes[variant.id] = self._strikes.get(variant.id, 0) + 1
            self._retry_at[variant.id] = self.clock() + min(RETRY_FIRST_S * 2 ** (strikes - 1), RETRY_MAX_S)

    def _retry_due(self) -> None:
        """Let variants whose retry time has come be chosen again (see `_fail`)."""
        now = self.clock()
        with self._lock:
            due = [vid for vid, at in self._retry_at.items() if at <= now]
            for vid in due:
                del self._retry_at[vid]
                log.info("variant %s is tried again (it failed: %s)", vid, self.failed.pop(vid, "?"))
        if due:
            self.redecide("retrying failed variants", on_request=True)

    # Decisions -----------------------------------------------------------------------------------------

    def on_resources(self, state: MonitorState) -> None:
        """Monitor subscriber: plan with the new reading, switch if the allocator says so. A reading
        older than the one applied (the constructor's catch-up racing the monitor thread) is passed over."""
        with self._lock:
            if state.observed_at and state.observed_at < self._applied_at:
                return
            self._applied_at = state.observed_at or self._applied_at
            self.snapshot, self.reading, self.level = state.planning(), state.raw, state.level
        self.redecide("resources", state.observed_at or None)

    def redecide(self, cause: str, observed_at: float | None = None, on_request: bool = False) -> Decision:
        """Recompute the budget and let the allocator (through the hysteresis) choose; returns the
        decision in force afterwards. No garbage collection starts meanwhile (`collector_held`):
        one would add milliseconds to the switch's adaptation time. `on_request`: made on a
        request's thread, whose answer waits to be sent: sessions the decision needs load on a
        background thread, which then decides again (with `background_loads`)."""
        with collector_held():
            return self._redecide(cause, observed_at, on_request and self.background_loads)

    def _redecide(self, cause: str, observed_at: float | None, in_background: bool = False) -> Decision:
        """Decide under the lock; a switch whose sessions are not all loaded releases it, loads
        them (or has them loaded in the background, `in_background`), and goes ahead if no other
        decision came meanwhile; else it is decided again with the newest reading, at most
        SWITCH_ATTEMPTS times, then left to the next decision. (A load that failed is no such
        attempt: the failed set only grows, so deciding again without it ends.)"""
        started = time.perf_counter()
        loaded_before = set(self._sessions)
        superseded = 0
        while True:
            with self._lock:
                if self.risk is not None:
                    self.risk.forget_left(self.clock())  # (a decision between requests sees no stale band either)
                budget = budget_for(self.snapshot, self.config, self.controller.scale, self.resident_bytes(), self.overhead_ms)
                if budget != self.budget:
                    self._answers = {}  # (worked out again under the new budget)
                self.budget = budget
                self._planned_overhead_ms, self._planned_scale = self.overhead_ms, self.controller.scale
                self._planned_chances, self._since_decision = None, 0  # (taken again once this decision's own requests are in)
                if self.pinned is not None:
                    return self.current
                previous = self.current
                windows = self.hysteresis.state()
                try:
                    chosen, why = self.hysteresis.choose(self.clock(), previous, self.allocator, self.budget, self.weights(), frozenset(self.failed))
                except NoConfigurationError as err:  # every variant failed: keep serving what is left, request by request
                    log.error("no configuration can run: %s", err)
                    return self.current
                self._decisions_made += 1
                decided = self._decisions_made
                if chosen.config == previous.config:
                    self.current = chosen  # (its utility and costs under this budget)
                    self._evict()  # the memory budget may have shrunk
                    self.decision_ms.append((time.perf_counter() - started) * 1e3)
                    pending, best = self.hysteresis.pending, self.hysteresis.best_pending
                    load_pending = pending is not None and not self._all_loaded(pending)
                    load_best = best is not None and not self._all_loaded(best) and self._fits_loaded(best)
                    if in_background and (load_pending or load_best):
                        self._load_in_background(cause, observed_at)
                    if in_background or not (load_pending or load_best):
                        return self.current
                    break
                if self._all_loaded(chosen.config):
                    return self._switch(previous, chosen, why, cause, observed_at, started, loaded_before)
                # Until it lands the windows stay as they were: a decision meanwhile (or the
                # background thread's) finds the step up it waited out still due, not started again.
                decided_windows = self.hysteresis.state()
                self.hysteresis.restore(windows)
                if in_background:
                    self._load_in_background(cause, observed_at)
                    return self.current
                since, loading = self._switches_loading.get(chosen.config, (math.inf, frozenset()))
                needed = frozenset(v.id for v in chosen.config if v is not None and v.id not in self._sessions)
                registered = self._switches_loading[chosen.config] = (min(since, observed_at if observed_at is not None else started), loading | needed)
            # Its sessions load before the swap, without the lock: requests meanwhile are served by
            # the configuration in force, whose sessions are loaded (they were pointed at the new
            # one and waited for its loading, 256 ms for a request of 0.26 when a load took 300).
            try:
                with self._protecting(chosen.config):
                    self._ensure_loaded(chosen.config)
                    with self._lock:
                        if self._decisions_made == decided and self.current is previous and self._all_loaded(chosen.config):
                            self.hysteresis.restore(decided_windows)
                            return self._switch(previous, chosen, why, cause, observed_at, started, loaded_before)
            finally:
                with self._lock:
                    if self._switches_loading.get(chosen.config) is registered:  # (not another decision's, which took it over)
                        del self._switches_loading[chosen.config]
            if self._holds_failed(chosen.config):
                cause = "variant failure"  # a session that would not load: plan again without it
                continue
            superseded += 1
            if superseded >= SWITCH_ATTEMPTS:
                log.warning("a switch was superseded %d times while its sessions loaded: left to the next decision", superseded)
                return self.current
        # A step up waits out the hysteresis window: load its sessions meanwhile (off the
        # requests' path and the lock), so that the switch, when it comes, is a pointer swap;
        # and the best one's waiting, which may come next, when they fit beside them.
        if load_pending:
            self._ensure_loaded(pending)
            with self._lock:
                best = self.hysteresis.best_pending
                load_best = best is not None and self._fits_loaded(best)
        if load_best:
            self._ensure_loaded(best)
        return self.current

    def _load_in_background(self, cause: str, observed_at: float | None) -> None:
        """Have a background thread make this decision again, loading what it needs there (called
        under the lock). One such thread at a time; a decision asked for while it works replaces
        the one due, so the thread ends on the newest."""
        self._background_due = (cause, observed_at)
        if self._background is None and not self._closed:
            thread = threading.Thread(target=self._decide_in_background, name="racmkd-session-loader", daemon=True)
            thread.start()
            self._background = thread  # (once started: a thread that failed to start would block every later hand-over)

    def _decide_in_background(self) -> None:
        while True:
            with self._lock:
                due, self._background_due = self._background_due, None
                if due is None or self._closed:
                    self._background = None
                    return
            try:
                self.redecide(*due)
            except Exception:  # noqa: BLE001 - the loader must go on (a decision failing is logged)
                log.exception("a decision made for a request failed while loading its sessions")

    def _switch(
        self, previous: Decision, chosen: Decision, why: str, cause: str, observed_at: float | None, started: float, loaded_before: set[str]
    ) -> Decision:
        """Put a decided configuration, its sessions loaded, in force and record the switch (under the lock)."""
        self.current = chosen
        self._evict()  # the memory budget may have shrunk
        ended = time.perf_counter()
        self.decision_ms.append((ended - started) * 1e3)
        # A switch whose sessions another decision loaded (and was superseded before landing it) is
        # timed from that one's start and counts its loads: it is the same switch.
        since, loaded_for_it = self._switches_loading.pop(chosen.config, (math.inf, frozenset()))
        adaptation = (ended - min(since, observed_at if observed_at is not None else started)) * 1e3
        loaded = sorted({v.id for v in chosen.config if v is not None and v.id not in loaded_before} | loaded_for_it)  # sessions the switch had to load
        self.adaptation_ms.append(adaptation)
        self.switch_loads.append(len(loaded))
        self.decision_count += 1
        self.decisions.append(
            {
                "t": self.clock(),
                "cause": cause,
                "from": self.describe(previous.config),
                "to": self.describe(chosen.config),
                "reason": why,
                "level": self.level,
                "budget": self.budget.as_dict(),
                "utility": chosen.utility,
                "adaptation_ms": adaptation,
                "loaded": loaded,
            }
        )
        return chosen

    def feedback(self, latency_ms: float, now: float | None = None, variants: list[str] | None = None, work_ms: float = math.nan) -> None:
        """Feed an observed request latency (of the request served by `variants`, default the
        current configuration's; `work_ms`: its CPU time, when measured) to the PID, the deadline
        risk and the runtime's estimate of its own cost; re-plan when the budget scale or that
        estimate moved (the budget is net of it), or when a pending step up has waited out its
        window."""
        now = self.clock() if now is None else now
        # A decision holds the lock ~0.3 ms (a switch loads its sessions outside it); should one hold
        # it longer, the request it would hold up has been answered: its observation is dropped (counted).
        if not self._lock.acquire(timeout=FEEDBACK_WAIT_S):
            self.feedback_dropped += 1
            return
        try:
            used = variants if variants is not None else [v.id for v in self.current.config if v is not None]
            cost = self.cost_ms(used)
            if math.isfinite(work_ms) and used and self.config.threads == 1:  # with more, ONNX Runtime's workers' CPU time is not this thread's
                self._learn_overhead(work_ms - cost)
            risk_moved = False
            if self.risk is not None:
                self.risk.observe(latency_ms, cost, self.budget.slowdown, now)
                risk_moved = self._risk_moved()
            scale = self.controller.update(latency_ms, now)
            # Against the scale the budget in force was planned with, not the last step's: past the
            # first step the integral term moves ~0.002 a request, and a sustained overrun drove the
            # PID to its floor while the budget kept its first scale (and steady readings brought no
            # decision from the monitor either).
            scale_moved = abs(scale - self._planned_scale) > 0.02
            own_cost_moved = abs(self.overhead_ms - self._planned_overhead_ms) > OVERHEAD_REPLAN_MS
        finally:
            self._lock.release()
        if scale_moved:
            self.redecide("latency", on_request=True)
        elif own_cost_moved:
            self.redecide("own cost", on_request=True)
        elif risk_moved:
            self.redecide("deadline risk", on_request=True)
        elif self.hysteresis.due(now):
            self.redecide("step-up window", on_request=True)

    def _risk_moved(self) -> bool:
        """Whether the deadline risk moved since the decision in force: the chance of meeting the
        deadline of the configuration in force, or of the most accurate one, by RISK_REPLAN. Looked
        at on one request in RISK_LOOK_EVERY (under the lock), once that decision's own requests
        fill the risk's minimum. The PID steps in when a period's mean latency runs over the
        target; a tail that grows under an unchanged mean (preemptions by another program the load
        readings do not show) moved only the risk, and steady readings notify nobody: the runtime
        kept a configuration missing one deadline in three for as long as the readings held still.
        The most accurate configuration is watched for the way back: after a step down, the chance
        of the cheaper configuration in force stays near 1 whatever the tail does, and the tail's
        going re-planned nothing (nor did a quantile of the ratios, which stops moving once the
        late requests are more than its share)."""
        assert self.risk is not None
        self._since_decision += 1
        if self._since_decision % RISK_LOOK_EVERY or self._since_decision < self.risk.min_samples or self.pinned is not None:
            return False  # (a pinned configuration is no decision's)
        chances = tuple(
            self.risk.chance((self.allocator.costs.get(c) or config_costs(c)).typical_ms, self.budget.latency_ms, self.budget.slowdown)
            for c in (self.current.config, self._most_accurate)
        )
        if self._planned_chances is None:
            self._planned_chances = chances
            return False
        return any(abs(now - then) > RISK_REPLAN for now, then in zip(chances, self._planned_chances))

    def _learn_overhead(self, extra_ms: float) -> None:
        """The runtime's own cost per request (input checks, preprocessing beyond the variants'
        measurement, bookkeeping), learnt from requests as they come: the median, over the last
        OVERHEAD_WINDOW, of a request's CPU time beyond its variants' median latencies. The bank's
        figure, measured in a tight loop on one input, runs low in service, where requests come
        between other work and caches are cold: 0.020 ms with the bank, 0.032-0.040 ms learnt in
        trace replays. An additive error is no ratio: with the bank's figure, the cheap
        configurations' requests ran 13% over their predictions and the high tier's 3%, so the
        deadline risk, learnt on the cheap ones, overpriced the high tier. CPU time, not wall time:
        under load the wall time grows with the slowdown the budget already divides by; so with
        `runtime.threads` > 1 the bank's figure stands (ONNX Runtime's workers are other threads)."""
        self._overheads.append(extra_ms)
        self._overhead_count += 1
        if self._overhead_count >= OVERHEAD_MIN_SAMPLES and self._overhead_count % 16 == 0:  # a median (4 us) every 16 requests, not on each
            self.overhead_ms = max(0.0, float(np.median(self._overheads.values())))
            if self.risk is not None:
                self.risk.overhead_ms = self.overhead_ms

    def _observe_quality(self, qualities: dict[str, float]) -> None:
        """Fold one request's input qualities into their running averages; re-plan when one moves
        the weights. The weights take a quality in steps of 0.05, and a new step only once the
        average has moved QUALITY_STEP_MARGIN beyond the last one taken (or reached 0 or 1): an
        input live every other request swings its average between 0.44 and 0.56, across two
        steps, and every request re-planned (0.3 ms of decisions on each, learnt as the runtime's
        own cost: 0.29 ms against 0.03, which took that off every request's latency budget)."""
        changed = False
        with self._lock:
            for m, q in qualities.items():
                new = self.quality[m] = 0.8 * self.quality[m] + 0.2 * q
                step = round(new * 20) / 20
                if step != self._quality_planned[m] and (step in (0.0, 1.0) or abs(new - self._quality_planned[m]) >= QUALITY_STEP_MARGIN):
                    self._quality_planned[m] = step
                    changed = True
        if changed:
            self.redecide("input quality", on_request=True)

    # Serving ---------------------------------------------------------------------------------------------

    def infer(self, inputs: dict[str, Any], sample_rate: int | None = None) -> Answer:
        """Answer one request (raw inputs by modality; None = missing) without feeding its latency
        back (`predict` does; a simulation feeds the latency it models)."""
        started, cpu_started = time.perf_counter(), time.thread_time()
        self._requests += 1
        if self._retry_at:  # a variant excluded for a while (rare): its time may have come
            self._retry_due()
        if not self.modalities.keys() >= inputs.keys():  # (the set comparison first: this runs on every request)
            unknown = [m for m, v in inputs.items() if v is not None and m not in self.modalities]
            if unknown:
                raise TypeError(f"unknown inputs {sorted(unknown)}; this runtime uses {list(self.modalities)}")
        config = in_force = self.current.config
        # Its sessions, held for this request: a switch meanwhile may evict them, and looking them
        # up again would load an evicted one on this request's thread (waiting for any other load).
        held = {v.id: self._sessions.get(v.id) for v in config if v is not None}
        using = {v.modality for v in config if v is not None and v.id not in self.failed}  # (a failed variant's input answers nothing)
        periodic_look = self._requests % UNUSED_LOOK_EVERY == 0
        raws: dict[str, Any] = {}
        quality: dict[str, float] = {}  # this request's, of the inputs read
        unread: dict[str, Any] = {}  # given, but not used by the configuration in force: read only if the answer comes to need them
        refused: list[tuple[str, ValueError]] = []  # inputs found bad: passed over while the others can answer
        for m in self.modalities:
            value = inputs.get(m)
            if value is None or self.raw_specs[m] is None:  # missing, or every variant for it unreadable
                quality[m] = 0.0
            elif (
                m in using or periodic_look or self.quality[m] < QUALITY_DOUBTFUL
            ):  # used, or looked at to follow its quality (every request while it is doubtful)
                try:
                    self._read(m, value, sample_rate, raws, quality, inputs)
                except ValueError as err:  # counted as a dead input, and said once
                    quality[m] = 0.0
                    refused.append((m, err))
                    if m not in self._refused:
                        log.warning("input %s refused (%s): counted as dead, answered from the others while they can", m, err)
                    self._refused.add(m)
                else:
                    self._refused.discard(m)
            else:
                unread[m] = value
        if not using & raws.keys():  # nothing the configuration uses came alive: the answer needs the others
            self._read_all(unread, sample_rate, raws, quality, refused=refused, given=inputs)
        if not raws and refused:
            raise refused[0][1]  # (nothing else to answer from: the bad input is the request's error)
        if not raws:
            given = [m for m in self.modalities if inputs.get(m) is not None]
            unreadable = [m for m in given if self.raw_specs[m] is None]
            why = [f"{', '.join(unreadable)}: no readable variant (see state()['failed'])"] if unreadable else []
            why += [came_in_dead([m for m in given if m not in unreadable])] if len(given) > len(unreadable) else []
            raise NoVariantError(f"no usable input: this runtime needs {' and/or '.join(self.modalities)}" + "".join(f"; {w}" for w in why))
        if self.pinned is None and any(self.quality[m] != q for m, q in quality.items()):  # equal: the running averages stay where they are
            self._observe_quality(quality)
        # A bad input (an overexposed frame, a NaN sample): said in every answer it was read for, so
        # that the client learns it (once the runtime had moved off it, its answers said nothing).
        # Refused as the request's error, every request failed while the configuration used it,
        # and answered when the load had moved the runtime off it: a failure by the CPU's load.
        fallbacks = [f"{m} input passed over ({err})" for m, err in refused]
        if refused:
            with self._lock:
                self.inputs_passed_over.update(m for m, _ in refused)
        if self.failed:  # (rare: a variant excluded since the configuration was chosen answers nothing)
            failed = dict(self.failed)  # (a copy: another request's retry may take an entry out meanwhile)
            fallbacks += [f"{v.id} excluded ({failed[v.id]}): answered without it" for v in config if v is not None and v.id in failed]
        exclude: set[str] = set()
        while True:
            active = [v for v in config if v is not None and v.modality in raws and v.id not in self.failed]
            if not active:
                self._read_all(unread, sample_rate, raws, quality, fallbacks, given=inputs)  # (a variant failed meanwhile, on another thread)
                config = self._request_config(raws, exclude, fallbacks, in_force)
                active = [v for v in config if v is not None and v.modality in raws]
            terms, used = [], []
            for v in active:
                try:
                    terms.append(self._run(v, raws[v.modality], held.get(v.id)))
                    used.append(v)
                except Exception as err:  # noqa: BLE001 - a failing variant is skipped, never the request
                    self._fail(v, f"{type(err).__name__}: {err}")
                    exclude.add(v.id)
                    fallbacks.append(f"{v.id} failed ({type(err).__name__})")
            if len(used) == len(active) and used:
                logits = self._bias(tuple(v.tier for v in used)) + terms[0]
                for term in terms[1:]:
                    logits += term
                if math.isfinite(logits.sum()):  # checked once, on the total: a NaN or infinity in any term shows there
                    break
                damaged = [v for v, term in zip(used, terms) if not np.isfinite(term).all()]
                if not damaged:  # finite terms overflowing together: nothing to exclude
                    break
                blamed_inputs = sorted({v.modality for v in damaged if self._finite_on_blank(v)})
                if blamed_inputs:  # the weights answer a blank input: this request's input is to blame, not them
                    for m in blamed_inputs:
                        raws.pop(m, None)
                    if not raws:  # (nothing else to answer from: the input is the request's error)
                        raise ValueError(
                            f"{', '.join(blamed_inputs)}: the input makes the model compute non-finite logits (it answers a blank input finitely): check the input's values"
                        )
                    fallbacks += [f"{m} input passed over (it makes the model compute non-finite logits)" for m in blamed_inputs]
                    with self._lock:
                        self.inputs_passed_over.update(blamed_inputs)
                    for m in blamed_inputs:  # dead, as a refused one (its quality counted alive when it was read)
                        if m not in self._refused:
                            log.warning("input %s makes the model compute non-finite logits: counted as dead, answered from the others while they can", m)
                        self._refused.add(m)
                    if self.pinned is None:
                        self._observe_quality({m: 0.0 for m in blamed_inputs})
                    continue  # answered from the other inputs
                for v in damaged:  # weights that compute NaN: excluded for good, not an answer
                    self._fail(v, "computed non-finite logits", for_good=True)
                    exclude.add(v.id)
                    fallbacks.append(f"{v.id} failed (non-finite logits)")
            # Something failed: re-plan without it (the monitor's next decision will too), and retry,
            # with every input the request brought.
            self.redecide("variant failure", on_request=True)
            self._read_all(unread, sample_rate, raws, quality, fallbacks, given=inputs)
            config = self._request_config(raws, exclude, fallbacks, in_force)
        probs = _softmax(logits)
        return Answer(
            int(probs.argmax()), probs, [v.id for v in used], (time.perf_counter() - started) * 1e3, fallbacks, (time.thread_time() - cpu_started) * 1e3
        )

    def _read(
        self, modality: str, value: Any, sample_rate: int | None, raws: dict[str, Any], quality: dict[str, float], given: dict[str, Any] | None = None
    ) -> None:
        """Check and convert one raw input (ValueError when it is bad, or frozen: see `_frozen`) and
        note its quality; a live one joins `raws` (a dead one, a blank image or silence, is
        answered like a missing one). `given`: every input of the request."""
        raw = self.modalities[modality].to_raw(value, self.raw_specs[modality], sample_rate=sample_rate)
        signal = self.modalities[modality]
        thorough = self._requests % THOROUGH_EVERY == 0 or self.quality[modality] < QUALITY_DOUBTFUL
        quality[modality] = signal.input_quality(raw) if thorough else signal.quick_quality(raw)
        if quality[modality] > 0:
            self._frozen(modality, raw, given or {})
            raws[modality] = raw

    def _frozen(self, modality: str, raw: np.ndarray, given: dict[str, Any]) -> None:
        """ValueError when `raw` has come byte for byte the same on FROZEN_AFTER reads after its
        first while another input this request brings has changed since (from one input to
        another: first seen, as on a periodic look, is no change). A client resending one request
        freezes nothing, nor does an input that comes alone."""
        flat = raw.reshape(-1)
        fingerprint = hash((flat if flat.size <= 4096 else flat[::4]).tobytes())  # (a live sensor's noise is everywhere: a quarter tells)
        request, seen = self._requests, self._seen.get(modality)
        if seen is None or seen[0] != fingerprint:
            self._seen[modality] = (fingerprint, request, 0, None if seen is None else request)
            return
        _, since, repeats, changed_at = seen
        self._seen[modality] = (fingerprint, since, repeats + 1, changed_at)
        changed = [m for m, (_, _, _, at) in list(self._seen.items()) if m != modality and at is not None and at > since and given.get(m) is not None]
        if repeats + 1 >= FROZEN_AFTER and changed:
            raise ValueError(f"{modality}: the same input, byte for byte, {repeats + 2} times in a row while {' and '.join(changed)} changed: a frozen sensor")

    def _read_all(
        self,
        unread: dict[str, Any],
        sample_rate: int | None,
        raws: dict[str, Any],
        quality: dict[str, float],
        fallbacks: list[str] | None = None,
        refused: list[tuple[str, ValueError]] | None = None,
        given: dict[str, Any] | None = None,
    ) -> None:
        """Read the inputs left unread, emptying `unread`. A bad one is passed over, noted in
        `fallbacks` (a fallback under way answers from what it can read) or collected in `refused`
        (the request raises the first when nothing else answers); with neither, it raises."""
        for m, value in unread.items():
            try:
                self._read(m, value, sample_rate, raws, quality, given)
            except ValueError as err:
                if fallbacks is None and refused is None:
                    raise
                quality[m] = 0.0
                if fallbacks is not None:
                    fallbacks.append(f"{m} input passed over ({err})")
                if refused is not None:
                    refused.append((m, err))
        unread.clear()

    def _bias(self, tiers: tuple[str, ...]) -> np.ndarray:
        """The logits' bias of a set of variants: the mean of their tiers' biases (cached per set)."""
        bias = self._biases.get(tiers)
        if bias is None:
            bias = self._biases[tiers] = sum(self.bank.biases[t] for t in tiers) / len(tiers)
        return bias

    def _request_config(self, raws: dict[str, Any], exclude: set[str], fallbacks: list[str], in_force: Configuration) -> Configuration:
        """For this request only: the best configuration that uses only the inputs it brought, beside
        the configuration in force (`_answer`)."""
        with self._lock:  # the deadline risk is fed under it
            try:
                config = self._answer(frozenset(raws), in_force, frozenset(exclude))
            except NoConfigurationError as err:
                raise VariantsFailedError(f"no variant can answer this request: {err}; failures: {self.failed}") from None
        fallbacks.append(f"answered with {self.describe(config)} for the inputs given")
        return config

    def _answer(self, present: frozenset[str], in_force: Configuration, exclude: frozenset[str] = frozenset()) -> Configuration:
        """(Under the lock.) The configuration answering a request that brought only the `present`
        inputs live, none of `in_force`'s: `Allocator.answer_for`, as the allocator priced it, the
        same until the budget or the failures change (solved on every such request, a microphone
        silent every other request spent 0.09 ms of the 0.16 that request took). Raises
        NoConfigurationError when nothing can run on them."""
        key = (present, in_force, frozenset(self.failed) | exclude)
        config = self._answers.get(key)
        if config is None:
            config = self.allocator.answer_for(in_force, present, self.budget, key[2]).config
            if len(self._answers) >= 64:  # (a budget change empties it; a few keys come and go meanwhile)
                self._answers.clear()
            self._answers[key] = config
        return config

    def _run(self, variant: Variant, raw: np.ndarray, held: Any = None) -> np.ndarray:
        """The variant's logits for one raw input, with the session the request `held` (else its loaded one, loaded if it is not)."""
        features = self.modalities[variant.modality].features(raw, self.bank.specs[variant.id])
        if held is None:
            held = self._session(variant)
        else:
            self._last_used[variant.id] = self._requests
        return held.run(None, {variant.modality: features})[0][0]

    def _finite_on_blank(self, variant: Variant) -> bool:
        """Whether a variant that computed non-finite logits computes finite ones for a blank input
        (a blank image, silence; as its warm-up does). If so its weights are sound and the request's
        input is to blame: excluding the variant for good would let one crafted request take a whole
        modality out of service. A blank run that raises clears nothing: the variant is excluded as before."""
        signal, spec = self.modalities[variant.modality], self.bank.specs[variant.id]
        try:
            return bool(np.isfinite(self._run(variant, signal.blank(spec))).all())
        except Exception:  # noqa: BLE001 - see the docstring
            return False

    def predict(self, image: Any = None, audio: Any = None, sample_rate: int | None = None, **others: Any) -> Answer:
        """Answer one request from raw inputs (any may be missing) and feed its latency back."""
        answer = self.infer({"image": image, "audio": audio, **others}, sample_rate)  # None values are absent inputs
        self.feedback(answer.latency_ms, variants=answer.variants, work_ms=answer.work_ms)
        return answer

    # State -----------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What the runtime is doing and why, for logs and for the deployment layer. The
        configuration is what can run of the one in force: with every variant failed the runtime
        keeps the last decision (nothing better to choose), and naming it said `image=low` while
        `failed` listed low/image; then it is None, and `unavailable` says why (its utility and
        predicted costs too, which were of a configuration that cannot run). Its times (the
        reading's `t`, each recent decision's) are Unix times, as the logs and the telemetry that
        carry it stamp theirs: the runtime's own clock (monotonic, seconds since boot) means nothing
        outside this process, and a fleet's dashboard read it as dates in 1970."""
        to_unix = time.time() - self.clock()  # (for a simulation's clock, trace time: the offset to now)
        reading = self.snapshot.as_dict() if self.snapshot else None
        if reading is not None:
            reading["t"] += to_unix
        failed = dict(self.failed)  # (a copy: a request may fail or retry a variant meanwhile)
        current = self.current  # (read once: a decision on another thread meanwhile gave one configuration another's utility and costs)
        runnable = tuple(v if v is not None and v.id not in failed else None for v in current.config)
        stale = [v.id for v in current.config if v is not None and v.id in failed]
        unavailable = None
        if all(v is None for v in runnable):
            unavailable = f"every variant of the configuration in force ({', '.join(stale)}) has failed, and no other could be chosen: see failed"
        return {
            "configuration": self.describe(runnable) if unavailable is None else None,
            "unavailable": unavailable,
            "variants": [v.id for v in runnable if v is not None],
            "utility": current.utility if unavailable is None else None,
            "predicted": None
            if unavailable is not None
            else {
                "latency_ms": current.costs.latency_ms,
                "memory_bytes": current.costs.memory_bytes,
                "energy_mj": current.costs.energy_mj,
            },
            "budget": self.budget.as_dict(),
            "level": self.level,
            "pid": self.controller.state(),
            "feedback_dropped": self.feedback_dropped,
            "deadline_risk": self._risk_state(),
            "overhead_ms": self.overhead_ms,
            "quality": dict(self.quality),
            "quality_planned": dict(self._quality_planned),  # what the weights take (steps of 0.05, see _observe_quality)
            "inputs_passed_over": dict(self.inputs_passed_over),
            "failed": dict(self.failed),
            "loaded": self.loaded(),
            "resources": reading,
            "monitor_errors": self._monitor_health(),
            "recent_decisions": [{**d, "t": d["t"] + to_unix} for d in list(self.decisions)[-10:]],
        }

    def _risk_state(self) -> dict[str, Any] | None:
        """The deadline risk's quantiles, read under the lock (requests append to its windows)."""
        if self.risk is None:
            return None
        with self._lock:
            return self.risk.state()

    def _monitor_health(self) -> dict[str, Any] | None:
        """The monitor's failed reads and the age of the reading the runtime plans with (a sensor
        read that hangs stops new readings: the age shows it)."""
        if self.monitor is None:
            return None
        state = self.monitor.state
        age = time.perf_counter() - state.observed_at if state is not None and state.observed_at else None
        return {"read_errors": self.monitor.read_errors, "last_error": self.monitor.last_error, "reading_age_s": age}

    def close(self) -> None:
        """Stop following the monitor. Sessions go with the runtime once nothing uses it (a request
        still running on a replaced runtime finishes on its sessions)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        with self._lock:
            self._closed = True  # (a load under way ends; nothing more is decided in the background)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()
