"""Shared helpers: the work folders a build leaves when it is killed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ended_pid

from racmkd import utils
from racmkd.utils import building_folder


def test_a_failed_build_removes_every_folder_it_made_for_itself(tmp_path: Path) -> None:
    """`export --out new/a/b` cut short removed b and left new/ and new/a/ behind, empty."""
    with pytest.raises(KeyboardInterrupt), building_folder(tmp_path / "new" / "a" / "b"):
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    with pytest.raises(KeyboardInterrupt), building_folder(tmp_path / "kept" / "a" / "b"):
        raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and list((tmp_path / "kept").iterdir()) == []  # a folder that was there stays


def test_a_build_removes_the_work_folders_of_ended_builders_only(tmp_path: Path) -> None:
    """A build killed outright (SIGKILL, a power cut) left compressed/.low.*.partial forever; the
    next build of the folder removes it. A live builder's (two builds at once), another host's
    (a shared volume) and another folder's work folders stay."""
    dead = tmp_path / f".low.{ended_pid()}-{utils._HOST}-abc123.partial"
    live = tmp_path / f".low.{os.getpid()}-{utils._HOST}-def456.partial"
    elsewhere = tmp_path / f".low.{ended_pid()}-00000000-ghi789.partial"
    other = tmp_path / f".lower.{ended_pid()}-{utils._HOST}-jkl012.partial"
    for folder in (dead, live, elsewhere, other):
        folder.mkdir()
        (folder / "model.onnx").write_text("half")
    with building_folder(tmp_path / "low") as work:
        (work / "model.onnx").write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["low", live.name, elsewhere.name, other.name])
    assert (tmp_path / "low" / "model.onnx").read_text() == "whole"


def test_a_write_removes_the_temporary_files_of_ended_writers_only(tmp_path: Path) -> None:
    """A write killed outright left .<name>.<random>.tmp forever (three killed dataset cache writes:
    200 MB beside a 107 MB cache, counted by no cache limit). The next write of the file removes
    its dead writers' files, and the cache trim any dead writer's; live and other hosts' stay."""
    from racmkd.data.dataset import trim_caches

    dead = tmp_path / f".state.json.{ended_pid()}-{utils._HOST}-abc123.tmp"
    live = tmp_path / f".state.json.{os.getpid()}-{utils._HOST}-def456.tmp"
    elsewhere = tmp_path / f".state.json.{ended_pid()}-00000000-ghi789.tmp"
    cache = tmp_path / f".dataset-avmnist-1.pt.{ended_pid()}-{utils._HOST}-jkl012.tmp"
    for path in (dead, live, elsewhere, cache):
        path.write_bytes(b"half")
    utils.atomic_write_json(tmp_path / "state.json", {"version": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["state.json", live.name, elsewhere.name, cache.name])
    trim_caches(tmp_path, 1e9, keep=tmp_path / "dataset-avmnist-2.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["state.json", live.name, elsewhere.name])
    with utils.replacing(tmp_path / "state.json") as tmp:  # (its own file is named so that a later write can judge it)
        assert re.fullmatch(rf"\.state\.json\.{os.getpid()}-{utils._HOST}-[^.]*\.tmp", tmp.name)
        tmp.write_text("{}")


def test_sigterm_to_the_command_removes_its_half_built_folder(tmp_path: Path) -> None:
    """SIGTERM ended the process on the spot, skipping the cleanup Ctrl-C runs; the CLI turns it into an exit."""
    script = f"""
import sys, time
from pathlib import Path

import pytest
from racmkd.utils import exit_on_sigterm
from racmkd.utils import building_folder
with exit_on_sigterm(), building_folder(Path({str(tmp_path / "low")!r})) as work:
    (work / "model.onnx").write_text("half")
    print("building", flush=True)
    time.sleep(60)
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "building"
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM and time.monotonic() - started < 30
    assert list(tmp_path.iterdir()) == []


def test_main_gives_back_the_sigterm_handler_it_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() left its SIGTERM handler installed, so in a process that called it (pytest) a later
    SIGTERM raised SystemExit; and off the main thread signal.signal raises ValueError."""
    import threading

    from racmkd.cli import main

    def own(_signum: int, _frame: object) -> None:
        pass

    previous = signal.signal(signal.SIGTERM, own)
    try:
        monkeypatch.setattr(sys, "argv", ["racmkd", "--help"])
        with pytest.raises(SystemExit):
            main()
        assert signal.getsignal(signal.SIGTERM) is own
        outcome: list[BaseException] = []

        def in_thread() -> None:
            try:
                main()
            except BaseException as err:  # noqa: BLE001 - the test reads which one
                outcome.append(err)

        thread = threading.Thread(target=in_thread)
        thread.start()
        thread.join(timeout=60)
        assert [type(err) for err in outcome] == [SystemExit] and signal.getsignal(signal.SIGTERM) is own
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_host_token_tells_pid_namespaces_and_boots_apart(tmp_path: Path) -> None:
    """Two containers with one hostname on a shared volume had one token: each judged the other's
    pids by its own and could remove live work folders. The pid namespace and boot id count too,
    and where /proc cannot tell, the hostname alone still gives a token."""
    boot_a, boot_b, namespace = tmp_path / "boot_a", tmp_path / "boot_b", tmp_path / "ns"
    boot_a.write_text("1111\n")
    boot_b.write_text("2222\n")
    namespace.write_text("")
    other_namespace = tmp_path / "ns2"
    other_namespace.write_text("")
    here = utils.host_token(namespace, boot_a)
    assert len(here) == 8 and here == utils.host_token(namespace, boot_a)
    assert len({here, utils.host_token(namespace, boot_b), utils.host_token(other_namespace, boot_a)}) == 3
    alone = utils.host_token(tmp_path / "missing", tmp_path / "missing")
    assert len(alone) == 8 and alone not in {here, utils.host_token(namespace, tmp_path / "missing")}
    assert utils._HOST == utils.host_token()  # this process's, as its work folders are named


def test_a_window_keeps_the_last_values_in_order_in_the_memory_it_started_with() -> None:
    """The runtime's latency windows: a deque of Python floats grew 32 bytes a value until full,
    which a soak run read as memory growth; a Window allocates nothing after it is made."""
    import tracemalloc

    window = utils.Window(1000)
    assert len(window) == 0 and list(window) == [] and window.values().size == 0
    tracemalloc.start()
    try:
        for i in range(2500):
            window.append(i * 0.5)
        grown, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert grown < 1024  # (a deque of 1000 floats: about 32 KB)
    assert len(window) == 1000 and list(window) == [i * 0.5 for i in range(1500, 2500)]
    assert all(type(v) is float for v in window)  # JSON and statistics take them as they are
    counts = utils.Window(3, np.int64)
    for n in (1, 2, 3, 4):
        counts.append(n)
    assert list(counts) == [2, 3, 4] and all(type(v) is int for v in counts)
    with pytest.raises(ValueError, match="at least one"):
        utils.Window(0)


def test_a_window_read_while_another_thread_appends_is_a_whole_snapshot() -> None:
    """Summaries read the runtime's windows while the monitor thread may append (as a deque
    allowed): every read is some run of consecutive appended values, oldest first."""
    import threading

    window = utils.Window(100)
    stop = threading.Event()

    def append() -> None:
        i = 0
        while not stop.is_set():
            window.append(float(i))
            i += 1

    writer = threading.Thread(target=append)
    writer.start()
    try:
        reads = [window.values() for _ in range(20_000)]
    finally:
        stop.set()
        writer.join()
    for values in reads:
        assert len(values) <= 100 and (np.diff(values) == 1.0).all()
    assert any(len(values) == 100 for values in reads)  # (reads that came back empty would pass the above)


def test_an_atomic_write_never_replaces_a_special_file_nor_follows_a_symlink(tmp_path: Path) -> None:
    """As root, `profile --out /dev/full` replaced the device node with a JSON file (a size-0 path
    passed for an empty file). A symlink is replaced, its target left as it was: followed, one
    another user planted would have root write wherever it points."""
    target = tmp_path / "target.json"
    target.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    utils.atomic_write_json(link, {"a": 1})
    assert not link.is_symlink() and json.loads(link.read_text()) == {"a": 1} and target.read_text() == "{}"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        utils.atomic_write_json(fifo, {"a": 1})
    assert fifo.is_fifo() and [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    with pytest.raises(OSError, match=r"cannot write a file there .*'/proc/x\.json'"):
        utils.atomic_write_json(Path("/proc/x.json"), {"a": 1})  # (the error named the temporary file)


def test_a_cache_file_that_is_damaged_or_not_an_object_reads_as_absent(tmp_path: Path) -> None:
    from racmkd.utils import cached_json

    cache = tmp_path / "rows.json"
    assert cached_json(cache) is None  # absent
    for damaged in ('{"commit": "abc", "rows": {', "[]", "", "\xff\xfe"):
        cache.write_text(damaged)
        assert cached_json(cache) is None
    cache.write_text('{"commit": "abc"}')
    assert cached_json(cache) == {"commit": "abc"}
    assert cached_json(tmp_path) is None  # a folder


def test_human_bytes_is_the_one_byte_format_of_the_reports() -> None:
    from racmkd.utils import human_bytes

    assert [human_bytes(n) for n in (0, 1023, 1024, 1536, 2**20, 5 * 2**30)] == ["0 B", "1023 B", "1.0 KB", "1.5 KB", "1.0 MB", "5.0 GB"]


def test_a_checkpoint_that_does_not_fit_on_disk_is_an_oserror_naming_it(tmp_path: Path) -> None:
    """torch's writer reported a full disk as "RuntimeError: [enforce fail at inline_container.cc:672]
    . unexpected pos 97216 vs 97104", naming neither the file nor the cause (the CLI showed it as a
    traceback). A file-size limit stands in for the full disk."""
    script = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "import torch\n"
        "from racmkd.utils import atomic_torch_save\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        "try:\n"
        "    atomic_torch_save({'w': torch.zeros(10000)}, Path(sys.argv[1]) / 'm.pt')\n"
        "except OSError as err:\n"
        "    print(err)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "cannot write it (File too large)" in done.stdout and str(tmp_path / "m.pt") in done.stdout
    assert list(tmp_path.iterdir()) == []  # no temporary file left


def test_help_on_racmkd_works_without_torch() -> None:
    """help() imports every name dir() lists: listing the subpackages failed on an edge device
    (no torch) and imported torch everywhere else."""
    script = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "import pydoc, racmkd\n"
        "text = pydoc.render_doc(racmkd)\n"
        "assert 'load' in dir(racmkd) and not {'racmkd.models', 'racmkd.distill', 'racmkd.eval'} & set(sys.modules), sorted(sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_torch_threads_blocks_overlapping_in_threads_give_the_process_its_number_back() -> None:
    """A pool thread started during another thread's block took its one thread as the number to put
    back, and, ending last, left every thread started after on one."""
    import threading

    import torch

    from racmkd.utils import torch_threads

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()

        def second() -> None:  # started inside the first block, ends after it
            with torch_threads(1):
                second_in.set()
                first_out.wait(10)

        worker = threading.Thread(target=second)
        with torch_threads(1):
            first_in.set()
            worker.start()
            second_in.wait(10)
        first_out.set()
        worker.join(10)
        assert torch.get_num_threads() == 2
        later = []
        probe = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        probe.start()
        probe.join(10)
        assert later == [2]
    finally:
        torch.set_num_threads(before)


def test_check_writable_names_the_folder_and_write_new_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A place that cannot take a file is named (the folder, made if missing, the file itself: a
    full disk read as a bare "[Errno 28] No space left on device"), and leaves nothing behind."""
    import errno

    from racmkd.utils import check_writable, write_new

    check_writable(tmp_path / "new" / "folder")
    assert (tmp_path / "new" / "folder").is_dir() and not list((tmp_path / "new" / "folder").iterdir())
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match="cannot write there") as raised:
        check_writable(tmp_path / "file" / "below")
    assert raised.value.filename == str(tmp_path / "file" / "below")

    def disk_full(self: Path, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    with pytest.raises(OSError, match="No space left on device") as raised:
        write_new(tmp_path / "config.yaml", b"config")
    assert raised.value.filename == str(tmp_path / "config.yaml") and not list(tmp_path.glob(".config.yaml*")) and not (tmp_path / "config.yaml").exists()
