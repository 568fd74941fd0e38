"""Where the datasets are, and the error raised when one is missing or damaged."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


class DataError(RuntimeError):
    """A dataset file is missing, truncated or corrupt; the message names the file and the fix."""


def data_root(configured: str = "") -> Path:
    """The data root: the configured path, else $RACMKD_DATA, else ../shared/data (beside the
    checkout or the working directory) if it exists, else ./data."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("RACMKD_DATA"):
        return Path(os.environ["RACMKD_DATA"]).expanduser()
    for candidate in (Path.cwd().parent / "shared" / "data", REPO_ROOT.parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return Path("data")
