"""On-device inference: the predictor behind `racmkd.load`."""

from racmkd.runtime.predictor import Predictor, load

__all__ = ["Predictor", "load"]
