"""Deployable artifacts without the training stack: an exported model's contract, and ONNX Runtime
sessions to run it. Edge devices import this module, never racmkd.compress.export (which needs torch).

Sessions can keep an optimised copy of each graph in a cache folder (`session_cache`). ONNX
Runtime optimises a graph every time it loads it, and the transformations leave their working
memory behind in the process: a 90 KB student's session holds about 2.2 MB once loaded from its
file, 0.6 MB when loaded from the graph ONNX Runtime saved after optimising it, and loads in a
third of the time (measured on this project's variants). The edge runtime loads and evicts
sessions as memory comes and goes, so it loads from the cache. The cached graph is ONNX Runtime's
own (fused operators of its contrib domain), keyed by the model's sha256, the ONNX Runtime version
and the machine, and written once per device; the artifact that ships stays plain ONNX.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from racmkd.data import signals as _signals  # noqa: F401 - registers the image and audio signals
from racmkd.registry import SIGNALS
from racmkd.utils import sha256

CONTRACT_KEY = "racmkd.contract"
CONTRACT_FORMAT = "racmkd-onnx/1"

log = logging.getLogger(__name__)


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


def _options(threads: int, level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = level
    options.log_severity_level = 3
    return options


def _open(source: str | bytes, options: ort.SessionOptions, label: str) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ExportError(f"{label}: ONNX Runtime cannot load it ({str(err).splitlines()[0]})") from None


def optimised_copy(path: Path, cache_dir: Path) -> Path:
    """The cached, optimised graph of the model at `path`, written on first use (atomically)."""
    data = Path(path).read_bytes()
    key = sha256(f"{sha256(data)}|{ort.__version__}|{platform.machine()}".encode())[:16]
    target = Path(cache_dir) / f"{Path(path).stem}.{key}.onnx"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        # Extended, not all, optimisations are saved: the layout ones (NCHWc) run at every load anyway.
        options = _options(1, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
        options.optimized_model_filepath = tmp
        _open(data, options, str(path))
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def session(path: Path | bytes, threads: int = 1, cache_dir: Path | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session on `threads` threads, all graph optimisations on; from the
    optimised copy in `cache_dir` when given (see the module docstring). A cache that cannot be
    written is skipped with a warning: the model still loads, from its own file."""
    label = str(path) if isinstance(path, Path) else "model"
    source: str | bytes = str(path) if isinstance(path, Path) else path
    if cache_dir is not None and isinstance(path, Path):
        try:
            source = str(optimised_copy(path, cache_dir))
        except OSError as err:
            log.warning("cannot cache the optimised graph of %s in %s (%s); loading it as it is", path, cache_dir, err)
    return _open(source, _options(threads), label)


def zero_feed(sess: ort.InferenceSession) -> dict[str, np.ndarray]:
    """Zero inputs of batch 1 for every input of a session (health checks, timing)."""
    return {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], dtype=np.float32) for i in sess.get_inputs()}
