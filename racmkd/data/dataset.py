"""The paired multimodal dataset: splits, same-label pairing across modalities, caching, batches.

None of the source datasets knows the others. A sample is an item of the first modality (the
anchor: MNIST images, 50,000 / 10,000 / 10,000) paired with an item of the same digit from each
other modality, drawn from the same split only, deterministically from the data seed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import zlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from racmkd.config import ConfigError, DataConfig, from_dict, to_dict
from racmkd.data.modalities import SPLITS, Bank, Modality
from racmkd.data.paths import DataError, data_root
from racmkd.registry import MODALITIES
from racmkd.utils import atomic_write_bytes, remove_stale_work

log = logging.getLogger(__name__)

CACHE_VERSION = 5  # bump when the cached content changes meaning (2: recordings resampled to a configured sample rate; 3: a recording's power over its part in the window; 4: a long recording trimmed to its loudest second, not its centre; 5: every recording's window centred on its speech's energy centroid)


@dataclass
class Split:
    """One split of paired samples: a label and a bank row per modality for each sample."""

    name: str
    labels: torch.Tensor  # (N,)
    index: dict[str, torch.Tensor]  # modality -> (N,) rows of that modality's bank
    seeds: torch.Tensor  # (N,) fixed corruption seed per sample (used for val and test)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: torch.Tensor) -> Split:
        """The samples at `rows` (for small runs)."""
        return Split(self.name, self.labels[rows], {m: i[rows] for m, i in self.index.items()}, self.seeds[rows])


def held_bytes(value: Any) -> int:
    """Bytes of the tensors in `value` (a tensor, or tensors in dicts, lists and tuples)."""
    if isinstance(value, torch.Tensor):
        return value.untyped_storage().nbytes()
    if isinstance(value, dict):
        return sum(held_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(held_bytes(v) for v in value)
    return 0


class FeatureCache:
    """Tensors (or tensors in dicts and lists) kept in memory between passes, up to `max_bytes`.

    Model inputs of evaluation samples: validation and test samples have one fixed corruption draw
    and no augmentation, so a model's inputs are the same every time: a students' pass validates
    eight students on the same 10,000 samples after every epoch, and each of those passes
    recomputed the log-mels (about 3 s on two cores). The least recently used entries leave first
    once the tensors held reach `max_bytes`.

    With `evict=False` what is held stays and what no longer fits is not kept: the frozen teachers'
    answers on training batches (`train_jobs(teacher_cache=...)`) are read back in the order they
    were written, pass after pass, where evicting the oldest would drop each entry just before it is read."""

    def __init__(self, max_bytes: int = 1 << 30, evict: bool = True) -> None:
        self.max_bytes, self.evict = max_bytes, evict
        self.held = 0  # bytes of the tensors held
        self.hits = self.misses = 0
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()

    def lookup(self, key: Hashable) -> Any | None:
        """The value stored under `key`, or None."""
        if key not in self._entries:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return self._entries[key]

    def put(self, key: Hashable, value: Any) -> None:
        """Keep `value` under `key` if it fits (after evicting the least recently used, when allowed)."""
        size = held_bytes(value)
        if size > self.max_bytes or key in self._entries:
            return
        while self.evict and self._entries and self.held + size > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self.held -= held_bytes(dropped)
        if self.held + size <= self.max_bytes:
            self._entries[key] = value
            self.held += size

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The value stored under `key`, computed (and stored, if it fits) on a miss."""
        value = self.lookup(key)
        if value is None:
            value = compute()
            self.put(key, value)
        return value

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class PairedDataset:
    """Banks of raw items per modality and split, the paired splits, and what was done to build them."""

    modalities: dict[str, Modality]
    banks: dict[str, dict[str, Bank]]  # modality -> split -> bank
    splits: dict[str, Split]
    info: dict[str, Any]
    # Evaluation inputs computed so far (racmkd.models.inference.evaluation_inputs). Not an init
    # field, so that a dataset made from this one (`replace`, other splits) starts with its own.
    feature_cache: FeatureCache = field(default_factory=FeatureCache, init=False, repr=False, compare=False)

    def raw_batch(self, split: str, rows: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Raw inputs of some samples, per modality, with the protocol's corruption applied: fresh from
        `generator` when one is given (training), else the sample's fixed draw (evaluation)."""
        s = self.splits[split]
        out = {}
        for name, modality in self.modalities.items():
            bank, bank_rows = self.banks[name][split], s.index[name][rows]
            extra = {k: v[bank_rows] for k, v in bank.extra.items()}
            raw = modality.gather(bank, bank_rows)
            out[name] = modality.corrupt(raw, extra, generator, None if generator is not None else s.seeds[rows])
        return out

    def batches(self, split: str, batch_size: int, generator: torch.Generator | None = None, limit: int = 0) -> Iterator[torch.Tensor]:
        """Row indices in batches: shuffled with `generator`, in order without; at most `limit` rows."""
        n = len(self.splits[split])
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        if limit:
            order = order[:limit]
        yield from order.split(batch_size)


def pair_by_label(anchor_labels: torch.Tensor, bank: Bank, generator: torch.Generator, what: str) -> torch.Tensor:
    """For every anchor sample, a bank row with the same label; the rows of a label are used equally
    often (within one), in a seeded random order."""
    index = torch.empty_like(anchor_labels)
    for label in anchor_labels.unique().tolist():
        samples = (anchor_labels == label).nonzero().squeeze(1)
        rows = (bank.labels == label).nonzero().squeeze(1)
        if len(rows) == 0:
            raise DataError(f"{what}: no item with label {label} to pair with")
        repeats = -(-len(samples) // len(rows))
        cycle = torch.cat([rows[torch.randperm(len(rows), generator=generator)] for _ in range(repeats)])
        index[samples[torch.randperm(len(samples), generator=generator)]] = cycle[: len(samples)]
    return index


def make_modalities(cfg: DataConfig) -> dict[str, Modality]:
    """The configured modalities, each with its validated options."""
    if not cfg.modalities:
        raise DataError("data.modalities is empty: name at least one of " + ", ".join(MODALITIES.names()))
    unregistered = [m for m in cfg.modalities if m not in MODALITIES]
    if unregistered:
        raise DataError(f"data.modalities: unknown modalities {unregistered}; registered: {', '.join(MODALITIES.names())}")
    unknown = set(cfg.options) - set(cfg.modalities)
    if unknown:
        raise DataError(f"data.options names modalities that data.modalities does not use: {sorted(unknown)}")
    return {name: MODALITIES.create(name, protocol=cfg.protocol, **cfg.options.get(name, {})) for name in cfg.modalities}


def download_datasets(cfg: DataConfig) -> list[str]:
    """Fetch the datasets the configured modalities read into the data root (`racmkd data
    --download`, each through its `Modality.download`); returns the modalities fetched. A modality
    that has no download (a plugin's written before the hook) is passed over when its folders are
    there, and named before anything is fetched when they are not."""
    root = data_root(cfg.root)
    modalities = make_modalities(cfg)
    unable = [m for m in modalities.values() if type(m).download is Modality.download]
    missing = [m.name for m in unable if not m.data_folders or not all((root / folder).exists() for folder in m.data_folders)]
    if missing:
        raise DataError(f"{', '.join(missing)}: no download (Modality.download) and no data under {root}; put it there by hand, then run again")
    fetched = [m for m in modalities.values() if m not in unable]
    for modality in fetched:
        modality.download(root)
    return [m.name for m in fetched]


def source_fingerprint(root: Path, folders: list[str] | None = None, cache_dir: Path | None = None) -> list[Any]:
    """The data as the cache knows it: the resolved root and, in each folder the modalities read
    (`Modality.data_folders`; None: the whole root), its resolved path and every file by relative
    path, size and modification time, links followed (the 4,040 bundled files stat in 15-100 ms).
    A cache keyed without it answered for another root (RACMKD_DATA, data.root) and for files
    truncated or replaced since, which then were never read, let alone checked; the sha256 checks
    run when the dataset is built. Hidden entries (a download's staging folder) and a cache folder
    inside the root are left out: writing the cache must not change its own key."""
    root = root.expanduser()
    if not root.is_dir():
        return [str(root), "missing"]  # no cache answers for it: the build names what is missing
    skip = cache_dir.expanduser().resolve() if cache_dir is not None else None
    entries: list[Any] = [str(root.resolve())]
    for top in [root / f for f in folders] if folders else [root]:
        files, seen = [], set()
        entries.append([str(top.relative_to(root)), str(top.resolve()) if top.exists() else "missing"])  # a link retargeted is another dataset
        for folder, dirs, names in os.walk(top, followlinks=True):
            here = Path(folder).resolve()
            try:
                st = here.stat()
                key = (st.st_dev, st.st_ino)
            except OSError:
                dirs[:] = []
                continue
            if here == skip or key in seen:  # the cache's own folder; a link back up (a loop)
                dirs[:] = []
                continue
            seen.add(key)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(n for n in names if not n.startswith(".")):
                path = Path(folder) / name
                try:
                    st = path.stat()
                except OSError:  # gone meanwhile, or a dangling link: not data the build could read
                    continue
                files.append((str(path.relative_to(top)), st.st_size, st.st_mtime_ns))
        entries.append(hashlib.sha256(json.dumps(files).encode()).hexdigest())
    return entries


def data_folders(cfg: DataConfig) -> list[str] | None:
    """The folders under the data root that the configured modalities read; None: the whole root
    (a modality that does not say)."""
    folders = [f for m in cfg.modalities if m in MODALITIES for f in MODALITIES.get(m).data_folders]
    if any(m in MODALITIES and not MODALITIES.get(m).data_folders for m in cfg.modalities):
        return None
    return sorted(set(folders))


def modality_keys(cfg: DataConfig) -> dict[str, Any]:
    """What of each configured modality the cache's key holds beyond the config as written: its
    `cache_version` (a plug-in's own CACHE_VERSION) and its options with their defaults filled in,
    so that a default changed in code (the pen's samples, say) is another dataset, not the old one
    read back while serving resamples to the new one. An unknown modality or bad options are left
    to `make_modalities`, which names them."""
    keys = {}
    for name in cfg.modalities:
        if name not in MODALITIES:
            continue
        modality = MODALITIES.get(name)
        try:
            options = to_dict(from_dict(modality.options_type, cfg.options.get(name, {}), where=f"data.options.{name}"))
        except ConfigError:
            options = None
        keys[name] = [modality.cache_version, options]
    return keys


def cache_path(cfg: DataConfig) -> Path:
    """Where the built dataset for this config is cached: one file per (data root and its files,
    protocol, split and pairing settings, modalities' versions and options)."""
    key = {k: v for k, v in to_dict(cfg).items() if k not in ("root", "cache_dir", "cache_max_gb", "max_train", "max_eval", "augment")}
    cache_dir = Path(cfg.cache_dir).expanduser()  # (as data.root: `~/cache` made a folder named ~ here)
    sources = source_fingerprint(data_root(cfg.root), data_folders(cfg), cache_dir)
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, key, modality_keys(cfg), sources], sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir / f"dataset-{cfg.protocol}-{digest}.pt"


def build_dataset(cfg: DataConfig, use_cache: bool = True) -> PairedDataset:
    """Load, split, degrade and pair the data (or read it back from the cache), then apply the
    max_train / max_eval limits."""
    modalities = make_modalities(cfg)
    path = cache_path(cfg) if use_cache else None  # (its key reads the data folders' file list)
    dataset = _read_cache(path, modalities) if path is not None and path.exists() else None
    if dataset is None:
        dataset = _build(cfg, modalities)
        if path is not None:
            try:
                _write_cache(path, _to_stored(dataset), cfg.cache_max_gb * 1e9)
            except (OSError, ValueError) as err:  # a cache folder that is a file, read-only or full (a folder at its path): the build itself is sound
                full = getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
                log.warning(
                    "%s: the dataset cache was not written (%s); this build is used, and the next one builds again. %s",
                    path,
                    getattr(err, "strerror", None) or err,
                    "Free space on its disk, lower data.cache_max_gb, or set data.cache_dir elsewhere" if full else "Set data.cache_dir to a writable folder",
                )
    for name, modality in modalities.items():  # on every training item, before max_train keeps fewer
        modality.fit(dataset.banks[name]["train"])
    return _limit(dataset, cfg)


def trim_caches(folder: Path, max_bytes: float, keep: Path) -> list[Path]:
    """Remove the least recently used dataset caches in `folder` (by modification time: a read
    touches its file) while they hold more than `max_bytes` together, never `keep`; returns what
    went. Each settings' and data seed's cache is 0.1 GB (AV-MNIST), and none was ever removed: a
    day of benchmarks left 1.2 GB. A cache another process reads meanwhile is rebuilt there."""
    remove_stale_work(folder, suffix=".tmp")  # (a killed build's half-written cache: 100 MB each, counted nowhere)
    if max_bytes <= 0:
        return []
    caches = []
    for path in folder.glob("dataset-*.pt"):
        try:
            info = path.stat()
        except OSError:  # removed meanwhile
            continue
        caches.append((info.st_mtime, info.st_size, path))
    total = sum(size for _, size, _ in caches)
    removed = []
    for _, size, path in sorted(caches):
        if total <= max_bytes:
            break
        if path == keep:
            continue
        try:
            path.unlink()
        except OSError:
            continue
        total -= size
        removed.append(path)
    return removed


CACHE_TAIL = b"racmkd-crc32"  # a cache file ends in the CRC-32 of what precedes it, then this


def _write_cache(path: Path, stored: dict[str, Any], max_bytes: float = 0.0) -> None:
    """The stored dataset, its CRC-32 after it (0.03 s for the 107 MB of AV-MNIST), written once
    the older caches beyond `max_bytes` with it (0: no bound) are trimmed (`trim_caches`): after
    the write, a disk the old caches had filled never took the new one, and nothing was trimmed."""
    buffer = io.BytesIO()
    torch.save(stored, buffer)
    body = buffer.getvalue()
    data = body + zlib.crc32(body).to_bytes(4, "little") + CACHE_TAIL
    replaced = path.stat().st_size if path.is_file() else 0  # (a damaged cache rebuilt in place: its bytes make room too)
    # 1: a cache beyond the bound alone leaves room for no other; 0 (no bound) still sweeps a killed build's temporary file
    bound = max(max_bytes - len(data) + replaced, 1) if max_bytes > 0 else 0
    try:
        trim_caches(path.parent, bound, keep=path)
    except OSError as err:
        log.warning("%s: older dataset caches could not be removed (%s); they stay", path.parent, err.strerror or err)
    atomic_write_bytes(path, data)


def _read_cache(path: Path, modalities: dict[str, Modality]) -> PairedDataset | None:
    """The cached dataset, or None (rebuilt then) when the file is damaged in any way: two bytes
    flipped inside a tensor loaded without complaint and served other pixels, and a file of
    another structure failed outside the loader's guard."""
    try:
        data = path.read_bytes()
        body, crc = data[: -len(CACHE_TAIL) - 4], data[-len(CACHE_TAIL) - 4 : -len(CACHE_TAIL)]
        if not data.endswith(CACHE_TAIL) or zlib.crc32(body) != int.from_bytes(crc, "little"):
            return None
        stored = torch.load(io.BytesIO(body), weights_only=True)
        if stored.get("version") != CACHE_VERSION:
            return None
        dataset = _from_stored(modalities, stored)
    except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never trusted
        return None
    with contextlib.suppress(OSError):  # used now: the last to go when caches are trimmed (a read-only cache stays as it is)
        os.utime(path)
    return dataset


def _build(cfg: DataConfig, modalities: dict[str, Modality]) -> PairedDataset:
    root = data_root(cfg.root)
    banks, info = {}, {"protocol": cfg.protocol, "data_root": str(root), "modalities": {}}
    for name, modality in modalities.items():
        try:
            loaded = modality.load_banks(root, cfg)
        except DataError as err:
            raise root_set_in_config(err, cfg.root) from None
        banks[name], details = modality.degrade_banks(loaded)
        info["modalities"][name] = {"items": {s: len(b) for s, b in banks[name].items()}, **details}
    anchor = next(iter(modalities))
    generator = torch.Generator().manual_seed(cfg.seed)
    splits = {}
    for offset, split in enumerate(SPLITS):
        labels = banks[anchor][split].labels
        index = {anchor: torch.arange(len(labels))}
        for name in list(modalities)[1:]:
            index[name] = pair_by_label(labels, banks[name][split], generator, f"{name} {split} split")
        seeds = (cfg.seed + 1) * 10_000_000 + offset * 1_000_000 + torch.arange(len(labels))
        splits[split] = Split(split, labels, index, seeds)
    info["samples"] = {s: len(sp) for s, sp in splits.items()}
    return PairedDataset(modalities, banks, splits, info)


def root_set_in_config(err: DataError, configured: str) -> DataError:
    """A loader's error as the user can act on it: the loaders say to set RACMKD_DATA, but a
    data.root in the config (or --set) overrides it, so there the fix is data.root."""
    if not configured:
        return err
    return DataError(str(err).replace("Set RACMKD_DATA to", f"Set data.root (now {configured!r}, from the config or --set; it overrides RACMKD_DATA) to"))


def _limit(dataset: PairedDataset, cfg: DataConfig) -> PairedDataset:
    """Keep the first max_train / max_eval samples (a seeded, stratification-free subset)."""
    splits = dict(dataset.splits)
    for split, limit in (("train", cfg.max_train), ("val", cfg.max_eval), ("test", cfg.max_eval)):
        if limit and limit < len(splits[split]):
            rows = torch.randperm(len(splits[split]), generator=torch.Generator().manual_seed(cfg.seed))[:limit].sort().values
            splits[split] = splits[split].subset(rows)
    info = {**dataset.info, "samples": {s: len(sp) for s, sp in splits.items()}}
    return replace(dataset, splits=splits, info=info)


def _to_stored(d: PairedDataset) -> dict[str, Any]:
    return {
        "version": CACHE_VERSION,
        "info": json.dumps(d.info),
        "banks": {m: {s: {"data": b.data, "labels": b.labels, "ids": b.ids, "extra": b.extra} for s, b in per.items()} for m, per in d.banks.items()},
        "splits": {s: {"labels": sp.labels, "index": sp.index, "seeds": sp.seeds} for s, sp in d.splits.items()},
    }


def _from_stored(modalities: dict[str, Modality], stored: dict[str, Any]) -> PairedDataset:
    banks = {m: {s: Bank(b["data"], b["labels"], list(b["ids"]), dict(b["extra"])) for s, b in per.items()} for m, per in stored["banks"].items()}
    splits = {s: Split(s, sp["labels"], dict(sp["index"]), sp["seeds"]) for s, sp in stored["splits"].items()}
    return PairedDataset(modalities, banks, splits, json.loads(stored["info"]))
