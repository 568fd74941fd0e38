"""Resource sources, traces, the monitor, and the allocator (eq. 26) with its hysteresis and PID."""

from __future__ import annotations

import dataclasses
import gc
import itertools
import json
import math
import os
import random
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from racmkd.config import ConfigError, MonitorConfig, PIDGains, RuntimeConfig
from racmkd.resources.allocator import (
    RESOURCES,
    Allocator,
    Budget,
    DeadlineRisk,
    Decision,
    Hysteresis,
    LatencyController,
    NoConfigurationError,
    ProfileTable,
    Variant,
    config_costs,
)
from racmkd.resources import sources
from racmkd.resources.monitor import ResourceMonitor, collector_held
from racmkd.resources.sources import (
    MB,
    SYNTHETIC,
    ResourceSnapshot,
    SystemSource,
    Trace,
    TraceError,
    TraceSource,
    load_trace,
    read_cgroup,
    resource_level,
    synthetic_trace,
)

# Sources ---------------------------------------------------------------------------------------------


def test_system_source_reads_this_machine(tmp_path: Path) -> None:
    source = SystemSource(cgroup_root=tmp_path / "no-cgroup", powercap_root=tmp_path / "no-powercap")
    deadline = time.monotonic() + 5.0  # (pinned to one core, 0.05 s of sleep gave less CPU time than a reading needs: None)
    while (s := source.read()).cpu_percent is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 0.0 <= s.cpu_percent <= 100.0
    assert 0 < s.memory_available_bytes <= s.memory_total_bytes == psutil.virtual_memory().total
    assert s.process_rss_bytes > 10 * MB  # this test process, with torch loaded
    assert s.cpu_cores >= 1
    assert s.cgroup_memory_max_bytes is None and s.package_power_w is None  # absent here, reported as absent


def test_this_machines_cgroup_files_and_run_queue_are_read() -> None:
    """The real /sys/fs/cgroup and /proc/stat (the fakes below test the parsing): the cgroup version
    is found and what it reports is sane; a busy process elsewhere shows in the run queue."""
    import subprocess
    import sys

    from racmkd.resources.sources import read_cgroup

    limits = read_cgroup()
    expected = (
        2
        if Path("/sys/fs/cgroup/cgroup.controllers").exists()
        else 1
        if Path("/sys/fs/cgroup/memory").is_dir() or Path("/sys/fs/cgroup/cpu").is_dir()
        else None
    )
    assert limits.version == expected
    assert limits.memory_max_bytes is None or limits.memory_max_bytes > 0
    assert limits.memory_used_bytes is None or 0 < limits.memory_used_bytes <= psutil.virtual_memory().total
    source = SystemSource()
    idle = source.read().runnable_tasks
    if sources.allowed_cpus(psutil.cpu_count()) is not None:  # (taskset, a cpuset container: the host's run queue is not ours, and not read)
        assert idle is None
        return
    assert idle is not None and idle >= 0.0
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        loaded = []
        for _ in range(5):
            time.sleep(0.05)
            loaded.append(source.read().runnable_tasks)
    finally:
        busy.kill()
        busy.wait()
    assert max(loaded) >= 0.9  # the other process, always runnable


def test_absent_sensors_are_none_and_present_ones_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "sensors_battery", lambda: None)
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: {})
    s = SystemSource(tmp_path, tmp_path, proc_stat=tmp_path / "no-stat").read()
    assert s.battery_percent is None and s.power_plugged is None and s.temperature_c is None and s.runnable_tasks is None
    stat = tmp_path / "stat"
    # This process's CPU share, fixed: measured between a source's creation and its reading (a few
    # microseconds here, in 10 ms clock ticks), it read anywhere from 0 to 1000% on a busy CI host.
    monkeypatch.setattr(psutil.Process, "cpu_percent", lambda self, interval=None: 50.0)
    monkeypatch.setattr(sources, "CPU_MIN_INTERVAL_S", 0.0)  # (read at once: measured, not left unknown)
    for text, expected in (("cpu  1 2 3 4\nprocs_running 5\nprocs_blocked 0\n", 3.5), ("procs_running many\n", None), ("cpu  1 2 3 4\n", None)):
        stat.write_text(text)
        runnable = SystemSource(tmp_path, tmp_path, proc_stat=stat).read().runnable_tasks
        # 5 running, less the reader, less this process's other threads as often as they ran (half the time)
        assert runnable == expected

    class Battery:
        percent, power_plugged, secsleft = 42.0, False, 3600

    class Temp:
        def __init__(self, current: float) -> None:
            self.current = current

    monkeypatch.setattr(psutil, "sensors_battery", lambda: Battery())
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: {"coretemp": [Temp(41.0), Temp(57.5)], "nvme": [Temp(35.0)], "bogus": [Temp(255.0)]})
    s = SystemSource(tmp_path, tmp_path).read()
    assert (s.battery_percent, s.power_plugged, s.temperature_c) == (42.0, False, 57.5)  # (255 degrees: a bogus sensor, passed over)
    Battery.percent = 105.0  # psutil's reading when the charge counter passes the design full: a trace refused the row
    assert SystemSource(tmp_path, tmp_path).read().battery_percent == 100.0

    def unreadable() -> None:  # psutil itself, for a sysfs battery whose capacity reads "N/A"
        raise ValueError("invalid literal for int() with base 10: 'N/A'")

    monkeypatch.setattr(psutil, "sensors_battery", unreadable)
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: {"x": [Temp("N/A")]})  # type: ignore[arg-type]
    s = SystemSource(tmp_path, tmp_path).read()  # an optional sensor never costs the reading
    assert s.battery_percent is None and s.power_plugged is None and s.temperature_c is None and s.memory_available_bytes > 0


def test_a_first_reading_claims_no_impossible_cpu_share(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read right after construction, psutil's process share came from a fraction of a millisecond
    in 10 ms ticks: 1141% on a 2-core host. Now a too-short interval is no reading (None), and a
    measured one is at most every core's."""
    share = [1141.4]
    monkeypatch.setattr(psutil.Process, "cpu_percent", lambda self, interval=None: share[0])
    cpu_times = psutil.cpu_times()
    monkeypatch.setattr(psutil, "cpu_times", lambda: cpu_times)  # no machine time passes (48 cores pass 0.05 s in 1 ms)
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 2)
    source = SystemSource(tmp_path, tmp_path, proc_stat=tmp_path / "no-stat")
    first = source.read()
    assert first.process_cpu_percent is None and first.cpu_percent is None  # nothing measured yet: unknown, not 1141% or 0%
    monkeypatch.setattr(sources, "CPU_MIN_INTERVAL_S", 0.0)
    assert source.read().process_cpu_percent == 200.0  # clamped to the host's two cores
    share[0] = -3.0
    assert source.read().process_cpu_percent == 0.0


def test_machine_cpu_load_counts_guest_time_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Linux's guest time is inside its user time (guest_nice inside nice): counted again, a host
    half busy running a virtual machine read 64% busy."""
    from collections import namedtuple

    CpuTimes = namedtuple("CpuTimes", "user nice system idle iowait guest guest_nice")  # psutil's fields on Linux, fewer of them
    readings = iter([CpuTimes(0, 0, 0, 0, 0, 0, 0), CpuTimes(40, 10, 0, 50, 0, 30, 10)])  # half the time busy, 40 s of it in guests
    monkeypatch.setattr(psutil, "cpu_times", lambda: next(readings))
    assert SystemSource(tmp_path, tmp_path).read().cpu_percent == pytest.approx(50.0)


@pytest.mark.parametrize("online", [[0, 1], [0, 2]])  # [0, 2]: core 1 offline (hotplug), so /proc/stat's second line is cpu2
def test_a_process_pinned_to_some_cores_reads_their_load_and_count(online: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pinned to one core of two (taskset, a cpuset), the machine's figures said two cores with
    one free beside the busy one: an inference thread expected a whole core, and got half of one.
    The pinned core is read by its number: psutil's per-CPU list is by position, and with a core
    offline the process pinned to cpu2 read none (the whole machine instead)."""
    from collections import namedtuple

    ticks = os.sysconf("SC_CLK_TCK")
    stat = tmp_path / "stat"

    def write_stat(busy: list[int], idle: list[int]) -> None:  # seconds per online core: user, then idle
        lines = [f"cpu {sum(busy) * ticks} 0 0 {sum(idle) * ticks} 0 0 0 0 0 0"]
        lines += [f"cpu{c} {b * ticks} 0 0 {i * ticks} 0 0 0 0 0 0" for c, b, i in zip(online, busy, idle)]
        stat.write_text("\n".join(lines + ["procs_running 3"]) + "\n")

    mine = sorted(os.sched_getaffinity(0))
    assert (
        sources.allowed_cpus(len(mine)) is None and sources.allowed_cpus(len(mine) + 1) == mine
    )  # all the host's cores allowed: the machine's figures, as before
    CpuTimes = namedtuple("CpuTimes", "user nice system idle iowait")
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 2)
    monkeypatch.setattr(psutil, "cpu_times", lambda percpu=False: CpuTimes(0, 0, 0, 0, 0))  # (the machine's: never read here)
    monkeypatch.setattr(psutil.Process, "cpu_percent", lambda self, interval=None: 0.0)  # (the load all other programs')
    monkeypatch.setattr(sources, "allowed_cpus", lambda host: [online[1]])
    monkeypatch.setattr(sources, "CPU_MIN_INTERVAL_S", 0.0)
    write_stat([0, 0], [0, 0])
    source = SystemSource(tmp_path, tmp_path, proc_stat=stat)
    assert source.read().cpu_percent is None  # (the first reading over these cores starts their interval)
    write_stat([0, 8], [10, 2])  # the pinned core 80% busy, the other idle
    pinned = source.read()
    assert (pinned.host_cores, pinned.cpu_cores, pinned.cpu_percent) == (1, 1.0, pytest.approx(80.0))  # the machine's figure: 40% of two
    assert pinned.cpu_share(0.05) == pytest.approx(0.2)  # what other programs leave of our one core, not the whole core the idle one suggested
    assert sources.cpu_seconds_by_number(stat.read_text()) == {online[0]: (10.0, 10.0), online[1]: (10.0, 2.0)}  # (all, idle)


def test_rapl_counters_give_package_power(tmp_path: Path) -> None:
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "energy_uj").write_text("1000000")
    source = SystemSource(tmp_path / "none", tmp_path)
    assert source.read(now=10.0).package_power_w is None  # the first reading has nothing to compare with
    (zone / "energy_uj").write_text("4000000")  # 3 J later
    assert source.read(now=12.0).package_power_w == pytest.approx(1.5)  # over 2 s
    # A second package unreadable for one reading, then back: its whole counter was added to the
    # change of the total (40 kW); each package's own change counts, over those read both times.
    other = tmp_path / "intel-rapl:1"
    other.mkdir()
    (other / "energy_uj").write_text("80000000000")
    (zone / "energy_uj").write_text("6000000")
    assert source.read(now=14.0).package_power_w == pytest.approx(1.0)  # package 0 alone: package 1 has nothing to compare with
    (zone / "energy_uj").write_text("8000000")
    (other / "energy_uj").write_text("80002000000")
    assert source.read(now=16.0).package_power_w == pytest.approx(2.0)


def test_cgroup_v2_and_v1_limits_are_parsed(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    (v2 / "app").mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("cpu memory")
    (v2 / "app" / "memory.max").write_text("268435456\n")
    (v2 / "app" / "memory.current").write_text("67108864\n")
    (v2 / "app" / "cpu.max").write_text("50000 100000\n")
    membership = tmp_path / "cgroup"
    membership.write_text("0::/app\n")
    limits = read_cgroup(v2, membership)
    (v2 / "app" / "memory.stat").write_text("anon 40000000\ninactive_file 16777216\nactive_file 100\n")
    (v2 / "memory.max").write_text("134217728\n")  # the parent is tighter than the group
    limits = read_cgroup(v2, membership)
    assert (limits.version, limits.memory_max_bytes, limits.memory_used_bytes, limits.cpu_max_cores) == (2, 128 * MB, 48 * MB, 0.5)
    (v2 / "app" / "memory.max").write_text("max\n")
    (v2 / "memory.max").write_text("max\n")
    (v2 / "app" / "cpu.max").write_text("max 100000\n")
    limits = read_cgroup(v2, membership)
    assert limits.memory_max_bytes is None and limits.cpu_max_cores is None  # unlimited
    # Files that hold no limit a kernel writes: no CPU limit read (a quota of -1 was -1e-05 cores);
    # a memory file is unreadable, not "no limit" (a memory.max of -5 was a total memory of -5
    # bytes; taken as no limit, one glitch planned a 64 MB container with the host's memory).
    for memory_max, cpu_max in (("-5\n", "-1 100000\n"), ("1.5G\n", "50000 0\n"), (b"\xff\xfe5\n", b"\xff\xfe50000 100000\n")):
        (v2 / "app" / "memory.max").write_bytes(memory_max if isinstance(memory_max, bytes) else memory_max.encode())
        glitch = read_cgroup(v2, membership)
        assert glitch.memory_max_bytes is None and "memory.max" in glitch.memory_unread
        (v2 / "app" / "memory.max").write_text("max\n")
        (v2 / "app" / "cpu.max").write_bytes(cpu_max if isinstance(cpu_max, bytes) else cpu_max.encode())
        assert read_cgroup(v2, membership).cpu_max_cores is None, cpu_max
    (v2 / "app" / "memory.high").write_text(str(64 * MB))  # throttled past it (systemd's MemoryHigh): a limit too
    assert read_cgroup(v2, membership).memory_max_bytes == 64 * MB

    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "cpu").mkdir()
    (v1 / "memory" / "memory.limit_in_bytes").write_text(str(2**63 - 4096))  # v1's "no limit"
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    limits = read_cgroup(v1, membership)
    assert (limits.version, limits.memory_max_bytes, limits.cpu_max_cores) == (1, None, 2.0)
    assert read_cgroup(tmp_path / "nothing", membership).version is None


def test_a_glitch_in_the_containers_memory_files_keeps_its_last_limits(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One unreadable memory.max was read as "no limit": a 64 MB container planned with the host's
    memory for a reading (4.2 GB of budget). The last limits read hold; before any, memory is
    unknown, and the rest of the reading is read as ever."""
    (tmp_path / "cgroup.controllers").write_text("memory")
    (tmp_path / "memory.max").write_text("garbage")
    (tmp_path / "memory.current").write_text(str(60 * MB))
    source = SystemSource(tmp_path, tmp_path / "none", tmp_path / "no-membership")
    first = source.read()
    assert first.memory_available_bytes is None and first.memory_total_bytes is not None and "memory.max" in caplog.text
    (tmp_path / "memory.max").write_text(str(64 * MB))
    assert source.read().memory_available_bytes == 4 * MB
    (tmp_path / "memory.max").write_bytes(b"\xff")
    caplog.clear()
    held = source.read()
    assert held.memory_available_bytes == 4 * MB and held.cgroup_memory_max_bytes == 64 * MB and "the last ones read hold" in caplog.text
    (tmp_path / "memory.max").write_text(str(64 * MB))
    source.read()
    (tmp_path / "memory.max").write_text("garbage")
    caplog.clear()
    source.read()
    assert "cannot be read" in caplog.text  # a later glitch is said too


def test_a_changed_container_limit_is_a_new_level_not_a_trend() -> None:
    """docker update 512M -> 96M with 60 MB used: 36 MB free at once. Followed as a slope, the
    forecast went to 0 MB and the runtime planned with nothing for 2.5 s."""
    from racmkd.resources.monitor import ResourceMonitor

    class Resized:
        name = "resized"

        def read(self, now: float) -> ResourceSnapshot:
            limit, free = (512 * MB, 452 * MB) if now < 2.0 else (96 * MB, 36 * MB)
            return ResourceSnapshot(t=now, cpu_percent=20.0, memory_available_bytes=free, cgroup_memory_max_bytes=limit, cpu_cores=1.0)

    monitor = ResourceMonitor(Resized(), MonitorConfig())
    planned = [monitor.poll(i * 0.2).planning().memory_available_bytes for i in range(15)]
    assert planned[10:] == [36 * MB] * 5, [p // MB for p in planned]


def test_a_quota_its_other_processes_spend_is_not_ours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--cpus=0.5 with a sibling spinning in the container: the host read idle and the quota alone
    said a 2x slowdown; inference ran 4x slower (measured in a real v1 cgroup). The group's own CPU
    use (v2 cpu.stat, v1 cpuacct.usage) counts against the quota, and in the level."""
    from racmkd.resources import sources

    clock = [100.0]
    monkeypatch.setattr(sources.time, "monotonic", lambda: clock[0])
    v2 = tmp_path / "v2"
    (v2 / "app").mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("cpu memory")
    (v2 / "app" / "cpu.max").write_text("50000 100000\n")
    (v2 / "app" / "cpu.stat").write_text("usage_usec 1000000\nuser_usec 900000\n")
    (tmp_path / "membership").write_text("0::/app\n")
    source = SystemSource(v2, tmp_path / "none", tmp_path / "membership")
    assert source.read().cgroup_cpu_used_cores is None  # one counter reading: no interval yet
    clock[0] += 1.0
    (v2 / "app" / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1400000\n")  # the whole half core in use
    spent = source.read()
    assert spent.cgroup_cpu_used_cores == pytest.approx(0.5) and spent.cgroup_cpu_max_cores == 0.5
    idle_host = dataclasses.replace(spent, cpu_percent=5.0, process_cpu_percent=0.0, host_cores=4, runnable_tasks=None)
    assert idle_host.cpu_share(0.05) == 0.05 and resource_level(idle_host) == "critical"  # a sibling has it all
    ours = dataclasses.replace(idle_host, process_cpu_percent=40.0)  # most of it is this process's own
    assert ours.cpu_share(0.05) == pytest.approx(0.4) and ours.quota_left() == pytest.approx(0.4)
    assert dataclasses.replace(idle_host, cgroup_cpu_used_cores=None).cpu_share(0.05) == 0.5  # unread: the quota alone
    v1 = tmp_path / "v1"
    (v1 / "cpu" / "docker").mkdir(parents=True)
    (v1 / "cpuacct" / "docker").mkdir(parents=True)
    (v1 / "cpu" / "docker" / "cpu.cfs_quota_us").write_text("50000")
    (v1 / "cpu" / "docker" / "cpu.cfs_period_us").write_text("100000")
    (v1 / "cpuacct" / "docker" / "cpuacct.usage").write_text(str(3 * 10**9))  # its own hierarchy (not mounted with cpu)
    (tmp_path / "v1-membership").write_text("4:cpuacct:/docker\n3:cpu:/docker\n")
    assert read_cgroup(v1, tmp_path / "v1-membership").cpu_usage_s == 3.0
    # The quota's use is read through a glitch of the memory files (held, it froze at 0 cores)...
    (v2 / "app" / "memory.max").write_text("garbage")
    clock[0] += 1.0
    (v2 / "app" / "cpu.stat").write_text("usage_usec 2000000\n")
    assert source.read().cgroup_cpu_used_cores == pytest.approx(0.5)
    # ... and another group's quota binding starts a new interval (its counter less the old group's read as 4,900 cores).
    (v2 / "cpu.max").write_text("25000 100000\n")
    (v2 / "cpu.stat").write_text(f"usage_usec {4900 * 10**6}\n")
    clock[0] += 1.0
    assert source.read().cgroup_cpu_used_cores is None


def test_a_container_limit_caps_available_memory(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("memory")
    (tmp_path / "memory.max").write_text(str(100 * MB))
    (tmp_path / "memory.current").write_text(str(90 * MB))
    s = SystemSource(tmp_path, tmp_path / "none", tmp_path / "no-membership").read()
    assert s.memory_available_bytes == 10 * MB and s.cgroup_memory_max_bytes == 100 * MB
    # A limit on the parent group is shared by its children: what the siblings use counts against it.
    nested = tmp_path / "nested"
    (nested / "parent" / "leaf").mkdir(parents=True)
    (nested / "cgroup.controllers").write_text("memory")
    (nested / "parent" / "memory.max").write_text(str(1024 * MB))
    (nested / "parent" / "memory.current").write_text(str(900 * MB))
    (nested / "parent" / "leaf" / "memory.max").write_text("max")
    (nested / "parent" / "leaf" / "memory.current").write_text(str(100 * MB))
    (tmp_path / "membership").write_text("0::/parent/leaf\n")
    s = SystemSource(nested, tmp_path / "none", tmp_path / "membership").read()
    assert s.memory_available_bytes == 124 * MB and s.cgroup_memory_max_bytes == 1024 * MB


def test_the_cpu_share_left_to_us_counts_other_programs_only() -> None:
    # A 16-core host at 50% with this process using one core, and a cgroup quota of 2 cores.
    host = ResourceSnapshot(t=0, cpu_percent=50.0, process_cpu_percent=100.0, host_cores=16, cpu_cores=2.0)
    assert host.other_load() == pytest.approx(0.4375) and host.cpu_share(0.05) == 1.0  # 9 cores are free
    device = ResourceSnapshot(t=0, cpu_percent=75.0, host_cores=1, cpu_cores=1.0)
    assert device.cpu_share(0.05) == pytest.approx(0.25)
    assert ResourceSnapshot(t=0, cpu_percent=99.0, host_cores=1).cpu_share(0.05) == 0.05  # the floor
    assert ResourceSnapshot(t=0).other_load() is None and ResourceSnapshot(t=0).cpu_share(0.05) == 1.0  # no reading: no load assumed
    # Two programs spinning on a 2-core machine: 100% busy, yet the scheduler gives one more thread
    # two thirds of a core (measured with stress-ng: the load alone held the runtime at its floor).
    spinning = ResourceSnapshot(t=0, cpu_percent=100.0, host_cores=2, cpu_cores=2.0, runnable_tasks=2.0)
    assert spinning.cpu_share(0.05) == pytest.approx(2 / 3) and dataclasses.replace(spinning, runnable_tasks=None).cpu_share(0.05) == 0.05
    # a momentary crowd in a light load: the load's figure stands
    assert dataclasses.replace(spinning, cpu_percent=20.0, runnable_tasks=6.0).cpu_share(0.05) == 1.0


def test_a_mistyped_timestamp_costs_its_row_and_garbage_is_said_with_its_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One row's t typed 15.0 for 5.0 in a trace at 0.5 s steps: kept, the 19 correct rows after it
    up to 15 s went back in time and were skipped, and the reading at 4.5 s was replayed for 10 s.
    And garbage was only counted: a `top`-style trace (CPU above 100%) refused with nothing to act on."""
    rows = [(0.5 * i, 20 + i) for i in range(60)]
    rows[10] = (15.0, 99)
    typo = tmp_path / "typo.csv"
    typo.write_text("t,cpu_percent\n" + "".join(f"{t},{c}\n" for t, c in rows))
    trace = load_trace(typo)
    assert trace.skipped_rows == 1 and len(trace.times) == 59 and 5.0 not in trace.times and 5.5 in trace.times
    assert trace.at(6.0).cpu_percent == 32.0
    top = tmp_path / "top.csv"
    top.write_text('t,cpu_percent,note\n\n0,150,"a note\non two lines"\n1,180,\n')  # (a blank line, and a cell of two lines: lines as read)
    with pytest.raises(TraceError, match=r"2 rows skipped as garbage; the first unreadable, line 3: cpu_percent '150' is not a number in \[0, 100\]"):
        load_trace(top)
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps([{"t": 0, "cpu_percent": 10}, {"t": 1, "cpu_percent": 20, "power_plugged": "maybe"}, {"t": 2, "cpu_percent": 30}]))
    with caplog.at_level("WARNING", logger="racmkd.resources.sources"):
        assert load_trace(mixed).skipped_rows == 1
    assert "the first unreadable, sample 2: power_plugged 'maybe' is none of 0/1, true/false, yes/no" in caplog.text


def test_trace_files_skip_garbage_and_hold_gaps(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "trace.csv"
    path.write_text(
        "t,cpu_percent,memory_available_mb\n"
        "0,20,140\n"
        "1,abc,130\n"  # text
        "2,150,130\n"  # CPU out of range
        "3,nan,120\n"  # NaN
        "2.5,50,70\n"  # time goes backwards (after t=0? no: 2.5 > 0, kept)
        "1.5,60,60\n"  # backwards from 2.5: skipped
        "10,95,10\n"  # a gap of 7.5 s
    )
    trace = load_trace(path)
    assert trace.skipped_rows == 4 and list(trace.times) == [0.0, 2.5, 10.0]
    assert trace.at(1.0).cpu_percent == 20.0
    assert trace.at(7.0).cpu_percent == 50.0 and trace.at(7.0).memory_available_bytes == 70 * MB  # the gap holds the last reading
    assert trace.at(99.0).cpu_percent == 95.0
    named = tmp_path / "named.csv"  # a column the snapshot calls so, not a trace: replayed as absent memory, in silence
    named.write_text("t,cpu_percent,memory_available_bytes\n0,20,1000\n1,30,1000\n")
    with caplog.at_level("WARNING", logger="racmkd.resources.sources"):
        assert load_trace(named).at(0.5).memory_available_bytes is None
    assert "columns memory_available_bytes are not read" in caplog.text
    js = tmp_path / "trace.json"
    js.write_text(json.dumps({"samples": [{"t": 0, "cpu_percent": 10}, {"t": 1, "cpu_percent": 90, "battery_percent": 15}]}))
    t2 = load_trace(js)
    assert t2.at(0.5).memory_available_bytes is None and t2.at(1.0).battery_percent == 15.0
    assert t2.at(0.5).battery_percent is None  # before its first reading a sensor stays absent
    halves = tmp_path / "halves.csv"  # a machine of 2.5 cores is garbage, not 2
    halves.write_text("t,cpu_percent,host_cores\n0,20,4\n1,30,2.5\n2,40,4\n")
    assert load_trace(halves).skipped_rows == 1
    marked = tmp_path / "marked.json"  # a byte-order mark, fine in a CSV, was refused in JSON
    marked.write_text('\ufeff[{"t": 0, "cpu_percent": 20}, {"t": 1, "cpu_percent": 30}]', encoding="utf-8")
    assert load_trace(marked).at(1.0).cpu_percent == 30.0
    gaps = tmp_path / "gaps.csv"  # empty cells hold the previous reading; a spreadsheet's BOM and spaces are fine
    gaps.write_text("\ufefft, cpu_percent, memory_available_mb\n0, 20, 100\n1, , 90\n2, 40, \n", encoding="utf-8")
    held = load_trace(gaps)
    assert held.at(1.0).cpu_percent == 20.0 and held.at(2.0).memory_available_bytes == 90 * MB
    far = tmp_path / "far.csv"  # 0.1 s steps, one timestamp far ahead in the second half: that row is garbage, not the rest
    far.write_text("t,cpu_percent\n" + "".join(f"{1e6 if i == 600 else i / 10},{50 if i == 600 else 20 if i < 600 else 90}\n" for i in range(1000)))
    kept = load_trace(far)
    assert kept.skipped_rows == 1 and len(kept.times) == 999 and kept.duration == pytest.approx(99.9) and kept.at(99.0).cpu_percent == 90.0
    behind = tmp_path / "behind.csv"  # a first row far behind the rest: it stretched the trace to 100,010 s, every replayed reading its own
    behind.write_text("t,cpu_percent\n-100000,99\n" + "".join(f"{i / 10},20\n" for i in range(100)))
    started = load_trace(behind)
    assert started.skipped_rows == 1 and started.duration == pytest.approx(9.9) and started.at(0.0).cpu_percent == 20.0
    for typo_at in (0, 1):  # a first or second row far ahead: that row skipped (the whole trace was refused as going back in time)
        typo = tmp_path / f"typo{typo_at}.csv"
        typo.write_text("t,cpu_percent\n" + "".join(f"{100000 if i == typo_at else i / 10},20\n" for i in range(100)))
        read = load_trace(typo)
        assert read.skipped_rows == 1 and len(read.times) == 99 and read.duration == pytest.approx(9.9 - 0.1 * (typo_at == 0))
    pause = tmp_path / "pause.csv"  # a long pause the recording goes on from is no garbage
    pause.write_text("t,cpu_percent\n0,10\n1,10\n2,10\n1000,20\n1001,30\n")
    paused = load_trace(pause)
    assert paused.skipped_rows == 0 and paused.at(1000.5).cpu_percent == 20.0
    jump = tmp_path / "jump.csv"  # two rows far ahead, one going on from the other: most of the rest goes back in time
    jump.write_text("t,cpu_percent\n0,10\n1,10\n1000000,10\n1000001,10\n" + "".join(f"{t},10\n" for t in range(2, 50)))
    with pytest.raises(TraceError, match=r"go back in time .*\(a timestamp far ahead\?\)"):
        load_trace(jump)
    shuffled = tmp_path / "shuffled.csv"  # rows out of order: said so (it asked about a timestamp far ahead)
    shuffled.write_text("t,cpu_percent\n" + "".join(f"{t},10\n" for t in (3, 1, 2, 0, 5, 4)))
    with pytest.raises(TraceError, match=r"rows out of order\? sort them by t"):
        load_trace(shuffled)
    odd = tmp_path / "odd.json"  # booleans and numbers beyond float are garbage, not readings
    odd.write_text('[{"t": 0, "cpu_percent": 10}, {"t": true, "cpu_percent": 20}, {"t": 2, "cpu_percent": 1' + "0" * 400 + '}, {"t": 3, "cpu_percent": 30}]')
    assert load_trace(odd).skipped_rows == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("t,cpu_percent\n0,abc\n", "fewer than two usable readings"),
        ("t,a,b\n1,2,3\n", "no known columns"),
        ("[1, 2", "unreadable trace"),
        ('[{"t": 0, "cpu_percent": 1' + "0" * 5000 + "}]", r"unreadable trace \(ValueError: Exceeds the limit"),  # (it named no file)
        # named, not "fewer than two usable readings (2 rows skipped as garbage)"
        ("time,cpu_percent\n0,20\n1,30\n", "no `t` column"),
        # newest first: the documented refusal, not "fewer than two usable readings (19 rows skipped as garbage)"
        ("t,cpu_percent\n" + "".join(f"{t},20\n" for t in range(19, -1, -1)), r"19 of 20 rows go back in time .*newest first\? sort the rows by t"),
        # spans no replay can use: a nanosecond (replayed in no time, a monitor share of 20,062,800%), and 7e307 s
        ("t,cpu_percent\n0,20\n1e-9,30\n", r"its readings span 1e-09 s .*is t in seconds\?"),
        ("t,cpu_percent\n1e308,20\n1.7e308,30\n", r"its readings span 7e\+307 s"),
        ("t,cpu_percent,cpu_percent,,\n0,10,90,,\n1,20,80,,\n", r"the header names cpu_percent more than once;"),  # the last one read, in silence
    ],
)
def test_bad_trace_files_are_clear_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / ("bad.json" if content.startswith("[") else "bad.csv")
    path.write_text(content)
    with pytest.raises(TraceError, match=message) as err:
        load_trace(path)
    assert str(path) in str(err.value)
    with pytest.raises(TraceError, match="no such trace file"):
        load_trace(tmp_path / "missing.csv")
    with pytest.raises(TraceError, match="a folder, not a trace file"):
        load_trace(tmp_path)


def test_a_trace_says_whether_the_device_ran_on_battery(tmp_path: Path) -> None:
    """The energy budget holds on battery alone: a trace could never say so (no power_plugged
    column), so a replayed draining battery spent 1.3 mJ a request against a budget of 0.2."""
    path = tmp_path / "plugged.csv"
    path.write_text("t,cpu_percent,battery_percent,power_plugged\n0,20,50,1\n1,20,49,true\n2,20,48,0\n3,20,47,no\n4,20,46,maybe\n5,20,45,\n")
    trace = load_trace(path)
    assert trace.skipped_rows == 1  # "maybe" is garbage
    assert [trace.at(t).power_plugged for t in (0, 1, 2, 3, 5)] == [True, True, False, False, False]  # an empty cell holds the last reading
    js = tmp_path / "plugged.json"
    js.write_text(json.dumps([{"t": 0, "cpu_percent": 20, "power_plugged": True}, {"t": 1, "cpu_percent": 20, "power_plugged": False}]))
    assert [load_trace(js).at(t).power_plugged for t in (0, 1)] == [True, False]
    # A battery and no power state (a hand-written trace): on battery, so the energy budget applies.
    draining = tmp_path / "draining.csv"
    draining.write_text("t,cpu_percent,memory_available_mb,battery_percent\n" + "".join(f"{i},25,130,{50 - i}\n" for i in range(50)))
    reading = load_trace(draining).at(10.0)
    assert reading.power_plugged is False
    from racmkd.runtime.edge import budget_for

    assert budget_for(reading, RuntimeConfig(energy_budget_mj=0.2)).energy_mj == 0.2
    # No battery (the synthetic traces): a device on mains, no energy budget.
    assert all(synthetic_trace(kind, 10).at(5.0).power_plugged is None for kind in SYNTHETIC)
    assert budget_for(synthetic_trace("sudden", 10).at(5.0), RuntimeConfig(energy_budget_mj=0.2)).energy_mj == math.inf


def test_synthetic_traces_fit_their_length() -> None:
    """`racmkd edge run --seconds 10 --trace sudden` played the first 10 s of a 120 s trace: all of it
    high. Each shape fits the length asked for; the random walk crosses levels in 10 s too, and a
    120 s one is what it was."""
    short = {k: [resource_level(synthetic_trace(k, 10).at(t)) for t in np.arange(0, 10, 0.1)] for k in ("sudden", "periodic", "random")}
    assert short["sudden"][35:65].count("critical") == 30 and set(short["periodic"]) == {"high", "medium", "low", "critical"}
    assert len(set(short["random"])) >= 2
    walk = synthetic_trace("random", 120)
    assert walk.columns["cpu_percent"][:3] == pytest.approx([25.0, 23.759328256, 20.983239869])  # (the default length's walk, as before)


def test_edge_runs_synthetic_trace_is_made_for_a_long_run_too() -> None:
    """`edge run --trace sudden --seconds 100001` failed: its 0.1 s step made more than the million
    steps a synthetic trace may hold. A long run's step grows instead; a short run's is as before."""
    from racmkd.cli import _live_trace

    for seconds in (100_001.0, 3e6):
        long = _live_trace("sudden", seconds)
        assert long.times[-1] == pytest.approx(seconds, rel=1e-3) and len(long.times) <= 1_000_001
        assert resource_level(long.at(seconds / 2)) == "critical"  # the critical middle third, within the run
    assert np.diff(_live_trace("sudden", 60).times)[0] == pytest.approx(0.1)
    assert np.diff(_live_trace("sudden", 0.5).times)[0] == pytest.approx(0.05)


def test_synthetic_traces_follow_the_seed_levels() -> None:
    levels = {k: [resource_level(synthetic_trace(k, 60, 0.5).at(t)) for t in np.arange(0, 60, 0.5)] for k in SYNTHETIC}
    assert set(levels["steady"]) == {"high"} and set(levels["critical"]) == {"critical"}
    assert levels["sudden"][:30].count("high") == 30 and levels["sudden"][50:70].count("critical") == 20 and levels["sudden"][-10:].count("high") == 10
    assert set(levels["periodic"]) == {"high", "medium", "low", "critical"}
    assert len(set(levels["random"])) >= 2
    a, b = synthetic_trace("random", 30, seed=3), synthetic_trace("random", 30, seed=3)
    assert np.array_equal(a.columns["cpu_percent"], b.columns["cpu_percent"])
    critical = synthetic_trace("critical", 30)
    assert critical.columns["cpu_percent"].min() > 90 and critical.columns["memory_available_mb"].max() < 20
    with pytest.raises(TraceError, match="unknown synthetic trace"):
        synthetic_trace("storm")


# The monitor -------------------------------------------------------------------------------------------


class Scripted:
    """A source that answers a scripted CPU series (and fails where the script says None)."""

    name = "scripted"

    def __init__(self, cpu: list[float | None], memory_mb: float = 130.0) -> None:
        self.cpu, self.memory_mb, self.i = cpu, memory_mb, 0

    def read(self, now: float) -> ResourceSnapshot:
        value = self.cpu[min(self.i, len(self.cpu) - 1)]
        self.i += 1
        if value is None:
            raise OSError("sensor unplugged")
        return ResourceSnapshot(t=now, cpu_percent=value, memory_available_bytes=int(self.memory_mb * MB), cpu_cores=1.0)


def test_monitor_smooths_forecasts_and_adapts_its_interval() -> None:
    config = MonitorConfig(interval_s=0.5, min_interval_s=0.1, max_interval_s=2.0, smoothing=0.5, trend=0.3, horizon_s=1.0)
    monitor = ResourceMonitor(Scripted([30.0] * 10 + [30.0 + 8 * i for i in range(1, 8)]), config)
    intervals = []
    for step in range(10):
        monitor.poll(float(step))
        intervals.append(monitor.interval_s)
    assert intervals[0] == 0.1 and intervals[-1] == 2.0 and intervals == sorted(intervals)  # stable readings: slower sampling
    for step in range(10, 17):
        state = monitor.poll(float(step))
    assert monitor.interval_s == 0.1  # changing readings: fast sampling
    raw, smoothed, forecast = state.raw.cpu_percent, state.smoothed.cpu_percent, state.forecast.cpu_percent
    assert smoothed < raw < forecast  # the EWMA lags a rising load; Holt's trend looks ahead of it
    assert state.planning().cpu_percent == forecast  # decisions plan for the worse of now and soon


def test_a_reading_that_appears_is_published() -> None:
    """A trace column absent before its first value: the CPU load arriving is news, level or not."""

    class CpuFromTwo:
        name = "late cpu"

        def read(self, now: float) -> ResourceSnapshot:
            return ResourceSnapshot(t=now, cpu_percent=None if now < 2 else 38.0, memory_available_bytes=140 * MB, cpu_cores=1.0)

    monitor = ResourceMonitor(CpuFromTwo(), MonitorConfig())
    published = [monitor.poll(float(t)).changed for t in range(4)]
    assert published == [True, False, True, False] and monitor.state.planning().cpu_percent == pytest.approx(38.0)


class Memory:
    """A source whose free memory follows a function of time."""

    name = "memory"

    def __init__(self, mb_at) -> None:  # noqa: ANN001 - a callable
        self.mb_at = mb_at

    def read(self, now: float) -> ResourceSnapshot:
        return ResourceSnapshot(t=now, cpu_percent=25.0, memory_available_bytes=int(self.mb_at(now) * MB), cpu_cores=1.0)


def run_monitor(monitor: ResourceMonitor, until: float) -> list[tuple[float, object]]:
    states, t = [], 0.0
    while t < until:
        states.append((t, monitor.poll(t)))
        t += monitor.interval_s
    return states


def test_forecast_leads_a_falling_resource_and_settles_after_a_step() -> None:
    falling = run_monitor(ResourceMonitor(Memory(lambda t: 140.0 - 5.0 * t)), 20.0)
    leads = [s.raw.memory_available_bytes / MB - s.forecast.memory_available_bytes / MB for t, s in falling if t > 5]
    assert min(leads) > 2.0  # 5 MB/s for a 1 s horizon: ahead of the reading, by most of the 5 MB
    step = run_monitor(ResourceMonitor(Memory(lambda t: 140.0 if t < 10 else 10.0)), 30.0)
    after = [(t - 10, s) for t, s in step if t >= 10]
    assert after[0][1].planning().memory_available_bytes <= 10 * MB  # the drop is planned for at once
    settled = [abs(s.forecast.memory_available_bytes / MB - 10.0) for dt, s in after if dt > 5]
    assert settled and max(settled) < 2.0 and settled[-1] < 0.1  # within 20% after 5 s, then settled: the step is not extrapolated for ever


def test_a_recording_stopped_with_ctrl_c_keeps_its_readings() -> None:
    """`racmkd edge record` exited 130 on Ctrl-C and wrote nothing: every reading was lost."""
    from racmkd.resources.sources import RecordingInterrupted, record_trace

    class Stopped(Scripted):
        def read(self, now: float) -> ResourceSnapshot:
            if self.i == 3:
                raise KeyboardInterrupt
            return super().read(now)

    with pytest.raises(RecordingInterrupted) as stopped:
        record_trace(Stopped([20.0, 30.0, 40.0]), seconds=5.0, interval_s=0.01)
    trace = stopped.value.trace
    assert len(trace.times) == 3 and list(trace.columns["cpu_percent"]) == [20.0, 30.0, 40.0]


def test_edge_record_stopped_with_sigterm_writes_its_readings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """`timeout`, systemd, `docker stop` and Kubernetes stop with SIGTERM: the recording was lost
    (Ctrl-C kept it). A real SIGTERM at the fourth reading: three written, exit status 143."""
    import signal
    import sys

    from racmkd import cli
    from racmkd.resources import sources

    class Stopped(Scripted):
        def read(self, now: float) -> ResourceSnapshot:
            if self.i == 3:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1.0)  # (the handler raises in here)
            return super().read(now)

    monkeypatch.setattr(sources, "SystemSource", lambda: Stopped([20.0, 30.0, 40.0]))
    out = tmp_path / "t.csv"
    monkeypatch.setattr(sys, "argv", ["racmkd", "edge", "record", "--out", str(out), "--seconds", "30", "--interval", "0.01"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 143 and "3 readings" in capsys.readouterr().out
    assert list(sources.load_trace(out).columns["cpu_percent"]) == [20.0, 30.0, 40.0]
    assert signal.getsignal(signal.SIGTERM) is not None  # (main put the handler back)


def test_a_temperature_below_zero_is_forecast_as_it_is() -> None:
    """Every forecast was clamped at 0 like memory: a steady -15 C was forecast (and planned for) as 0 C."""

    class Cold:
        name = "cold"

        def read(self, now: float) -> ResourceSnapshot:
            return ResourceSnapshot(t=now, cpu_percent=25.0, memory_available_bytes=100 * MB, cpu_cores=1.0, temperature_c=-15.0)

    _, state = run_monitor(ResourceMonitor(Cold()), 10.0)[-1]
    assert state.forecast.temperature_c == pytest.approx(-15.0) and state.planning().temperature_c == pytest.approx(-15.0)


def test_subscribers_hear_changes_only_and_a_broken_one_does_not_silence_others() -> None:
    monitor = ResourceMonitor(Scripted([20.0] * 5 + [95.0] * 5 + [20.0] * 10))
    heard: list[str] = []
    still: list[str] = []

    def broken(state: object) -> None:
        raise RuntimeError("subscriber bug")

    monitor.subscribe(broken)
    unsubscribe = monitor.subscribe(lambda s: heard.append(s.level))
    monitor.subscribe(lambda s: still.append(s.level))
    for step in range(10):
        monitor.poll(float(step))
    assert heard[0] == "high" and heard[-1] == "critical" and 2 <= len(heard) <= 5  # the first state, then the climb
    unsubscribe()
    before, others_before = list(heard), len(still)
    for step in range(10, 20):  # the load falls back: changes are published...
        monitor.poll(float(step))
    assert len(still) > others_before and still[-1] == "high"
    assert heard == before  # ...but not to the one that left


def test_no_garbage_collection_starts_between_a_reading_and_its_subscribers_switch() -> None:
    """A collection there would add milliseconds to the runtime's adaptation time."""
    monitor = ResourceMonitor(Scripted([20.0] * 3 + [95.0] * 3))
    collector_on: list[bool] = []
    monitor.subscribe(lambda state: collector_on.append(gc.isenabled()))
    assert gc.isenabled()
    for step in range(6):
        monitor.poll(float(step))
    assert collector_on and not any(collector_on)
    assert gc.isenabled()  # and it collects again afterwards


def test_held_collector_sections_nest_overlap_across_threads_and_respect_a_disabled_collector() -> None:
    assert gc.isenabled()
    inside, release = threading.Event(), threading.Event()

    def other_section() -> None:
        with collector_held():
            inside.set()
            release.wait(5)

    with collector_held():
        with collector_held():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer section still holds it
        thread = threading.Thread(target=other_section)
        thread.start()
        assert inside.wait(5)
    assert not gc.isenabled()  # the other thread's section has not ended
    release.set()
    thread.join(5)
    assert gc.isenabled()
    with pytest.raises(RuntimeError, match="inside"):
        with collector_held():
            raise RuntimeError("raised inside")
    assert gc.isenabled()  # an error in the section does not leave the collector off
    gc.disable()
    try:
        with collector_held():
            pass
        assert not gc.isenabled()  # a program that turned it off keeps it off
    finally:
        gc.enable()
    with collector_held():  # a child forked inside a section holds none: its collector runs again after its own
        pid = os.fork()
        if pid == 0:
            with collector_held():
                pass
            os._exit(0 if gc.isenabled() else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and gc.isenabled()


def test_subscribers_hear_a_draining_battery_and_a_new_cpu_quota() -> None:
    class Draining(Scripted):  # steady CPU and memory, on battery, a new container quota at the end
        def read(self, now: float) -> ResourceSnapshot:
            return dataclasses.replace(super().read(now), battery_percent=30.0 - 0.5 * now, power_plugged=False, cpu_cores=1.0 if now < 40 else 0.5)

    monitor = ResourceMonitor(Draining([40.0] * 50))
    heard: list[tuple[float | None, float | None]] = []
    monitor.subscribe(lambda s: heard.append((s.planning().battery_percent, s.planning().cpu_cores)))
    for step in range(45):
        monitor.poll(float(step))
    batteries = [b for b, _ in heard]
    assert batteries[0] == 30.0 and min(batteries) <= 11.0 and len(heard) >= 18  # each point of the drain told, not only the first reading
    steps = [a - b for (a, cores_a), (b, cores_b) in itertools.pairwise(heard) if cores_a == cores_b]
    assert 1.0 <= min(steps) and max(steps) < 2.0  # a point at a time
    assert heard[0][1] == 1.0 and heard[-1][1] == 0.5  # the quota's change told too (it came between two points)


def test_subscribers_hear_the_run_queue_when_the_load_is_pinned_at_100_percent() -> None:
    class Crowding(Scripted):  # CPU 100% throughout: only the number of spinning programs changes
        def read(self, now: float) -> ResourceSnapshot:
            return dataclasses.replace(super().read(now), host_cores=2, cpu_cores=2.0, runnable_tasks=2.0 if now < 20 else 8.0)

    monitor = ResourceMonitor(Crowding([100.0] * 60))
    shares: list[float] = []
    monitor.subscribe(lambda s: shares.append(s.planning().cpu_share(0.05)))
    for step in range(40):
        monitor.poll(float(step))
    assert shares[0] == pytest.approx(2 / 3) and shares[-1] == pytest.approx(2 / 9, rel=0.05)  # 8 others: two ninths of a core


def test_a_failing_source_keeps_the_last_state() -> None:
    monitor = ResourceMonitor(Scripted([40.0, None, None, 40.0]))
    first = monitor.poll(0.0)
    assert monitor.poll(1.0) is first and monitor.read_errors == 1
    monitor.poll(2.0)
    assert monitor.poll(3.0).raw.cpu_percent == 40.0 and monitor.read_errors == 2
    assert monitor.overhead()["read_errors"] == 2 and "sensor unplugged" in monitor.overhead()["last_error"]  # reported, not only logged


def test_a_reading_that_goes_missing_is_held_for_a_while_then_absent() -> None:
    """One NaN CPU and memory reading at 95% CPU and 10 MB free made the budget plan for an idle
    CPU and unlimited memory (absent sensors), and was published as a change."""
    from racmkd.resources.monitor import MISSING_HOLD_S

    class Glitching(Scripted):
        def read(self, now: float) -> ResourceSnapshot:
            snapshot = super().read(now)
            return dataclasses.replace(snapshot, cpu_percent=math.nan, memory_available_bytes=None) if 2.0 <= now else snapshot

    monitor = ResourceMonitor(Glitching([95.0] * 100, memory_mb=10.0))
    monitor.poll(0.0), monitor.poll(1.0)
    state = monitor.poll(2.0)
    assert state.raw.cpu_percent is None and not state.changed
    assert state.planning().cpu_percent == pytest.approx(95.0) and state.planning().memory_available_bytes == 10 * MB
    late = monitor.poll(1.0 + MISSING_HOLD_S + 0.5)  # missing for longer: the sensor is gone
    assert late.planning().cpu_percent is None and late.planning().memory_available_bytes is None


def test_a_reading_of_the_wrong_type_is_absent_not_a_crash() -> None:
    class Garbled(Scripted):
        def read(self, now: float) -> ResourceSnapshot:
            return dataclasses.replace(super().read(now), cpu_percent="50")  # type: ignore[arg-type]

    state = ResourceMonitor(Garbled([40.0])).poll(0.0)
    assert state is not None and state.raw.cpu_percent is None and state.raw.memory_available_bytes == 130 * MB

    class Numpy(Scripted):  # numpy numbers are numbers
        def read(self, now: float) -> ResourceSnapshot:
            return dataclasses.replace(super().read(now), cpu_percent=np.float32(40.0), memory_available_bytes=np.int64(100 * MB))

    state = ResourceMonitor(Numpy([0.0])).poll(0.0)
    assert state.raw.cpu_percent == 40.0 and state.raw.memory_available_bytes == 100 * MB


def test_monitor_thread_runs_and_measures_its_own_overhead() -> None:
    monitor = ResourceMonitor(SystemSource(), MonitorConfig(interval_s=0.02, min_interval_s=0.02, max_interval_s=0.02))
    seen = threading.Event()
    monitor.subscribe(lambda s: seen.set())
    with monitor:
        assert seen.wait(5.0)
        time.sleep(0.2)
    overhead = monitor.overhead()
    assert overhead["polls"] >= 3 and 0.0 <= overhead["cpu_fraction"] < 1.0 and overhead["cpu_seconds"] > 0
    assert 0.2 <= overhead["wall_seconds"] < 10 and overhead["cpu_fraction"] == pytest.approx(overhead["cpu_seconds"] / overhead["wall_seconds"])
    assert monitor.state is not None and monitor.state.raw.memory_available_bytes > 0


def test_a_hung_read_neither_holds_the_collector_nor_leaves_a_restarted_monitor_dead(monkeypatch: pytest.MonkeyPatch) -> None:
    """The collector was held off around the sensor's read: a read that hangs kept every cyclic
    collection away meanwhile. And stop() gives up on a thread whose read hangs; a start() then
    found that thread alive and started none, and once the read returned nothing polled."""
    from racmkd.resources import monitor as monitor_module

    release, reading = threading.Event(), threading.Event()
    collector_on_during_read: list[bool] = []

    class Hanging:
        name = "hanging"

        def __init__(self) -> None:
            self.hang = True

        def read(self, now: float | None = None) -> ResourceSnapshot:
            collector_on_during_read.append(gc.isenabled())
            if self.hang:
                reading.set()
                release.wait(10)
            return ResourceSnapshot(t=time.monotonic(), cpu_percent=10.0)

    monkeypatch.setattr(monitor_module, "STOP_WAIT_S", 0.2)
    source = Hanging()
    monitor = ResourceMonitor(source, MonitorConfig(interval_s=0.02, min_interval_s=0.02, max_interval_s=0.02))
    monitor.start()
    assert reading.wait(5)
    assert gc.isenabled()  # while the read hangs
    monitor.stop()  # gives up on the hung thread
    source.hang = False
    monitor.start()
    release.set()  # the old thread's read returns: it ends, the new one goes on
    polls = monitor.polls
    deadline = time.monotonic() + 10
    while monitor.polls < polls + 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    monitor.stop()
    assert monitor.polls >= polls + 3 and all(collector_on_during_read)


def test_trace_source_replays_in_time() -> None:
    source = TraceSource(synthetic_trace("sudden", 30, 0.5), start=100.0)
    assert resource_level(source.read(105.0)) == "high" and resource_level(source.read(115.0)) == "critical"
    looped = TraceSource(synthetic_trace("sudden", 30, 0.5), start=0.0, loop=True)
    assert resource_level(looped.read(30.0 + 15.0)) == "critical"
    # A looped trace plays its last row for a step before it starts over (by its duration alone the
    # last row was never reached: a hand-written draining battery never drained).
    two = Trace("two", np.array([0.0, 5.0]), {"cpu_percent": np.array([20.0, 95.0])})
    replayed = [TraceSource(two, start=0.0, loop=True).read(float(t)).cpu_percent for t in range(20)]
    assert replayed == [20.0] * 5 + [95.0] * 5 + [20.0] * 5 + [95.0] * 5


# The allocator -------------------------------------------------------------------------------------------

TIERS = ("high", "medium", "low", "critical")


def random_table(rng: random.Random, modalities: tuple[str, ...] = ("image", "audio")) -> ProfileTable:
    variants = []
    for m in modalities:
        for tier in rng.sample(TIERS, rng.randint(1, 4)):
            variants.append(Variant(m, tier, rng.uniform(0.1, 3.0), rng.randint(10_000, 2_000_000), rng.uniform(0.1, 5.0)))
    options = [[None, *(v.tier for v in variants if v.modality == m)] for m in modalities]
    accuracy = {key: rng.uniform(0.1, 1.0) for key in itertools.product(*options) if any(k is not None for k in key)}
    return ProfileTable(modalities, TIERS, tuple(variants), accuracy)


def reference_best(
    table: ProfileTable,
    budget: Budget,
    weights: tuple[float, ...],
    critical: dict[str, str],
    ratios: list[float] | None = None,
    overhead_ms: float = 0.0,
    available: frozenset[str] | None = None,
    priorities: dict[str, float] | None = None,
    exclude: frozenset[str] = frozenset(),
) -> tuple[float, tuple] | None:
    """Written apart from the allocator: try every configuration that uses only the `available`
    inputs and none of the variants in `exclude`, keep the best within budget (its worth and
    itself). Its worth: over which of its inputs turn out usable, each with its weight as its chance
    (w = priority x quality: the objective, sum of w_m P_m), the accuracy of what it reads; and, when
    none of its own is usable (by quality alone: w / priority), over which of the other available
    inputs are (by quality too), the answer of the best configuration over those (found the same way
    with them live at their priority, in the memory the configuration leaves), valued at their
    priority. With `ratios` (observed / predicted latency of past requests), the SLO objective: each
    answer's accuracy times the share of past ratios under which its configuration would have met
    its latency budget; memory and energy stay hard."""
    mods = table.modalities
    available = frozenset(mods) if available is None else available
    priority = [(priorities or {}).get(m, 1.0) for m in mods]
    quality = [min(1.0, w / p) if p > 0 else 0.0 for w, p in zip(weights, priority)]

    def in_time(config: tuple) -> float:
        latency = sum(v.latency_ms for v in config if v)
        if ratios is None:
            return float(latency <= budget.latency_ms)
        return sum(r * (latency + overhead_ms) <= budget.latency_ms + overhead_ms for r in ratios) / len(ratios)

    def read(config: tuple, chances: list[float]) -> float:
        """Sum over which of its inputs are usable (with `chances`) of the accuracy of what it reads."""
        active = [i for i, v in enumerate(config) if v is not None]
        total = 0.0
        for pattern in itertools.product([False, True], repeat=len(active)):
            chance = math.prod(chances[i] if bit else 1 - chances[i] for i, bit in zip(active, pattern))
            if chance > 0 and any(pattern):
                usable = {i for i, bit in zip(active, pattern) if bit}
                total += chance * table.accuracy[tuple(v.tier if v is not None and i in usable else None for i, v in enumerate(config))]
        return total

    def worth(config: tuple) -> float:
        total = read(config, list(weights)) * in_time(config)
        none_usable = math.prod(1 - quality[i] for i, v in enumerate(config) if v is not None)
        others = [i for i, v in enumerate(config) if v is None and mods[i] in available and quality[i] > 0]
        for pattern in itertools.product([False, True], repeat=len(others)):
            chance = none_usable * math.prod(quality[i] if bit else 1 - quality[i] for i, bit in zip(others, pattern))
            if chance == 0 or not any(pattern):
                continue
            usable = frozenset(mods[i] for i, bit in zip(others, pattern) if bit)
            # answered from the others, their sessions held beside the configuration's
            beside = dataclasses.replace(budget, memory_bytes=budget.memory_bytes - sum(v.memory_bytes for v in config if v))
            live = tuple(min(1.0, p) if m in usable else 0.0 for m, p in zip(mods, priority))  # (the request brought them)
            other = reference_best(table, beside, live, critical, ratios, overhead_ms, usable, priorities, exclude)
            if other is not None:
                total += chance * read(other[1], list(live)) * in_time(other[1])
        return total

    def meets(config: tuple) -> bool:  # a critical modality whose input is dead (weight 0), not there, or with no variant left binds nothing
        return all(
            config[mods.index(m)] is not None and TIERS.index(config[mods.index(m)].tier) <= TIERS.index(t)
            for m, t in critical.items()
            if weights[mods.index(m)] > 0
            and m in available
            and any(v.modality == m and v.id not in exclude and TIERS.index(v.tier) <= TIERS.index(t) for v in table.variants)
        )

    options = [[None, *(v for v in table.variants if v.modality == m and v.id not in exclude)] if m in available else [None] for m in mods]
    configs = [c for c in itertools.product(*options) if any(c) and meets(c)]
    worthwhile = [c for c in configs if all(v is None or weights[i] > 0 for i, v in enumerate(c))]
    within = [
        c
        for c in (worthwhile or configs)
        if sum(v.memory_bytes for v in c if v) <= budget.memory_bytes and sum(v.energy_mj for v in c if v) <= budget.energy_mj and in_time(c) > 0
    ]
    scored = [(worth(c), c) for c in within]
    if ratios is not None:
        scored = [(x, c) for x, c in scored if x > 0]
    return max(scored, key=lambda xc: xc[0], default=None)


@pytest.mark.parametrize("objective", ["accuracy", "slo"])
def test_allocator_is_optimal_against_brute_force(objective: str) -> None:
    """Eq. 26 (latency a hard budget) and its SLO form (expected accuracy x the chance of meeting the
    deadline, memory and energy hard), each maximised exactly, critical modalities kept."""
    rng = random.Random(0)
    checked = 0
    for _ in range(300):
        modalities = ("image", "audio", "imu")[: rng.randint(1, 3)]
        table = random_table(rng, modalities)
        critical = {}
        if rng.random() < 0.3:
            m = rng.choice(modalities)
            tiers = [v.tier for v in table.variants if v.modality == m]
            critical = {m: rng.choice(tiers)}
        risk, ratios = None, None
        if objective == "slo":
            ratios = [rng.lognormvariate(0.0, 0.3) for _ in range(rng.randint(20, 60))]
            risk = DeadlineRisk(overhead_ms=rng.uniform(0.0, 0.5), window=100)
            for r in ratios:
                risk.observe(r * (2.0 + risk.overhead_ms), 2.0)
        priorities = {m: rng.choice([1.0, 0.5, 0.1, 0.0]) for m in modalities if rng.random() < 0.3}
        if priorities and not any(priorities.get(m, 1.0) > 0 for m in modalities):
            priorities = {}
        allocator = Allocator(table, critical, risk, priorities)
        for _ in range(3):  # the same allocator on several budgets and weights: its caches must not change the answer
            quality = {m: rng.choice([0.0, 0.3, 0.7, 1.0]) for m in modalities}
            weights = allocator.weights(quality=quality)
            budget = Budget(rng.uniform(0.1, 6.0), rng.uniform(10_000, 5_000_000), rng.uniform(0.1, 10.0))
            # Some requests: inputs missing, or variants failed (the runtime's fallback solves).
            available = frozenset(m for m in modalities if rng.random() < 0.8) if rng.random() < 0.3 else None
            exclude = frozenset(v.id for v in table.variants if rng.random() < 0.2) if rng.random() < 0.3 else frozenset()
            overhead = risk.overhead_ms if risk else 0.0
            best = reference_best(table, budget, weights, critical, ratios, overhead, available, priorities, exclude)
            try:
                decision = allocator.solve(budget, weights, exclude, available=None if available is None else set(available))
            except NoConfigurationError:
                assert best is None and not [
                    v for v in table.variants if v.id not in exclude and v.modality in (modalities if available is None else available)
                ]
                continue
            if best is None:
                assert not decision.feasible  # nothing fits: the runtime gets the cheapest fallback, marked as such
                continue
            checked += 1
            assert decision.feasible and decision.costs.fits(budget, resources=("memory_bytes", "energy_mj") if risk else RESOURCES)
            assert decision.utility == pytest.approx(best[0], abs=1e-9), (decision, best)
            if available is None:
                assert allocator.evaluate(decision.config, budget, weights, exclude=exclude) == (pytest.approx(best[0], abs=1e-9), True)
            for m, tier in critical.items():
                chosen = decision.config[table.modalities.index(m)]
                honourable = (available is None or m in available) and any(
                    v.modality == m and v.id not in exclude and TIERS.index(v.tier) <= TIERS.index(tier) for v in table.variants
                )
                assert weights[table.modalities.index(m)] == 0 or not honourable or (chosen is not None and TIERS.index(chosen.tier) <= TIERS.index(tier))
    assert checked > 250


def test_deadline_risk_learns_the_latency_tail_per_load_band() -> None:
    risk = DeadlineRisk(overhead_ms=0.0, window=100, min_samples=20)
    assert risk.chance(1.0, 1.1) == 1.0 and risk.chance(1.2, 1.1) == 0.0  # nothing observed yet: the hard budget
    for i in range(100):
        risk.observe(1.5 if i % 10 == 0 else 1.0, 1.0, slowdown=1.0)  # idle: one request in ten runs 50% late
    assert risk.chance(1.0, 1.2) == pytest.approx(0.9)
    assert risk.chance(1.0, 1.5) == 1.0 and risk.chance(1.0, 0.9) == 0.0
    for _ in range(10):
        risk.observe(60.0, 1.0, slowdown=20.0)  # 3x its prediction (20 ms)
    assert risk.chance(1.0, 1.2, slowdown=20.0) == pytest.approx(0.81)  # too few under load yet: every band's ratios
    for _ in range(20):
        risk.observe(60.0, 1.0, slowdown=20.0)
    assert risk.chance(1.0, 1.2, slowdown=20.0) == 0.0 and risk.chance(1.0, 1.2, slowdown=1.0) == pytest.approx(0.9)
    risk.observe(float("nan"), 1.0)  # a request that was never answered teaches nothing
    assert len(risk) == 100 and risk.state()["all"]["samples"] == 100


def test_deadline_risk_state_reports_nearest_rank_percentiles() -> None:
    """The state's ratio percentiles follow the one rule every figure of the project does (they
    were taken a rank higher: p95 of 20 ratios was the largest)."""
    risk = DeadlineRisk(overhead_ms=0.0, window=100)
    for ratio in range(1, 21):
        risk.observe(float(ratio), 1.0)
    state = risk.state()["all"]
    assert (state["ratio_p50"], state["ratio_p95"], state["ratio_max"]) == (10.0, 19.0, 20.0)


def test_deadline_risk_takes_ratios_against_the_runtime_cost_known_at_decision() -> None:
    """On a host 3x slower than when the bank was measured, the first requests run 3.5x over a
    prediction made with the bank's figure for the runtime's own cost; once the runtime has learnt
    its cost from them (0.64 ms), the same requests are on time for the fused configuration: they
    must not price it as late (ratios fixed at observation did, and stepped the runtime down)."""
    risk = DeadlineRisk(overhead_ms=0.0, window=128, min_samples=20)
    for i in range(64):
        risk.observe(0.9 + 0.001 * i, 0.26)  # 3.5x-3.7x the bank's prediction (0.26 ms)
    assert risk.chance(0.26, 0.8) == 0.0  # 0.8 ms of budget: under the bank's figure, every one late
    risk.overhead_ms = 0.64  # learnt: now each is 1.0x-1.07x of 0.26 + 0.64 ms
    assert risk.chance(0.26, 3.0 - 0.64) == 1.0 and risk.state()["all"]["ratio_max"] == pytest.approx(0.963 / 0.9)
    assert risk.chance(0.26, 0.9 - 0.64 - 0.01) == 0.0 and risk.chance(0.26, 0.9305 - 0.64) == pytest.approx(31 / 64)


def test_deadline_risk_forgets_a_band_it_left_long_ago() -> None:
    """The requests a sudden rise of the load caught before the next reading (14x over their
    predictions) stop pricing the idle band once `memory_s` has passed; the band, short of fresh
    samples, falls back on every band's latest ratios."""
    risk = DeadlineRisk(window=128, min_samples=20, memory_s=30.0)
    for i in range(120):
        risk.observe(1.0, 1.0, slowdown=1.0, now=i * 0.06)
    for i in range(8):
        risk.observe(14.0, 1.0, slowdown=1.0, now=7.2 + i * 0.06)  # caught by the rise
    assert risk.chance(1.0, 1.5, slowdown=1.0) == pytest.approx(120 / 128)
    for i in range(600):  # 36 s under load, in another band, running as predicted
        risk.observe(20.0, 1.0, slowdown=20.0, now=8.0 + i * 0.06)
    assert risk.chance(1.0, 1.5, slowdown=1.0) == 1.0  # forgotten: the idle band is back to every band's latest
    quiet = DeadlineRisk(window=128, min_samples=20, memory_s=30.0)  # the band in use is kept, however slowly requests come
    for i in range(40):
        quiet.observe(14.0 if i % 2 else 1.0, 1.0, slowdown=1.0, now=i * 20.0)  # one request every 20 s, till 780 s
    for i in range(128):
        quiet.observe(20.0, 1.0, slowdown=20.0, now=790.0 + i * 0.01)  # a busy spell in another band
    assert quiet.chance(1.0, 1.5, slowdown=1.0) == pytest.approx(0.5)  # the idle band's own 40, kept
    quiet.forget_left(780.0 + 31.0)  # a decision 31 s after its last request: the band was left
    assert quiet.chance(1.0, 1.5, slowdown=1.0) == 1.0 and quiet.state().get("slowdown 1x+") is None  # every band's latest
    quiet.forget_left(2000.0)  # every band forgotten; then a band seen again is forgotten in its turn
    for i in range(30):
        quiet.observe(14.0, 1.0, slowdown=1.0, now=2000.0 + i)
    assert quiet.chance(1.0, 1.5, slowdown=1.0) == 0.0
    quiet.forget_left(2029.0 + 31.0)
    assert quiet.state().get("slowdown 1x+") is None
    for memory_s, now in ((math.inf, 1e9), (30.0, math.nan)):  # never forgotten: memory inf, or no time given
        kept = DeadlineRisk(window=128, min_samples=20, memory_s=memory_s)
        for i in range(20):
            kept.observe(14.0, 1.0, slowdown=1.0, now=i if memory_s == math.inf else math.nan)
        kept.observe(20.0, 1.0, slowdown=20.0, now=now)
        assert kept.chance(1.0, 1.5, slowdown=1.0) == 0.0
    with pytest.raises(ConfigError, match="risk_memory_s"):
        RuntimeConfig(risk_memory_s=0.0)
    # A negative step-up margin marked over-budget configurations as fitting (flapping); a margin of
    # 1 or a NaN window never let the runtime step up.
    for bad in (
        {"step_up_margin": -0.5},
        {"step_up_margin": 1.0},
        {"step_up_margin": math.nan},
        {"step_up_window_s": -1.0},
        {"step_up_window_s": math.nan},
        {"switch_gain": -0.01},
        {"switch_gain": 1.0},
        {"switch_gain": math.nan},
    ):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            RuntimeConfig(**bad)


def test_slo_objective_does_not_fall_off_the_latency_cliff() -> None:
    """Fused just over the latency budget, audio alone under it: the hard budget (eq. 26) takes the
    70%-accurate audio-only configuration; the SLO objective sees that the fused one meets the
    deadline nine times in ten (95% x 0.9 > 70% x 0.9) and keeps it."""
    image, audio = Variant("image", "low", 0.2, 1, 0.1), Variant("audio", "low", 1.0, 1, 0.1)
    table = ProfileTable(("image", "audio"), TIERS, (image, audio), {("low", None): 0.6, (None, "low"): 0.7, ("low", "low"): 0.95})
    budget = Budget(latency_ms=1.1)
    assert Allocator(table).solve(budget, (1.0, 1.0)).config == (None, audio)
    risk = DeadlineRisk(window=100)
    for i in range(100):
        risk.observe(1.0 if i % 10 else 2.0, 1.25)  # requests run 20% faster than predicted, one in ten slower
    decision = Allocator(table, risk=risk).solve(budget, (1.0, 1.0))
    assert decision.config == (image, audio) and decision.utility == pytest.approx(0.95 * 0.9) and "p=0.90" in decision.reason
    # Over the memory budget stays out of the question whatever the deadline odds.
    assert Allocator(table, risk=risk).solve(Budget(latency_ms=1.1, memory_bytes=1), (1.0, 1.0)).config != (image, audio)


def test_utility_is_the_accuracy_to_expect() -> None:
    image, audio = Variant("image", "high", 1.0, 1, 1.0), Variant("audio", "high", 1.0, 1, 1.0)
    table = ProfileTable(("image", "audio"), TIERS, (image, audio), {("high", None): 0.6, (None, "high"): 0.9, ("high", "high"): 0.98})
    allocator = Allocator(table)
    both = (image, audio)
    assert allocator.utility(both, (1.0, 1.0)) == pytest.approx(0.98)
    assert allocator.utility(both, (1.0, 0.0)) == pytest.approx(0.6)  # audio missing: what image alone gets
    assert allocator.utility(both, (0.5, 0.5)) == pytest.approx(0.25 * 0.98 + 0.25 * 0.6 + 0.25 * 0.9)
    # With the audio input dead, the allocator stops paying for its encoder.
    assert allocator.solve(Budget(), (1.0, 0.0)).config == (image, None)
    # Nothing fits: the configuration that overshoots its budget least (here: the memory one).
    big_image, big_audio, small = Variant("image", "high", 1.0, 100, 1.0), Variant("audio", "high", 1.0, 100, 1.0), Variant("audio", "low", 5.0, 10, 1.0)
    tight = ProfileTable(("image", "audio"), TIERS, (big_image, big_audio, small), {**table.accuracy, (None, "low"): 0.8, ("high", "low"): 0.9})
    fallback = Allocator(tight).solve(Budget(latency_ms=4.0, memory_bytes=5), (1.0, 1.0))
    assert not fallback.feasible and fallback.config == (None, small) and "least over budget" in fallback.reason  # 1.25x latency beats 20x memory
    no_memory = Allocator(tight).solve(Budget(latency_ms=100.0, memory_bytes=0), (1.0, 1.0))
    assert not no_memory.feasible and no_memory.config == (None, small)  # nothing left at all: the smallest, not the best
    # Nothing fits, but something fits memory: the fallback keeps within it, however far over the deadline.
    within_memory = Allocator(tight).solve(Budget(latency_ms=0.01, memory_bytes=50), (1.0, 1.0))
    # 500x latency, not 100x latency and 2x memory
    assert not within_memory.feasible and within_memory.config == (None, small) and "memory" not in within_memory.reason
    with pytest.raises(ConfigError, match="not a modality"):
        Allocator(table, {"imu": "high"})
    with pytest.raises(ConfigError, match="unknown tier"):
        Allocator(table, {"audio": "tiny"})


def test_a_critical_modality_is_kept_while_it_can_be() -> None:
    image, audio, audio_low = Variant("image", "high", 0.5, 1, 1.0), Variant("audio", "high", 2.0, 1, 1.0), Variant("audio", "low", 1.0, 1, 1.0)
    accuracy = {("high", None): 0.95, (None, "high"): 0.9, (None, "low"): 0.8, ("high", "high"): 0.98, ("high", "low"): 0.97}
    allocator = Allocator(ProfileTable(("image", "audio"), TIERS, (image, audio, audio_low), accuracy), {"audio": "low"})
    assert allocator.solve(Budget(latency_ms=1.0), (1.0, 1.0)).config == (None, audio_low)  # image alone would be better, but audio is critical
    relaxed = allocator.solve(Budget(latency_ms=1.0), (1.0, 1.0), exclude=frozenset({"low/audio", "high/audio"}))
    assert relaxed.config == (image, None) and "critical audio unavailable" in relaxed.reason  # its variants failed: answer from the rest
    assert allocator.solve(Budget(), (1.0, 1.0), available={"image"}).config == (image, None)  # its input is missing
    dead = allocator.solve(Budget(latency_ms=1.0), (1.0, 0.0))  # its input there but dead (weight 0): as good as missing
    assert dead.config == (image, None) and dead.utility == pytest.approx(0.95) and "critical audio unavailable" in dead.reason
    with pytest.raises(NoConfigurationError):
        allocator.solve(Budget(), (1.0, 1.0), available={"image"}, exclude=frozenset({"high/image"}))
    with pytest.raises(ConfigError, match="no audio variant at tier high or above"):
        Allocator(ProfileTable(("image", "audio"), TIERS, (image, audio_low), accuracy), {"audio": "high"})


def test_a_critical_modality_whose_input_comes_back_is_taken_up_at_once() -> None:
    """While the critical input was dead the runtime went on without it; when it came back, the
    configuration without it still fitted, so taking it up again was a step up waiting for a
    headroom that a tight budget never gave (600 s later still without it)."""
    image, audio = Variant("image", "high", 0.1, 1, 1.0), Variant("audio", "low", 0.2, 1, 1.0)
    accuracy = {("high", None): 0.6, (None, "low"): 0.85, ("high", "low"): 0.93}
    allocator = Allocator(ProfileTable(("image", "audio"), TIERS, (image, audio), accuracy), {"audio": "low"})
    tight = Budget(latency_ms=0.22)  # audio alone fits, without the 20% headroom a step up needs
    hysteresis = Hysteresis(margin=0.2, window_s=1.0)
    current, _ = hysteresis.choose(0.0, None, allocator, tight, (1.0, 0.0))  # the microphone dead
    assert current.config == (image, None)
    current, why = hysteresis.choose(1.0, current, allocator, tight, (1.0, 1.0))  # back
    assert current.config == (None, audio) and "critical modalities or the live inputs changed" in why
    assert hysteresis.choose(60.0, current, allocator, tight, (1.0, 1.0))[0].config == (None, audio)


@pytest.mark.parametrize("objective", ["accuracy", "slo"])
def test_a_configuration_is_worth_the_answers_of_the_other_inputs_while_its_own_are_dead(objective: str) -> None:
    """When none of a configuration's inputs is usable, the runtime answers from the other inputs
    (EdgeRuntime.infer): audio-only with a microphone silent half the time is worth the audio's
    accuracy half the time and the image's the other half, more than image-only; counted as
    unanswered, it was worth half the audio's and lost to image-only (0.586 SLO-accuracy against
    0.757 on the make-run bank's critical trace). An answer that cannot come counts nothing."""
    image, audio = Variant("image", "high", 0.1, 1, 1.0), Variant("audio", "low", 0.2, 1, 1.0)
    accuracy = {("high", None): 0.6, (None, "low"): 0.85, ("high", "low"): 0.93}
    allocator = Allocator(ProfileTable(("image", "audio"), TIERS, (image, audio), accuracy), risk=DeadlineRisk() if objective == "slo" else None)
    one_fits = Budget(latency_ms=0.25)
    half_silent = (1.0, 0.5)
    decision = allocator.solve(one_fits, half_silent)
    assert decision.config == (None, audio) and decision.utility == pytest.approx(0.5 * 0.85 + 0.5 * 0.6)
    assert allocator.evaluate((image, None), one_fits, half_silent) == (pytest.approx(0.6), True)
    assert allocator.expected_accuracy((None, audio), one_fits, half_silent) == pytest.approx(0.725)
    assert allocator.evaluate((None, audio), one_fits, half_silent, exclude=frozenset({"high/image"}))[0] == pytest.approx(0.425)  # the image failed
    no_image = Budget(latency_ms=0.25, energy_mj=1.5)
    image_costly = Allocator(ProfileTable(("image", "audio"), TIERS, (dataclasses.replace(image, energy_mj=2.0), audio), accuracy))
    assert image_costly.solve(no_image, half_silent).utility == pytest.approx(0.425)  # the image over budget: no answer for the silent half
    assert allocator.solve(one_fits, (0.5, 1.0)).config == (None, audio)  # the other way round: audio alone, always there
    both = allocator.solve(Budget(latency_ms=0.5), half_silent)
    assert both.config == (image, audio) and both.utility == pytest.approx(0.5 * 0.93 + 0.5 * 0.6)  # a fused one already counted its inputs' losses
    # The image's answers need its session beside the audio's: where memory holds one, none come.
    sized = Allocator(
        ProfileTable(("image", "audio"), TIERS, (dataclasses.replace(image, memory_bytes=300), dataclasses.replace(audio, memory_bytes=400)), accuracy)
    )
    assert sized.solve(Budget(latency_ms=0.25, memory_bytes=600), half_silent).config[1] is None  # audio-only worth 0.425 alone: image-only
    assert sized.solve(Budget(latency_ms=0.25, memory_bytes=700), half_silent).config == (None, dataclasses.replace(audio, memory_bytes=400))
    assert allocator.expected_accuracy((None, audio), Budget(latency_ms=0.01), half_silent) == pytest.approx(0.725)  # late answers still count there
    # A priority is how much a modality's answers count, not how often its input is dead: audio at
    # priority 0.1, live on every request, leaves nothing for the image to answer, and image-only wins.
    prioritised = Allocator(allocator.table, risk=allocator.risk, priorities={"audio": 0.1})
    weights = prioritised.weights({"audio": 0.1}, {"audio": 1.0})
    assert prioritised.solve(one_fits, weights).config == (image, None)
    assert prioritised.evaluate((None, audio), one_fits, weights)[0] == pytest.approx(0.1 * 0.85)
    half = prioritised.weights({"audio": 0.1}, {"audio": 0.5})
    assert prioritised.evaluate((None, audio), one_fits, half)[0] == pytest.approx(0.05 * 0.85 + 0.5 * 0.6)  # silent half the time: the image's half counts
    # Of two configurations worth the same, the faster: audio-only, ranked first by the image's best
    # answer (0.7, too slow to come), is worth what image-only is, and takes twice as long.
    slow_image = Variant("image", "medium", 1.0, 1, 1.0)
    tiers = {("high", None): 0.6, ("medium", None): 0.7, (None, "low"): 0.6, ("high", "low"): 0.9, ("medium", "low"): 0.9}
    tied = Allocator(ProfileTable(("image", "audio"), TIERS, (image, slow_image, audio), tiers), risk=allocator.risk)
    assert tied.evaluate((None, audio), one_fits, half_silent)[0] == pytest.approx(tied.evaluate((image, None), one_fits, half_silent)[0])
    assert tied.solve(one_fits, half_silent).config == (image, None)


def test_an_input_back_after_an_outage_is_taken_up_at_once_but_not_one_that_flickers() -> None:
    """A non-critical microphone back after an outage: the image-only configuration chosen without
    it still fitted, and audio fitted too but not with the 20% step-up margin, so on a steady 92%
    load it was never used again (0.598 against 0.938). Back means 90% of its weight again for a
    whole window, gone 75% or less: an input alive one request in two or three stays out, and so
    does one back for a moment (no flapping)."""
    image, audio = Variant("image", "high", 0.1, 1, 1.0), Variant("audio", "low", 0.2, 1, 1.0)
    accuracy = {("high", None): 0.6, (None, "low"): 0.85, ("high", "low"): 0.93}
    allocator = Allocator(ProfileTable(("image", "audio"), TIERS, (image, audio), accuracy))
    tight = Budget(latency_ms=0.22)  # audio alone fits, without the 20% headroom a step up needs
    hysteresis = Hysteresis(margin=0.2, window_s=1.0)
    current, _ = hysteresis.choose(0.0, None, allocator, tight, (1.0, 1.0))
    assert current.config == (None, audio)
    current, _ = hysteresis.choose(1.0, current, allocator, tight, (1.0, 0.0))  # the microphone dead: the image answers
    assert current.config == (image, None)
    for t, weight in enumerate((0.2, 0.55, 0.2, 0.85), start=2):  # live one request in two or three: not back
        current, _ = hysteresis.choose(float(t), current, allocator, tight, (1.0, weight))
        assert current.config == (image, None), weight
    current, _ = hysteresis.choose(9.0, current, allocator, tight, (1.0, 0.9))  # live again: back for a window first
    assert current.config == (image, None)
    assert not hysteresis.due(9.5) and hysteresis.due(10.0)  # its window over: a decision is due (a steady device brings none)
    before = hysteresis.state()
    chosen, why = hysteresis.choose(10.0, current, allocator, tight, (1.0, 0.95))
    assert chosen.config == (None, audio) and why == "recover at once: audio came back"
    hysteresis.restore(before)  # the switch did not land (its sessions load): still due at the next decision
    chosen, why = hysteresis.choose(10.1, current, allocator, tight, (1.0, 0.95))
    assert chosen.config == (None, audio) and why == "recover at once: audio came back"
    assert hysteresis.choose(60.0, chosen, allocator, tight, (1.0, 1.0))[0].config == (None, audio)
    # Back, but nothing better fits: weighed once, not at every request after.
    held = Hysteresis(margin=0.2, window_s=1.0)
    on_image, _ = held.choose(0.0, None, allocator, tight, (1.0, 1.0))
    on_image, _ = held.choose(1.0, on_image, allocator, tight, (1.0, 0.0))
    small = Budget(latency_ms=0.15)  # audio does not fit
    for t in (2.0, 3.5):
        on_image, _ = held.choose(t, on_image, allocator, small, (1.0, 1.0))
    assert on_image.config == (image, None) and not held.due(4.0)


def test_a_better_cheaper_configuration_is_taken_at_once_though_it_holds_more_of_plentiful_memory() -> None:
    """With the SLO objective, a configuration whose deadline grew unlikely was left at once only
    for one that cost no more on every resource: 24 KB more memory, with memory unlimited, made
    the safer one wait out the step-up window while requests missed their deadlines."""
    image = Variant("image", "high", 0.09, 372_736, 0.2, latency_p50_ms=0.033)
    audio = Variant("audio", "medium", 0.24, 348_160, 0.6, latency_p50_ms=0.12)
    table = ProfileTable(("image", "audio"), TIERS, (image, audio), {("high", None): 0.6, (None, "medium"): 0.89, ("high", "medium"): 0.96})
    risk = DeadlineRisk(0.037, min_samples=20)
    for k in range(100):  # observed / predicted spread evenly over 0.8-1.2 (the host's jitter) at a slowdown of 20
        risk.observe((0.8 + 0.4 * k / 99) * (0.12 + 0.037) * 20, 0.12, 20.0, now=float(k))
    allocator = Allocator(table, risk=risk)
    budget = Budget(latency_ms=0.113, slowdown=20.0)  # 95% CPU, a 3 ms target
    assert allocator.evaluate((None, audio), budget, (1.0, 1.0))[1]  # a chance of its deadline: it still "fits"
    hysteresis = Hysteresis(margin=0.2, window_s=1.0)
    held = Decision((None, audio), 0.5, config_costs((None, audio)), True, "was best")
    chosen, why = hysteresis.choose(0.1, held, allocator, budget, (1.0, 1.0))
    assert chosen.config == (image, None) and why == "step down at once: better for less"
    scarce = Budget(latency_ms=0.113, memory_bytes=360_000, slowdown=20.0)  # memory near its budget: the extra bytes count
    assert hysteresis.choose(0.2, held, allocator, scarce, (1.0, 1.0))[1] != "step down at once: better for less"


def oscillating_budgets(n: int) -> list[Budget]:
    return [Budget(latency_ms=2.05 + 0.1 * math.sin(i)) for i in range(n)]  # hovers around one variant's cost


def switches(hysteresis: Hysteresis, allocator: Allocator, budgets: list[Budget]) -> int:
    """How often `hysteresis` changes the one-modality configuration over `budgets`, a reading every 0.1 s."""
    current, count = None, 0
    for i, budget in enumerate(budgets):
        chosen, _ = hysteresis.choose(i * 0.1, current, allocator, budget, (1.0,))
        count += current is not None and chosen.config != current.config
        current = chosen
    return count


def test_hysteresis_prevents_flapping() -> None:
    cheap, rich = Variant("audio", "low", 1.0, 1, 1.0), Variant("audio", "high", 2.05, 1, 1.0)
    table = ProfileTable(("audio",), TIERS, (cheap, rich), {("low",): 0.9, ("high",): 0.97})
    allocator = Allocator(table)

    budgets = oscillating_budgets(200)
    assert switches(Hysteresis(margin=0.0, window_s=0.0), allocator, budgets) > 30  # no hysteresis: it flaps with the noise
    assert switches(Hysteresis(margin=0.2, window_s=1.0), allocator, budgets) <= 1  # steps down once, never back up into the noise


def test_hysteresis_damps_the_slo_objective_on_an_oscillating_budget() -> None:
    """With the SLO objective the best configuration changes with the deadline odds; stepping up
    waits out the window, so a budget swinging every few readings does not drag it along."""
    cheap, rich = Variant("audio", "low", 1.0, 1, 1.0), Variant("audio", "high", 2.05, 1, 1.0)
    table = ProfileTable(("audio",), TIERS, (cheap, rich), {("low",): 0.9, ("high",): 0.97})
    risk = DeadlineRisk(window=100)
    for i in range(100):
        risk.observe(1.0 + 0.002 * i, 1.0)  # ratios spread evenly over 1.0-1.2
    allocator = Allocator(table, risk=risk)
    budgets = [Budget(latency_ms=2.05 + 0.6 * math.sin(i)) for i in range(200)]

    assert switches(Hysteresis(margin=0.0, window_s=0.0), allocator, budgets) > 30
    assert switches(Hysteresis(margin=0.2, window_s=1.0), allocator, budgets) <= 1


def drifting_pair(rich_accuracy: float = 0.97) -> tuple[Variant, Variant, Allocator]:
    """A cheap audio variant (0.94) and a rich one (`rich_accuracy`, 1.3x its cost), under a
    deadline risk whose ratios spread evenly over 1.0-1.2: under `rich_odds(c)` the rich one meets
    its deadline with chance c and the cheap one for certain."""
    cheap, rich = Variant("audio", "low", 1.0, 1, 1.0), Variant("audio", "medium", 1.3, 1, 1.0)
    table = ProfileTable(("audio",), TIERS, (cheap, rich), {("low",): 0.94, ("medium",): rich_accuracy})
    return cheap, rich, Allocator(table, risk=evenly_spread_risk())


def evenly_spread_risk() -> DeadlineRisk:
    """A deadline risk whose 1000 observed / predicted ratios spread evenly over 1.0-1.2."""
    risk = DeadlineRisk(window=1000)
    for i in range(1000):
        risk.observe(1.0 + 0.2 * i / 999, 1.0)
    return risk


def rich_odds(chance: float) -> Budget:
    return Budget(latency_ms=1.3 * (1.0 + 0.2 * chance))


def test_a_switch_the_budget_does_not_force_must_gain_enough_to_be_worth_it() -> None:
    """With the SLO objective two configurations' scores cross as the deadline odds drift by a
    point or so: the runtime stepped down at once to the cheaper one each time it scored more, and
    back up after the window each time the richer one did (55 switches in 120 s on the constant
    critical trace among three audio tiers, 0.85 point of SLO-accuracy under holding one). A switch
    nothing forces must be worth `gain` more; one the budget forces still comes at once."""
    cheap, rich, allocator = drifting_pair()
    # the rich one's chance drifting over 0.962-0.976 (score 0.933-0.947, the cheap one's 0.94)
    budgets = [rich_odds(0.969 + 0.007 * math.sin(2 * math.pi * i / 60)) for i in range(600)]
    assert switches(Hysteresis(margin=0.2, window_s=1.0, gain=0.0), allocator, budgets) >= 15  # a pair of switches every 6 s
    assert switches(Hysteresis(margin=0.2, window_s=1.0, gain=0.01), allocator, budgets) == 0
    hysteresis = Hysteresis(margin=0.2, window_s=1.0, gain=0.01)
    held = hysteresis.choose(0.0, None, allocator, Budget(latency_ms=2.0), (1.0,))[0]
    assert held.config == (rich,)
    # The rich one at 0.97 x 0.965 = 0.936: the cheap one, sure of its deadline, is better for less by
    # 0.004. Its worth cannot drift: no gain is asked of it (the way back up asks it).
    chosen, why = hysteresis.choose(0.1, held, allocator, rich_odds(0.965), (1.0,))
    assert chosen.config == (cheap,) and why == "step down at once: better for less"
    chosen, why = hysteresis.choose(0.2, held, allocator, Budget(latency_ms=1.2), (1.0,))  # the rich one's deadline lost: forced
    assert chosen.config == (cheap,) and why.startswith("step down at once")
    # Better by less than the gain, but for SETTLE_WINDOWS windows without a break: worth the switch.
    held, now = chosen, 0.2
    while held.config == (cheap,) and now < 20:
        now += 0.1
        held, why = hysteresis.choose(now, held, allocator, rich_odds(0.975), (1.0,))  # 0.97 x 0.975 = 0.946
        # pending all along, due when its 10 s are out (not one window after it began)
        assert held.config == (rich,) or hysteresis.pending == (rich,) and (now > 9.25 or not hysteresis.due(now + 1.0)) and hysteresis.due(10.35)
    assert held.config == (rich,) and why.startswith("settled") and 10.2 < now < 10.5  # better since 0.3 s


def test_the_window_by_the_gain_restarts_after_a_break() -> None:
    cheap, rich, allocator = drifting_pair()
    hysteresis = Hysteresis(margin=0.2, window_s=1.0, gain=0.01)
    held = hysteresis.choose(0.0, None, allocator, rich_odds(0.95), (1.0,))[0]  # 0.97 x 0.95 = 0.92
    assert held.config == (cheap,)
    plan = [(0.1, 0.985), (0.6, 0.975), (0.8, 0.985)]  # by the gain (0.955), by less (0.946), by the gain again
    now, switched = 0.1, None
    while switched is None and now < 5:
        odds = next(c for t, c in reversed(plan) if now >= t - 1e-9)
        chosen, why = hysteresis.choose(now, held, allocator, rich_odds(odds), (1.0,))
        if chosen.config != held.config:
            switched = now
        now = round(now + 0.05, 2)
    assert switched is not None and 1.8 <= switched < 1.9 and why.startswith("step up")  # one window from 0.8, not from 0.1


def test_a_step_down_for_less_to_a_configuration_unsure_of_its_deadline_asks_the_gain() -> None:
    cheap, rich = Variant("audio", "low", 1.0, 1, 1.0), Variant("audio", "medium", 1.001, 1, 1.0)
    table = ProfileTable(("audio",), TIERS, (cheap, rich), {("low",): 0.94, ("medium",): 0.95})
    allocator = Allocator(table, risk=evenly_spread_risk())
    for gain, steps_down in ((0.0, True), (0.01, False)):
        hysteresis = Hysteresis(margin=0.2, window_s=1.0, gain=gain)
        held = hysteresis.choose(0.0, None, allocator, Budget(latency_ms=2.0), (1.0,))[0]
        assert held.config == (rich,)
        # both meet the deadline one time in four: the cheap one scores 0.002 more, for 0.001 ms less
        chosen, why = hysteresis.choose(0.1, held, allocator, Budget(latency_ms=1.05), (1.0,))
        assert (chosen.config == (cheap,) and why == "step down at once: better for less") == steps_down


def test_the_pending_step_is_the_one_ready_first() -> None:
    """The runtime loads the pending step's sessions while it waits: of one settling since 0 s
    (ready at 10 s) and one better by the gain since 0.5 s (ready at 1.5 s), the second."""
    cheap, rich, _ = drifting_pair()
    hysteresis = Hysteresis(margin=0.2, window_s=1.0, gain=0.01)
    hysteresis._fitting = {(cheap,): (0.0, math.inf), (rich,): (0.5, 0.5)}
    assert hysteresis.pending == (rich,) and not hysteresis.due(1.4) and hysteresis.due(1.5)
    hysteresis._fitting = {(cheap,): (0.0, math.inf)}
    assert hysteresis.pending == (cheap,) and not hysteresis.due(9.9) and hysteresis.due(10.0)


def test_no_gain_is_asked_where_worths_cannot_drift() -> None:
    """Where a configuration meets its deadline for certain, or under `objective: accuracy`, its
    worth is its accuracy, which does not drift: a step up 0.005 better waits one window, not ten
    (adjacent audio tiers differ by less than 0.01: periodic 0.976 -> 0.9725 with every one of them held 10 s)."""
    cheap, rich, allocator = drifting_pair(rich_accuracy=0.945)
    unhurried = Allocator(allocator.table)  # objective accuracy
    for chooser in (allocator, unhurried):
        hysteresis = Hysteresis(margin=0.2, window_s=1.0, gain=0.5)
        held = hysteresis.choose(0.0, None, chooser, Budget(latency_ms=1.2), (1.0,))[0]
        assert held.config == (cheap,)
        for now in (0.1, 0.6, 1.1):
            held, why = hysteresis.choose(now, held, chooser, Budget(latency_ms=2.0), (1.0,))  # both certain, 1.3 within 80% of 2.0
        assert held.config == (rich,) and why.startswith("step up")


def test_hysteresis_steps_down_at_once_and_up_only_after_the_window() -> None:
    cheap, rich = Variant("audio", "low", 1.0, 1, 1.0), Variant("audio", "high", 2.0, 1, 1.0)
    table = ProfileTable(("audio",), TIERS, (cheap, rich), {("low",): 0.9, ("high",): 0.97})
    allocator, h = Allocator(table), Hysteresis(margin=0.2, window_s=1.0)
    current, _ = h.choose(0.0, None, allocator, Budget(5.0), (1.0,))
    assert current.config == (rich,)
    current, why = h.choose(0.1, current, allocator, Budget(1.5), (1.0,))
    assert current.config == (cheap,) and "step down at once" in why
    for t in (0.2, 0.7, 1.1):
        current, why = h.choose(t, current, allocator, Budget(5.0), (1.0,))
        assert current.config == (cheap,) and "pending" in why
    current, why = h.choose(1.25, current, allocator, Budget(5.0), (1.0,))
    assert current.config == (rich,) and why.startswith("step up")
    # Nothing fits: a fallback, marked so; when something fits again it is left at once, no window.
    current, why = h.choose(1.3, current, allocator, Budget(0.5), (1.0,))
    assert current.config == (cheap,) and not current.feasible
    current, why = h.choose(1.35, current, allocator, Budget(5.0), (1.0,))
    assert current.config == (rich,) and why.startswith("recover at once")


def test_a_step_up_is_timed_from_when_headroom_began_while_the_best_keeps_changing() -> None:
    """A budget swinging between 'mid fits with headroom' and 'rich does too' makes the best step up
    change at every reading; the one pending since the window began (mid) fitted all along, so the
    runtime takes it after the window instead of waiting for the best to hold still. Rich, which
    only fits at every other reading, is never taken."""
    cheap, mid, rich = Variant("audio", "low", 1.0, 1, 1.0), Variant("audio", "medium", 1.5, 1, 1.0), Variant("audio", "high", 2.0, 1, 1.0)
    table = ProfileTable(("audio",), TIERS, (cheap, mid, rich), {("low",): 0.9, ("medium",): 0.95, ("high",): 0.97})
    allocator, h = Allocator(table), Hysteresis(margin=0.2, window_s=1.0)
    current, _ = h.choose(0.0, None, allocator, Budget(1.2), (1.0,))
    assert current.config == (cheap,)
    chosen = []
    for i in range(1, 41):
        budget = Budget(2.0 if i % 2 else 2.5)  # with 20% headroom: mid (1.8) always, rich (2.4) every other reading
        current, why = h.choose(i * 0.1, current, allocator, budget, (1.0,))
        chosen.append((round(i * 0.1, 1), current.config[0].tier, why))
    first_mid = next(t for t, tier, _ in chosen if tier == "medium")
    assert first_mid == 1.1 and all(tier != "high" for _, tier, _ in chosen), chosen  # pending from 0.1 s, taken once 1 s had passed


def test_each_better_configuration_is_timed_on_its_own() -> None:
    """A falling load: mid fits with headroom from 0.1 s, rich from 0.3 s. The runtime takes mid
    when its window is out (1.1 s) and rich when its own is (1.3 s), not a window after mid's: a
    climb of several steps takes one window, not one per step."""
    cheap, mid, rich = Variant("audio", "low", 1.0, 1, 1.0), Variant("audio", "medium", 1.5, 1, 1.0), Variant("audio", "high", 2.0, 1, 1.0)
    table = ProfileTable(("audio",), TIERS, (cheap, mid, rich), {("low",): 0.9, ("medium",): 0.95, ("high",): 0.97})
    allocator, h = Allocator(table), Hysteresis(margin=0.2, window_s=1.0)
    current, _ = h.choose(0.0, None, allocator, Budget(1.2), (1.0,))
    assert current.config == (cheap,)
    served = {}
    for i in range(1, 21):
        now = round(i * 0.1, 1)
        current, why = h.choose(now, current, allocator, Budget(2.0 if now < 0.3 else 2.6), (1.0,))  # headroom: mid needs 1.875, rich 2.5
        served[now] = current.config[0].tier
        assert not h.due(now)  # what has waited out its window is taken at once
        if now == 0.5:  # mid is taken next (its window ends first), rich is the best waiting: both load meanwhile
            assert h.pending == (mid,) and h.best_pending == (rich,) and h.due(1.1) and not h.due(1.05)  # without a new reading, due when mid's window is out
    assert served[1.0] == "low" and served[1.1] == "medium" and served[1.2] == "medium" and served[1.3] == "high", served
    assert h.pending is None and not h.due(5.0)
    # A break in the headroom restarts that configuration's clock.
    h = Hysteresis(margin=0.2, window_s=1.0)
    current, _ = h.choose(0.0, None, allocator, Budget(1.2), (1.0,))
    steps = {}
    for now, budget in ((0.1, 2.6), (0.6, 2.0), (0.7, 2.6), (1.2, 2.6), (1.6, 2.6), (1.7, 2.6)):
        current, _ = h.choose(now, current, allocator, Budget(budget), (1.0,))
        steps[now] = current.config[0].tier
    # mid fitted throughout; rich, broken at 0.6, from 0.7
    assert steps == {0.1: "low", 0.6: "low", 0.7: "low", 1.2: "medium", 1.6: "medium", 1.7: "high"}, steps
    assert h.pending is None


def test_recovery_from_a_fallback_keeps_the_step_up_margin() -> None:
    """A budget climbing back from nothing: the way out is what fits with headroom, not what barely
    fits (that would be over budget again at the next dip, and flap)."""
    cheap, mid, rich = Variant("audio", "low", 1.0, 1, 1.0), Variant("audio", "medium", 1.5, 1, 1.0), Variant("audio", "high", 2.0, 1, 1.0)
    table = ProfileTable(("audio",), TIERS, (cheap, mid, rich), {("low",): 0.9, ("medium",): 0.95, ("high",): 0.97})
    allocator, h = Allocator(table), Hysteresis(margin=0.2, window_s=1.0)
    current, _ = h.choose(0.0, None, allocator, Budget(5.0), (1.0,))
    current, _ = h.choose(0.1, current, allocator, Budget(0.5), (1.0,))
    assert current.config == (cheap,) and not current.feasible
    current, why = h.choose(0.15, current, allocator, Budget(2.2), (1.0,))  # rich fits, but only without headroom
    assert current.config == (mid,) and current.feasible and why.startswith("recover at once")
    current, why = h.choose(0.2, current, allocator, Budget(2.2), (1.0,))
    assert current.config == (mid,) and why == "stay"


def test_latency_controller_shrinks_the_budget_when_requests_run_late() -> None:
    controller = LatencyController(PIDGains(kp=0.4, ki=0.4, setpoint=0.8, min_scale=0.25, max_scale=1.0), target_ms=4.0)
    assert controller.scale == 1.0
    for step in range(1, 20):
        controller.update(8.0, step * 0.1)  # twice the target
    late = controller.scale
    assert late < 0.7
    controller.update(math.nan, 1.95)  # a latency that is no number, and a time that is none: passed over, not kept in the integral
    controller.update(1.0, math.nan)
    assert controller.state()["ignored"] == 2 and math.isfinite(controller.scale)
    for step in range(20, 80):
        controller.update(1.0, step * 0.1)  # well under it
    assert controller.scale > late and controller.scale <= 1.0
    with pytest.raises(ConfigError):
        LatencyController(PIDGains(), 0.0)


def test_latency_controller_steps_on_each_period_mean() -> None:
    """On the mean of a period of `interval_s` holding at least `min_requests` requests: at 100
    requests a second a 20 ms period held two, and one preempted request stepped the budget down."""
    controller = LatencyController(PIDGains(kp=0.4, ki=0.0, setpoint=0.8, min_scale=0.1, max_scale=1.0, interval_s=0.5, min_requests=4), target_ms=4.0)
    controller.update(3.2, 0.0)  # the first request steps at once: at the setpoint
    assert controller.scale == pytest.approx(1.0)
    for t in (0.1, 0.2, 0.3):  # within the period: recorded, no step
        assert controller.update(6.0 if t == 0.2 else 3.2, t) == pytest.approx(1.0)
    controller.update(3.2, 0.6)  # the period's mean, (3 x 3.2 + 6) / 4 = 3.9 ms, not its one late request
    stepped = 1.0 + 0.4 * (0.8 - 3.9 / 4.0)
    assert controller.scale == pytest.approx(stepped, abs=1e-6)
    for t in (1.2, 1.4, 1.6):  # the period past, but too few requests in it: recorded, no step (one of them 5x late)
        assert controller.update(20.0 if t == 1.2 else 3.2, t) == pytest.approx(stepped, abs=1e-6)
    controller.update(3.2, 1.8)  # the fourth: the mean of the four, (20 + 3 x 3.2) / 4 = 7.4 ms
    assert controller.scale == pytest.approx(1.0 + 0.4 * (0.8 - 7.4 / 4.0), abs=1e-6)
    with pytest.raises(ConfigError, match="min_requests 0"):
        PIDGains(min_requests=0)
    # A period left short of its count is stepped on as it stands when the next request comes
    # PID_STEP_MAX_S after its first; that request starts the next period.
    from racmkd.resources.allocator import PID_STEP_MAX_S

    slow = LatencyController(PIDGains(kp=0.4, ki=0.0, setpoint=0.8, min_scale=0.1, max_scale=1.0, interval_s=0.02), target_ms=4.0)
    slow.update(3.2, 0.0)  # the first request steps at once
    scales = [slow.update(latency, t) for latency, t in ((6.0, 0.4), (6.0, 0.8), (6.0, 1.2), (3.2, 0.6 + PID_STEP_MAX_S))]  # 8 requests would take 3.2 s
    assert scales[:3] == [pytest.approx(1.0)] * 3 and scales[3] == pytest.approx(1.0 + 0.4 * (0.8 - 6.0 / 4.0))  # the three late ones, not the fourth
    assert slow.update(3.2, 3600.0) == pytest.approx(1.0 + 0.4 * (0.8 - 3.2 / 4.0))  # an hour on: the fourth, its period's own
    # Times out of order (threads read their clocks before they queue for the runtime's lock): an
    # older time counts as the newest seen; simple-pid raised on the negative step, out of predict.
    shuffled = LatencyController(PIDGains(), target_ms=4.0)
    for latency, t in [(1.0, 0.0)] + [(1.0, 10.0)] * 8 + [(1.0, 8.5), (1.0, 9.6)]:
        assert math.isfinite(shuffled.update(latency, t))


def test_one_slow_request_after_an_idle_gap_is_not_integrated_over_the_gap() -> None:
    """After 30 s without requests, one request at 1.5x the target took the budget to its floor
    (the integral stepped by the whole gap); it weighs as if the gap were PID_STEP_MAX_S."""
    from racmkd.resources.allocator import PID_STEP_MAX_S

    def after(gap_s: float) -> float:
        controller = LatencyController(gains, target_ms=3.0)
        for step in range(50):
            controller.update(3.0, step * 0.02)  # at the target: steady
        return controller.update(4.5 * gains.setpoint, 0.98 + gap_s)

    gains = PIDGains(min_requests=1)  # (the slow request steps the PID alone)
    assert after(30.0) == pytest.approx(after(PID_STEP_MAX_S)) and after(30.0) > gains.min_scale + 0.25


def test_costs_add_up_over_the_variants_of_a_configuration() -> None:
    a, b = Variant("image", "low", 0.5, 1000, 0.2), Variant("audio", "high", 1.5, 3000, 0.7)
    c = config_costs((a, b))
    assert (c.latency_ms, c.memory_bytes, c.energy_mj) == (2.0, 4000, pytest.approx(0.9))
    assert c.fits(Budget(2.0, 4000, 1.0)) and not c.fits(Budget(2.0, 4000, 1.0), slack=0.1) and c.over(Budget(1.0, 10, 5)) == ["latency_ms", "memory_bytes"]


def test_a_recorded_trace_replays_what_was_read(tmp_path: Path) -> None:
    from racmkd.resources.sources import record_trace

    trace = record_trace(Scripted([10.0, 20.0, 30.0, 40.0, 50.0, 60.0], memory_mb=64.0), seconds=0.25, interval_s=0.05)

    class Unplugged(Scripted):  # a laptop on battery: the power state is recorded and replayed
        def read(self, now: float) -> ResourceSnapshot:
            return dataclasses.replace(super().read(now), battery_percent=80.0, power_plugged=False)

    on_battery = record_trace(Unplugged([10.0]), seconds=0.1, interval_s=0.05)
    on_battery.write(tmp_path / "battery.csv")
    assert "power_plugged" in (tmp_path / "battery.csv").read_text().splitlines()[0]
    assert load_trace(tmp_path / "battery.csv").at(0.0).power_plugged is False

    class Unknown(Scripted):  # psutil read a battery but not whether the machine was plugged in
        def read(self, now: float) -> ResourceSnapshot:
            return dataclasses.replace(super().read(now), battery_percent=80.0, power_plugged=None)

    # Recorded without its power_plugged column, this was read back as on battery (energy budget on).
    unknown = record_trace(Unknown([10.0]), seconds=0.1, interval_s=0.05)
    for name in ("unknown.csv", "unknown.json"):
        unknown.write(tmp_path / name)
        replayed = load_trace(tmp_path / name)
        assert replayed.skipped_rows == 0 and "power_plugged" in replayed.columns, name  # an empty cell is unknown, not garbage
        assert (replayed.at(0.0).battery_percent, replayed.at(0.0).power_plugged) == (80.0, None), name
    assert (tmp_path / "unknown.csv").read_text().splitlines()[1].endswith(",")
    assert len(trace.times) >= 4 and set(trace.columns) == {"cpu_percent", "memory_available_mb", "cpu_cores"}  # absent sensors are not written
    for name in ("rec.csv", "rec.json"):  # the format follows the name (CSV under a .json name was refused on replay)
        trace.write(tmp_path / name)
        replayed = load_trace(tmp_path / name)
        assert np.allclose(replayed.columns["cpu_percent"], trace.columns["cpu_percent"]) and replayed.at(0.0).memory_available_bytes == 64 * MB
        assert np.allclose(replayed.times, trace.times)

    class Server:  # a 16-core host half busy: 8 free cores, no slowdown for one more thread
        name = "server"

        def read(self, now: float) -> ResourceSnapshot:
            return ResourceSnapshot(t=now, cpu_percent=50.0, runnable_tasks=8.0, host_cores=16, cpu_cores=16.0)

    live = Server().read(0.0)
    record_trace(Server(), seconds=0.1, interval_s=0.05).write_csv(tmp_path / "server.csv")
    again = load_trace(tmp_path / "server.csv").at(0.0)
    assert (again.host_cores, again.cpu_cores) == (16, 16.0) and again.cpu_share(0.05) == live.cpu_share(0.05) == 1.0


def test_a_spreadsheets_trailing_empty_columns_are_no_repeated_names(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_text("t,cpu_percent,,\n0,10,,\n1,20,,\n2,30,,\n")
    assert len(load_trace(path).times) == 3
