"""How well each slide-fraction estimator recovers the true atypical share out of domain.

Input: a leave-group-out run (each fold model's predictions on the group it never saw). For
every held-out group, the estimators' parameters (threshold, sensitivity/specificity, Platt
calibration, between-domain error) are fitted on the *other* groups' predictions only, then
judged on the held-out group: pooled as one slide, on pseudo-slides resampled from it
(100–2,000 mitoses at true shares 0–0.5, the range of AMi-Br's slides with ≥ 30 mitoses:
0.05–0.49), and on its real slides with ≥ 30 mitoses.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from wsi_atm.fraction.estimators import (
    METHODS,
    Estimate,
    FractionModel,
    calibrate,
    calibrated_model,
    card_rates,
    estimate,
    fit_platt,
)
from wsi_atm.models.card import ModelCard
from wsi_atm.train.metrics import best_threshold, binary_metrics
from wsi_atm.train.results import FoldResult

SIZES = (100, 300, 1000, 2000)
# Shares up to 0.5: a calibrated mean is pulled towards the training share (0.22), so its error
# measured only near it (0.05-0.35, as before) understated the error on slides far from it.
PREVALENCES = (0.0, 0.05, 0.10, 0.20, 0.35, 0.50)
MIN_SLIDE = 30
TRAINING_SHARE = "training share (no slide data)"


@dataclass
class Predictions:
    """Out-of-domain predictions of a run: one row per crop."""

    p: np.ndarray
    labels: np.ndarray
    group: np.ndarray  # the held-out group each crop belongs to
    slide: np.ndarray

    def take(self, mask: np.ndarray) -> Predictions:
        return Predictions(self.p[mask], self.labels[mask], self.group[mask], self.slide[mask])


def load_prediction_table(path: Path, slides: Path | None = None) -> Predictions:
    """Out-of-domain predictions from a CSV (``name``, ``held_out``, ``label``,
    ``p_atypical``, as ``docs/ablation/*.csv``); ``slides``, AMi-Br's split table, names each
    crop's slide (else every group is one slide)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    slide_of: dict[str, str] = {}
    if slides is not None:
        with open(slides, newline="", encoding="utf-8") as fh:
            slide_of = {r["dataset_uid"]: r["slide"] for r in csv.DictReader(fh)}
    group = np.array([r["held_out"] for r in rows])
    slide = np.array([f"{r['held_out']}/{slide_of.get(r['name'].split('/')[-1], '')}"
                      for r in rows])
    return Predictions(np.array([float(r["p_atypical"]) for r in rows]),
                       np.array([int(r["label"]) for r in rows]), group, slide)


def load_predictions(run: Path) -> Predictions:
    with open(run / "folds.csv", newline="", encoding="utf-8") as fh:
        slide_of = {r["name"]: r["group"] for r in csv.DictReader(fh)}
    p, labels, group, slide = [], [], [], []
    for path in sorted(run.glob("fold_*/result.json")):
        r = FoldResult.read(path)
        p += r.predictions.p_atypical
        labels += r.predictions.labels
        group += [r.group_name] * len(r.predictions.labels)
        slide += [slide_of[n] for n in r.predictions.names]
    return Predictions(np.array(p), np.array(labels), np.array(group), np.array(slide))


def fit_fraction_model(pred: Predictions, method: str, shift_sd: float = 0.0) -> FractionModel:
    """Threshold, rates and Platt calibration from pooled out-of-domain predictions."""
    t = best_threshold(pred.labels, pred.p)
    m = binary_metrics(pred.labels, pred.p, t)
    a, b = fit_platt(pred.p, pred.labels)
    q = calibrate(pred.p, a, b)
    groups = sorted(set(pred.group.tolist()))
    rates = [binary_metrics(pred.labels[pred.group == g], pred.p[pred.group == g], t)
             for g in groups]
    # population SD (ddof 0), as the cv_*_std that `wsi-atm train` writes into a card: the
    # study then measures the interval classify computes from a card
    spread = {k: _spread([r[k] for r in rates]) for k in ("sensitivity", "specificity")}
    # the envelope of the validation groups: a slide beyond it is unlike every one of them
    # (a group without one class has no mean of it: it does not bound that side)
    normal = [q[(pred.group == g) & (pred.labels == 0)] for g in groups]
    atypical = [q[(pred.group == g) & (pred.labels == 1)] for g in groups]
    return FractionModel(threshold=t, method=method, platt_a=a, platt_b=b, shift_sd=shift_sd,
                         sensitivity=m["sensitivity"], specificity=m["specificity"],
                         n_atypical=m["n_atypical"], n_normal=m["n_normal"],
                         sensitivity_sd=spread["sensitivity"],
                         specificity_sd=spread["specificity"],
                         extra={"prior": float(pred.labels.mean()),
                                "q_atypical": float(max(a.mean() for a in atypical if len(a))),
                                "q_normal": float(min(n.mean() for n in normal if len(n)))})


def _spread(values: list[float]) -> float:
    """Population SD of the groups' rates that are defined (a group without atypical mitoses
    has no sensitivity); 0 with fewer than two."""
    defined = [v for v in values if v == v]
    return float(np.std(defined)) if len(defined) > 1 else 0.0


def between_group_error(pred: Predictions, method: str, seed: int = 99) -> float:
    """RMS error of ``method`` on groups it was not fitted on: each group pooled as one slide
    and large pseudo-slides (2,000 mitoses, every prevalence) resampled from it, so that the
    error of an unfamiliar scanner *and* of a prevalence far from training's is included."""
    errors: list[float] = []
    groups = sorted(set(pred.group.tolist()))
    if len(groups) < 2:
        return 0.0
    for g in groups:
        fm = fit_fraction_model(pred.take(pred.group != g), method)
        held = pred.take(pred.group == g)
        cases = [(held.p, float(held.labels.mean()))]
        cases += [c for c in pseudo_slides(held, seed, 2) if len(c[0]) == SIZES[-1]]
        for p, truth in cases:
            value = estimate(p, fm).value
            if value is not None:
                errors.append(value - truth)
    return float(math.sqrt(np.mean(np.square(errors)))) if errors else 0.0


def pseudo_slides(held: Predictions, seed: int, reps: int) -> list[tuple[np.ndarray, float]]:
    """(probabilities, true share) of slides resampled from one held-out group."""
    rng = np.random.default_rng(seed)
    pos, neg = held.p[held.labels == 1], held.p[held.labels == 0]
    out = []
    for n in SIZES:
        for prev in PREVALENCES:
            k = round(n * prev)
            if (k and not len(pos)) or (n - k and not len(neg)):
                continue  # a group without that class cannot make such a slide
            for _ in range(reps):
                p = np.concatenate([rng.choice(pos, k), rng.choice(neg, n - k)])
                out.append((p, k / n))
    return out


Judged = tuple[float | None, tuple[float, float] | None, float, bool]  # value, ci, truth, warned


def _judge(e: Estimate, truth: float) -> Judged:
    return e.value, e.ci95, truth, e.warning is not None


def _score(values: list[Judged]) -> dict[str, Any]:
    ok = [(v, ci, t, w) for v, ci, t, w in values if v is not None]
    err = np.array([v - t for v, _, t, _ in ok])
    covered = [ci[0] <= t <= ci[1] for _, ci, t, _ in ok if ci is not None]
    return {"mae": float(np.mean(np.abs(err))) if len(err) else None,
            "bias": float(np.mean(err)) if len(err) else None,
            "coverage": float(np.mean(covered)) if covered else None,
            "warned": float(np.mean([w for *_, w in ok])) if ok else None,
            "n": len(ok), "undefined": len(values) - len(ok)}


def _by_model(p: np.ndarray, fm: FractionModel) -> Estimate:
    return estimate(p, fm)


def _training_share(p: np.ndarray, share: float) -> Estimate:
    return Estimate(share, None, TRAINING_SHARE)


def study(pred: Predictions, reps: int = 25, seed: int = 0,
          fixed: dict[str, FractionModel] | None = None) -> dict[str, Any]:
    """Error of each estimator (and of ``fixed`` models, e.g. a card's in-domain rates)."""
    groups = sorted(set(pred.group.tolist()))
    rows: dict[str, dict[str, list[Any]]] = {}
    for gi, g in enumerate(groups):
        others, held = pred.take(pred.group != g), pred.take(pred.group == g)
        models = {m: fit_fraction_model(others, m, between_group_error(others, m))
                  for m in METHODS}
        models.update(fixed or {})
        slides = pseudo_slides(held, seed + gi, reps)
        real = [held.take(held.slide == s) for s in sorted(set(held.slide.tolist()))]
        real = [r for r in real if len(r.p) >= MIN_SLIDE]
        # the yardstick any estimator must beat: the training share, whatever the slide shows
        judges: dict[str, Callable[[np.ndarray], Estimate]] = {
            m: partial(_by_model, fm=fm) for m, fm in models.items()}
        judges[TRAINING_SHARE] = partial(_training_share, share=float(others.labels.mean()))
        for name, judge in judges.items():
            row = rows.setdefault(name, {"pooled": [], "pseudo": [], "real": []})
            row["pooled"].append(_judge(judge(held.p), float(held.labels.mean())))
            for p, truth in slides:
                judged = _judge(judge(p), truth)
                row["pseudo"].append(judged)
                row.setdefault(f"share {truth:.2f}", []).append(judged)
            for r in real:
                row["real"].append(_judge(judge(r.p), float(r.labels.mean())))
    return {name: {k: _score(v) for k, v in parts.items()} for name, parts in rows.items()}


def card_fraction(pred: Predictions, method: str) -> dict[str, Any]:
    """The card's ``[fraction]`` table: fitted on every group's out-of-domain predictions."""
    fm = fit_fraction_model(pred, method, between_group_error(pred, method))
    return {"method": method, "platt_a": round(fm.platt_a, 6), "platt_b": round(fm.platt_b, 6),
            "shift_sd": round(fm.shift_sd, 6), "prior": round(fm.extra["prior"], 6),
            "q_atypical": round(fm.extra["q_atypical"], 6),
            "q_normal": round(fm.extra["q_normal"], 6),
            "source": "pooled leave-scanner-out predictions; shift_sd = RMS error on each "
                      "held-out scanner and its 2,000-mitosis pseudo-slides at true shares "
                      "0-0.5 (fitted without it); q_normal / q_atypical = the lowest / highest "
                      "mean calibrated probability of normal / atypical mitoses on any scanner"}


def card_fraction_model(card: ModelCard) -> FractionModel:
    """What a card's calibrated ``[fraction]`` table and cross-validated rates make, at its own
    threshold: how ``classify`` estimates a slide with that card."""
    return calibrated_model(card.fraction, card.threshold,
                            card_rates(card.metrics, card.threshold))
