"""Run directories: runs/<name>/ holds a run's config.yaml, checkpoints, reports and artifacts, and
runs/latest points at the newest. No torch here: the edge server opens a run with these alone."""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from racmkd.config import ConfigError, RunConfig, load_config, config_text, read_yaml_mapping
from racmkd.utils import atomic_write_json, write_new

log = logging.getLogger(__name__)

TEACHER = "teacher"  # the fused teacher's checkpoint name; a unimodal teacher's is teacher_<modality>


class RunError(RuntimeError):
    """A run directory is missing or incomplete for the requested stage; the message says which stage to run."""


def create_run(cfg: RunConfig) -> Path:
    """A new runs/<name>/ with its config.yaml; runs/latest now points at it. An existing run is
    never written over (its checkpoints would no longer match its config): a name already taken is
    an error, and a name made from the time gets a suffix. Nothing is left behind when it fails."""
    runs = Path(cfg.runs_dir)
    check_latest(runs / "latest")  # before any folder is made: the run could not be linked
    if cfg.name:
        if cfg.name in ("latest", ".", "..") or any(c in cfg.name for c in "/\\") or cfg.name.startswith("."):
            raise RunError(
                f"name {cfg.name!r}: not a run folder's name ('latest' is the link to the newest run; no slashes, no leading dot). Choose another --name."
            )
        run_dir = runs / cfg.name
        if (run_dir / "config.yaml").exists():
            raise RunError(f"{run_dir}: a run of that name exists; choose another --name, or delete that folder first. ({_going_on(run_dir)}.)")
        try:  # (a folder of that name without a config is taken over, and left as it was on failure)
            run_dir.mkdir(parents=True)
            made = True  # by this process alone: of two runs of one name, only the one that made the folder removes it on failure
        except FileExistsError:
            made = False
    else:
        stem = f"{cfg.data.protocol}-{time.strftime('%Y%m%d-%H%M%S')}"
        runs.mkdir(parents=True, exist_ok=True)
        for name in itertools.chain([stem], (f"{stem}-{i}" for i in range(2, 10_000))):
            try:
                (runs / name).mkdir()  # taken by whoever creates it: two runs started in one second never share a folder
            except FileExistsError:
                continue
            run_dir = runs / name
            made = True
            break
        else:
            raise RunError(f"{runs}: every run name of this second is taken ({stem} to {stem}-9999); give the run a --name")
    had_checkpoints = (run_dir / "checkpoints").exists()
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        try:  # the config claims the folder: of two runs started with one --name, one gets it (both trained into it)
            write_new(run_dir / "config.yaml", config_text(cfg).encode())
        except FileExistsError:
            raise RunError(f"{run_dir}: a run of that name was started meanwhile; choose another --name") from None
    except RunError:
        raise  # (the folder is the other run's now: nothing of it is removed)
    except BaseException:
        _unmake(run_dir, made, had_checkpoints, config=False)
        raise
    try:
        link_latest(run_dir)
    except BaseException:  # a half-made run would take its name, and look like a run to `open_run`
        _unmake(run_dir, made, had_checkpoints, config=True)
        raise
    return run_dir


def _unmake(run_dir: Path, made: bool, had_checkpoints: bool, config: bool) -> None:
    """Undo `create_run`'s work on `run_dir`: the folder if it made it, else its config (where it
    wrote one) and the checkpoints folder (where there was none)."""
    if made:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        if config:
            (run_dir / "config.yaml").unlink(missing_ok=True)
        if not had_checkpoints:
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def _going_on(run_dir: Path) -> str:
    """How an existing run goes on, by its own config's teacher set (`missing_teachers`)."""
    try:
        modalities = load_config(run_dir / "config.yaml").data.modalities
    except (ConfigError, OSError) as err:
        return f"its config.yaml does not load, so it cannot go on: {err}"
    if not missing_teachers(run_dir, modalities):
        return f"`racmkd distill --run {run_dir}` and the later stages go on with an existing run"
    return f"it has no whole teacher set, as an interrupted run leaves it: `racmkd train-teacher --run {run_dir}` trains them, then `racmkd distill --run {run_dir}` and the later stages go on"


def teacher_names(modalities: list[str] | tuple[str, ...]) -> list[str]:
    """A run's teacher set, as `train_teachers` saves it: one unimodal teacher per modality, and the
    fused one (first here: the primary teacher) when there are several modalities."""
    return ([TEACHER] if len(modalities) > 1 else []) + [f"{TEACHER}_{m}" for m in modalities]


def missing_teachers(run_dir: Path, modalities: list[str] | tuple[str, ...]) -> list[str]:
    """The checkpoint names of the teacher set that a run lacks; none: its teachers are whole. The
    one judgement of `racmkd run --name` on a taken name, `train-teacher --run` and distillation:
    Ctrl-C during the fused teacher leaves the unimodal ones alone, and three different tests of
    "has teachers" sent the user round in a circle (distill, train-teacher, distill...)."""
    return [name for name in teacher_names(modalities) if not checkpoint(run_dir, name).is_file()]


def check_latest(latest: Path) -> None:
    """runs/latest is the link to the newest run, or absent. A folder there (what `cp -rL` or
    `scp -r` of a runs folder makes of the link) is refused rather than written over: os.replace
    cannot put a link in its place, and every new run failed with IsADirectoryError."""
    if latest.is_symlink() or not latest.exists():
        return
    kind = "a folder" if latest.is_dir() else "a file"
    raise RunError(
        f"{latest} is {kind}, not the link to the newest run: rename or remove it (e.g. `mv {latest} {latest}-copy`), and racmkd makes the link again"
    )


@contextmanager
def new_run(cfg: RunConfig) -> Iterator[Path]:
    """`create_run`, undone when the work inside fails before the run holds a checkpoint: a run
    whose first teacher diverged was left as a config.yaml alone, with runs/latest pointing at it
    (`racmkd predict` then found no model, the whole run before it in reach no more) and its name
    taken (`--name` refused again, for a run with nothing in it). runs/latest goes back to the run
    it named before. A run with a checkpoint stays, to go on from (`_going_on`)."""
    runs = Path(cfg.runs_dir)
    latest = runs / "latest"
    previous = os.readlink(latest) if latest.is_symlink() else None
    folder = runs / cfg.name if cfg.name else None
    # A folder of that name without a config is taken over, and left as it was: what it held before stays.
    had = {name for name in RUN_MADE if (folder / name).exists()} if folder is not None and folder.exists() else None
    run_dir = create_run(cfg)
    try:
        yield run_dir
    except BaseException:
        if not any((run_dir / "checkpoints").glob("*.pt")):
            _discard(run_dir, had, latest, previous)
        raise


RUN_MADE = ("config.yaml", "timings.json", "checkpoints")  # what a run's start makes, before its first checkpoint


def _discard(run_dir: Path, had: set[str] | None, latest: Path, previous: str | None) -> None:
    """Remove a run that holds no checkpoint (of a folder taken over, `had` says what was there
    before: that stays) and give runs/latest back to the run it named before."""
    try:
        if had is None:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            for name in set(RUN_MADE) - had:
                path = run_dir / name
                if path.is_dir():
                    with suppress(OSError):  # (only while empty)
                        path.rmdir()
                else:
                    path.unlink(missing_ok=True)
        if latest.is_symlink() and os.readlink(latest) == run_dir.name:
            if previous is not None and (latest.parent / previous).is_dir():
                _point(latest, previous)
            else:
                latest.unlink()
    except OSError as err:  # (the failure being raised is the news; this one only logged)
        log.warning("%s: could not remove the run that failed before its first checkpoint: %s", run_dir, err)


class LinkRefused(OSError):
    """The file system or the platform makes no symbolic link (Windows without Developer Mode or
    administrator rights, WinError 1314; some network and FAT file systems)."""


def link_latest(run_dir: Path) -> None:
    """Point runs/latest at `run_dir` (replaced atomically). Where no link can be made the run goes
    on without one, and a link to an older run is removed: commands that default to runs/latest
    would otherwise read that run in silence."""
    latest = run_dir.parent / "latest"
    check_latest(latest)
    try:
        _point(latest, run_dir.name)
    except LinkRefused as err:
        with suppress(OSError):
            if latest.is_symlink():
                latest.unlink()
        log.warning(
            "%s: could not make the link to the newest run (%s); pass --run %s to the commands that default to runs/latest (on Windows, links need Developer Mode)",
            latest,
            err.__cause__ or err,
            run_dir,
        )


def _point(latest: Path, target: str) -> None:
    """Make the link `latest` name `target` (a run folder beside it), replaced atomically."""
    tmp = latest.parent / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    try:
        tmp.symlink_to(target)
    except OSError as err:
        raise LinkRefused(f"cannot make a symbolic link in {latest.parent}") from err
    try:
        os.replace(tmp, latest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


RUN_SECTIONS = ("data", "teacher", "students")  # in every run's config.yaml since the first


def open_run(run: str | Path) -> tuple[Path, RunConfig]:
    """An existing run directory and the config it was created with."""
    run_dir = Path(run)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise RunError(f"{run_dir}: not a run directory (no config.yaml). Start one with `racmkd train-teacher` or `racmkd run`.")
    # A run's config is written whole (save_config): one without these sections, an emptied file
    # say, read as the defaults, and `racmkd evaluate` measured the run on another protocol's data
    # and wrote that over its report. (Sections added since may be missing from older runs' files.)
    written = read_yaml_mapping(path, "")
    missing = [section for section in RUN_SECTIONS if section not in written]
    if missing:
        raise RunError(
            f"{path}: not a whole run config (no {', '.join(missing)}): racmkd writes it in full when the run starts, and the run's models are trained by it. Put the run's config back (from a copy), or start a new run."
        )
    return run_dir.resolve(), load_config(path)


def read_report(run_dir: Path) -> dict[str, Any]:
    """A run's report.json (`racmkd evaluate` writes it), checked to hold a `models` mapping; errors
    name the file and the command that writes it again."""
    path = Path(run_dir) / "report.json"
    fix = f"measure the run with `racmkd evaluate --run {run_dir}`"
    if not path.is_file():
        raise RunError(f"{path}: no such file; {fix}")
    try:
        report = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise RunError(f"{path}: not readable JSON ({err}); {fix}") from None
    if not isinstance(report, dict) or not isinstance(report.get("models"), dict):
        raise RunError(f"{path}: not a racmkd report (no `models` mapping); {fix}")
    return report


def checkpoint(run_dir: Path, name: str) -> Path:
    """Where the model `name` of a run is stored; ValueError for a name that is a path (`--model
    ../checkpoints/critical` loaded a model from outside the run, or failed on a bare OS error)."""
    if not name or name.startswith(".") or any(c in name for c in "/\\"):
        raise ValueError(f"{name!r} is not a model name: name a model of the run (high, teacher_audio, ...), not a path")
    return Path(run_dir) / "checkpoints" / f"{name}.pt"


def compressed_records(run_dir: Path) -> list[Path]:
    """Each compressed tier's compression.json, in tier order; none from a folder a compression left
    behind (`.<tier>.<pid>-....partial` of one killed before its swap, `.<tier>.old`): hidden, but
    glob's * matches them, and one was reported as a compressed tier."""
    return sorted(p for p in (Path(run_dir) / "compressed").glob("*/compression.json") if not p.parent.name.startswith("."))


def read_timings(run_dir: Path) -> dict[str, float]:
    """The stages' wall times in runs/<name>/timings.json. It is bookkeeping: a file that does not
    read as a mapping (emptied, truncated, edited) reads as none, with a warning, never an error
    that would cost a stage's work."""
    path = run_dir / "timings.json"
    if not path.exists():
        return {}
    try:
        timings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # ValueError: not JSON, or not UTF-8
        log.warning("%s: unreadable (%s); the earlier stages' times are lost, the next stage's written anew", path, err)
        return {}
    if not isinstance(timings, dict):
        log.warning("%s: holds a %s, not stage timings; the next stage's written anew", path, type(timings).__name__)
        return {}
    return timings


def read_selection(run_dir: Path) -> dict[str, Any]:
    """The design selection's record, runs/<name>/selection.json ({} when there is none). It is a
    record (the report shows it; the chosen designs live in the checkpoints): one that does not
    read as {"tiers": {...}} reads as none, with a warning naming it, and the next selection writes
    its tiers anew. Read before a selection trains: it failed after minutes of training, as a bare
    "Expecting value" or "'tiers'", or a traceback."""
    path = run_dir / "selection.json"
    if not path.exists():
        return {}
    try:
        selection = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        log.warning("%s: unreadable (%s); the other tiers' selection records are lost, this selection's written anew", path, err)
        return {}
    if not isinstance(selection, dict) or not isinstance(selection.get("tiers"), dict):
        log.warning('%s: not a selection record ({"tiers": {...}}); this selection\'s written anew', path)
        return {}
    return selection


def record_timing(run_dir: Path, stage: str, seconds: float) -> dict[str, float]:
    """Add a stage's wall time to runs/<name>/timings.json (see `read_timings`); returns them all."""
    timings = read_timings(run_dir)
    timings[stage] = round(seconds, 1)
    atomic_write_json(run_dir / "timings.json", timings)
    return timings
