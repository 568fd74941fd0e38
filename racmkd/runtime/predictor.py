"""`racmkd.load(run_dir, tier)`: a trained model that answers on raw inputs.

The predictor applies exactly the preprocessing the model was trained with (crop and resize for
images; pad/trim, log-mel and frame pooling for audio), read from the checkpoint's specs. A
protocol's degradations (PCA reduction, added noise) belong to the dataset and are not applied.

A checkpoint runs in PyTorch, with the training side's features (racmkd.data.modalities); an
exported artifact (`<tier>_compressed`, or any racmkd ONNX file through `OnnxPredictor`) runs in
ONNX Runtime with the numpy signals (racmkd.data.signals), so that it needs no torch at all:
torch is imported only when a checkpoint is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from racmkd.data.signals import came_in_dead  # (importing the signals registers image, audio and pen)
from racmkd.registry import SIGNALS
from racmkd.utils import torch_threads


class Predictor:
    """A model with its preprocessing; `predict` takes raw inputs, any of which may be missing.
    `preprocess` maps each modality the model uses to what turns raw inputs into its features (a
    training-side Modality for checkpoints, a Signal for ONNX models): both have `to_raw` and `features`."""

    # PyTorch's intra-op threads for one sample of a checkpoint (0: PyTorch's own, one per core). One:
    # on a 2-core host with other work, a thread per core spun against it (racmkd.load(run).predict
    # took 16-20 ms, with rounds of 300-700; 3.7 on one). The number is PyTorch's, for the process:
    # it is set around each call and put back after.
    threads: int = 1

    def __init__(self, name: str, model: Any, specs: dict[str, Any], preprocess: dict[str, Any], meta: dict[str, Any]) -> None:
        self.name, self.model, self.specs, self._preprocess, self.meta = name, model, specs, preprocess, meta
        if hasattr(model, "eval"):
            model.eval()

    @property
    def modalities(self) -> list[str]:
        """The inputs this model can use."""
        return list(self.specs)

    def live_features(self, inputs: dict[str, Any], sample_rate: int | None = None) -> tuple[dict[str, Any], list[str]]:
        """Model inputs (batch of one) from the raw inputs that this model uses and that were given,
        and the names of those that came in dead (a constant image or noise alone, silence or steady hum
        or hiss: `Signal.input_quality`, thorough): a dead sensor is a
        missing one, as the edge runtime takes it; read as an input, silence got a confident answer."""
        out, dead = {}, []
        for name, value in inputs.items():
            if value is None or name not in self.specs:
                continue  # a missing sensor, or an input this model does not use
            preprocess = self._preprocess[name]
            raw = preprocess.to_raw(value, self.specs[name], sample_rate=sample_rate)
            if preprocess.input_quality(raw) == 0.0:
                dead.append(name)
                continue
            out[name] = preprocess.features(raw, self.specs[name])
        return out, dead

    def features(self, inputs: dict[str, Any], sample_rate: int | None = None) -> dict[str, Any]:
        """Model inputs (batch of one) from the live raw inputs that this model uses and that were given."""
        with torch_threads(self.threads):  # (a checkpoint's features are the training side's, in PyTorch)
            out, dead = self.live_features(inputs, sample_rate)
        if not out:
            wanted = " and/or ".join(self.modalities)
            if dead:
                raise ValueError(f"model {self.name!r} needs {wanted}; {came_in_dead(dead)}: no live input to answer from")
            raise ValueError(
                f"model {self.name!r} needs {wanted}; got {'no input' if not any(v is not None for v in inputs.values()) else 'only ' + ', '.join(k for k, v in inputs.items() if v is not None)}"
            )
        return out

    def predict(self, image: Any = None, audio: Any = None, sample_rate: int | None = None, **other: Any) -> tuple[int, np.ndarray]:
        """(label, class probabilities) for one sample. `image`: 28x28 uint8 or [0, 1] float;
        `audio`: mono waveform (int16 or float) at `sample_rate` Hz (default: the model's own rate); other registered modalities by
        name. Inputs the model does not use are ignored. A missing one is answered from the rest by
        a checkpoint's predictor; an ONNX artifact needs every input it was exported with, and says
        so (`racmkd export --modality ...` writes a variant without one)."""
        unknown = set(other) - set(SIGNALS.names())
        if unknown:
            raise TypeError(f"predict() got unknown inputs {sorted(unknown)}; this model uses {self.modalities}")
        logits = self.logits(self.features({"image": image, "audio": audio, **other}, sample_rate)).astype(np.float64)
        if not np.isfinite(logits).all():  # a damaged model: no answer rather than a made-up one
            raise ValueError(
                f"model {self.name!r} computed non-finite logits: an input's values are far out of the range it was trained on, or its weights are damaged (re-export or retrain it)"
            )
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        return int(probs.argmax()), probs.astype(np.float32)

    def logits(self, features: dict[str, Any]) -> np.ndarray:
        """Class logits (K,) of the one sample in `features`."""
        import torch

        with torch.inference_mode(), torch_threads(self.threads):
            return self.model(features)[0].numpy()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, modalities={self.modalities})"


class OnnxPredictor(Predictor):
    """An exported model run by ONNX Runtime, preprocessing read from its contract (what an edge
    device deploys; no torch). The graph needs every input it was exported with."""

    def __init__(self, path: Path, threads: int = 1, fix: str = "export it with `racmkd export`") -> None:
        from racmkd.compress.artifacts import ExportError, read_contract, session, specs_from_contract

        contract = read_contract(path, fix)  # `fix`: how to make the file again
        self.session = session(Path(path), threads)
        specs = specs_from_contract(contract)
        signals = {m: SIGNALS.create(m) for m in contract["inputs"]}
        graph = {i.name: list(i.shape[1:]) for i in self.session.get_inputs()}
        for m, spec in specs.items():  # the contract must describe the graph it travels with
            if graph.get(m) != list(signals[m].feature_shape(spec)):
                raise ExportError(
                    f"{path}: its contract gives {m} features of shape {list(signals[m].feature_shape(spec))}, its graph takes {graph.get(m)}; export it again with `racmkd export`"
                )
        super().__init__(contract.get("model", Path(path).stem), self.session, specs, signals, contract)
        # An edge bank's variant is a share of a student's logits, its classifier's bias left out
        # for the runtime to add once however many shares it sums: added back here.
        self.logit_bias = np.asarray(contract.get("logit_bias", 0.0), dtype=np.float32) if contract.get("share") else np.float32(0.0)
        stat = Path(path).stat()
        self._opened = (Path(path).resolve(), threads, fix, (stat.st_size, stat.st_mtime_ns))

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (multiprocessing, joblib) or deep-copied as its file, which the copy opens again:
        an ONNX Runtime session pickles not at all (a checkpoint's predictor did). The file by its
        absolute path, and only as it was: one changed since is refused, not taken for this model."""
        return {k: v for k, v in self.__dict__.items() if k not in ("session", "model")}  # (the model is the session)

    def __setstate__(self, state: dict[str, Any]) -> None:
        from racmkd.compress.artifacts import ExportError

        path, threads, fix, seen = state["_opened"]
        try:
            stat = path.stat()
        except OSError as err:
            raise ExportError(f"{path}: the model this predictor was copied from cannot be read again ({err.strerror})") from None
        if (stat.st_size, stat.st_mtime_ns) != seen:
            raise ExportError(f"{path}: changed since this predictor loaded it; load the new file with racmkd.load")
        OnnxPredictor.__init__(self, path, threads, fix)
        self.__dict__.update(state)  # (and what a caller set or changed on it)

    def features(self, inputs: dict[str, Any], sample_rate: int | None = None) -> dict[str, Any]:
        missing = [m for m in self.specs if inputs.get(m) is None]
        if missing:
            raise ValueError(
                f"the ONNX model {self.name!r} was exported with inputs {self.modalities} and needs {' and '.join(missing)}; export a variant without it (`racmkd export --modality ...`) to run with that sensor missing"
            )
        out, dead = self.live_features(inputs, sample_rate)
        if dead:
            raise ValueError(
                f"the ONNX model {self.name!r} needs {' and '.join(self.modalities)} alive; {came_in_dead(dead)}; export a variant without it (`racmkd export --modality ...`) to answer from the rest"
            )
        return out

    def logits(self, features: dict[str, Any]) -> np.ndarray:
        return self.session.run(["logits"], features)[0][0] + self.logit_bias


def load(run_dir: str | Path = "runs/latest", tier: str = "high") -> Predictor | OnnxPredictor:
    """The predictor of one model of a run: 'teacher', 'teacher_image', 'teacher_audio', a tier
    ('high', 'medium', 'low', 'critical'), any other checkpoint name ('high_labels_only'), or a
    compressed tier ('high_compressed': its deployed ONNX artifact, run by ONNX Runtime). Given an
    .onnx file instead of a run folder, that model (`OnnxPredictor`; `tier` is not used)."""
    if Path(run_dir).suffix.lower() == ".onnx":
        if not Path(run_dir).is_file():  # (it said "no such run folder")
            raise FileNotFoundError(f"{run_dir}: no such ONNX file. `racmkd export` and `racmkd compress` write them (<run>/onnx/, <run>/compressed/<tier>/).")
        return OnnxPredictor(Path(run_dir))  # (an exported or compressed artifact: its contract says the rest)
    if not Path(run_dir).is_dir():
        what = "not a run folder (an ONNX model is a file ending in .onnx)" if Path(run_dir).exists() else "no such run folder"
        raise FileNotFoundError(f"{run_dir}: {what}. Train one with `racmkd run`, and load it by its folder (runs/<name>, runs/latest).")
    from racmkd.runs import checkpoint

    path = checkpoint(Path(run_dir), tier)  # (a name, not a path: ValueError)
    if tier.endswith("_compressed"):
        base = tier.removesuffix("_compressed")
        folder = Path(run_dir) / "compressed" / base
        if not (folder / "compression.json").is_file():
            from racmkd.runs import compressed_records

            tiers = [p.parent.name for p in compressed_records(run_dir)]
            hint = (
                f"Run `racmkd compress --run {run_dir} --tier {base}` first"
                if (Path(run_dir) / "checkpoints" / f"{base}.pt").is_file() and not base.startswith("teacher")
                else "Only the tiers' students are compressed"
            )
            raise FileNotFoundError(
                f"{folder / 'compression.json'}: no compressed {base!r} in run {run_dir} (compressed: {', '.join(tiers) or 'none'}). {hint}."
            )
        from racmkd.compress.artifacts import ExportError, compress_again, read_compression_record

        artifact = folder / read_compression_record(folder)["artifact"]
        again = compress_again(folder)
        predictor = OnnxPredictor(artifact, fix=again)
        made_for = predictor.meta.get("tier")
        if made_for is not None and made_for != base:  # (another tier's file copied over it answered as this tier)
            raise ExportError(f"{artifact}: its contract says it is the {made_for!r} tier's model, not {base!r}'s; {again}")
        return predictor
    from racmkd.models.checkpoint import CheckpointError, load_model

    if not path.exists():
        available = sorted(p.stem for p in (Path(run_dir) / "checkpoints").glob("*.pt"))
        raise CheckpointError(f"{path}: no model {tier!r} in run {run_dir}. Available: {', '.join(available) or 'none (run `racmkd run` first)'}")
    model, specs, modalities, meta = load_model(path)
    return Predictor(tier, model, specs, modalities, meta)
