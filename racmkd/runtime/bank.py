"""A variant bank as the edge runtime reads it (no torch): the allocator's profile table, each
variant's file and input spec, the tiers' biases. `racmkd.runtime.variants.build_bank` writes it."""

from __future__ import annotations

import collections
import itertools
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from racmkd.compress.artifacts import ExportError, read_contract, specs_from_contract
from racmkd.data import signals as _signals  # noqa: F401 - registers the image, audio and pen signals
from racmkd.registry import SIGNALS
from racmkd.resources.allocator import ProfileTable, Variant

BANK_FORMAT = "racmkd-edge-bank/1"
log = logging.getLogger(__name__)


class BankError(RuntimeError):
    """A variant bank is missing or damaged; the message names the file and how to rebuild it."""


def key_text(combo: tuple[str | None, ...]) -> str:
    """A configuration (one tier or None per modality) as bank.json writes it: "high,-"."""
    return ",".join(t or "-" for t in combo)


def key_tuple(text: str) -> tuple[str | None, ...]:
    """The inverse of `key_text`."""
    return tuple(None if t == "-" else t for t in text.split(","))


@dataclass(frozen=True)
class Bank:
    """A loaded variant bank: the allocator's table, and per variant its file and input spec."""

    folder: Path
    table: ProfileTable
    specs: dict[str, Any]  # variant id -> its input spec
    biases: dict[str, np.ndarray]
    data: dict[str, Any]  # bank.json as written
    damaged: dict[str, str] = field(default_factory=dict)  # variant id -> why its file could not be read

    def path(self, variant: Variant) -> Path:
        return self.folder / variant.path

    def accuracy(self, split: str = "test") -> dict[tuple[str | None, ...], float]:
        return {key_tuple(k): v for k, v in self.data["accuracy"][split].items()}


def load_bank(folder: Path, split: str = "val", warn: bool = True) -> Bank:
    """Read a bank; the allocator's accuracies come from `split` (validation: test data stays for
    reporting). A variant file that cannot be read is recorded in `Bank.damaged` (the runtime skips
    it), with a warning unless `warn` is False (a caller that refuses such a bank says so itself)."""
    folder = Path(folder)
    path = folder / "bank.json"
    if not path.is_file():
        raise BankError(f"{path}: no variant bank. Build one with `racmkd edge build --run RUN`.")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BankError(f"{path}: unreadable ({err}). Rebuild it with `racmkd edge build`.") from None
    if not isinstance(data, dict) or data.get("format") != BANK_FORMAT:
        raise BankError(f"{path}: not a {BANK_FORMAT} file. Rebuild it with `racmkd edge build`.")
    try:
        # Deadlines are about the tail: hard latency budgets take each variant's 95th percentile; the
        # deadline risk scales its median (the risk's learnt ratios are the tail).
        variants = tuple(
            Variant(
                v["modality"],
                v["tier"],
                float(v.get("latency_ms_p95", v["latency_ms"])),
                int(v["memory_bytes"]),
                float(v["energy_mj"]),
                v["path"],
                float(v["latency_ms"]),
            )
            for v in data["variants"]
        )
        table = ProfileTable(tuple(data["modalities"]), tuple(data["tiers"]), variants, {key_tuple(k): a for k, a in data["accuracy"][split].items()})
        biases = {t: np.asarray(b, dtype=np.float32) for t, b in data["biases"].items()}
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as err:  # OverflowError: int() of an infinite memory figure
        raise BankError(f"{path}: damaged ({type(err).__name__}: {err}). Rebuild it with `racmkd edge build`.") from None
    problems = table_problems(table, biases)
    # (a bank installed over the air naming files elsewhere loaded them from there, out of the reach of the store's checks)
    problems += [f"{v.id}: path {v.path!r} is not a file of the bank's folder" for v in variants if not isinstance(v.path, str) or Path(v.path).name != v.path]
    # (a NaN median would read as "none given", the p95 taking its place: a damaged bank replayed as a different one)
    problems += [f"{v.id}: latency_ms {v.latency_p50_ms!r} is not a finite number of ms >= 0" for v in variants if not 0 <= v.latency_p50_ms < math.inf]
    overhead = data.get("request_overhead_ms", 0.0)
    if isinstance(overhead, bool) or not isinstance(overhead, (int, float)) or not 0 <= overhead < math.inf:  # (NaN fails too)
        problems.append(f"request_overhead_ms {overhead!r} is not a finite number of ms >= 0")
    if problems:
        raise BankError(f"{path}: damaged ({'; '.join(problems[:3])}). Rebuild it with `racmkd edge build`.")
    specs, damaged = {}, {}
    rebuild = rebuild_hint(folder)
    recorded = {v.id: entry.get("file_bytes") for v, entry in zip(variants, data["variants"]) if isinstance(entry, dict)}
    for v in variants:
        try:
            contract = read_contract(folder / v.path, rebuild)
            spec = variant_spec(folder / v.path, contract, v, rebuild)
            size, expected = (folder / v.path).stat().st_size, recorded.get(v.id)
            if isinstance(expected, int) and not isinstance(expected, bool) and size != expected:
                # (another tier's file copied over it was served as this variant, its accuracy taken for the other's)
                raise ExportError(
                    f"{folder / v.path}: {size} bytes, but bank.json records {expected} for variant {v.id}: another variant's file or a damaged copy; {rebuild}"
                )
            specs[v.id] = spec
        except Exception as err:  # noqa: BLE001 - a damaged variant file is skipped by the runtime, not fatal here
            if warn:
                log.warning("%s: variant %s is damaged and will be skipped: %s", folder, v.id, err)
            specs[v.id], damaged[v.id] = None, str(err)
            continue
        # The variant's file carries the bias it was exported with, one per logit: a tier's bias of
        # another length would fail every request the variant answers (a broadcast error).
        exported = contract.get("logit_bias")
        if exported is not None and np.size(exported) != biases[v.tier].size:
            raise BankError(
                f"{path}: damaged (tier {v.tier!r} has a bias of {biases[v.tier].size} classes, but {folder / v.path} computes {np.size(exported)} logits). Rebuild it with `racmkd edge build`."
            )
    disagree = raw_form_problems(table, specs)
    if disagree:
        raise BankError(f"{path}: its variants do not share their raw inputs ({'; '.join(disagree)}). Rebuild it with `racmkd edge build`.")
    return Bank(folder, table, specs, biases, data, damaged)


def raw_form_problems(table: ProfileTable, specs: dict[str, Any]) -> list[str]:
    """Where a modality's readable variants disagree on the raw input they take (`Signal.raw_fields`:
    audio's sample rate, length and window). The runtime converts a request's input once, by one
    variant's spec, for all of them: a variant that learned another placement (a file from before
    2026-12-06's speech window copied into the bank) would hear every recording placed otherwise."""
    problems = []
    for modality in table.modalities:
        readable = [v.id for v in table.variants if v.modality == modality and specs.get(v.id) is not None]
        if not readable:  # (its signal may not even be registered here: the runtime reports that)
            continue
        fields = getattr(SIGNALS.get(modality), "raw_fields", ())  # (a plugin's signal may predate it)
        forms = {vid: tuple(getattr(specs[vid], f) for f in fields) for vid in readable}
        if len(set(forms.values())) > 1:
            listed = ", ".join(f"{vid} {dict(zip(fields, form))}" for vid, form in forms.items())
            problems.append(f"{modality}: {listed}")
    return problems


def rebuild_hint(folder: Path) -> str:
    """How to make a bank's variant files again: the bank is rebuilt whole from its run (a variant
    exported alone with `racmkd export` would lack the bank's measurements). A bank in a run's
    edge/ folder names that run."""
    run = f"--run {folder.parent}" if folder.name == "edge" else "--run RUN"
    return f"rebuild the bank with `racmkd edge build {run}`"


def variant_spec(path: Path, contract: dict[str, Any], variant: Variant, fix: str) -> Any:
    """The input spec a variant's file takes for its modality; an error that says so when the file
    is for other inputs (another variant's file copied over it: a bare KeyError said only 'audio')."""
    inputs = list(contract["inputs"])
    if variant.modality not in inputs:
        raise ExportError(
            f"{path}: a model for {' and '.join(inputs)} input, but variant {variant.id} takes {variant.modality}: the file is another variant's; {fix}"
        )
    try:
        return specs_from_contract(contract, fix)[variant.modality]
    except ExportError as err:
        raise ExportError(f"{path}: {err}") from None


def table_problems(table: ProfileTable, biases: dict[str, np.ndarray]) -> list[str]:
    """What in a bank's numbers the runtime could not work with (empty when nothing)."""
    # (no modalities was blamed on the config's priorities, "every modality at 0"; no variants
    # failed as "max() arg is an empty sequence", and was signed by `racmkd registry add`)
    problems = [what for what, missing in (("no modalities", not table.modalities), ("no variants", not table.variants)) if missing]
    problems += [f"unknown modality {m!r}" for m in table.modalities if m not in SIGNALS]
    if len(set(table.modalities)) != len(table.modalities):
        problems.append(f"modalities {list(table.modalities)} repeat a modality")
    listed = collections.Counter(v.id for v in table.variants)
    problems += [f"variant {vid} listed {n} times" for vid, n in sorted(listed.items()) if n > 1]
    problems += [
        f"{v.id}: modality {v.modality!r} is not in the bank's modalities {list(table.modalities)}"
        for v in table.variants
        if v.modality not in table.modalities
    ]
    if len(set(table.tiers)) != len(table.tiers):
        problems.append(f"tiers {list(table.tiers)} repeat a tier")
    for v in table.variants:
        if v.tier not in table.tiers:
            problems.append(f"{v.id}: tier {v.tier!r} is not in the bank's tiers {list(table.tiers)}")
        if not all(0 <= x < math.inf for x in (v.latency_ms, v.typical_ms, v.memory_bytes, v.energy_mj)):
            problems.append(f"{v.id}: costs must be finite and >= 0")
        if v.tier not in biases:
            problems.append(f"{v.id}: no bias for tier {v.tier!r}")
    classes = {b.shape for b in biases.values()}
    if len(classes) > 1 or any(len(shape) != 1 for shape in classes):
        problems.append(f"the tiers' biases differ in shape ({sorted(classes)})")
    if not all(np.isfinite(b).all() for b in biases.values()):
        problems.append("a tier's bias is not finite")
    keys = itertools.product(*([None, *sorted({v.tier for v in table.variants if v.modality == m})] for m in table.modalities))
    missing = [key_text(k) for k in keys if any(t is not None for t in k) and k not in table.accuracy]
    if missing:
        problems.append(f"no accuracy for {len(missing)} configuration(s), e.g. {missing[0]}")
    odd = [key_text(k) for k, a in table.accuracy.items() if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 <= a <= 1]
    if odd:
        problems.append(f"accuracy of {odd[0]} is not a number in [0, 1]")
    return problems
