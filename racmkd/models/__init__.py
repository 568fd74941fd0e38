"""Models: per-modality encoders (encoders.py) and the multimodal teacher / student family (multimodal.py)."""

from racmkd.models import encoders as encoders  # registers cnn2d, dscnn2d
from racmkd.models.multimodal import MultimodalNet, build, count_params, student, teacher, widest_student

__all__ = ["MultimodalNet", "build", "count_params", "encoders", "student", "teacher", "widest_student"]
