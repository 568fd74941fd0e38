"""Distillation: losses as pure functions (losses.py, registering them), eq. 28's adaptive weights
(adaptive.py) and the shared-pass trainer (trainer.py)."""

from racmkd.distill import losses as losses  # registers the losses
from racmkd.distill.trainer import Job, Teacher, train_jobs

__all__ = ["Job", "Teacher", "losses", "train_jobs"]
