"""Splits, pairing and protocol degradations of the real paired dataset."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from racmkd.config import ConfigError, DataConfig
from racmkd.data.dataset import FeatureCache, PairedDataset, build_dataset, cache_path, pair_by_label
from racmkd.data.modalities import Bank
from racmkd.data.paths import DataError


@pytest.fixture(scope="module")
def avmnist(shared_root: Path, cache_dir: Path) -> PairedDataset:
    return build_dataset(DataConfig(cache_dir=str(cache_dir)))


def test_split_sizes_follow_the_seed_paper(avmnist: PairedDataset) -> None:
    assert avmnist.info["samples"] == {"train": 50000, "val": 10000, "test": 10000}
    assert avmnist.info["modalities"]["audio"]["items"] == {"train": 2400, "val": 300, "test": 300}


def test_no_item_crosses_splits(avmnist: PairedDataset) -> None:
    for modality, banks in avmnist.banks.items():
        seen = {split: set(bank.ids) for split, bank in banks.items()}
        assert not seen["train"] & seen["val"] and not seen["train"] & seen["test"] and not seen["val"] & seen["test"], modality
    repetitions = {split: {int(name.rsplit("_", 1)[1].removesuffix(".wav")) for name in bank.ids} for split, bank in avmnist.banks["audio"].items()}
    assert repetitions == {"test": set(range(5)), "val": set(range(5, 10)), "train": set(range(10, 50))}
    used = {split: {avmnist.banks["audio"][split].ids[i] for i in sp.index["audio"].tolist()} for split, sp in avmnist.splits.items()}
    assert not used["train"] & (used["val"] | used["test"]) and not used["val"] & used["test"]


def test_pairs_share_the_digit_and_use_recordings_evenly(avmnist: PairedDataset) -> None:
    for split, sp in avmnist.splits.items():
        assert torch.equal(avmnist.banks["audio"][split].labels[sp.index["audio"]], sp.labels), split
        assert torch.equal(avmnist.banks["image"][split].labels[sp.index["image"]], sp.labels), split
    counts = torch.bincount(avmnist.splits["test"].index["audio"], minlength=300)
    for digit in range(10):
        rows = (avmnist.banks["audio"]["test"].labels == digit).nonzero().squeeze(1)
        assert int(counts[rows].max() - counts[rows].min()) <= 1


def test_pairing_is_deterministic_from_the_seed() -> None:
    bank = Bank(torch.zeros(6), torch.tensor([0, 0, 0, 1, 1, 1]), [str(i) for i in range(6)])
    anchor = torch.tensor([0, 1, 0, 1, 0, 1, 0, 0])
    first = pair_by_label(anchor, bank, torch.Generator().manual_seed(1), "x")
    assert torch.equal(first, pair_by_label(anchor, bank, torch.Generator().manual_seed(1), "x"))
    assert torch.equal(bank.labels[first], anchor)
    # The seed decides it, and it is shuffled: 40 anchors on 20 rows of each label, in bank order without a shuffle.
    bank = Bank(torch.zeros(40), torch.arange(40) // 20, [str(i) for i in range(40)])
    anchor = torch.arange(40) % 2
    first = pair_by_label(anchor, bank, torch.Generator().manual_seed(1), "x")
    assert torch.equal(bank.labels[first], anchor) and not torch.equal(first, pair_by_label(anchor, bank, torch.Generator().manual_seed(2), "x"))
    assert not torch.equal(first[anchor == 0], torch.arange(20))
    with pytest.raises(DataError, match="no item with label 2"):
        pair_by_label(torch.tensor([2]), bank, torch.Generator(), "audio test split")


def test_avmnist_degrades_images_with_pca(avmnist: PairedDataset, cache_dir: Path) -> None:
    info = avmnist.info["modalities"]["image"]
    assert info["pca_components"] == 4 and info["pca_explained_variance"] >= 0.25
    assert 0.65 < info["energy_removed"] < 0.8  # CentralNet's AV-MNIST removes ~75%
    clean = build_dataset(DataConfig(protocol="clean", cache_dir=str(cache_dir)))
    assert torch.equal(clean.splits["test"].labels, avmnist.splits["test"].labels)
    assert not torch.equal(clean.banks["image"]["test"].data, avmnist.banks["image"]["test"].data)


def measured_snr(dataset: PairedDataset, split: str, rows: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    from unittest import mock

    from racmkd.data import audio as dsp

    with mock.patch.object(dsp, "centre_on_energy", lambda wave: wave):  # the noise as added, before the windows are placed again
        noisy = dataset.raw_batch(split, rows, generator)["audio"]
    bank = dataset.banks["audio"][split]
    clean = dataset.modalities["audio"].gather(bank, dataset.splits[split].index["audio"][rows])
    span = bank.extra["span"][dataset.splits[split].index["audio"][rows]]
    power = torch.stack([clean[i, s:e].pow(2).mean() for i, (s, e) in enumerate(span.tolist())])  # what the model hears (not the bank's own figure)
    noise_power = torch.stack([(noisy[i, s:e] - clean[i, s:e]).pow(2).mean() for i, (s, e) in enumerate(span.tolist())])
    assert torch.all(noisy[:, : int(span[:, 0].min())] == clean[:, : int(span[:, 0].min())])  # padding stays silent
    return 10 * torch.log10(power / noise_power)


def test_audio_noise_snr_fixed_for_test_fresh_for_train(avmnist: PairedDataset) -> None:
    rows = torch.arange(64)
    snr = measured_snr(avmnist, "test", rows, None)
    assert float(snr.min()) > -0.5 and float(snr.max()) < 10.5 and float(snr.std()) > 1.5
    assert torch.equal(avmnist.raw_batch("test", rows)["audio"], avmnist.raw_batch("test", rows)["audio"])
    g = torch.Generator().manual_seed(0)
    first, second = avmnist.raw_batch("train", rows, g)["audio"], avmnist.raw_batch("train", rows, g)["audio"]
    assert not torch.equal(first, second)
    assert math.isclose(float(measured_snr(avmnist, "train", rows, torch.Generator().manual_seed(3)).mean()), 5.0, abs_tol=1.5)


def test_a_recording_longer_than_the_window_gets_its_snr_over_what_the_window_keeps(avmnist: PairedDataset) -> None:
    """The noise was sized by the whole recording's power: 7_theo_36 (2.2 s, its digit outside the
    centred second) got its noise 25 dB above the SNR drawn, the window all noise."""
    bank = avmnist.banks["audio"]["train"]
    long_one = bank.ids.index(next(i for i in bank.ids if i.startswith("7_theo_36")))
    rows = (avmnist.splits["train"].index["audio"] == long_one).nonzero().squeeze(1)[:8]
    assert len(rows) > 0
    snr = measured_snr(avmnist, "train", rows, torch.Generator().manual_seed(5))
    assert float(snr.min()) > -0.5 and float(snr.max()) < 10.5, snr


@pytest.mark.parametrize("name", ["7_theo_36", "9_theo_16"])
def test_a_recording_longer_than_the_window_is_cut_around_its_speech(avmnist: PairedDataset, shared_root: Path, name: str) -> None:
    """Trimmed to its centre, each of these kept almost none of its speech (the window mostly
    silence); cut around its speech, it keeps nearly all the energy its loudest second holds, with
    the speech in the middle of the window (where the shorter recordings have theirs)."""
    import numpy as np
    from scipy.io import wavfile

    rate, samples = wavfile.read(shared_root / "fsdd" / "recordings" / f"{name}.wav")
    assert rate == 8000 and len(samples) > 8000
    wave = samples.astype(np.float64) ** 2
    seconds = np.convolve(wave, np.ones(8000), mode="valid")  # each second's energy
    split = next(s for s in ("train", "val", "test") if any(i.startswith(name) for i in avmnist.banks["audio"][s].ids))
    bank = avmnist.banks["audio"][split]
    window = bank.data[bank.ids.index(next(i for i in bank.ids if i.startswith(name)))].numpy().astype(np.float64)
    centred = wave[(len(wave) - 8000) // 2 :][:8000].sum()
    energy = window**2
    assert energy.sum() >= 0.995 * seconds.max() and centred < 0.2 * seconds.max()
    assert abs(np.dot(np.arange(8000), energy) / energy.sum() - 4000) < 100  # the speech's energy centroid mid-window


def test_cache_key_holds_each_modalitys_version_and_its_options_with_defaults(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A modality whose items change for the same files (its cache_version bumped), or a default
    changed in code (the config as written unchanged), is another dataset, not the old cache."""
    import dataclasses

    from racmkd.data.modalities import AudioModality

    cfg = DataConfig(cache_dir=str(cache_dir))
    before = cache_path(cfg)
    with monkeypatch.context() as patch:
        patch.setattr(AudioModality, "cache_version", AudioModality.cache_version + 1)
        assert cache_path(cfg) != before
    longer = dataclasses.make_dataclass("LongerAudio", [("duration", float, dataclasses.field(default=2.0))], bases=(AudioModality.options_type,), frozen=True)
    monkeypatch.setattr(AudioModality, "options_type", longer)
    assert cache_path(cfg) != before
    monkeypatch.undo()
    assert cache_path(cfg) == before
    monkeypatch.setenv("HOME", str(cache_dir))  # `~` is the user's home, as in data.root (it made a folder named ~ here)
    assert cache_path(DataConfig(cache_dir="~/cache")).parent == cache_dir / "cache"


def test_cache_is_reused_and_limits_apply(avmnist: PairedDataset, cache_dir: Path) -> None:
    cfg = DataConfig(cache_dir=str(cache_dir), max_train=100, max_eval=40)
    assert cache_path(cfg) == cache_path(DataConfig(cache_dir=str(cache_dir)))
    small = build_dataset(cfg)
    assert small.info["samples"] == {"train": 100, "val": 40, "test": 40}
    assert torch.equal(small.banks["audio"]["train"].data, avmnist.banks["audio"]["train"].data)
    whole = cache_path(cfg).read_bytes()
    flipped = bytearray(whole)
    flipped[len(whole) // 2] ^= 0xFF  # inside a tensor: torch.load reads it without complaint
    cache_path(cfg).write_bytes(bytes(flipped))  # a damaged cache is rebuilt, not trusted
    rebuilt = build_dataset(cfg)
    assert rebuilt.info["samples"]["train"] == 100 and torch.equal(rebuilt.banks["image"]["train"].data, small.banks["image"]["train"].data)
    assert cache_path(cfg).read_bytes() == whole
    from racmkd.data.dataset import _read_cache, _write_cache

    other = cache_dir / "other.pt"
    _write_cache(other, [1, 2])  # whole, but not a stored dataset: failed outside the loader's guard (AttributeError)
    assert _read_cache(other, avmnist.modalities) is None


def test_a_cache_folder_that_cannot_be_written_costs_the_cache_not_the_build(
    avmnist: PairedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A finished build was thrown away with `[Errno 20] Not a directory` when data.cache_dir lay
    under a file (or was read-only, or on a full disk)."""
    import racmkd.data.dataset as dataset_module

    (tmp_path / "afile").write_text("not a folder")
    monkeypatch.setattr(dataset_module, "_build", lambda cfg, modalities: avmnist)  # (the build itself is tested above)
    cfg = DataConfig(cache_dir=str(tmp_path / "afile" / "cache"), max_train=100, max_eval=40)
    with caplog.at_level("WARNING", logger="racmkd.data.dataset"):
        built = build_dataset(cfg)
    assert built.info["samples"] == {"train": 100, "val": 40, "test": 40}
    assert "the dataset cache was not written" in caplog.text and "Set data.cache_dir to a writable folder" in caplog.text


def test_caches_beyond_the_size_bound_go_least_recently_used_first(avmnist: PairedDataset, tmp_path: Path) -> None:
    import os

    from racmkd.data.dataset import _read_cache, _to_stored, _write_cache, trim_caches

    paths = [tmp_path / f"dataset-avmnist-{i}.pt" for i in range(4)]
    for i, path in enumerate(paths):
        path.write_bytes(b"x" * 100)
        os.utime(path, (1000 + i, 1000 + i))  # 0 is the least recently used
    (tmp_path / "latency-model.json").write_bytes(b"y" * 1000)  # not a dataset cache: never counted or removed
    assert trim_caches(tmp_path, 0, keep=paths[3]) == []  # 0 keeps every one
    assert trim_caches(tmp_path, 250, keep=paths[0]) == [paths[1], paths[2]]  # the one asked to keep stays, old as it is
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset-avmnist-0.pt", "dataset-avmnist-3.pt", "latency-model.json"]
    # A cache read is used: it goes last.
    cached = tmp_path / "dataset-avmnist-read.pt"
    _write_cache(cached, _to_stored(avmnist))
    os.utime(cached, (10, 10))
    assert _read_cache(cached, avmnist.modalities) is not None and cached.stat().st_mtime > 1003
    assert trim_caches(tmp_path, cached.stat().st_size + 100, keep=paths[0]) == [paths[3]]
    assert cached.exists() and paths[0].exists()
    with pytest.raises(ConfigError, match="cache_max_gb"):
        DataConfig(cache_max_gb=float("nan"))


def test_older_caches_make_room_before_a_new_one_is_written(avmnist: PairedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk the old caches filled never took the new one, and the trim ran only after a write
    that succeeded: every run built the dataset again, and was told to set a writable cache_dir."""
    import errno
    import io
    import os

    import torch

    from racmkd.data import dataset

    old = [tmp_path / f"dataset-avmnist-old{i}.pt" for i in range(3)]
    for i, path in enumerate(old):
        path.write_bytes(b"x" * 1000)
        os.utime(path, (1000 + i, 1000 + i))  # old0 the least recently used
    stored = dataset._to_stored(avmnist)
    buffer = io.BytesIO()
    torch.save(stored, buffer)
    size = len(buffer.getvalue()) + 4 + len(dataset.CACHE_TAIL)
    real_write = dataset.atomic_write_bytes

    def small_disk(path: Path, data: bytes) -> None:  # room for the new cache and 1,500 bytes more
        if sum(p.stat().st_size for p in tmp_path.glob("dataset-*.pt") if p != path) + len(data) > size + 1500:  # (a file replaced frees its bytes)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(dataset, "atomic_write_bytes", small_disk)
    fresh = tmp_path / "dataset-avmnist-new.pt"
    with pytest.raises(OSError, match="No space"):
        dataset._write_cache(fresh, stored)  # no bound: nothing goes
    assert all(p.exists() for p in old)
    dataset._write_cache(fresh, stored, max_bytes=size + 1500)
    assert fresh.stat().st_size == size and [p.exists() for p in old] == [False, False, True]
    # Written again in place (a damaged cache rebuilt): its own bytes make room, nothing else goes.
    dataset._write_cache(fresh, stored, max_bytes=size + 1500)
    assert old[2].exists()
    # No bound: nothing trimmed, but a killed build's temporary file still goes (100 MB each).
    from conftest import ended_pid

    from racmkd import utils

    stale = tmp_path / f".dataset-avmnist-new.pt.{ended_pid()}-{utils._HOST}-abc.tmp"
    stale.write_bytes(b"half")
    dataset._write_cache(fresh, stored)
    assert not stale.exists() and old[2].exists()


def test_the_cache_answers_only_for_its_own_data_root_and_files(avmnist: PairedDataset, cache_dir: Path, tmp_path: Path) -> None:
    """Another data root (data.root, RACMKD_DATA), or a file replaced or truncated since the build,
    is another dataset: the cache of the bundled data answered for both, so their files were never
    read, let alone checked."""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="mnist"):
        build_dataset(DataConfig(cache_dir=str(cache_dir), root=str(empty)))  # (the bundled data's cache exists: `avmnist`)
    root = tmp_path / "root"
    (root / "mnist").mkdir(parents=True)
    (root / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"x" * 100)
    keys = {cache_path(DataConfig(cache_dir=str(cache_dir), root=str(r))) for r in (root, empty, tmp_path / "gone")}
    assert len(keys) == 3 and cache_path(DataConfig(cache_dir=str(cache_dir))) not in keys
    before = cache_path(DataConfig(cache_dir=str(cache_dir), root=str(root)))
    (root / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"x" * 50)  # truncated
    truncated = cache_path(DataConfig(cache_dir=str(cache_dir), root=str(root)))
    assert truncated != before
    (root / "cache").mkdir()  # a cache kept inside the data root, a download's hidden staging, other datasets: not this data
    (root / "cache" / "dataset-avmnist-0.pt").write_bytes(b"cached")
    (root / ".fsdd.partial").mkdir()
    (root / "cifar").mkdir()
    (root / "cifar" / "batch-1").write_bytes(b"x")
    assert cache_path(DataConfig(cache_dir=str(root / "cache"), root=str(root))).name == truncated.name
    store = tmp_path / "store"  # the data behind a link: followed, and the link's target is part of the key
    (store / "a" / "recordings").mkdir(parents=True)
    (store / "b" / "recordings").mkdir(parents=True)
    for copy in ("a", "b"):
        (store / copy / "recordings" / "0_george_0.wav").write_bytes(b"x" * 100)
    (root / "fsdd").symlink_to(store / "a")
    linked = cache_path(DataConfig(cache_dir=str(cache_dir), root=str(root)))
    (store / "a" / "recordings" / "0_george_0.wav").write_bytes(b"x" * 50)
    assert cache_path(DataConfig(cache_dir=str(cache_dir), root=str(root))) != linked
    (root / "fsdd").unlink()
    (root / "fsdd").symlink_to(store / "b")
    assert cache_path(DataConfig(cache_dir=str(cache_dir), root=str(root))) != linked


def test_features_have_the_spec_shapes(avmnist: PairedDataset) -> None:
    raw = avmnist.raw_batch("val", torch.arange(4))
    image, audio = avmnist.modalities["image"], avmnist.modalities["audio"]
    for level in range(image.n_levels):
        assert tuple(image.features(raw["image"], image.spec(level)).shape[1:]) == image.feature_shape(image.spec(level))
    for level in range(audio.n_levels):
        feats = audio.features(raw["audio"], audio.spec(level), augment_seed=7)
        assert tuple(feats.shape[1:]) == audio.feature_shape(audio.spec(level)) and torch.isfinite(feats).all()
    same = audio.features(raw["audio"], audio.spec(0), augment_seed=7)
    assert torch.equal(same, audio.features(raw["audio"], audio.spec(0), augment_seed=7))
    assert not torch.equal(same, audio.features(raw["audio"], audio.spec(0), augment_seed=8))


def test_spec_augment_masks_the_same_spans_at_every_resolution() -> None:
    """A teacher and a student of one batch draw from one seed: they must see the same frequencies
    and times masked, whatever their numbers of bands and frames."""
    from racmkd.data.audio import spec_augment

    bands_masked, times_masked = {}, {}  # (fine, coarse): the masked spans' centres in [0, 1], per sample
    for bands, frames in ((64, 32), (16, 16)):
        features = torch.randn(32, bands, frames, generator=torch.Generator().manual_seed(1))
        out = spec_augment(features, 1, 0.5, torch.Generator().manual_seed(7))
        masked = out == features.mean(dim=(1, 2))[:, None, None]
        band_centres, frame_centres = (torch.arange(bands) + 0.5) / bands, (torch.arange(frames) + 0.5) / frames
        bands_masked[bands] = [band_centres[row].tolist() for row in masked.all(dim=2)]  # rows wholly masked
        times_masked[bands] = [frame_centres[column].tolist() for column in masked.all(dim=1)]  # columns wholly masked
    for spans, step in ((bands_masked, 1 / 64), (times_masked, 1 / 32)):
        assert sum(map(bool, spans[16])) > 10  # most samples have a mask wide enough to cover a coarse band or frame
        for fine, coarse in zip(spans[64], spans[16]):
            if coarse:
                assert fine and min(fine) - step <= min(coarse) and max(coarse) <= max(fine) + step


def test_feature_cache_evicts_the_least_recently_used_beyond_its_bytes() -> None:
    cache = FeatureCache(max_bytes=3 * 400)  # room for three 100-float tensors
    calls = []

    def make(i: int) -> torch.Tensor:
        calls.append(i)
        return torch.full((100,), float(i))

    for i in range(3):
        cache.get(i, lambda i=i: make(i))
    assert float(cache.get(0, lambda: make(-1))[0]) == 0.0 and calls == [0, 1, 2]  # a hit, and 0 is now the most recent
    cache.get(3, lambda: make(3))  # evicts 1, the least recently used
    assert len(cache) == 3 and cache.held == 1200
    cache.get(1, lambda: make(1))
    assert calls == [0, 1, 2, 3, 1]
    big = cache.get("big", lambda: torch.zeros(1000))  # larger than the cache: returned, not kept
    assert big.numel() == 1000 and "big" not in cache._entries and cache.held <= cache.max_bytes


def test_a_cache_that_does_not_evict_keeps_what_it_holds_and_skips_what_no_longer_fits() -> None:
    """The teachers' answers are read back in the order they were written: the cache keeps the first
    ones (nested tensors, counted whole) and lets later ones go, instead of evicting each just before its read."""
    cache = FeatureCache(max_bytes=2 * 480, evict=False)  # room for two answers of 120 floats
    answer = lambda i: ([{"fused": torch.full((100,), float(i))}], [torch.zeros(20)])  # noqa: E731
    for i in range(3):
        cache.put(i, answer(i))
    assert len(cache) == 2 and cache.held == 960 and cache.lookup(2) is None
    assert float(cache.lookup(0)[0][0]["fused"][0]) == 0.0 and (cache.hits, cache.misses) == (1, 1)
    cache.put(0, answer(9))  # a key held is not replaced
    assert float(cache.lookup(0)[0][0]["fused"][0]) == 0.0


def test_evaluation_inputs_are_computed_once_and_equal_fresh_ones(avmnist: PairedDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from racmkd.models.inference import BatchFeatures, evaluation_inputs

    dataset = replace(avmnist)  # its own, empty cache
    specs = {"image": dataset.modalities["image"].spec(1), "audio": dataset.modalities["audio"].spec(2)}
    rows = torch.arange(10, 30)
    reads = []
    raw_batch = dataset.raw_batch
    monkeypatch.setattr(dataset, "raw_batch", lambda *a, **k: reads.append(a) or raw_batch(*a, **k))
    first = evaluation_inputs(dataset, "val", rows, specs)
    again = evaluation_inputs(dataset, "val", rows, specs)
    assert len(reads) == 1 and all(again[m] is first[m] for m in specs)
    fresh = BatchFeatures(dataset.modalities, raw_batch("val", rows), channels_last=True).get(specs)
    assert all(torch.equal(first[m], fresh[m]) for m in specs)
    evaluation_inputs(dataset, "test", rows, specs)  # same rows of another split: other samples
    evaluation_inputs(dataset, "val", rows[:10], specs)  # other rows
    assert len(reads) == 3 and len(dataset.feature_cache) == 6
    assert len(replace(dataset).feature_cache) == 0


def test_a_missing_dataset_under_data_root_says_to_fix_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`racmkd run --set data.root=/tmp/empty` said to set RACMKD_DATA, which data.root overrides."""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"Set data\.root \(now '.*empty'.*overrides RACMKD_DATA\) to the folder holding mnist/") as caught:
        build_dataset(DataConfig(cache_dir=str(tmp_path / "cache"), root=str(empty)))
    assert "Set RACMKD_DATA" not in str(caught.value)
    monkeypatch.setenv("RACMKD_DATA", str(empty))  # the root from the environment: its advice stands
    with pytest.raises(DataError, match="Set RACMKD_DATA to the folder holding mnist/"):
        build_dataset(DataConfig(cache_dir=str(tmp_path / "cache")))


def test_noisy_windows_are_placed_as_the_predictor_places_a_noisy_recording(avmnist: PairedDataset) -> None:
    """The dataset places a recording clean and adds its noise after; the predictor places a noisy
    recording as it comes. Placed again on their noisy energy, the dataset's windows have their
    energy centroid mid-window, as a served recording has (see dsp.centre_on_energy)."""
    noisy = avmnist.raw_batch("test", torch.arange(64))["audio"].double()
    energy = noisy.square()
    centroid = (energy @ torch.arange(noisy.shape[1], dtype=torch.float64)) / energy.sum(1)
    assert float((centroid - noisy.shape[1] / 2).abs().max()) <= 1.0
