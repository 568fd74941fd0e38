"""Small helpers shared by every stage: atomic writes, seeding, threads, progress bars.

torch is imported inside the helpers that need it: the edge side uses this module without it."""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import math
import os
import random
import re
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from tqdm.auto import tqdm

if TYPE_CHECKING:
    import torch
    from numpy.typing import DTypeLike

T = TypeVar("T")


def sha256(data: bytes) -> str:
    """Hex sha256 of some bytes (datasets, releases, deltas are all checked by it)."""
    return hashlib.sha256(data).hexdigest()


def same_source(path: Path, recorded_sha256: str | None, made: Path) -> bool:
    """Whether what was `made` from the file at `path` is still of it: by its content when the
    record holds its digest; for a record written before digests were kept, by time (not newer
    than `made`). Times alone mislead once the clock steps back (NTP, a board without a real-time
    clock): a model retrained after the step read older than what was made from its predecessor,
    and the old artifact was kept for it. A missing `path` is no change (nothing to redo it from)."""
    if not path.is_file():
        return True
    if recorded_sha256 is not None:
        return sha256(path.read_bytes()) == recorded_sha256
    return path.stat().st_mtime_ns <= made.stat().st_mtime_ns


def _read_umask() -> int:
    mask = os.umask(0)  # the umask can only be read by setting it
    os.umask(mask)
    return mask


UMASK = _read_umask()  # read once, at import: setting it later would race with other threads' file creation


def not_a_regular_file(path: Path) -> str | None:
    """Why `path` is nothing an atomic write may replace (a folder; a device, pipe or socket: as
    root, `--out /dev/full` replaced the device node with a file), or None (nothing there, a file,
    a symbolic link: replaced, not written through, for following one another user planted would
    write wherever it points)."""
    if path.is_symlink() or not path.exists() or path.is_file():
        return None
    return "a folder" if path.is_dir() else "not a regular file (a device, a pipe or a socket)"


@contextmanager
def replacing(path: Path, mode: int | None = None) -> Iterator[Path]:
    """A temporary file beside `path` for the caller to write; then it is flushed to disk, given
    `mode` and renamed over `path`, and the folder's entry flushed too: after a crash or a power cut
    `path` holds the old content or the new, never half of either (an edge device's state file
    relies on this). The default mode is what a plain `open` gives (0o666 less the umask), not
    mkstemp's 0o600, which would hide run outputs and public keys from other users and containers.
    The temporary file is named as a `work_folder` is (`.<name>.<pid>-<host>-<random>.tmp`): those a
    killed writer left (three killed dataset cache writes, 200 MB) are removed by the next write of
    `path`, or by `remove_stale_work(folder, suffix=".tmp")`."""
    path = Path(path)
    if not path.is_dir() and not_a_regular_file(path):  # (a folder: os.replace refuses it below)
        raise ValueError(f"{path}: {not_a_regular_file(path)}; it is not replaced: name a file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    with suppress(OSError):  # (tidying: a folder that cannot be listed fails the write below, if at all)
        remove_stale_work(path.parent, path.name, suffix=".tmp")
    tmp = _temporary_file(path)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~UMASK if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)  # the rename itself reaches the disk with the folder's entry


def _temporary_file(path: Path) -> Path:
    """An empty temporary file beside `path`, named by `temporary_prefix`; a failure names `path`
    (the temporary file's name is no one's to know; a bare "[Errno 28] No space left on device"
    named nothing)."""
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path), suffix=".tmp")
    except OSError as err:
        raise OSError(err.errno, f"cannot write a file there ({err.strerror})", str(path)) from None
    os.close(fd)
    return Path(name)


def temporary_prefix(path: Path) -> str:
    """`.<name>.<pid>-<host>-`: how a temporary file for `path` is named, so that the next write
    can tell one a killed process left (`remove_stale_work`)."""
    return f".{Path(path).name}.{os.getpid()}-{_HOST}-"


NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}  # what os.link raises where a filesystem has none (FAT, some network ones)


def claim_name(tmp: Path, path: Path) -> None:
    """Give a whole temporary file the name `path` unless a file is there, FileExistsError otherwise
    (the caller removes the temporary name, which a rename has taken already): a hard link is made
    only where none exists, so of two processes claiming one name, one wins. A filesystem without
    hard links gets a rename after a last look."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
    except OSError as err:
        if err.errno not in NO_HARD_LINKS:
            raise
        if path.exists():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
        os.replace(tmp, path)


def write_new(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write `path` whole (flushed to disk, given `mode`: by default a plain `open`'s) where no file
    is; FileExistsError where one is, or appears meanwhile: a check then a write let two processes
    both take the name."""
    path = Path(path)
    remove_stale_work(path.parent, path.name, suffix=".tmp")
    tmp = _temporary_file(path)
    try:
        try:
            tmp.write_bytes(data)  # (as every atomic write: through Path.write_bytes)
            with open(tmp, "rb+") as flushed:
                os.fsync(flushed.fileno())
        except OSError as err:
            raise OSError(err.errno, f"cannot write it ({err.strerror})", str(path)) from None
        os.chmod(tmp, 0o666 & ~UMASK if mode is None else mode)
        claim_name(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_folder(path.parent)


def check_writable(folder: Path, size: int = 1 << 16) -> None:
    """OSError naming `folder` unless `size` bytes can be written to a file there now (the folder
    made if missing): checked before long work whose result goes there, not after it (an hour's
    recording to a read-only or full SD card was lost at its end). The probe has no name (Linux's
    O_TMPFILE where it can), so a kill leaves nothing. The disk may still fill meanwhile."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(bytes(size))
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        raise OSError(err.errno, f"cannot write there ({err.strerror})", str(folder)) from None


@contextmanager
def building_folder(final: Path, keep: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """A sibling temporary folder to write a folder's new content into: when the block ends it takes
    the place of `final` whole, and when it fails (an error, Ctrl-C) it is removed and `final` is
    left as it was. Written in place, an interrupted stage left a folder half old and half new that
    the next stage used as it was (an edge bank whose bank.json described files since replaced).
    `keep` names the old folder's entries to carry over into the new one (files the stage does not
    write, such as an edge bank's live.json), unless the new content has an entry of that name.
    A `final` that is a link is built at its target (renamed aside, the link would have been
    replaced by a folder and its target kept the old content); each build has its own work folder
    (two builds at once shared one, and swapped in a mix of both); and the old folder, renamed aside
    while the new one moves in, is put back by the next build if the swap was cut short; a work
    folder a killed build left is removed by the next (`work_folder`)."""
    final = Path(final)
    if final.is_symlink():
        final = final.resolve()
        if not final.parent.is_dir():
            raise FileNotFoundError(f"{final.parent}: missing, and a link to {final} names it: make that folder (mount it), or remove the link")
    old = final.parent / f".{final.name}.old"  # (the parent is made by `work_folder`, which removes it again if the build fails)
    put_back_aside(final, old)
    with work_folder(final.parent, final.name) as work:
        yield work
        if keep is not None and final.is_dir():
            for entry in final.iterdir():
                if keep(entry) and not (work / entry.name).exists():
                    (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, work / entry.name)
        _swap(work, final, old)


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0-100) of some values by nearest rank (the smallest value with at least
    q% of them at or below it); NaN when there are none. (Until 2026-12-07 the rank was rounded
    from q% of n - 1: one rank lower for many n, p95 of 12 values the 10th, not the 12th.)"""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def human_bytes(n: float) -> str:
    """A byte count for a table: 512 B, 1.5 KB, 2.3 MB (1024-based, as the device profiles' figures)."""
    if abs(n) < 1024:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1024
        if abs(n) < 1024 or unit == "GB":
            break
    return f"{n:.1f} {unit}"


def save_figure(fig: Any, path: Path, dpi: int = 120) -> Path:
    """Write a matplotlib figure as PNG atomically (a plot stopped halfway is no PNG: the earlier
    one stays whole) and close it."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


class Terminated(SystemExit):
    """SIGTERM, raised by `exit_on_sigterm`: a command that keeps what it gathered on Ctrl-C (a
    recording, a live log) catches it too; a service manager stops with SIGTERM, not Ctrl-C."""


@contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """SIGTERM (`kill`, a container or service stopping) raised as SystemExit in the main thread, as
    Ctrl-C raises KeyboardInterrupt, so a command's (or a benchmark's) cleanup runs: its half-built folder is removed
    and the earlier one kept. The default handler ended the process on the spot and left the
    hidden work folder behind (`racmkd compress`'s compressed/.low.*.partial). The handler it
    replaced comes back on leaving, so a process that calls `main()` in-process (a test, a
    notebook) keeps its own; outside the main thread, which cannot set one, nothing changes."""
    import signal

    def terminate(signum: int, _frame: object) -> None:
        raise Terminated(128 + signum)  # the status a shell reports for a process the signal ended

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:  # None: the handler was not set from Python; the default is the nearest Python can restore
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@contextmanager
def work_folder(parent: Path, name: str) -> Iterator[Path]:
    """A new hidden folder in `parent` to build `name`'s new content in, removed if the block fails
    (an error, Ctrl-C, a SIGTERM the CLI turns into an exit); the caller moves its content into
    place before the block ends. Its name carries this process's id and host
    (`.<name>.<pid>-<host>-<random>.partial`, `<host>` from `host_token`), so the next build of `name` removes the work folders
    of processes that are gone (killed outright, they left theirs beside the result forever) and
    leaves those of live builders alone (two builds of one folder at once each keep their own)."""
    parent = Path(parent)
    made = [level for level in (parent, *parent.parents) if not level.exists()]  # (deepest first: removed in that order)
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_work(parent, name)
    work = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.{os.getpid()}-{_HOST}-", suffix=".partial"))
    done = False
    try:
        os.chmod(work, 0o777 & ~UMASK)  # as a plain mkdir makes it, not mkdtemp's 0o700
        yield work
        done = True
    finally:
        shutil.rmtree(work, ignore_errors=True)  # (gone already when its content moved in whole)
        if not done:  # folders made for this build alone (`export --out new/a/b`), left empty by its failure
            for level in made:
                with suppress(OSError):
                    level.rmdir()


def host_token(ns_pid: Path = Path("/proc/self/ns/pid"), boot_id: Path = Path("/proc/sys/kernel/random/boot_id")) -> str:
    """Who may judge a work folder's pid, as 8 hex digits: the hostname, the pid namespace and the
    boot. A pid means a process only within its namespace and boot: two containers sharing a
    volume may have one hostname (`--hostname`, a pod's), and the hostname alone let each remove
    the other's live folders. Where /proc cannot tell, the hostname alone."""
    parts = [socket.gethostname()]
    with suppress(OSError):
        parts.append(f"pidns:{os.stat(ns_pid).st_ino}")
    with suppress(OSError):
        parts.append(f"boot:{boot_id.read_text().strip()}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:8]


_HOST = host_token()  # another container's pids are not ours to judge


def remove_stale_work(parent: Path, name: str | None = None, suffix: str = ".partial") -> list[Path]:
    """The `work_folder`s (suffix `.partial`) or `replacing`'s temporary files (`.tmp`) of `name`
    (None: of any name) in `parent` whose process, on this host, has ended: removed. Returns what
    was removed."""
    pattern = re.compile(rf"\.{'.+' if name is None else re.escape(name)}\.(\d+)-([0-9a-f]{{8}})-[^.]*{re.escape(suffix)}")
    removed = []
    for entry in Path(parent).glob(f".{'*' if name is None else glob.escape(name)}.*{suffix}"):
        match = pattern.fullmatch(entry.name)
        if not (match and match[2] == _HOST):
            continue
        import psutil  # (only here: most folders hold nothing to judge)

        if psutil.pid_exists(int(match[1])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _swap(work: Path, final: Path, old: Path) -> None:
    """`work` renamed to `final`, the old content renamed aside to `old` first and removed after. A
    folder cannot replace a full one in one rename; if the second fails, the old one goes back."""
    put_back_aside(final, old)
    if final.exists():
        os.replace(final, old)
    try:
        os.replace(work, final)
    except BaseException:
        put_back_aside(final, old)
        raise
    shutil.rmtree(old, ignore_errors=True)


def put_back_aside(final: Path, old: Path) -> None:
    """The old folder that a cut-short swap (killed between its two renames) left aside, put back at
    `final`; else a leftover old folder removed. Deleted as stale, it was the previous content's only copy."""
    if old.exists() and not final.exists():
        os.replace(old, final)
    else:
        shutil.rmtree(old, ignore_errors=True)


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where a folder cannot be opened
    (Windows) or synced."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write `data` to `path` through `replacing`: a crash never leaves half a file. A failed write
    (a full disk) names `path`, not the temporary file, nor nothing at all as a write error does."""
    with replacing(path, mode) as tmp:
        try:
            tmp.write_bytes(data)
        except OSError as err:
            raise OSError(err.errno, f"cannot write it ({err.strerror})", str(path)) from None


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Pretty JSON, written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def cached_json(path: Path) -> dict[str, Any] | None:
    """A cache file's JSON object, or None when it is absent, unreadable or not an object: the
    caller then makes it again (a file cut short by a killed run stopped every resume that read it)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def json_safe(obj: Any) -> Any:
    """`obj` with every NaN or infinite float as None (null): Python's json writes them as NaN and
    Infinity, which no other JSON reader accepts. For files and output meant for other tools (a
    simulation's timeline: no switch, no adaptation time; no energy budget, an infinite one)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_torch_save(obj: Any, path: Path) -> None:
    """`torch.save` through `atomic_write_bytes`: serialized in memory first, so that a full disk
    is an OSError naming no space left (torch's own writer raised "RuntimeError: [enforce fail at
    inline_container.cc:672] . unexpected pos 97216 vs 97104", naming neither)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for code that takes one explicitly."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


_THREADS_LOCK = threading.Lock()
_threads_blocks = [0, 0]  # blocks running now, in any thread; the number before the first of them


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with `n` intra-op threads (0 = leave as is), restoring the previous number after.
    The number is the calling thread's and, with OpenMP, the default that threads started meanwhile
    take: blocks overlapping in several threads (a server's pool answering with a checkpoint) each
    put back their own thread's, and the last to end the number before the first began (restoring
    its own, a pool thread started during another's block left every later thread on one)."""
    import torch

    if n <= 0:
        yield
        return
    with _THREADS_LOCK:
        if _threads_blocks[0] == 0:
            _threads_blocks[1] = torch.get_num_threads()
        _threads_blocks[0] += 1
        mine = torch.get_num_threads()
        torch.set_num_threads(n)
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _threads_blocks[0] -= 1
            torch.set_num_threads(_threads_blocks[1] if _threads_blocks[0] == 0 else mine)


def progress(items: Iterable[T], desc: str, total: int | None = None, leave: bool = False) -> Iterable[T]:
    """A tqdm progress bar on stderr; silenced with RACMKD_PROGRESS=0 (as the tests do)."""
    return tqdm(items, desc=desc, total=total, leave=leave, disable=_progress_disabled(), dynamic_ncols=True, mininterval=_refresh_seconds())


def byte_progress(desc: str, total: int | None) -> tqdm:
    """A progress bar counting bytes (downloads); silenced like `progress`."""
    return tqdm(desc=desc, total=total, unit="B", unit_scale=True, leave=False, disable=_progress_disabled(), mininterval=_refresh_seconds())


def _progress_disabled() -> bool:
    return os.environ.get("RACMKD_PROGRESS", "1") == "0"


def _refresh_seconds() -> float:
    """Redraw often on a terminal; in a log file (CI, nohup) a line every 30 s is enough."""
    return 0.1 if sys.stderr.isatty() else 30.0


class Window:
    """The last `capacity` numbers appended, oldest first, in one array allocated at the start.

    A device runs for months: a window of recent latencies must not make its memory creep up
    while it fills. A `deque(maxlen=10_000)` of Python floats grows by 32 bytes a value until it
    is full (320 KB, reached after hours when values come once a switch), which a soak run reads
    as growth; this holds 80 KB, written through when made (so resident from the start), from the
    first value to the last. Safe to read while another thread appends (as a deque is): the
    runtime appends under its lock, summaries read without it."""

    def __init__(self, capacity: int, dtype: DTypeLike = np.float64) -> None:
        if capacity < 1:
            raise ValueError(f"a window holds at least one value, got capacity {capacity}")
        self._values = np.full(capacity, 0, dtype=np.dtype(dtype))  # (np.zeros may leave its pages untouched until written)
        self._next = 0  # where the next value goes
        self._count = 0  # values held (at most capacity)
        self._lock = threading.Lock()

    def append(self, value: float) -> None:
        with self._lock:
            self._values[self._next] = value
            self._next = (self._next + 1) % len(self._values)
            self._count = min(self._count + 1, len(self._values))

    def values(self) -> np.ndarray:
        """The values held, oldest first (a copy)."""
        with self._lock:
            if self._count < len(self._values):
                return self._values[: self._count].copy()
            return np.concatenate((self._values[self._next :], self._values[: self._next]))

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[float]:
        return iter(self.values().tolist())  # Python numbers: JSON and statistics take them as they are
