"""The resource monitor: samples a source, smooths, forecasts, and tells subscribers what changed.

    source.read() -> EWMA smoothing -> Holt's linear-trend forecast -> subscribers (on change)

- Adaptive sampling: after a reading that moved (by more than `change_threshold`: CPU points / 100,
  or a relative change of memory), the next comes after `min_interval_s`; while readings stay put,
  the interval grows by half each time up to `max_interval_s`.
- Smoothing: an exponentially weighted moving average of every numeric reading.
- Forecast: Holt's linear trend (level and slope, time-aware for irregular intervals) `horizon_s`
  ahead, so the runtime can act before a falling resource runs out.
- Publish-subscribe: callbacks get every `MonitorState` whose smoothed or forecast values moved
  (and the first one); a failing callback is logged and does not stop the others.
- Overhead: the thread's own CPU time (time.thread_time) over the wall time it ran.
- From a reading's arrival to the end of its subscribers' work (the runtime's adaptation) Python's
  cyclic garbage collector is held off (`collector_held`): a collection of the older generations
  paused the runtime benchmark's process for up to 6.4 ms (generation 1) and 218 ms (generation 2;
  measured 2026-12-05), where the switch itself takes 0.2-0.5 ms.

`poll(now)` does one step synchronously; `start()` runs it on a background thread. Simulations
call `poll` with trace time; the live runtime uses the thread.
"""

from __future__ import annotations

import gc
import logging
import math
import numbers
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from racmkd.config import MonitorConfig
from racmkd.resources.sources import NUMERIC_FIELDS, ResourceSnapshot, Source, resource_level

log = logging.getLogger(__name__)


_held = 0  # sections in `collector_held` now, in every thread
_held_lock = threading.Lock()
_reenable = False  # whether the outermost section found the collector enabled


@contextmanager
def collector_held() -> Iterator[None]:
    """Hold off Python's cyclic garbage collector for a short latency-critical section (a reading on
    its way to a switch of configuration): a collection that starts there pauses every thread for
    milliseconds; held off, it runs at the first allocation after the section. Sections nest and may
    overlap across threads: the collector is enabled again when the last one ends, and only if it was
    enabled when the first began (a program that turned it off before keeps it off; one that turns
    it off while a section is held, in another thread, finds it on again after). A child forked
    meanwhile starts with none held and its collector as the parent had it. Reference counting,
    which frees almost everything, goes on."""
    global _held, _reenable
    with _held_lock:
        if _held == 0:
            _reenable = gc.isenabled()
            gc.disable()
        _held += 1
    try:
        yield
    finally:
        with _held_lock:
            _held -= 1
            if _held == 0 and _reenable:
                gc.enable()


def _release_in_child() -> None:
    """After os.fork(): the child holds no section (the threads holding them were not copied)."""
    global _held, _held_lock
    _held_lock = threading.Lock()
    if _held:
        _held = 0
        if _reenable:
            gc.enable()


if hasattr(os, "register_at_fork"):  # (POSIX only: Windows has no fork to recover from)
    os.register_at_fork(after_in_child=_release_in_child)


def _weight(weight: float, dt: float, ref_s: float) -> float:
    """A smoothing weight given per `ref_s` seconds, for a gap of `dt` seconds: sampling faster
    then takes smaller steps instead of making the estimate jumpier."""
    return 1.0 - (1.0 - weight) ** (dt / ref_s)


@dataclass
class Holt:
    """Holt's linear trend with a damped slope, for a series sampled at irregular times: a level and
    a slope per second. Weights are per `ref_s` seconds (see `_weight`); the slope fades by
    `damping` per second, so one step change is not extrapolated for ever."""

    alpha: float
    beta: float
    damping: float = 0.8
    ref_s: float = 0.5
    min_dt: float = 0.01  # closer readings update nothing (a repeated timestamp would make any slope)
    level: float | None = None
    slope: float = 0.0
    t: float | None = None

    def _damped(self, h: float) -> float:
        """How far the slope carries over `h` seconds: the integral of damping**t from 0 to h."""
        if self.damping >= 1.0:
            return h
        return (1.0 - self.damping**h) / -math.log(self.damping)

    def update(self, value: float, t: float) -> None:
        """Take the reading `value` at time `t`: the weights scale with the time since the last
        one (readings come at adaptive intervals), and one too soon after it is passed over."""
        if self.level is None or self.t is None:
            self.level, self.t = value, t
            return
        dt = t - self.t
        if dt < self.min_dt:
            return
        a, b = _weight(self.alpha, dt, self.ref_s), _weight(self.beta, dt, self.ref_s)
        level = a * value + (1 - a) * (self.level + self.slope * self._damped(dt))
        self.slope = b * (level - self.level) / dt + (1 - b) * self.slope * self.damping**dt
        self.level, self.t = level, t

    def forecast(self, horizon_s: float) -> float | None:
        """The level `horizon_s` seconds ahead on the damped trend; None before the first reading."""
        return None if self.level is None else self.level + self.slope * self._damped(horizon_s)


@dataclass(frozen=True)
class MonitorState:
    """What the monitor knows at one moment."""

    raw: ResourceSnapshot
    smoothed: ResourceSnapshot  # EWMA of every numeric reading
    forecast: ResourceSnapshot  # Holt's forecast `horizon_s` ahead
    level: str  # Table 6.7 level of the worse of smoothed and forecast
    interval_s: float  # the wait before the next reading
    changed: bool  # whether subscribers were told
    observed_at: float = 0.0  # time.perf_counter() when the reading arrived (adaptation time starts here)

    def planning(self) -> ResourceSnapshot:
        """The reading decisions should plan for: per resource, the worst of the latest reading, the
        smoothed one and the forecast (more CPU load, less memory, less battery), so that a sudden
        drop is acted on at once and a trend before it arrives."""
        r, s, f = self.raw, self.smoothed, self.forecast
        worse = {
            "cpu_percent": _pick(max, r.cpu_percent, s.cpu_percent, f.cpu_percent),
            "memory_available_bytes": _pick(min, r.memory_available_bytes, s.memory_available_bytes, f.memory_available_bytes),
            "battery_percent": _pick(min, r.battery_percent, s.battery_percent, f.battery_percent),
            "temperature_c": _pick(max, r.temperature_c, s.temperature_c, f.temperature_c),
            # Not the latest reading: a run queue read at one instant jumps between 1 and 5 under two
            # programs busy 60% of the time; its average, and where it heads, are the news.
            "runnable_tasks": _pick(max, s.runnable_tasks, f.runnable_tasks),
        }
        return ResourceSnapshot(**{**s.as_dict(), **{k: v for k, v in worse.items() if v is not None}})

    def as_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "interval_s": self.interval_s,
            "raw": self.raw.as_dict(),
            "smoothed": self.smoothed.as_dict(),
            "forecast": self.forecast.as_dict(),
        }


LIMITED_FIELDS = ("memory_available_bytes",)  # the smoothed readings a container's limit bounds
MISSING_HOLD_S = 10.0  # how long a reading that goes missing is held at its last smoothed value (see ResourceMonitor._update)
STOP_WAIT_S = 5.0  # how long stop() waits for the monitor thread (a hung read outlasts it; the thread then ends by itself)


def _pick(fn: Callable[..., Any], *candidates: Any) -> Any:
    values = [v for v in candidates if v is not None]
    return fn(values) if values else None


def _finite(snapshot: ResourceSnapshot) -> ResourceSnapshot:
    """The reading with NaN, infinite or non-numeric values marked absent (a glitching sensor)."""
    bad = {
        k: None
        for k in NUMERIC_FIELDS
        if (v := getattr(snapshot, k)) is not None and (isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) or not math.isfinite(v))
    }
    return replace(snapshot, **bad) if bad else snapshot


def _clamp_reading(name: str, value: float) -> float:
    """Keep forecasts physical: no negative memory, CPU within 0-100%; a temperature may be below
    0 degrees (a steady -15 C was forecast as 0)."""
    if name in ("cpu_percent", "battery_percent"):
        return min(100.0, max(0.0, value))
    if name == "temperature_c":
        return value
    return max(0.0, value)


class ResourceMonitor:
    """Samples `source`, keeps smoothed and forecast readings, notifies subscribers on change."""

    def __init__(self, source: Source, config: MonitorConfig | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.source, self.config, self.clock = source, config or MonitorConfig(), clock
        c = self.config
        self._ewma: dict[str, tuple[float, float]] = {}  # name -> (value, time)
        self._holt = {name: self._new_holt(name) for name in NUMERIC_FIELDS}
        self._subscribers: list[Callable[[MonitorState], None]] = []
        self._last_smoothed: ResourceSnapshot | None = None
        self.cpu_seconds = 0.0  # the monitor's own CPU time (reading and smoothing; subscribers not included)
        self._last_published: MonitorState | None = None
        self.interval_s = c.interval_s
        self.state: MonitorState | None = None
        self.polls = 0
        self.read_errors = 0
        self.last_error: str | None = None  # the source's latest failure, for the runtime's state
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu_at_start = 0.0
        self._wall_started: float | None = None
        self._wall_stopped: float | None = None

    # Publish-subscribe ---------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[MonitorState], None]) -> Callable[[], None]:
        """Call `callback(state)` on every change; returns a function that unsubscribes it."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    # One step ------------------------------------------------------------------------------------------

    def poll(self, now: float | None = None, stop: threading.Event | None = None) -> MonitorState | None:
        """Read the source once, update smoothing and forecast, adapt the interval, and notify
        subscribers when the state moved. A source that fails is logged and the last state kept.
        `stop`: the polling thread's; a reading that returns after it was set is dropped (a thread
        `stop()` gave up on, whose read hung, must not publish beside the one started since)."""
        now = self.clock() if now is None else now
        started = time.thread_time()
        try:
            raw = _finite(self.source.read(now))
        except Exception as err:  # noqa: BLE001 - a sensor that fails must not stop the monitor
            self.read_errors += 1
            self.last_error = f"{type(err).__name__}: {err}"
            self.cpu_seconds += time.thread_time() - started
            log.warning("resource source %s failed (%s: %s); keeping the last reading", getattr(self.source, "name", "?"), type(err).__name__, err)
            return self.state
        if stop is not None and stop.is_set():
            return self.state
        # From the reading's arrival to the subscribers' switch (see the module's docstring); not
        # around the read, which may block (a hung sensor) and would hold the collector off meanwhile.
        with collector_held():
            return self._update(raw, now, time.perf_counter(), started)

    def _new_holt(self, name: str) -> Holt:
        c = self.config
        return Holt(c.smoothing, c.trend, c.damping, c.interval_s, c.min_interval_s / 2)

    def _update(self, raw: ResourceSnapshot, now: float, observed_at: float, started: float) -> MonitorState:
        """Smooth and forecast a reading that arrived at `observed_at`; publish it if it moved."""
        self.polls += 1
        last = self.state.raw if self.state is not None else None
        if last is not None and (last.cgroup_memory_max_bytes, last.cgroup_cpu_max_cores) != (raw.cgroup_memory_max_bytes, raw.cgroup_cpu_max_cores):
            # A container's limit changed (docker update, a Kubernetes in-place resize): a new level
            # from now on, not a trend. Followed as a slope, 512 MB -> 96 MB with 36 MB still free
            # was forecast to 0 MB, and the runtime planned with nothing for 2.5 s.
            for name in LIMITED_FIELDS:
                self._ewma.pop(name, None)
                self._holt[name] = self._new_holt(name)
        smoothed, forecast = {}, {}
        for name in NUMERIC_FIELDS:
            value = getattr(raw, name)
            previous = self._ewma.get(name)
            if value is None:
                # A reading that had a value and went missing (one NaN, a sensor's failed read) is held
                # at its last smoothed value for a while: taken as "no such sensor", a NaN read at 95% CPU
                # and 10 MB free planned as if the CPU were idle and memory unlimited. Absent for longer,
                # the sensor is gone. The raw reading stays missing.
                if previous is not None and now - previous[1] <= MISSING_HOLD_S:
                    smoothed[name] = forecast[name] = previous[0]
                continue
            if previous is None:
                ewma = float(value)
            else:
                a = _weight(self.config.smoothing, max(now - previous[1], 0.0), self.config.interval_s)
                ewma = a * value + (1 - a) * previous[0]
            self._ewma[name] = (ewma, now)
            self._holt[name].update(float(value), now)
            smoothed[name] = ewma
            forecast[name] = _clamp_reading(name, self._holt[name].forecast(self.config.horizon_s) or value)
        as_int = {"memory_available_bytes", "process_rss_bytes"}
        smoothed_snap = ResourceSnapshot(**{**raw.as_dict(), **{k: (int(v) if k in as_int else v) for k, v in smoothed.items()}})
        forecast_snap = ResourceSnapshot(
            **{**raw.as_dict(), "t": now + self.config.horizon_s, **{k: (int(v) if k in as_int else v) for k, v in forecast.items()}}
        )
        moved = self._moved(self._last_smoothed, smoothed_snap)  # the smoothed value moving, not the noise
        self.interval_s = self.config.min_interval_s if moved else min(self.config.max_interval_s, self.interval_s * 1.5)
        self._last_smoothed = smoothed_snap
        state = MonitorState(raw, smoothed_snap, forecast_snap, "", self.interval_s, False, observed_at)
        level = resource_level(state.planning())
        changed = self._last_published is None or level != self._last_published.level or self._moved(self._last_published.planning(), state.planning())
        state = MonitorState(raw, smoothed_snap, forecast_snap, level, self.interval_s, changed, observed_at)
        self.state = state
        self.cpu_seconds += time.thread_time() - started
        if changed:
            self._last_published = state
            self._notify(state)
        return state

    def _moved(self, before: ResourceSnapshot | None, after: ResourceSnapshot) -> bool:
        if before is None:
            return True
        threshold = self.config.change_threshold
        readings = ("cpu_percent", "memory_available_bytes", "runnable_tasks", "battery_percent")
        if any((getattr(before, name) is None) != (getattr(after, name) is None) for name in readings):
            return True  # a reading appearing (a trace column's first value, a battery) or going away
        if before.cpu_percent is not None and after.cpu_percent is not None and abs(after.cpu_percent - before.cpu_percent) / 100.0 > threshold:
            return True
        a, b = before.memory_available_bytes, after.memory_available_bytes
        if a is not None and b is not None and abs(b - a) / max(a, 1) > threshold:
            return True
        a, b = before.runnable_tasks, after.runnable_tasks  # the CPU share at 100% load moves with it alone
        if a is not None and b is not None and abs(b - a) >= 0.5:
            return True
        if before.cpu_cores != after.cpu_cores or before.power_plugged != after.power_plugged:
            return True  # a new CPU quota, unplugged or plugged in
        a, b = before.cgroup_cpu_used_cores, after.cgroup_cpu_used_cores  # the quota's use: the CPU share left moves with it
        if (a is None) != (b is None) or (a is not None and b is not None and abs(b - a) / max(after.cgroup_cpu_max_cores or 1.0, 0.01) > threshold):
            return True
        # A battery drains a point every few minutes: each point is news to an energy budget that
        # halves below runtime.low_battery_percent, and costs subscribers next to nothing.
        return before.battery_percent is not None and after.battery_percent is not None and abs(after.battery_percent - before.battery_percent) >= 1.0

    def _notify(self, state: MonitorState) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(state)
            except Exception:  # noqa: BLE001 - one broken subscriber must not silence the others
                log.exception("resource subscriber %r failed", callback)

    # The background thread ------------------------------------------------------------------------

    def start(self) -> ResourceMonitor:
        """Poll on a daemon thread until `stop()`. Each thread has its own stop event: one that `stop()`
        gave up waiting for (its read hung) ends by itself once the read returns, and a thread
        started meanwhile goes on (with one event, clearing it kept the old thread too, and a start
        while it was alive started nothing: no thread polled once it ended)."""
        if self._thread is not None and self._thread.is_alive() and not self._stop.is_set():
            return self
        self._stop = threading.Event()
        self._wall_started, self._wall_stopped, self._cpu_at_start = time.perf_counter(), None, self.cpu_seconds
        self._thread = threading.Thread(target=self._run, args=(self._stop,), name="racmkd-monitor", daemon=True)
        self._thread.start()
        return self

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.poll(stop=stop)
            except Exception:  # noqa: BLE001 - the monitor thread must outlive any bad reading
                log.exception("resource monitor poll failed")
            stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_WAIT_S)
            if self._thread.is_alive():
                log.warning("the resource monitor's thread did not stop within %g s (its source's read hangs?): it ends once the read returns", STOP_WAIT_S)
        self._wall_stopped = time.perf_counter()

    def __enter__(self) -> ResourceMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def overhead(self) -> dict[str, Any]:
        """The monitor thread's own CPU time (reading and smoothing, not what subscribers do with it)
        as a share of one core over the time it ran, and its polls."""
        errors = {"read_errors": self.read_errors, "last_error": self.last_error}
        if self._wall_started is None:
            return {"cpu_fraction": 0.0, "cpu_seconds": self.cpu_seconds, "wall_seconds": 0.0, "polls": self.polls, **errors}
        wall = (self._wall_stopped or time.perf_counter()) - self._wall_started
        used = self.cpu_seconds - self._cpu_at_start
        return {"cpu_fraction": used / wall if wall > 0 else 0.0, "cpu_seconds": used, "wall_seconds": wall, "polls": self.polls, **errors}
