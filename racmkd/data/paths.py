"""Where the datasets are, and the error raised when one is missing or damaged; where the racmkd
checkout is, when racmkd runs from one (its configs, recipes and device profiles); where the
per-machine cache is."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # the folder above the package: the checkout, or site-packages when installed


class DataError(RuntimeError):
    """A dataset file is missing, truncated or corrupt; the message names the file and the fix."""


def read_data_file(path: Path, fix: str) -> bytes:
    """A dataset file's bytes; a missing file, a folder or a dead link under its name, or one that
    cannot be read, is a DataError naming it and `fix` (not the operating system's bare error)."""
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise DataError(f"{path}: unreadable ({err.strerror or err}). {fix}") from None


def checkout() -> Path | None:
    """The racmkd checkout the package runs from (REPO_ROOT, holding racmkd's pyproject.toml), or
    None when racmkd is installed: there the folder above the package is site-packages, and a
    configs/default.yaml (or recipe, or device profile) in it is another distribution's, read
    silently as racmkd's own."""
    try:
        project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")).get("project", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    return REPO_ROOT if isinstance(project, dict) and project.get("name") == "racmkd" else None


def cache_root() -> Path:
    """Where racmkd keeps what it measures once per machine (the latency model's fit): $RACMKD_CACHE,
    else the checkout's .cache/racmkd when racmkd runs from one, else $XDG_CACHE_HOME/racmkd
    (~/.cache/racmkd). Relative to the working directory, as it was, every folder a command ran in
    fitted again (10 s) and printed slightly different estimates."""
    if os.environ.get("RACMKD_CACHE"):
        return Path(os.environ["RACMKD_CACHE"]).expanduser()
    root = checkout()
    if root is not None:
        return root / ".cache" / "racmkd"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "racmkd"


def data_root(configured: str = "") -> Path:
    """The data root: the configured path, else $RACMKD_DATA, else ../shared/data (beside the
    working directory or the checkout) if it exists, else ./data."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("RACMKD_DATA"):
        return Path(os.environ["RACMKD_DATA"]).expanduser()
    root = checkout()
    for candidate in (Path.cwd().parent / "shared" / "data", *([root.parent / "shared" / "data"] if root else [])):
        if candidate.is_dir():
            return candidate
    return Path("data")


def git_commit() -> str | None:
    """The checkout's commit (with '-dirty' when files changed), or None outside git or installed
    (`checkout`): the folder above an installed package is site-packages, and the git repository
    around it (a project's .venv) is not racmkd's."""
    root = checkout()
    if root is None:
        return None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def committed(commit: str | None) -> bool:
    """Whether a checkout's commit (`git_commit`) names the code exactly: not outside git, not a
    tree with uncommitted changes (every such tree reads "<sha>-dirty"); what is cached under a
    commit is reused only then."""
    return commit is not None and not commit.endswith("-dirty")
