"""Sentiment-regression metrics for CMU-MOSI/MOSEI-style labels in [-3, 3].

Names and definitions follow MMSA (``metricsTop.py::__eval_mosei_regression``) so that numbers are comparable
with its result tables; every value is computed on ALL samples unless the name says otherwise:

* ``MAE``: mean |p - y| (unclipped). ``Corr``: Pearson correlation (0 when either side is constant).
* ``Mult_acc_7`` / ``Mult_acc_5``: clip p and y to [-3, 3] / [-2, 2], round half to even (``np.round``),
  compare. (CMU's ``cmumosei_round`` differs; we do not use it.)
* ``Has0_acc_2`` / ``Has0_F1_score``: non-negative (y >= 0) vs negative, on all samples.
* ``Non0_acc_2`` / ``Non0_F1_score``: positive (y > 0) vs negative (y < 0), on samples with y != 0 only.
* F1 scores are support-weighted over the two classes (sklearn ``average='weighted'``).
"""

from __future__ import annotations

import numpy as np


def _weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Support-weighted F1 over the classes present in ``y_true`` (sklearn ``average='weighted'``)."""
    y_true = np.asarray(y_true, dtype=bool)
    y_pred = np.asarray(y_pred, dtype=bool)
    if y_true.size == 0:
        return float("nan")
    total, score = 0, 0.0
    for cls in (False, True):
        support = int((y_true == cls).sum())
        if support == 0:
            continue
        tp = int(((y_pred == cls) & (y_true == cls)).sum())
        fp = int(((y_pred == cls) & (y_true != cls)).sum())
        fn = support - tp
        denom = 2 * tp + fp + fn
        f1 = 2 * tp / denom if denom else 0.0
        score += support * f1
        total += support
    return score / total


def pearson(p: np.ndarray, y: np.ndarray) -> float:
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    pc, yc = p - p.mean(), y - y.mean()
    denom = np.sqrt((pc * pc).sum() * (yc * yc).sum())
    return float((pc * yc).sum() / denom) if denom > 0 else 0.0


def sentiment_metrics(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """All sentiment metrics of the module docstring, as plain floats."""
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    y = np.asarray(label, dtype=np.float64).reshape(-1)
    if p.shape != y.shape or p.size == 0:
        raise ValueError(
            f"sentiment_metrics: predictions {p.shape} and labels {y.shape} must be equal, non-empty"
        )
    out = {
        "MAE": float(np.abs(p - y).mean()),
        "Corr": pearson(p, y),
        "Mult_acc_7": float((np.round(np.clip(p, -3, 3)) == np.round(np.clip(y, -3, 3))).mean()),
        "Mult_acc_5": float((np.round(np.clip(p, -2, 2)) == np.round(np.clip(y, -2, 2))).mean()),
        "Has0_acc_2": float(((p >= 0) == (y >= 0)).mean()),
        "Has0_F1_score": _weighted_f1(y >= 0, p >= 0),
    }
    nz = y != 0
    out["Non0_acc_2"] = float(((p[nz] > 0) == (y[nz] > 0)).mean()) if nz.any() else float("nan")
    out["Non0_F1_score"] = _weighted_f1(y[nz] > 0, p[nz] > 0) if nz.any() else float("nan")
    return out
