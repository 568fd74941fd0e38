"""racmkd: Resource-Aware Cross-Modal Knowledge Distillation for edge AI.

A multimodal teacher (image + audio) is distilled into tiny students at resource tiers; every
model is measured for accuracy and cost. `racmkd.load(run_dir, tier)` gives a predictor on raw
inputs; the `racmkd` command runs the pipeline (see README.md).

Subpackages are imported on first use, so that an edge device, which has ONNX Runtime but no
PyTorch, imports the runtime and deployment modules alone.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["OnnxPredictor", "Predictor", "load", "__version__"]


SUBPACKAGES = ("data", "models", "distill", "compress", "resources", "runtime", "deploy", "eval", "measure")


def __getattr__(name: str) -> Any:
    """`racmkd.load` and `racmkd.Predictor` (racmkd.runtime.predictor), and the subpackages
    (`racmkd.models`, ...), imported on first use."""
    if name in ("load", "Predictor", "OnnxPredictor"):
        return getattr(importlib.import_module("racmkd.runtime.predictor"), name)
    if name in SUBPACKAGES:
        return importlib.import_module(f"racmkd.{name}")
    raise AttributeError(f"module 'racmkd' has no attribute {name!r}")


def __dir__() -> list[str]:
    """What `dir(racmkd)`, help() and a notebook's completion offer: the lazy names too (`load`
    was in none of them). Not the subpackages: help() imports every name it lists, and the
    training ones need torch (on an edge device, help(racmkd) failed)."""
    return sorted({*globals(), *__all__})
