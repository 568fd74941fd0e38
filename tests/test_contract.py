"""A model file's contract is enough to run it: examples/onnx_without_racmkd.py, which reads the
contract and docs/contract.md and imports nothing of racmkd, answers as racmkd does on real digits
and recordings (a bank variant's share, read as logits alone, disagreed with its model on up to 5%
of the digits; scipy's STFT scaling, which the contract did not rule out, read at chance)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.io import wavfile
from scipy.signal import resample_poly

import racmkd
from racmkd.compress.artifacts import read_contract
from racmkd.config import load_config
from racmkd.data.mnist import load_mnist


def real_inputs(shared_root: Path) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Eight (digit, recording, rate) pairs: MNIST test digits with FSDD recordings as they are, at
    16 kHz, cut short, and placed late in a 2-second clip (the speech window then moves)."""
    images, _ = load_mnist(shared_root / "mnist", "test")
    names = sorted((shared_root / "fsdd" / "recordings").glob("*_theo_4*.wav"))[:8]
    pairs = []
    for i, name in enumerate(names):
        rate, wave = wavfile.read(name)
        if i % 4 == 1:
            wave, rate = resample_poly(wave.astype(np.float64) / 32768.0, 2, 1).astype(np.float32), rate * 2
        elif i % 4 == 2:
            wave = wave[len(wave) // 4 : 3 * len(wave) // 4]
        elif i % 4 == 3:
            clip = (np.random.default_rng(i).standard_normal(2 * rate) * 30).astype(np.int16)
            clip[-len(wave) :] += wave
            wave = clip
        pairs.append((images[i], wave, rate))
    return pairs


def test_a_model_file_runs_without_racmkd_from_its_contract(consumer, tiny_run: Path, tiny_dataset, bank_dir: Path, shared_root: Path, tmp_path: Path) -> None:  # noqa: ANN001
    from racmkd.pipeline import export_model

    export_model(load_config(tiny_run / "config.yaml"), tiny_dataset, tiny_run, "high", tmp_path, int8=True, int8_weights=True)  # fp32, int8 QDQ, int8 weights
    files = sorted(tmp_path.glob("*.onnx")) + sorted(bank_dir.glob("*.onnx"))
    contracts = {f: read_contract(f) for f in files}
    assert any(c.get("share") for c in contracts.values()) and any(not c.get("share") for c in contracts.values()), files
    for contract in contracts.values():
        assert "column i = class i" in contract["outputs"]["logits"] and contract["protocol"] == "clean"
        assert ("share of the logits" in contract["outputs"]["logits"]) == bool(contract.get("share"))
    pairs = real_inputs(shared_root)
    for path in files:
        theirs, ours = consumer.Model(path), racmkd.load(path)
        for image, wave, rate in pairs:
            inputs = {"image": image, "audio": wave}
            needed = {m: inputs[m] for m in ours.modalities}
            expected = ours.logits(ours.features(needed, sample_rate=rate))
            got = theirs.logits(**needed, sample_rate=rate)
            assert np.argmax(got) == np.argmax(expected) and np.abs(got - expected).max() < 1e-3, (path.name, rate, len(wave), got, expected)


def test_an_exported_model_names_the_protocol_it_learnt_from(tiny_run: Path, tiny_dataset, tmp_path: Path) -> None:  # noqa: ANN001
    """The contract's protocol came from the modalities a checkpoint rebuilds, which know none: an
    avmnist run's models said they learnt from clean digits. It is the run's."""
    import copy

    from racmkd.pipeline import export_model
    from racmkd.runtime.variants import build_bank

    avmnist = copy.copy(tiny_dataset)  # the tiny run's data, as an avmnist run's modalities describe it
    avmnist.modalities = {m: copy.copy(modality) for m, modality in tiny_dataset.modalities.items()}
    for modality in avmnist.modalities.values():
        modality.protocol = "avmnist"
    cfg = load_config(tiny_run / "config.yaml")
    export_model(cfg, avmnist, tiny_run, "high", tmp_path / "onnx", int8=False)
    build_bank(cfg, avmnist, tiny_run, out_dir=tmp_path / "edge", val_samples=100, test_samples=100, latency_iters=5)
    files = [tmp_path / "onnx" / "high.fp32.onnx", *sorted((tmp_path / "edge").glob("*.image.onnx"))]
    assert len(files) > 1
    for path in files:
        contract = read_contract(path)
        assert contract["protocol"] == "avmnist" and "principal components" in contract["inputs"]["image"]["trained_on"], (path.name, contract)
    audio = read_contract(files[0])["inputs"]["audio"]
    assert "white noise at 0-10 dB SNR" in audio["trained_on"]
