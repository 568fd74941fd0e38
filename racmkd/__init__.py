"""racmkd: Resource-Aware Cross-Modal Knowledge Distillation for edge AI.

A multimodal teacher (image + audio) is distilled into tiny students at resource tiers; every
model is measured for accuracy and cost. `racmkd.load(run_dir, tier)` gives a predictor on raw
inputs; the `racmkd` command runs the pipeline (see README.md).
"""

from racmkd import data as data
from racmkd import distill as distill
from racmkd import models as models
from racmkd.runtime import Predictor, load

__version__ = "0.1.0"
__all__ = ["Predictor", "load", "__version__"]
