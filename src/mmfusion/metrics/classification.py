"""Classification metrics: binary (UR-FUNNY humour) and multi-class (digits/MNIST)."""

from __future__ import annotations

import numpy as np

from mmfusion.metrics.sentiment import _weighted_f1


def binary_metrics(prob_or_logit: np.ndarray, label: np.ndarray, threshold: float = 0.0) -> dict[str, float]:
    """``acc`` and support-weighted ``F1`` of ``score > threshold`` (logits: threshold 0) against 0/1 labels."""
    s = np.asarray(prob_or_logit, dtype=np.float64).reshape(-1)
    y = np.asarray(label).reshape(-1).astype(bool)
    pred = s > threshold
    return {"acc": float((pred == y).mean()), "F1": _weighted_f1(y, pred)}


def multiclass_metrics(logits: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """``acc`` of argmax and macro-averaged ``F1_macro``."""
    logits = np.asarray(logits)
    y = np.asarray(label).reshape(-1).astype(int)
    pred = logits.argmax(axis=-1)
    f1s = []
    for c in np.unique(y):
        tp = ((pred == c) & (y == c)).sum()
        fp = ((pred == c) & (y != c)).sum()
        fn = ((pred != c) & (y == c)).sum()
        d = 2 * tp + fp + fn
        f1s.append(2 * tp / d if d else 0.0)
    return {"acc": float((pred == y).mean()), "F1_macro": float(np.mean(f1s))}
