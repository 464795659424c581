"""The records a training run produces: each fold's result and the run's summary.

Both are written as JSON (``fold_K/result.json``, ``summary.json``) in the layout that
``results``, the fraction study and the ablation script read; the dataclasses give that layout
one typed definition.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from wsi_atm.train.metrics import BinaryMetrics, binary_metrics, mean_std

SUMMARY_KEYS = ("balanced_accuracy", "auroc", "sensitivity", "specificity")


@dataclass(frozen=True)
class FoldPredictions:
    """Each reported crop's name, label (1 = atypical) and the fold model's P(atypical)."""

    names: list[str]
    labels: list[int]
    p_atypical: list[float]


@dataclass(frozen=True)
class FoldResult:
    fold: int
    held_out: str | None  # the group a leave-group-out fold never saw
    best_epoch: int
    epochs_run: int
    threshold: float
    metrics: BinaryMetrics  # at the fold's own threshold
    metrics_at_half: BinaryMetrics  # at 0.5, the paper's rule
    predictions: FoldPredictions
    note: str = ""  # how the epoch was chosen when the selection set could not choose it

    @property
    def group_name(self) -> str:
        return self.held_out or f"fold {self.fold}"

    def to_json(self) -> dict[str, Any]:
        return {
            "fold": self.fold, "held_out": self.held_out, "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run, "threshold": self.threshold,
            "metrics": self.metrics, "metrics_at_0.5": self.metrics_at_half,
            "predictions": {"names": self.predictions.names, "labels": self.predictions.labels,
                            "p_atypical": self.predictions.p_atypical},
        } | ({"note": self.note} if self.note else {})

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> FoldResult:
        pred = raw["predictions"]
        return cls(
            fold=int(raw["fold"]), held_out=raw.get("held_out"),
            best_epoch=int(raw["best_epoch"]), epochs_run=int(raw["epochs_run"]),
            threshold=float(raw["threshold"]), metrics=raw["metrics"],
            metrics_at_half=raw["metrics_at_0.5"],
            predictions=FoldPredictions(list(pred["names"]), [int(v) for v in pred["labels"]],
                                        [float(v) for v in pred["p_atypical"]]),
            note=str(raw.get("note", "")))

    @classmethod
    def read(cls, path: Path) -> FoldResult:
        return cls.from_json(json.loads(path.read_text()))


def fold_result(fold: int, held_out: str | None, best_epoch: int, epochs_run: int,
                threshold: float, names: list[str], labels: np.ndarray,
                probs: np.ndarray, note: str = "") -> FoldResult:
    """Score one fold model's predictions at its threshold and at 0.5."""
    return FoldResult(
        fold=fold, held_out=held_out, best_epoch=best_epoch, epochs_run=epochs_run,
        threshold=threshold, metrics=binary_metrics(labels, probs, threshold),
        metrics_at_half=binary_metrics(labels, probs, 0.5),
        predictions=FoldPredictions(names, [int(v) for v in labels],
                                    [round(float(p), 6) for p in probs]), note=note)


@dataclass(frozen=True)
class MeanStd:
    mean: float
    std: float


@dataclass(frozen=True)
class RunSummary:
    folds: list[BinaryMetrics]
    fold_stats: dict[str, MeanStd]  # SUMMARY_KEYS and the same with "_at_0.5"
    threshold: float  # the mean of the fold thresholds: the run card's
    out_of_fold: BinaryMetrics  # every fold's predictions pooled, at that threshold
    held_out: dict[str, BinaryMetrics]
    cv_kind: str = "kfold"
    cv_group: str = "slide"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"folds": self.folds}
        out |= {k: {"mean": v.mean, "std": v.std} for k, v in self.fold_stats.items()}
        out |= {"threshold": self.threshold, "out_of_fold": self.out_of_fold,
                "held_out": self.held_out, "cv": {"kind": self.cv_kind, "group": self.cv_group}}
        strict: dict[str, Any] = _strict(out)
        return strict


def metric(m: BinaryMetrics, key: str) -> float:
    """One metric named at run time (TypedDict keys must otherwise be literals)."""
    return float(cast(dict[str, float], m)[key])


def _defined_mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and std over the folds where the metric is defined: a fold that holds out one
    class (a slide or site of only normal mitoses) has no balanced accuracy or AUROC, and its
    NaN made the run's every mean NaN. NaN only when no fold defines it."""
    defined = [v for v in values if v == v]
    return mean_std(defined) if defined else (float("nan"), float("nan"))


def _strict(value: Any) -> Any:
    """``value`` with NaN as None: summary.json is strict JSON (``evaluate --json`` is too)."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value


def summarise(results: list[FoldResult], cv_kind: str = "kfold",
              cv_group: str = "slide") -> RunSummary:
    stats: dict[str, MeanStd] = {}
    for key in SUMMARY_KEYS:
        stats[key] = MeanStd(*_defined_mean_std([metric(r.metrics, key) for r in results]))
        stats[f"{key}_at_0.5"] = MeanStd(*_defined_mean_std([metric(r.metrics_at_half, key)
                                                             for r in results]))
    labels = np.concatenate([r.predictions.labels for r in results])
    probs = np.concatenate([r.predictions.p_atypical for r in results])
    threshold = float(np.mean([r.threshold for r in results]))
    return RunSummary(
        folds=[r.metrics for r in results], fold_stats=stats, threshold=threshold,
        out_of_fold=binary_metrics(labels, probs, threshold),
        held_out={r.group_name: r.metrics for r in results}, cv_kind=cv_kind, cv_group=cv_group)
