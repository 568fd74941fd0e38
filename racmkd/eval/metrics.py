"""Classification metrics as pure functions of logits and labels."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import f1_score, roc_auc_score


class NonFiniteLogits(ValueError):
    """A model answered NaN or infinity: its weights are damaged or diverged, and no metric means anything."""


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> dict[str, float | None]:
    """Accuracy, macro-F1 and macro one-vs-rest AUC-ROC (None when a class is absent from `labels`,
    where AUC is undefined)."""
    if not bool(torch.isfinite(logits).all()):  # sklearn's own message ("Input contains NaN") names no model
        raise NonFiniteLogits(f"{int((~torch.isfinite(logits)).any(dim=1).sum())} of {len(logits)} samples' logits hold NaN or infinite values")
    k = num_classes or logits.shape[1]
    probs = torch.softmax(logits.double(), dim=1).numpy()
    y = labels.numpy()
    pred = probs.argmax(axis=1)
    present = np.unique(y)
    auc = None
    if len(present) == k == 2:
        auc = float(roc_auc_score(y, probs[:, 1]))  # binary: sklearn wants the positive class's score
    elif len(present) == k:
        auc = float(roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=list(range(k))))
    return {
        "accuracy": float((pred == y).mean()),
        # Over the classes that occur (as labels or answers): one absent from both is no error of the model's.
        "f1_macro": float(f1_score(y, pred, average="macro", labels=np.union1d(y, pred).tolist(), zero_division=0)),
        "auc_roc": auc,
    }
