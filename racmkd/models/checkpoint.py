"""Model checkpoints: weights plus everything needed to rebuild the model and its preprocessing.

A checkpoint is a plain dict read with `torch.load(weights_only=True)`: the architecture record
(registry name and arguments), the state dict, the feature spec of every input modality, and
free-form metadata (tier, budget, training history).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from racmkd.config import to_dict
from racmkd.data.modalities import Modality
from racmkd.models.multimodal import MultimodalNet, build
from racmkd.registry import MODALITIES
from racmkd.utils import atomic_torch_save, fsync_folder, remove_stale_work, temporary_prefix

FORMAT = "racmkd-model/1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or from another format; the message names the file."""


def save_model(path: Path, model: MultimodalNet, specs: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write a checkpoint atomically."""
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_torch_save({"format": FORMAT, "arch": model.arch, "state_dict": state, "specs": {m: to_dict(s) for m, s in specs.items()}, "meta": meta}, path)


def save_models_together(items: list[tuple[Path, MultimodalNet, dict[str, Any], dict[str, Any]]], before_moving_in: Callable[[], None] | None = None) -> None:
    """`save_model` for several checkpoints that belong together (the students of one training
    pass): each written whole beside its place first, then all moved in, so that a failure or a
    kill while writing leaves every old checkpoint as it was (saved one by one, a kill in the loop
    left some students new and some old, with a selection.json describing the new). A writer
    killed outright leaves its `.pending` files for the next write of those names to remove.
    `before_moving_in` runs once every file is written, before the first moves in: what the new
    checkpoints make stale goes then (removed first, a full disk kept the old students and lost
    the run's edge bank and compressed tiers made from them)."""
    pending: list[tuple[Path, Path]] = []
    try:
        for path, model, specs, meta in items:
            path = Path(path)
            remove_stale_work(path.parent, path.name, suffix=".tmp")
            tmp = path.parent / f"{temporary_prefix(path)}pending.tmp"
            try:
                save_model(tmp, model, specs, meta)
            except OSError as err:  # (it named the pending file, removed below)
                raise OSError(err.errno, f"{err.strerror or err}: {path} not written; the checkpoints there are kept as they were") from None
            pending.append((tmp, path))
        if before_moving_in is not None:
            before_moving_in()
        for tmp, path in pending:
            os.replace(tmp, path)
    finally:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
    for folder in {path.parent for _, path in pending}:
        fsync_folder(folder)


def load_model(path: Path) -> tuple[MultimodalNet, dict[str, Any], dict[str, Modality], dict[str, Any]]:
    """The model (in eval mode), its specs, the modality objects that preprocess its inputs, and its metadata."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found. Train it first (`racmkd run`, or `racmkd train-teacher` / `racmkd distill`).")
    try:
        record = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - torch raises many kinds on damaged files
        # torch's own text for a file its safe loader refuses advises weights_only=False, which runs
        # whatever the file holds: wrong advice for a damaged checkpoint, so it is not passed on.
        why = (
            "damaged, or not a checkpoint: the safe loader cannot read it"
            if "weights_only" in str(err)
            else f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        )
        raise CheckpointError(f"{path}: unreadable checkpoint ({why}). Re-run the stage that writes it.") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint. Re-run the stage that writes it.")
    try:
        model = build(record["arch"])
        model.load_state_dict(record["state_dict"])
        modalities = {m: MODALITIES.create(m) for m in record["specs"]}
        specs = {m: modalities[m].spec_from_dict(s) for m, s in record["specs"].items()}
        meta = dict(record["meta"])
    except RuntimeError as err:  # torch lists every mismatch, dozens of lines: the first few tell
        lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()] or [str(err)]
        shown = "; ".join(lines[:3]) + (f"; and {len(lines) - 3} more" if len(lines) > 3 else "")
        raise CheckpointError(f"{path}: weights do not fit the recorded architecture ({shown}). Re-run the stage that writes it.") from None
    except (KeyError, TypeError, ValueError, AttributeError) as err:  # a record with the right format tag and a damaged body
        raise CheckpointError(f"{path}: damaged checkpoint ({type(err).__name__}: {err}). Re-run the stage that writes it.") from None
    if sorted(specs) != sorted(model.modalities):  # (no specs: "torch.cat(): expected a non-empty list of Tensors", naming no file)
        raise CheckpointError(
            f"{path}: damaged checkpoint (input specs for {sorted(specs)}, encoders for {sorted(model.modalities)}). Re-run the stage that writes it."
        )
    return model.eval(), specs, modalities, meta
