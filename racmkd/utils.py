"""Small helpers shared by every stage: atomic writes, seeding, threads, progress bars.

torch is imported inside the helpers that need it: the edge side uses this module without it."""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from tqdm.auto import tqdm

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


def sha256(data: bytes) -> str:
    """Hex sha256 of some bytes (datasets, releases, deltas are all checked by it)."""
    return hashlib.sha256(data).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Pretty JSON, written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """`torch.save` through a temporary file and a rename."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator for code that takes one explicitly."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with `n` intra-op threads (0 = leave as is), restoring the previous number after."""
    import torch

    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
