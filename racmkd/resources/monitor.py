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

`poll(now)` does one step synchronously; `start()` runs it on a background thread. Simulations
call `poll` with trace time; the live runtime uses the thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from racmkd.config import MonitorConfig
from racmkd.resources.sources import NUMERIC_FIELDS, ResourceSnapshot, Source, resource_level

log = logging.getLogger(__name__)


@dataclass
class Holt:
    """Holt's linear trend for one series sampled at irregular times: level, slope per second."""

    alpha: float
    beta: float
    level: float | None = None
    slope: float = 0.0
    t: float | None = None

    def update(self, value: float, t: float) -> None:
        if self.level is None or self.t is None:
            self.level, self.t = value, t
            return
        dt = max(t - self.t, 1e-6)
        predicted = self.level + self.slope * dt
        level = self.alpha * value + (1 - self.alpha) * predicted
        self.slope = self.beta * (level - self.level) / dt + (1 - self.beta) * self.slope
        self.level, self.t = level, t

    def forecast(self, horizon_s: float) -> float | None:
        return None if self.level is None else self.level + self.slope * horizon_s


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
        """The reading decisions should plan for: per resource, the worse of now (smoothed) and soon
        (forecast): more CPU load, less memory, less battery."""
        s, f = self.smoothed, self.forecast
        worse = {
            "cpu_percent": _pick(max, s.cpu_percent, f.cpu_percent),
            "memory_available_bytes": _pick(min, s.memory_available_bytes, f.memory_available_bytes),
            "battery_percent": _pick(min, s.battery_percent, f.battery_percent),
            "temperature_c": _pick(max, s.temperature_c, f.temperature_c),
        }
        return ResourceSnapshot(**{**s.as_dict(), **{k: v for k, v in worse.items() if v is not None}})

    def as_dict(self) -> dict[str, Any]:
        return {"level": self.level, "interval_s": self.interval_s, "raw": self.raw.as_dict(), "smoothed": self.smoothed.as_dict(), "forecast": self.forecast.as_dict()}


def _pick(fn: Callable[..., Any], a: Any, b: Any) -> Any:
    values = [v for v in (a, b) if v is not None]
    return fn(values) if values else None


def _clamp_reading(name: str, value: float) -> float:
    """Keep forecasts physical: no negative memory, CPU within 0-100%."""
    if name in ("cpu_percent", "battery_percent"):
        return min(100.0, max(0.0, value))
    return max(0.0, value)


class ResourceMonitor:
    """Samples `source`, keeps smoothed and forecast readings, notifies subscribers on change."""

    def __init__(self, source: Source, config: MonitorConfig | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.source, self.config, self.clock = source, config or MonitorConfig(), clock
        c = self.config
        self._ewma: dict[str, float] = {}
        self._holt = {name: Holt(c.smoothing, c.trend) for name in NUMERIC_FIELDS}
        self._subscribers: list[Callable[[MonitorState], None]] = []
        self._last_raw: ResourceSnapshot | None = None
        self._last_published: MonitorState | None = None
        self.interval_s = c.interval_s
        self.state: MonitorState | None = None
        self.polls = 0
        self.read_errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu_seconds = 0.0
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

    def poll(self, now: float | None = None) -> MonitorState | None:
        """Read the source once, update smoothing and forecast, adapt the interval, and notify
        subscribers when the state moved. A source that fails is logged and the last state kept."""
        now = self.clock() if now is None else now
        try:
            raw = self.source.read(now)
            observed_at = time.perf_counter()
        except Exception as err:  # noqa: BLE001 - a sensor that fails must not stop the monitor
            self.read_errors += 1
            log.warning("resource source %s failed (%s: %s); keeping the last reading", getattr(self.source, "name", "?"), type(err).__name__, err)
            return self.state
        self.polls += 1
        smoothed, forecast = {}, {}
        for name in NUMERIC_FIELDS:
            value = getattr(raw, name)
            if value is None:
                continue
            previous = self._ewma.get(name)
            self._ewma[name] = value if previous is None else self.config.smoothing * value + (1 - self.config.smoothing) * previous
            self._holt[name].update(float(value), now)
            smoothed[name] = self._ewma[name]
            forecast[name] = _clamp_reading(name, self._holt[name].forecast(self.config.horizon_s) or value)
        as_int = {"memory_available_bytes", "process_rss_bytes"}
        smoothed_snap = ResourceSnapshot(**{**raw.as_dict(), **{k: (int(v) if k in as_int else v) for k, v in smoothed.items()}})
        forecast_snap = ResourceSnapshot(**{**raw.as_dict(), "t": now + self.config.horizon_s, **{k: (int(v) if k in as_int else v) for k, v in forecast.items()}})
        moved = self._moved(self._last_raw, raw)
        self.interval_s = self.config.min_interval_s if moved else min(self.config.max_interval_s, self.interval_s * 1.5)
        self._last_raw = raw
        state = MonitorState(raw, smoothed_snap, forecast_snap, "", self.interval_s, False, observed_at)
        level = resource_level(state.planning())
        changed = self._last_published is None or level != self._last_published.level or self._moved(self._last_published.planning(), state.planning())
        state = MonitorState(raw, smoothed_snap, forecast_snap, level, self.interval_s, changed, observed_at)
        self.state = state
        if changed:
            self._last_published = state
            self._notify(state)
        return state

    def _moved(self, before: ResourceSnapshot | None, after: ResourceSnapshot) -> bool:
        if before is None:
            return True
        threshold = self.config.change_threshold
        if before.cpu_percent is not None and after.cpu_percent is not None and abs(after.cpu_percent - before.cpu_percent) / 100.0 > threshold:
            return True
        a, b = before.memory_available_bytes, after.memory_available_bytes
        if a is not None and b is not None and abs(b - a) / max(a, 1) > threshold:
            return True
        return (before.battery_percent is None) != (after.battery_percent is None) or (before.power_plugged != after.power_plugged)

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
        """Poll on a daemon thread until `stop()`."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._wall_started, self._wall_stopped, self._cpu_seconds = time.perf_counter(), None, 0.0
        self._thread = threading.Thread(target=self._run, name="racmkd-monitor", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.thread_time()
            self.poll()
            self._cpu_seconds += time.thread_time() - started
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._wall_stopped = time.perf_counter()

    def __enter__(self) -> ResourceMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def overhead(self) -> dict[str, float | int]:
        """The monitor thread's CPU time as a share of one core over the time it ran, and its polls."""
        if self._wall_started is None:
            return {"cpu_fraction": 0.0, "cpu_seconds": 0.0, "wall_seconds": 0.0, "polls": self.polls}
        wall = (self._wall_stopped or time.perf_counter()) - self._wall_started
        return {"cpu_fraction": self._cpu_seconds / wall if wall > 0 else 0.0, "cpu_seconds": self._cpu_seconds, "wall_seconds": wall, "polls": self.polls}
