"""Metrics with atypical as the positive class, and threshold choice."""

from __future__ import annotations

from typing import TypedDict

import numpy as np
from sklearn.metrics import roc_auc_score


class BinaryMetrics(TypedDict):
    balanced_accuracy: float
    auroc: float
    sensitivity: float
    specificity: float
    threshold: float
    n: int
    n_atypical: int
    n_normal: int


def confusion(labels: np.ndarray, prob: np.ndarray, threshold: float) -> tuple[int, ...]:
    pred = prob >= threshold
    pos = labels == 1
    return (
        int(np.sum(pred & pos)),
        int(np.sum(~pred & ~pos)),
        int(np.sum(pred & ~pos)),
        int(np.sum(~pred & pos)),
    )


def binary_metrics(labels: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> BinaryMetrics:
    """Balanced accuracy, AUROC, sensitivity and specificity (atypical = positive)."""
    tp, tn, fp, fn = confusion(labels, prob, threshold)
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    both = len(np.unique(labels)) == 2
    return {
        "balanced_accuracy": (sens + spec) / 2,
        "auroc": float(roc_auc_score(labels, prob)) if both else float("nan"),
        "sensitivity": sens,
        "specificity": spec,
        "threshold": threshold,
        "n": len(labels),
        "n_atypical": int(np.sum(labels == 1)),
        "n_normal": int(np.sum(labels == 0)),
    }


def best_threshold(labels: np.ndarray, prob: np.ndarray, default: float = 0.5) -> float:
    """Threshold maximising balanced accuracy (Youden's J), midway between adjacent scores;
    ``default`` when that is undefined (one class, or one score)."""
    order = np.unique(prob)
    if len(order) < 2 or len(np.unique(labels)) < 2:
        return default
    cuts = np.concatenate([[order[0] - 1e-6], (order[:-1] + order[1:]) / 2])
    pos, neg = labels == 1, labels == 0
    sens = np.array([(prob[pos] >= c).mean() for c in cuts])
    spec = np.array([(prob[neg] < c).mean() for c in cuts])
    j = sens + spec
    # Among ties take the middle cut: less sensitive to the exact sample.
    best = np.flatnonzero(j >= j.max() - 1e-12)
    return float(cuts[best[len(best) // 2]])


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population std (ddof=0), the paper's way of summarising folds."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=0))
