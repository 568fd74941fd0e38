"""`racmkd.load(run_dir, tier)`: a trained model that answers on raw inputs.

The predictor applies exactly the preprocessing the model was trained with (crop and resize for
images; pad/trim, log-mel and frame pooling for audio), read from the checkpoint's specs. A
protocol's degradations (PCA reduction, added noise) belong to the dataset and are not applied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from racmkd.models.checkpoint import CheckpointError, load_model

TIERS = ("teacher", "teacher_image", "teacher_audio", "high", "medium", "low", "critical")


class Predictor:
    """A model with its preprocessing; `predict` takes raw inputs, any of which may be missing."""

    def __init__(self, name: str, model: torch.nn.Module, specs: dict[str, Any], modalities: dict[str, Any], meta: dict[str, Any]) -> None:
        self.name, self.model, self.specs, self._modalities, self.meta = name, model.eval(), specs, modalities, meta

    @property
    def modalities(self) -> list[str]:
        """The inputs this model can use."""
        return list(self.specs)

    def features(self, inputs: dict[str, Any], sample_rate: int = 8000) -> dict[str, torch.Tensor]:
        """Model inputs (batch of one) from the raw inputs that this model uses and that were given."""
        out = {}
        for name, value in inputs.items():
            if value is None or name not in self.specs:
                continue  # a missing sensor, or an input this model does not use
            raw = self._modalities[name].to_raw(value, self.specs[name], sample_rate=sample_rate)
            out[name] = self._modalities[name].features(raw, self.specs[name])
        if not out:
            wanted = " and/or ".join(self.modalities)
            raise ValueError(f"model {self.name!r} needs {wanted}; got {'no input' if not any(v is not None for v in inputs.values()) else 'only ' + ', '.join(k for k, v in inputs.items() if v is not None)}")
        return out

    def predict(self, image: Any = None, audio: Any = None, sample_rate: int = 8000, **other: Any) -> tuple[int, np.ndarray]:
        """(label, class probabilities) for one sample. `image`: 28x28 uint8 or [0, 1] float;
        `audio`: mono waveform (int16 or float) at `sample_rate` Hz; other registered modalities by
        name. Inputs the model does not use are ignored; a missing one is answered from the rest."""
        known = set(self._modalities) | {"image", "audio"}
        unknown = set(other) - known
        if unknown:
            raise TypeError(f"predict() got unknown inputs {sorted(unknown)}; this model uses {self.modalities}")
        inputs = {"image": image, "audio": audio, **other}
        with torch.inference_mode():
            probs = torch.softmax(self.logits(self.features(inputs, sample_rate)), dim=1)[0].numpy()
        return int(probs.argmax()), probs

    def logits(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class logits (1, K) from model inputs."""
        return self.model(features)

    def __repr__(self) -> str:
        return f"Predictor({self.name!r}, modalities={self.modalities})"


class OnnxPredictor(Predictor):
    """An exported model run by ONNX Runtime, preprocessing read from its contract (what an edge
    device deploys). The graph needs every input it was exported with."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        from racmkd.compress.export import read_contract, session, specs_from_contract
        from racmkd.registry import MODALITIES

        contract = read_contract(path)
        modalities = {m: MODALITIES.create(m) for m in contract["inputs"]}
        self.session = session(Path(path), threads)
        super().__init__(contract.get("model", Path(path).stem), torch.nn.Identity(), specs_from_contract(contract, modalities), modalities, contract)

    def features(self, inputs: dict[str, Any], sample_rate: int = 8000) -> dict[str, torch.Tensor]:
        missing = [m for m in self.specs if inputs.get(m) is None]
        if missing:
            raise ValueError(f"the ONNX model {self.name!r} was exported with inputs {self.modalities} and needs {' and '.join(missing)}; export a variant without it (`racmkd export --modality ...`) to run with that sensor missing")
        return super().features(inputs, sample_rate)

    def logits(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.from_numpy(self.session.run(["logits"], {m: x.numpy() for m, x in features.items()})[0])


def load(run_dir: str | Path = "runs/latest", tier: str = "high") -> Predictor:
    """The predictor of one model of a run: 'teacher', 'teacher_image', 'teacher_audio', a tier
    ('high', 'medium', 'low', 'critical'), any other checkpoint name ('high_labels_only'), or a
    compressed tier ('high_compressed': its deployed ONNX artifact, run by ONNX Runtime)."""
    if tier.endswith("_compressed"):
        import json

        folder = Path(run_dir) / "compressed" / tier.removesuffix("_compressed")
        manifest = folder / "compression.json"
        if not manifest.is_file():
            raise CheckpointError(f"{manifest}: no compressed {tier.removesuffix('_compressed')!r} in run {run_dir}. Run `racmkd compress --run {run_dir}` first.")
        return OnnxPredictor(folder / json.loads(manifest.read_text())["artifact"])
    path = Path(run_dir) / "checkpoints" / f"{tier}.pt"
    if not path.exists():
        available = sorted(p.stem for p in (Path(run_dir) / "checkpoints").glob("*.pt"))
        raise CheckpointError(f"{path}: no model {tier!r} in run {run_dir}. Available: {', '.join(available) or 'none (run `racmkd run` first)'}")
    model, specs, modalities, meta = load_model(path)
    return Predictor(tier, model, specs, modalities, meta)
