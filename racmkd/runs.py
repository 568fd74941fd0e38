"""Run directories: runs/<name>/ holds a run's config.yaml, checkpoints, reports and artifacts, and
runs/latest points at the newest. No torch here: the edge server opens a run with these alone."""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path

from racmkd.config import RunConfig, load_config, save_config
from racmkd.utils import atomic_write_json


class RunError(RuntimeError):
    """A run directory is missing or incomplete for the requested stage; the message says which stage to run."""


def create_run(cfg: RunConfig) -> Path:
    """A new runs/<name>/ with its config.yaml; runs/latest now points at it. An existing run is
    never written over (its checkpoints would no longer match its config): a name already taken is
    an error, and a name made from the time gets a suffix."""
    runs = Path(cfg.runs_dir)
    if cfg.name:
        if cfg.name in ("latest", ".", "..") or any(c in cfg.name for c in "/\\") or cfg.name.startswith("."):
            raise RunError(f"name {cfg.name!r}: not a run folder's name ('latest' is the link to the newest run; no slashes, no leading dot). Choose another --name.")
        run_dir = runs / cfg.name
        if (run_dir / "config.yaml").exists():
            raise RunError(f"{run_dir}: a run of that name exists; choose another --name, or delete that folder first. (`racmkd distill --run {run_dir}` and the later stages go on with an existing run.)")
    else:
        stem = f"{cfg.data.protocol}-{time.strftime('%Y%m%d-%H%M%S')}"
        runs.mkdir(parents=True, exist_ok=True)
        for name in itertools.chain([stem], (f"{stem}-{i}" for i in range(2, 10_000))):
            try:
                (runs / name).mkdir()  # taken by whoever creates it: two runs started in one second never share a folder
            except FileExistsError:
                continue
            run_dir = runs / name
            break
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    link_latest(run_dir)
    return run_dir


def link_latest(run_dir: Path) -> None:
    """Point runs/latest at `run_dir` (replaced atomically)."""
    latest = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, latest)


def open_run(run: str | Path) -> tuple[Path, RunConfig]:
    """An existing run directory and the config it was created with."""
    run_dir = Path(run)
    if not (run_dir / "config.yaml").is_file():
        raise RunError(f"{run_dir}: not a run directory (no config.yaml). Start one with `racmkd train-teacher` or `racmkd run`.")
    return run_dir.resolve(), load_config(run_dir / "config.yaml")


def checkpoint(run_dir: Path, name: str) -> Path:
    """Where the model `name` of a run is stored."""
    return run_dir / "checkpoints" / f"{name}.pt"


def record_timing(run_dir: Path, stage: str, seconds: float) -> None:
    """Add a stage's wall time to runs/<name>/timings.json."""
    path = run_dir / "timings.json"
    timings = json.loads(path.read_text()) if path.exists() else {}
    timings[stage] = round(seconds, 1)
    atomic_write_json(path, timings)
