"""Where resource readings come from: the real machine, a recorded trace, or a synthetic profile.

Every source answers `read(now)` with a `ResourceSnapshot`; a reading the source does not have
(no battery, no temperature sensor, no RAPL counter, no cgroup limit) is None, never 0, so that
"absent" and "empty" cannot be confused. The monitor (monitor.py) smooths and forecasts whatever
source it is given, so the runtime cannot tell a replayed trace from the live machine.

Resource levels follow the seed paper's Table 6.7 (CPU used by other programs, memory available):

    high      20-30% CPU, 120-150 MB free
    medium    50-60% CPU,  60-80 MB free
    low       70-80% CPU,  20-40 MB free
    critical  > 90% CPU,   < 20 MB free
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import psutil

from racmkd.config import finite_number
from racmkd.measure.timing import rapl_domains

log = logging.getLogger(__name__)


MB = 2**20
UNLIMITED = 2**60  # cgroup v1 writes a huge number for "no limit"
# CPU shares are taken over at least this long (of wall time for this process's, of CPU time summed
# over the cores for the machine's): Linux counts CPU time in 10 ms clock ticks, so over a shorter
# interval one tick reads as hundreds of percent, or the machine as 0% or 100% busy (see SystemSource).
CPU_MIN_INTERVAL_S = 0.05


@dataclass(frozen=True)
class ResourceSnapshot:
    """One reading of the machine. None means the source has no such reading."""

    t: float  # seconds (monotonic clock, or trace time)
    cpu_percent: float | None = None  # busy share of the machine's cores (or of those this process may run on: host_cores), 0-100
    process_cpu_percent: float | None = None  # this process, % of one core
    memory_available_bytes: int | None = None  # what a new allocation can get (cgroup limit included)
    memory_total_bytes: int | None = None
    process_rss_bytes: int | None = None
    cpu_cores: float | None = None  # cores this process may use (its CPU affinity and cgroup cpu quota included)
    host_cores: int | None = None  # cores `cpu_percent` is a share of: the machine's, or those this process may run on where fewer
    cgroup_memory_max_bytes: int | None = None  # None: no limit, or not in a cgroup
    cgroup_cpu_max_cores: float | None = None
    # What the group whose quota binds used (every process in it, this one too), in cores: a
    # quota a sibling process spends is gone for us whatever the host's load says.
    cgroup_cpu_used_cores: float | None = None
    battery_percent: float | None = None
    power_plugged: bool | None = None
    temperature_c: float | None = None  # the hottest sensor
    package_power_w: float | None = None  # from RAPL energy counters
    runnable_tasks: float | None = None  # other threads running or waiting for a core (Linux's procs_running, less the reader)

    def other_load(self) -> float | None:
        """Share (0-1) of the machine's CPU that other programs use: its load minus this process's
        (which psutil gives in % of one core)."""
        if self.cpu_percent is None:
            return None
        ours = (self.process_cpu_percent or 0.0) / max(self.host_cores or 1, 1)
        return min(1.0, max(0.0, (self.cpu_percent - ours) / 100.0))

    def quota_left(self) -> float | None:
        """Cores of the container's CPU quota that its other processes leave us (None: no quota, or
        its use unread)."""
        if self.cgroup_cpu_max_cores is None or self.cgroup_cpu_used_cores is None:
            return None
        others = max(0.0, self.cgroup_cpu_used_cores - (self.process_cpu_percent or 0.0) / 100.0)
        return max(0.0, self.cgroup_cpu_max_cores - others)

    def busy_percent(self) -> float | None:
        """How busy the CPU this process may use is, 0-100: the machine's load, or, where a quota
        binds, the quota's share in use if that is more (a container spending all of its 0.5 core
        on a 4-core host read 12.5% busy, the level "high")."""
        if self.cgroup_cpu_max_cores is None or self.cgroup_cpu_used_cores is None or self.cgroup_cpu_max_cores <= 0:
            return self.cpu_percent
        in_quota = min(100.0, 100.0 * self.cgroup_cpu_used_cores / self.cgroup_cpu_max_cores)
        return in_quota if self.cpu_percent is None else max(self.cpu_percent, in_quota)

    def cpu_share(self, floor: float) -> float:
        """The share of one core an inference thread can expect: at most one, at most this
        process's quota, at least `floor`. From the load alone, the cores other programs leave free
        (processor sharing). A time-sharing scheduler (Linux's CFS) gives a thread that wants a core
        a fair share of one however busy the others keep them: with k threads runnable on n cores,
        n / (k + 1). Where the run queue was read, the larger of the two counts: two programs that
        spin keep a 2-core machine 100% busy, which the load alone reads as no core left (a
        20x slowdown at the floor), while the thread gets two thirds of one. Under random bursts
        of work the two agree on average (processor sharing's k is load / (1 - load)). In a
        container, at most what its quota's other processes leave (`quota_left`: a sibling spinning
        in a 0.5-core container slowed inference 4x where the quota alone said 2x)."""
        cores = self.host_cores or 1
        free = cores * (1.0 - (self.other_load() or 0.0))
        if self.runnable_tasks is not None:
            free = max(free, cores / (self.runnable_tasks + 1.0))
        left = self.quota_left()
        if left is not None:
            free = min(free, left)
        return max(floor, min(1.0, free, self.cpu_cores or 1.0))

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


NUMERIC_FIELDS = (
    "cpu_percent",
    "process_cpu_percent",
    "memory_available_bytes",
    "process_rss_bytes",
    "battery_percent",
    "temperature_c",
    "package_power_w",
    "runnable_tasks",
)


class Source(Protocol):
    """Anything that answers readings; `name` says where they come from."""

    name: str

    def read(self, now: float) -> ResourceSnapshot: ...


# Resource levels (Table 6.7) ------------------------------------------------------------------------

LEVELS = ("high", "medium", "low", "critical")
LEVEL_RANGES = {  # level -> (CPU % range, free memory MB range), as the seed paper gives them
    "high": ((20.0, 30.0), (120.0, 150.0)),
    "medium": ((50.0, 60.0), (60.0, 80.0)),
    "low": ((70.0, 80.0), (20.0, 40.0)),
    "critical": ((90.0, 98.0), (8.0, 19.0)),
}
CPU_BOUNDS = (40.0, 65.0, 85.0)  # above each bound the level drops one step (midpoints between the ranges)
MEMORY_BOUNDS_MB = (100.0, 50.0, 20.0)  # below each bound the level drops one step


def resource_level(snapshot: ResourceSnapshot) -> str:
    """The Table 6.7 level of a reading: the worse of what its CPU load and its free memory say."""
    step = 0
    busy = snapshot.busy_percent()
    if busy is not None:
        step = max(step, sum(busy > b for b in CPU_BOUNDS))
    if snapshot.memory_available_bytes is not None:
        step = max(step, sum(snapshot.memory_available_bytes / MB < b for b in MEMORY_BOUNDS_MB))
    return LEVELS[step]


# The real machine -----------------------------------------------------------------------------------


def _read_text(path: Path) -> str | None:
    """A kernel file's text, or None where it cannot be read (or is not text: a binary or damaged
    file raised UnicodeDecodeError, and the whole reading, CPU and memory too, was dropped)."""
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _read_int_text(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _read_int(path: Path) -> int | None:
    """A kernel file's non-negative integer, or None ("max", absent, unreadable, or not a count:
    a negative memory.max became a total memory of -5 bytes)."""
    value = _read_int_text(_read_text(path))
    return value if value is not None and value >= 0 else None


class CgroupUnreadable(ValueError):
    """A cgroup memory file that is there but cannot be read, or holds no count of bytes."""


def _bytes_file(path: Path) -> int | None:
    """A cgroup memory file's bytes (a limit or a usage): None for "max" or no such file (no limit,
    or no memory controller there); CgroupUnreadable for a file that is there but unreadable or not
    a count. Read as "no limit", one glitch of a 64 MB container's memory.max planned with the
    host's 22 GB for a reading (4.2 GB of budget: a large variant loaded, and the OOM killer)."""
    text = _read_text(path)
    if text is None:
        if not path.exists():
            return None
        raise CgroupUnreadable(f"{path}: unreadable")
    if text == "max":
        return None
    value = _read_int_text(text)
    if value is None or value < 0:
        raise CgroupUnreadable(f"{path}: {text[:40]!r} is not a number of bytes")
    return value


def _cores(quota: int | None, period: int | None) -> float | None:
    """A CPU quota over its period, in cores (v2's cpu.max, v1's cfs files); None for no limit:
    "max", v1's -1, absent, or values no kernel writes (a quota of -1 read as -1e-05 cores)."""
    return quota / period if quota is not None and period is not None and quota > 0 and period > 0 else None


@dataclass(frozen=True)
class CgroupLimits:
    """What the container (cgroup v2, or v1) lets this process use; None where there is no limit."""

    memory_max_bytes: int | None  # the tightest limit from this process's group up to the root
    memory_used_bytes: int | None  # the group's usage without reclaimable page cache (inactive_file)
    cpu_max_cores: float | None = None
    version: int | None = None  # 2, 1, or None outside any cgroup hierarchy we can read
    # What a new allocation can still get: the least, over the groups with a limit, of the limit less
    # that group's own usage. A parent's limit is shared by its children: against it, what this
    # process's siblings use counts too (None: no limit, or no usage to read).
    memory_headroom_bytes: int | None = None
    cpu_usage_s: float | None = None  # the CPU time the group whose quota binds has used, every process in it (None: unread)
    cpu_group: str | None = None  # that group's folder (its counter is another group's once the binding quota moves)
    memory_unread: str | None = None  # why the memory fields are None: a file there that could not be read


def _headroom(groups: list[tuple[int | None, int | None]]) -> int | None:
    """min(limit - used) over (limit, used) pairs that have both."""
    room = [max(0, limit - used) for limit, used in groups if limit is not None and used is not None]
    return min(room) if room else None


def _stat_value(path: Path, key: str) -> int | None:
    """One key's count in a cgroup stat file ("key value" lines), None when absent."""
    for line in (_read_text(path) or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return _read_int_text(value)
    return None


def _memory_stat(path: Path, key: str) -> int:
    return _stat_value(path, key) or 0


def _membership(proc_self_cgroup: Path, controller: str | None) -> str:
    """This process's group path: the v2 line (`0::/path`), or the v1 line naming `controller`."""
    for line in (_read_text(proc_self_cgroup) or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if (controller is None and hierarchy == "0" and controllers == "") or (controller is not None and controller in controllers.split(",")):
            return path.lstrip("/")
    return ""


def _chain(root: Path, relative: str) -> list[Path]:
    """The group folder and its parents up to `root`, leaf first, those that exist."""
    folders, current = [], root / relative if relative else root
    while True:
        if current.is_dir():
            folders.append(current)
        if current == root or root not in current.parents:
            break
        current = current.parent
    return folders or [root]


def _net_usage(usage_file: Path, stat_file: Path, reclaimable: str) -> int | None:
    """A group's memory usage without its reclaimable page cache (None without a usage file;
    CgroupUnreadable for one that cannot be read)."""
    used = _bytes_file(usage_file)
    return None if used is None else max(0, used - _memory_stat(stat_file, reclaimable))


def _v2_limit(group: Path) -> int | None:
    """A v2 group's memory limit: the lower of memory.max and memory.high (past memory.high the
    kernel throttles the group in reclaim: a service under systemd's MemoryHigh=64M was planned
    with the host's free memory, and its latency went)."""
    limits = [v for v in (_bytes_file(group / "memory.max"), _bytes_file(group / "memory.high")) if v is not None]
    return min(limits) if limits else None


def read_cgroup(root: Path = Path("/sys/fs/cgroup"), proc_self_cgroup: Path = Path("/proc/self/cgroup")) -> CgroupLimits:
    """Memory and CPU limits of this process's cgroup: v2 (`memory.max`, `memory.current` less
    `inactive_file`, `cpu.max`) or v1 (`memory.limit_in_bytes`, `memory.usage_in_bytes` less
    `total_inactive_file`, `cpu.cfs_quota_us`); limits are the tightest up the hierarchy (v2's
    `memory.high` counts as one). A memory file that is there but cannot be read is a glitch, not
    a limit lifted: the memory fields are None then and `memory_unread` says why (the CPU's are
    read all the same)."""
    root = Path(root)
    if (root / "cgroup.controllers").exists():
        chain = _chain(root, _membership(proc_self_cgroup, None))
        quotas = []
        for g in chain:
            fields_ = (_read_text(g / "cpu.max") or "max").split()  # "QUOTA PERIOD", or "max PERIOD"
            if len(fields_) == 2 and (cores := _cores(_read_int_text(fields_[0]), _read_int_text(fields_[1]))) is not None:
                quotas.append((cores, g))
        cores, binding = min(quotas, key=lambda q: q[0]) if quotas else (None, None)
        used = None if binding is None else _stat_value(binding / "cpu.stat", "usage_usec")
        cpu = {"cpu_max_cores": cores, "cpu_usage_s": None if used is None else used / 1e6, "cpu_group": None if binding is None else str(binding)}
        return _with_memory(
            2, cpu, lambda: ([_v2_limit(g) for g in chain], [_net_usage(g / "memory.current", g / "memory.stat", "inactive_file") for g in chain])
        )
    if (root / "memory").is_dir() or (root / "cpu").is_dir():
        memory = _chain(root / "memory", _membership(proc_self_cgroup, "memory"))
        quotas = [
            (c, g)
            for g in _chain(root / "cpu", _membership(proc_self_cgroup, "cpu"))
            if (c := _cores(_read_int(g / "cpu.cfs_quota_us"), _read_int(g / "cpu.cfs_period_us"))) is not None
        ]
        cores, binding = min(quotas, key=lambda q: q[0]) if quotas else (None, None)
        used = None
        if binding is not None:  # cpuacct beside cpu (mounted together), or its own hierarchy at the same path
            relative = binding.relative_to(root / "cpu") if root / "cpu" in binding.parents else Path()
            used = next((v for f in (binding / "cpuacct.usage", root / "cpuacct" / relative / "cpuacct.usage") if (v := _read_int(f)) is not None), None)
        cpu = {"cpu_max_cores": cores, "cpu_usage_s": None if used is None else used / 1e9, "cpu_group": None if binding is None else str(binding)}
        return _with_memory(
            1,
            cpu,
            lambda: (
                [v if v is not None and v < UNLIMITED else None for v in (_bytes_file(g / "memory.limit_in_bytes") for g in memory)],
                [_net_usage(g / "memory.usage_in_bytes", g / "memory.stat", "total_inactive_file") for g in memory],
            ),
        )
    return CgroupLimits(None, None, None, None)


def _with_memory(version: int, cpu: dict[str, Any], read_memory: Callable[[], tuple[list[int | None], list[int | None]]]) -> CgroupLimits:
    """The limits with the memory's read by `read_memory` (each group's limit and usage, leaf
    first), or none and why where a file could not be read."""
    try:
        limit_of, usage = read_memory()
    except CgroupUnreadable as err:
        return CgroupLimits(None, None, version=version, memory_unread=str(err), **cpu)
    limits = [v for v in limit_of if v is not None]  # "max" reads as None
    return CgroupLimits(min(limits) if limits else None, usage[0], version=version, memory_headroom_bytes=_headroom(list(zip(limit_of, usage))), **cpu)


def cpu_time_total(times: Any) -> float:
    """All the CPU time in a psutil.cpu_times() reading. Linux counts the time spent running virtual
    machines' CPUs twice: within user (nice) and again as guest (guest_nice); summed as they come,
    a host running guests read busier than it was. psutil's own cpu_percent takes them out too."""
    return sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)


CLOCK_TICKS = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0  # /proc/stat's unit (USER_HZ)


def cpu_seconds_by_number(proc_stat_text: str) -> dict[int, tuple[float, float]]:
    """(all, idle) CPU seconds of each online core by its number, from /proc/stat's cpuN lines (all
    as `cpu_time_total` counts it, idle with iowait). psutil's per-CPU list is by position, not
    number: with a core offline (hotplug, as phones and boards do to save power) position 2 is cpu3,
    and a process pinned to cpu3 read another core's load, or none."""
    cores = {}
    for line in proc_stat_text.splitlines():
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        try:
            values = [int(v) for v in rest.split()]  # user nice system idle iowait irq softirq steal guest guest_nice
        except ValueError:
            continue
        if len(values) < 4:
            continue
        guests = sum(values[8:10])  # counted within user and nice already
        cores[int(name[3:])] = ((sum(values) - guests) / CLOCK_TICKS, sum(values[3:5]) / CLOCK_TICKS)
    return cores


def allowed_cpus(host_cores: int) -> list[int] | None:
    """The CPUs this process may run on, where fewer than the host's (taskset, a cpuset container,
    Kubernetes' static CPU policy); None: all of them, or not known on this platform."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # (not on macOS or Windows)
        return None
    return allowed if 0 < len(allowed) < host_cores else None


class SystemSource:
    """Live readings of this machine through psutil, cgroup files and RAPL counters."""

    name = "system"

    def __init__(
        self,
        cgroup_root: Path = Path("/sys/fs/cgroup"),
        powercap_root: Path = Path("/sys/class/powercap"),
        proc_self_cgroup: Path = Path("/proc/self/cgroup"),
        proc_stat: Path = Path("/proc/stat"),
    ) -> None:
        self.cgroup_root, self.powercap_root, self.proc_self_cgroup, self.proc_stat = (
            Path(cgroup_root),
            Path(powercap_root),
            Path(proc_self_cgroup),
            Path(proc_stat),
        )
        self.process = psutil.Process()
        self.process.cpu_percent(None)  # the first call only starts the measurement interval
        self._process_cpu_since = time.monotonic()  # when that interval began
        self._process_cpu: float | None = None
        # (the CPUs, their (all, idle) seconds) at this source's own interval's start (psutil.cpu_percent's is shared by the process)
        self._cpu_times: tuple[list[int] | None, tuple[float, float]] = (None, self._cpu_seconds(None))
        self._cpu_percent: float | None = None
        self._energy: tuple[float, dict[Path, int]] | None = None  # (time, each package's µJ) of the previous RAPL reading
        self._failed_sensors: set[str] = set()  # optional sensors whose read failed (said once)
        self._memory_limits: CgroupLimits | None = None  # the last cgroup reading whose memory files read whole
        self._memory_glitch = False  # whether the glitch under way was said
        self._group_cpu: tuple[float, float, str | None] | None = None  # (time, CPU seconds, group) of the quota's group at the interval's start
        self._group_cores: float | None = None

    def _cpu_seconds(self, cpus: list[int] | None) -> tuple[float, float]:
        """(all, idle) CPU seconds so far over the `cpus` this process may run on (by number, from
        /proc/stat), or over every core (None, or /proc/stat unreadable)."""
        if cpus is not None:
            by_number = cpu_seconds_by_number(_read_text(self.proc_stat) or "")
            mine = [by_number[c] for c in cpus if c in by_number]
            if mine:
                return sum(all_ for all_, _ in mine), sum(idle for _, idle in mine)
        times = psutil.cpu_times()
        return cpu_time_total(times), times.idle + getattr(times, "iowait", 0.0)

    def _machine_cpu_percent(self, cpus: list[int] | None) -> float | None:
        """Busy share of the cores (all, or the `cpus` this process may run on) since this source's
        previous reading (0-100), once CPU_MIN_INTERVAL_S of CPU time has passed. Pinned to one core
        of two, the machine's share said a core free beside a busy one: a slowdown of 1, not ~2."""
        now = self._cpu_seconds(cpus)
        since, before = self._cpu_times
        if since != cpus:  # the affinity changed: a new interval starts, over the new cores
            self._cpu_times = (cpus, now)
            return self._cpu_percent
        total, idle = now[0] - before[0], now[1] - before[1]
        if total > 0 and total >= CPU_MIN_INTERVAL_S:  # (> 0 too: the tests set the minimum to 0)
            self._cpu_percent = min(100.0, max(0.0, 100.0 * (total - idle) / total))
            self._cpu_times = (cpus, now)
        return self._cpu_percent  # None until some CPU time has passed

    def _group_cpu_cores(self, usage_s: float | None, group: str | None) -> float | None:
        """The cores the quota's group used since the interval began, once CPU_MIN_INTERVAL_S has
        passed (the previous figure until then; None without a quota or its usage). Another group
        whose quota now binds (a child's raised above its parent's) starts a new interval: its
        counter minus the old group's read as 4,900 cores."""
        now = time.monotonic()
        if usage_s is None:
            self._group_cpu = self._group_cores = None
            return None
        if self._group_cpu is None or group != self._group_cpu[2] or usage_s < self._group_cpu[1]:  # (a counter reset too)
            self._group_cpu, self._group_cores = (now, usage_s, group), None
        elif now - self._group_cpu[0] >= CPU_MIN_INTERVAL_S:
            self._group_cores = (usage_s - self._group_cpu[1]) / (now - self._group_cpu[0])
            self._group_cpu = (now, usage_s, group)
        return self._group_cores

    def _process_cpu_percent(self, host_cores: int) -> float | None:
        """This process's CPU use since the previous measurement, in % of one core, within
        0-100 x the host's cores. psutil divides the CPU time since its previous call (in 10 ms
        ticks) by the wall time since: read right after construction, one tick over a fraction of
        a millisecond said 1141% on a 2-core host. So an interval shorter than
        CPU_MIN_INTERVAL_S is not measured: the previous value stands (None at first)."""
        now = time.monotonic()
        if now - self._process_cpu_since >= CPU_MIN_INTERVAL_S:
            self._process_cpu = min(100.0 * host_cores, max(0.0, float(self.process.cpu_percent(None))))
            self._process_cpu_since = now
        return self._process_cpu

    def read(self, now: float | None = None) -> ResourceSnapshot:
        """One reading of this machine (and of its container's cgroup limits where they bind): what
        a sensor this host lacks is None, not 0."""
        now = time.monotonic() if now is None else now
        memory = psutil.virtual_memory()
        cgroup = read_cgroup(self.cgroup_root, self.proc_self_cgroup)
        available: int | None = int(memory.available)
        if cgroup.memory_unread is None:
            self._memory_limits = cgroup
            self._memory_glitch = False
        else:  # a glitch: the last memory limits read hold (their usage too); none yet: memory unknown
            held = self._memory_limits
            if not self._memory_glitch:  # (said once per glitch)
                log.warning(
                    "%s: the container's memory limits cannot be read; %s",
                    cgroup.memory_unread,
                    "the last ones read hold" if held else "memory reported as absent",
                )
                self._memory_glitch = True
            if held is None:
                available = None
            else:
                cgroup = replace(
                    cgroup, memory_max_bytes=held.memory_max_bytes, memory_used_bytes=held.memory_used_bytes, memory_headroom_bytes=held.memory_headroom_bytes
                )
        if available is not None and cgroup.memory_headroom_bytes is not None:
            available = min(available, cgroup.memory_headroom_bytes)
        elif (
            available is not None and cgroup.memory_max_bytes is not None and cgroup.memory_used_bytes is None
        ):  # (a limit, its usage unread: at most the limit)
            available = min(available, cgroup.memory_max_bytes)
        machine = psutil.cpu_count() or os.cpu_count() or 1
        cpus = allowed_cpus(machine)
        host = len(cpus) if cpus is not None else machine  # (the cores the load is read over)
        cores = float(host) if cgroup.cpu_max_cores is None else min(float(host), cgroup.cpu_max_cores)
        battery = self._battery()
        process_cpu = self._process_cpu_percent(host)
        return ResourceSnapshot(
            t=now,
            cpu_percent=self._machine_cpu_percent(cpus),
            process_cpu_percent=process_cpu,
            memory_available_bytes=available,
            memory_total_bytes=int(memory.total) if cgroup.memory_max_bytes is None else min(int(memory.total), cgroup.memory_max_bytes),
            process_rss_bytes=int(self.process.memory_info().rss),
            cpu_cores=cores,
            host_cores=host,
            cgroup_memory_max_bytes=cgroup.memory_max_bytes,
            cgroup_cpu_max_cores=cgroup.cpu_max_cores,
            cgroup_cpu_used_cores=self._group_cpu_cores(cgroup.cpu_usage_s, cgroup.cpu_group),
            # (psutil says over 100% when the charge counter passes the design full: a trace refused those rows)
            battery_percent=min(100.0, max(0.0, float(battery.percent))) if battery is not None and finite_number(battery.percent) else None,
            power_plugged=bool(battery.power_plugged) if battery is not None and battery.power_plugged is not None else None,
            temperature_c=self._temperature(),
            package_power_w=self._power(now),
            # (the machine's run queue: of no use to a process pinned to some of its cores, whose
            # share it would divide by the whole host's runnable threads; the load there is read over its cores)
            runnable_tasks=self._runnable_tasks(process_cpu or 0.0) if cpus is None else None,
        )

    def _runnable_tasks(self, process_cpu_percent: float) -> float | None:
        """Other programs' threads running or waiting for a core right now: `procs_running` in
        /proc/stat (Linux; None elsewhere) less this reader, and less this process's other threads
        as often as they run (its CPU share: an inference thread busy half the time is counted
        half). One sample per reading; the monitor smooths it."""
        text = _read_text(self.proc_stat)
        if text is None:
            return None
        for line in text.splitlines():
            if line.startswith("procs_running "):
                try:
                    return max(0.0, float(line.split()[1]) - 1.0 - process_cpu_percent / 100.0)
                except (IndexError, ValueError):
                    return None
        return None

    def _battery(self) -> Any:
        """psutil's battery reading, or None. An optional sensor never costs the reading: psutil
        raises ValueError for a sysfs battery whose capacity reads "N/A" and TypeError for a
        non-numeric charge, and each such read failed the whole snapshot (CPU and memory included)."""
        if not hasattr(psutil, "sensors_battery"):
            return None
        try:
            return psutil.sensors_battery()
        except Exception as err:  # noqa: BLE001 - see the docstring
            self._sensor_failed("battery", err)
            return None

    def _temperature(self) -> float | None:
        """The hottest plausible sensor (a bogus 255 or -273 degrees is passed over: a trace refuses it)."""
        if not hasattr(psutil, "sensors_temperatures"):
            return None
        try:
            sensors = psutil.sensors_temperatures()
            low, high = TRACE_COLUMNS["temperature_c"][2]
            readings = [float(t.current) for entries in sensors.values() for t in entries if finite_number(t.current) and low <= t.current <= high]
        except Exception as err:  # noqa: BLE001 - as _battery
            self._sensor_failed("temperature", err)
            return None
        return max(readings) if readings else None

    def _sensor_failed(self, sensor: str, err: Exception) -> None:
        if sensor not in self._failed_sensors:  # once per sensor, not at every reading
            log.warning("the %s sensor cannot be read (%s: %s): reported as absent", sensor, type(err).__name__, err)
            self._failed_sensors.add(sensor)

    def _power(self, now: float) -> float | None:
        """Package power from the change of RAPL energy counters since the previous reading: each
        package's own change (a package unreadable for one reading and back at the next added its
        whole counter to the total: 40 kW), over the packages read both times."""
        counters = {}
        for path in rapl_domains(self.powercap_root):
            try:
                counters[path] = int(path.read_text())
            except (OSError, ValueError):
                continue
        previous, self._energy = self._energy, (now, counters)
        if not counters or previous is None or now <= previous[0]:
            return None  # no counter, or the first reading
        common = counters.keys() & previous[1].keys()
        if not common or any(counters[p] < previous[1][p] for p in common):
            return None  # nothing to compare, or a counter wrapped
        return sum(counters[p] - previous[1][p] for p in common) * 1e-6 / (now - previous[0])


# Traces: recorded or synthetic ------------------------------------------------------------------------


class TraceError(ValueError):
    """A trace file cannot be used; the message names the file and what is wrong with it."""


TRACE_COLUMNS = {  # column -> (snapshot field, scale to the field's unit, valid range in the column's unit)
    "cpu_percent": ("cpu_percent", 1.0, (0.0, 100.0)),
    "memory_available_mb": ("memory_available_bytes", MB, (0.0, 1e9)),
    "battery_percent": ("battery_percent", 1.0, (0.0, 100.0)),
    "temperature_c": ("temperature_c", 1.0, (-60.0, 200.0)),
    "package_power_w": ("package_power_w", 1.0, (0.0, 1e5)),
    "runnable_tasks": ("runnable_tasks", 1.0, (0.0, 1e6)),
    # The recording machine's cores, which cpu_percent and runnable_tasks are of, and those the
    # recording process could use; a trace without them (a synthetic one) is of a one-core device.
    "host_cores": ("host_cores", 1.0, (1.0, 1e5)),
    "cpu_cores": ("cpu_cores", 1.0, (0.001, 1e5)),
    # Whether the device ran on mains (1) or on its battery (0): the energy budget holds on battery
    # alone. Read as 0/1, true/false or yes/no; see `Trace.at` for a trace that has a battery but
    # not this column.
    "power_plugged": ("power_plugged", 1.0, (0.0, 1.0)),
}
PLUGGED_WORDS = {"true": 1.0, "false": 0.0, "yes": 1.0, "no": 0.0}
FAR_AHEAD_STEPS = 100  # a timestamp this many median steps after the previous reading, that the next does not go on from, is garbage


@dataclass(frozen=True)
class Trace:
    """Readings over time: `times` (s, increasing) and one array per column (NaN: not recorded)."""

    name: str
    times: np.ndarray
    columns: dict[str, np.ndarray]
    skipped_rows: int = 0  # rows dropped as garbage while reading
    source: str = ""  # what it was read from: a file's absolute path, or the synthetic profile's name

    @property
    def duration(self) -> float:
        return float(self.times[-1] - self.times[0]) if len(self.times) else 0.0

    @property
    def loop_period(self) -> float:
        """A looped replay's period: the duration and one median step, so the last row holds for a
        step before the trace starts over (by the duration alone it was never reached: a looped
        draining battery never drained)."""
        steps = np.diff(self.times)
        return self.duration + (float(np.median(steps)) if len(steps) else 0.0)

    def at(self, t: float) -> ResourceSnapshot:
        """The reading in force at trace time `t` (the last row at or before it; the first row before
        the trace starts, the last after it ends): a gap in a trace holds the last value.

        A trace with a battery column and no `power_plugged` column at all (written by hand) is
        taken as on battery: a battery column is what someone replaying a drained battery writes,
        and read as "unknown" the energy budget (`runtime.energy_budget_mj`, on battery only) could
        never apply to a replay. `record_trace` writes the column wherever it read a battery, its
        cells empty where the machine did not say (unknown: None, no energy budget). A recording
        made before it did so has no column: on a plugged-in machine, add one (`power_plugged`, 1
        in every row). A trace without a battery (the synthetic ones) is of a device on mains."""
        i = int(np.searchsorted(self.times, t + self.times[0], side="right")) - 1
        i = min(max(i, 0), len(self.times) - 1)
        values: dict[str, Any] = {}
        for column, (field_name, scale, _) in TRACE_COLUMNS.items():
            series = self.columns.get(column)
            if series is not None and not math.isnan(series[i]):
                value = float(series[i]) * scale
                if field_name == "power_plugged":
                    values[field_name] = value >= 0.5
                else:
                    values[field_name] = int(value) if field_name.endswith("_bytes") or field_name == "host_cores" else value
        if "battery_percent" in values and "power_plugged" not in self.columns:
            values["power_plugged"] = False
        return ResourceSnapshot(t=t, **{"cpu_cores": 1.0, "host_cores": 1, **values})  # without core counts, a traced device's load is of one core

    def to_rows(self) -> list[dict[str, float | None]]:
        """One dict per reading; a value not recorded is left out, but for `power_plugged`, where it
        is None: the column's presence says the power state was asked for (see `at`)."""
        rows = []
        for i, t in enumerate(self.times):
            row: dict[str, float | None] = {"t": float(t)}
            row.update({c: float(v[i]) for c, v in self.columns.items() if not math.isnan(v[i])})
            if "power_plugged" in self.columns and "power_plugged" not in row:
                row["power_plugged"] = None
            rows.append(row)
        return rows

    def write_csv(self, path: Path) -> None:
        from racmkd.utils import atomic_write_text

        names = ["t", *self.columns]
        lines = [",".join(names)] + [",".join("" if r.get(n) is None else format(r[n], ".10g") for n in names) for r in self.to_rows()]
        atomic_write_text(Path(path), "\n".join(lines) + "\n")

    def write(self, path: Path) -> None:
        """Write the trace as `load_trace` reads it back: JSON ({"samples": [...]}) for a .json file,
        CSV otherwise (CSV under a .json name was refused as unreadable on replay)."""
        from racmkd.utils import atomic_write_json

        if Path(path).suffix.lower() == ".json":
            atomic_write_json(Path(path), {"samples": self.to_rows()})
        else:
            self.write_csv(path)


MIN_TRACE_SPAN_S, MAX_TRACE_SPAN_S = 1e-3, 1e9  # the time a trace file's readings may span: a millisecond to about 30 years


def load_trace(path: str | Path) -> Trace:
    """Read a recorded trace (CSV with a header, or JSON: a list of objects or {"samples": [...]}).
    Columns: `t` (seconds) and any of cpu_percent, memory_available_mb, battery_percent,
    temperature_c, package_power_w, runnable_tasks, host_cores, cpu_cores, power_plugged (0/1,
    true/false, yes/no). Rows with garbage (text, NaN, values out of range, time going
    backwards, a timestamp more than FAR_AHEAD_STEPS median steps after the previous row that the
    next row does not go on from, or ahead of the next two rows while they go on from the previous) are
    skipped and counted, the first said with its line and why; a file without two usable rows is an
    error. Kept, one mistyped timestamp ahead made every later row up to it go back in time: far
    ahead, the rest of the trace was thrown away. A long pause that the recording goes on from is kept."""
    path = Path(path)
    if path.is_dir():
        raise TraceError(f"{path}: a folder, not a trace file; name the .csv or .json trace inside it, or use a synthetic trace: {', '.join(SYNTHETIC)}")
    if not path.is_file():
        raise TraceError(f"{path}: no such trace file. Record one (`racmkd edge record`), or use a synthetic trace: {', '.join(SYNTHETIC)}")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8-sig"))  # (a byte-order mark, as a CSV may have)
            rows = data.get("samples") if isinstance(data, dict) else data
            lines = []
            if not isinstance(rows, list):
                raise TraceError(f"{path}: expected a JSON list of readings or an object with a 'samples' list")
        else:
            with path.open(newline="", encoding="utf-8-sig") as handle:  # a spreadsheet's byte-order mark is no column name
                reader = csv.DictReader(handle, skipinitialspace=True)
                names = [c for c in reader.fieldnames or () if c]  # (a spreadsheet's trailing empty columns are no names)
                repeated = sorted({c for c in names if names.count(c) > 1})
                if repeated:  # (DictReader kept the last of them, in silence)
                    raise TraceError(f"{path}: the header names {', '.join(repeated)} more than once; keep one column of each")
                rows, lines = [], []
                for row in reader:
                    rows.append(row)
                    # the line the row starts on (blank lines are skipped: no row index + 2; a quoted cell may span lines)
                    lines.append(reader.line_num - sum(v.count("\n") for v in row.values() if isinstance(v, str)))
    except TraceError:
        raise
    except (OSError, ValueError, csv.Error, RecursionError) as err:  # (ValueError: bad JSON or UTF-8, a number past Python's 4,300 digits)
        raise TraceError(f"{path}: unreadable trace ({type(err).__name__}: {err})") from None
    if rows and not any(isinstance(r, dict) and "t" in r for r in rows):
        raise TraceError(f"{path}: no `t` column (the reading's time in seconds); a trace needs t and at least one of {', '.join(TRACE_COLUMNS)}")
    known = [c for c in TRACE_COLUMNS if any(isinstance(r, dict) and c in r for r in rows)]
    if not known:
        raise TraceError(f"{path}: no known columns; a trace needs t and at least one of {', '.join(TRACE_COLUMNS)}")
    unknown = sorted({str(c) for r in rows if isinstance(r, dict) for c in r if c not in TRACE_COLUMNS and c != "t" and c is not None})
    if unknown:  # (a `memory_available_bytes` column beside a known one was replayed as absent memory, in silence)
        log.warning("%s: columns %s are not read (a trace's columns: %s)", path, ", ".join(unknown), ", ".join(TRACE_COLUMNS))
    times: list[float] = []
    columns: dict[str, list[float]] = {c: [] for c in known}
    parsed = [_parse_row(row, known) for row in rows]
    usable = [p for p in parsed if not isinstance(p, str)]
    first_bad = next(((i, p) for i, p in enumerate(parsed) if isinstance(p, str)), None)
    garbage = "" if first_bad is None else f"; the first unreadable, {f'line {lines[first_bad[0]]}' if lines else f'sample {first_bad[0] + 1}'}: {first_bad[1]}"
    skipped, backwards = len(rows) - len(usable), 0
    steps = np.diff([t for t, _ in usable])
    steps = steps[steps > 0]
    far_ahead = FAR_AHEAD_STEPS * float(np.median(steps)) if len(steps) else math.inf
    # A first row far from the rest (a typo, t=-100000 or t=100000) while the third row goes on
    # from the second: kept, it stretched the trace to 100,000 s and every replayed reading came
    # from that one row, or put every later row back in time. A second row far from both (the typo
    # there) is skipped below, as any row far ahead is.
    first = 1 if len(usable) > 2 and abs(usable[1][0] - usable[0][0]) > far_ahead and 0 < usable[2][0] - usable[1][0] <= far_ahead else 0
    skipped += first
    for i, (t, values) in enumerate(usable[first:], start=first):
        if times and t <= times[-1]:
            skipped += 1
            backwards += t < times[-1]  # (an equal time is a duplicate, not a jump)
            continue
        if times and i + 2 < len(usable) and times[-1] < usable[i + 1][0] < usable[i + 2][0] < t:
            # A time ahead of the next two rows, which go on in order from the previous one (a
            # typo, 15.0 for 5.0): kept, every row after it up to 15 s went back in time and was
            # skipped instead. (Of two rows swapped, the second is skipped.)
            skipped += 1
            continue
        gone_on_from = i + 1 < len(usable) and usable[i + 1][0] > t
        if times and t - times[-1] > far_ahead and not gone_on_from:
            skipped += 1
            continue
        times.append(t)
        for c in known:
            columns[c].append(values.get(c, math.nan))
    if backwards > len(rows) / 2:  # (before counting what is left: a file newest first leaves one row)
        newest_first = all(a[0] >= b[0] for a, b in zip(usable, usable[1:]))
        # One timestamp far ahead leaves the rows after it in order among themselves; rows out of
        # order (shuffled) go back from one row to the next again and again.
        steps_back = sum(b[0] < a[0] for a, b in zip(usable, usable[1:]))
        why = "newest first? sort the rows by t" if newest_first else "rows out of order? sort them by t" if steps_back > 1 else "a timestamp far ahead?"
        raise TraceError(f"{path}: {backwards} of {len(rows)} rows go back in time after an earlier one ({why}); check the file")
    if len(times) < 2:
        raise TraceError(f"{path}: fewer than two usable readings ({skipped} rows skipped as garbage{garbage})")
    span = times[-1] - times[0]
    if not MIN_TRACE_SPAN_S <= span <= MAX_TRACE_SPAN_S:  # (a nanosecond's trace replayed in no time: a monitor share of 20,062,800%)
        raise TraceError(
            f"{path}: its readings span {span:.3g} s (t from {times[0]:.6g} to {times[-1]:.6g}); a trace spans {MIN_TRACE_SPAN_S:g} s to {MAX_TRACE_SPAN_S:.0e} s: is t in seconds?"
        )
    if skipped:
        log.warning("%s: skipped %d garbage rows of %d%s", path, skipped, len(rows), garbage)
    return Trace(path.stem, np.array(times), {c: held(np.array(v)) for c, v in columns.items()}, skipped, source=str(path.resolve()))


def held(values: np.ndarray) -> np.ndarray:
    """A column with its gaps (readings a row did not record) filled with the previous reading: a
    sensor's value holds until it is read again. Before its first reading it stays absent (NaN)."""
    known = ~np.isnan(values)
    if known.all() or not known.any():
        return values
    last = np.maximum.accumulate(np.where(known, np.arange(len(values)), -1))
    return np.where(last >= 0, values[np.maximum(last, 0)], np.nan)


def _parse_row(row: Any, columns: list[str]) -> tuple[float, dict[str, float]] | str:
    """A row's time and readings, or what makes it garbage (said with the first such row: a count
    alone left a `top`-style trace, CPU above 100%, refused with nothing to act on)."""
    if not isinstance(row, dict):
        return f"not an object of readings ({type(row).__name__})"
    raw_t = row.get("t")
    try:
        t = float(raw_t) if not isinstance(raw_t, bool) else math.nan  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        t = math.nan
    if not math.isfinite(t):
        return f"t {raw_t!r} is not a finite number of seconds"
    values = {}
    for c in columns:
        raw = row.get(c)
        if raw in (None, ""):
            continue  # not recorded in this row: held from the previous one (see `held`)
        if c == "power_plugged":
            plugged = _plugged(raw)
            if plugged is None:
                return f"power_plugged {raw!r} is none of 0/1, true/false, yes/no"
            values[c] = plugged
            continue
        low, high = TRACE_COLUMNS[c][2]
        try:
            value = float(raw) if not isinstance(raw, bool) else math.nan
        except (TypeError, ValueError, OverflowError):
            value = math.nan
        if not math.isfinite(value) or not low <= value <= high or (c == "host_cores" and value != int(value)):  # (2.5 cores read as 2)
            whole = " whole" if c == "host_cores" else ""
            return f"{c} {raw!r} is not a{whole} number in [{low:g}, {high:g}]"
        values[c] = value
    return (t, values) if values else f"no reading at t {raw_t!r}"


def _plugged(raw: Any) -> float | None:
    """A `power_plugged` cell as 1.0 (mains) or 0.0 (battery): a JSON boolean, 0/1, or the words
    true/false, yes/no; None for anything else (a garbage row)."""
    if isinstance(raw, bool):
        return float(raw)
    if isinstance(raw, str):
        word = raw.strip().lower()
        if word in PLUGGED_WORDS:
            return PLUGGED_WORDS[word]
        try:
            raw = float(word)
        except ValueError:
            return None
    return float(raw) if isinstance(raw, (int, float)) and raw in (0, 1) else None


def level_value(level: str, which: int, fraction: float | np.ndarray) -> float | np.ndarray:
    """A value inside a level's Table 6.7 range: which 0 = CPU %, 1 = free MB; fraction 0..1."""
    low, high = LEVEL_RANGES[level][which]
    return low + (high - low) * fraction


RANDOM_WALK_SPAN_S = 120.0  # the length over which the random walk keeps its original pace (see synthetic_trace)


def synthetic_trace(kind: str, duration_s: float = 120.0, step_s: float = 0.1, seed: int = 0) -> Trace:
    """A synthetic resource profile in the seed paper's levels:

    steady    the high level throughout (small noise)
    periodic  a smooth cycle high -> critical -> high, period duration/3
    sudden    high, a sudden drop to critical for the middle third, then high again
    random    a bounded random walk across all levels
    critical  the critical level throughout

    Each shape fits `duration_s`: a trace of any length shows the whole of it (`racmkd edge run`
    makes its trace as long as the run)."""
    if kind not in SYNTHETIC:
        raise TraceError(f"unknown synthetic trace {kind!r}; choose one of {', '.join(SYNTHETIC)} or give a trace file")
    if not (0 < step_s < duration_s < math.inf and duration_s / step_s <= 1e6):
        raise TraceError(f"synthetic trace {kind!r}: duration {duration_s} s and step {step_s} s must be positive, the step shorter, at most a million steps")
    rng = np.random.default_rng(seed)
    t = np.arange(0.0, duration_s + 1e-9, step_s)
    n = len(t)
    noise = rng.uniform(0, 1, size=(2, n))
    if kind == "steady":
        cpu, mem = level_value("high", 0, noise[0]), level_value("high", 1, noise[1])
    elif kind == "critical":
        cpu, mem = level_value("critical", 0, noise[0]), level_value("critical", 1, noise[1])
    elif kind == "periodic":
        phase = (1 - np.cos(2 * np.pi * t / (duration_s / 3))) / 2  # 0 (high) .. 1 (critical)
        cpu = 25.0 + (94.0 - 25.0) * phase + rng.normal(0, 1.5, n)
        mem = 135.0 - (135.0 - 12.0) * phase + rng.normal(0, 2.0, n)
    elif kind == "sudden":
        inside = (t >= duration_s / 3) & (t < 2 * duration_s / 3)
        cpu = np.where(inside, level_value("critical", 0, noise[0]), level_value("high", 0, noise[0]))
        mem = np.where(inside, level_value("critical", 1, noise[1]), level_value("high", 1, noise[1]))
    else:  # random walk, reflected at the edges of the levels' span
        cpu, mem = np.empty(n), np.empty(n)
        cpu[0], mem[0] = 25.0, 135.0
        # The walk's pace fits the trace's length, as the other profiles' shapes do: 6 CPU points
        # and 9 MB per √s over RANDOM_WALK_SPAN_S, so a 10 s trace crosses the levels as a 120 s
        # one does (at a fixed pace, 10 s of it stayed at the high level throughout).
        pace = np.sqrt(step_s * RANDOM_WALK_SPAN_S / duration_s)
        steps = rng.normal(0, 1, size=(2, n)) * pace * np.array([[6.0], [9.0]])
        for i in range(1, n):
            cpu[i] = _reflect(cpu[i - 1] + steps[0, i], 15.0, 98.0)
            mem[i] = _reflect(mem[i - 1] + steps[1, i], 8.0, 150.0)
    return Trace(kind, t, {"cpu_percent": np.clip(cpu, 0.0, 100.0), "memory_available_mb": np.clip(mem, 1.0, None)}, source=kind)


def _reflect(x: float, low: float, high: float) -> float:
    if x < low:
        return 2 * low - x
    if x > high:
        return 2 * high - x
    return x


SYNTHETIC = ("steady", "periodic", "sudden", "random", "critical")


def trace_from(name_or_path: str | Path, duration_s: float = 120.0, step_s: float = 0.1, seed: int = 0) -> Trace:
    """A synthetic trace by name, or a trace file by path."""
    if str(name_or_path) in SYNTHETIC:
        return synthetic_trace(str(name_or_path), duration_s, step_s, seed)
    return load_trace(name_or_path)


class RecordingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during `record_trace`: the readings so far, as a trace, for the caller to
    keep; `status` is the exit status the stop means (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, trace: Trace, status: int = 130) -> None:
        super().__init__()
        self.trace, self.status = trace, status


def record_trace(source: Source, seconds: float, interval_s: float = 0.1, name: str = "recorded") -> Trace:
    """Readings of `source` every `interval_s` for `seconds` of wall time, as a trace to replay
    (`racmkd edge record`): record a device under its real workload, simulate against it later.
    Ctrl-C or SIGTERM (`exit_on_sigterm`: `timeout`, systemd, `docker stop`) ends the recording early
    with RecordingInterrupted, which holds what was read so far."""
    from racmkd.utils import Terminated

    times, columns = [], {c: [] for c in TRACE_COLUMNS}
    started = time.monotonic()
    interrupted: int | None = None  # the exit status of the stop
    try:
        while (now := time.monotonic()) - started <= seconds:
            reading = source.read(now)
            for column, (field_name, scale, _) in TRACE_COLUMNS.items():  # (a whole row or none: the interrupt may come anywhere)
                value = getattr(reading, field_name)
                columns[column].append(math.nan if value is None else float(value) / scale)
            times.append(now - started)
            time.sleep(max(0.0, started + len(times) * interval_s - time.monotonic()))
    except (KeyboardInterrupt, Terminated) as stop:
        interrupted = stop.code if isinstance(stop, Terminated) else 130
        columns = {c: v[: len(times)] for c, v in columns.items()}
    kept = {c: held(np.array(v)) for c, v in columns.items() if v and not all(math.isnan(x) for x in v)}  # absent sensors stay absent
    if "battery_percent" in kept:  # the power state asked for, even if never told: without the column a battery reads as on battery
        kept.setdefault("power_plugged", np.array(columns["power_plugged"]))
    trace = Trace(name, np.array(times), kept)
    if interrupted is not None:
        raise RecordingInterrupted(trace, interrupted)
    return trace


class TraceSource:
    """Replays a trace: `read(now)` answers the reading in force `now - start` seconds into it
    (`loop` starts it over at the end instead of holding the last reading)."""

    def __init__(self, trace: Trace, start: float | None = None, loop: bool = False) -> None:
        self.trace, self.loop = trace, loop
        self.start = time.monotonic() if start is None else start
        self.name = f"trace:{trace.name}"

    def read(self, now: float | None = None) -> ResourceSnapshot:
        now = time.monotonic() if now is None else now
        offset = now - self.start
        if self.loop and self.trace.duration > 0:
            offset %= self.trace.loop_period
        return replace(self.trace.at(offset), t=now)
