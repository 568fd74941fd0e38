"""Deployable artifacts without the training stack: an exported model's contract, and ONNX Runtime
sessions to run it. Edge devices import this module, never racmkd.compress.export (which needs torch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from racmkd.data import signals as _signals  # noqa: F401 - registers the image and audio signals
from racmkd.registry import SIGNALS

CONTRACT_KEY = "racmkd.contract"
CONTRACT_FORMAT = "racmkd-onnx/1"


class ExportError(RuntimeError):
    """A model could not be exported, or a file is not a racmkd ONNX model; the message names the file."""


def read_contract(path: Path) -> dict[str, Any]:
    """The contract of an exported racmkd model; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf raises DecodeError and others
        raise ExportError(f"{path}: not an ONNX model ({type(err).__name__}). Export one with `racmkd export`.") from None
    meta = {p.key: p.value for p in model.metadata_props}
    if CONTRACT_KEY not in meta:
        raise ExportError(f"{path}: an ONNX model without a racmkd contract (metadata {CONTRACT_KEY!r}); export it with `racmkd export`")
    return json.loads(meta[CONTRACT_KEY])


def specs_from_contract(contract: dict[str, Any]) -> dict[str, Any]:
    """The feature specs of an exported model's inputs, as the modalities' signals read them."""
    return {m: SIGNALS.create(m).spec_from_dict(entry["spec"]) for m, entry in contract["inputs"].items()}


def session(path: Path | bytes, threads: int = 1) -> ort.InferenceSession:
    """An ONNX Runtime CPU session on `threads` threads, all graph optimisations on."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    source = str(path) if isinstance(path, Path) else path
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ExportError(f"{path if isinstance(path, Path) else 'model'}: ONNX Runtime cannot load it ({str(err).splitlines()[0]})") from None


def zero_feed(sess: ort.InferenceSession) -> dict[str, np.ndarray]:
    """Zero inputs of batch 1 for every input of a session (health checks, timing)."""
    return {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], dtype=np.float32) for i in sess.get_inputs()}
