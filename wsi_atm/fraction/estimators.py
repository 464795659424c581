"""Estimators of a slide's true atypical share from the classifier's per-candidate output.

- ``raw``: share of candidates called atypical at the card's threshold.
- ``rogan-gladen``: that share corrected with the card's sensitivity/specificity.
- ``calibrated-mean``: mean of Platt-calibrated probabilities (calibration fitted on pooled
  out-of-domain predictions, so it reflects unfamiliar scanners, not the training folds).

Every interval is a 95 % interval that never collapses to a point: the calibrated mean adds
the between-domain spread of its error measured in leave-scanner-out validation (``shift_sd``);
Rogan–Gladen adds the spread of the rates between folds/scanners when the card has it, flags
shares the card's rates cannot produce and widens its interval to the raw share's Wilson
interval. The calibrated estimators flag a slide whose mean calibrated probability lies
outside what any share gave on any validation scanner (``q_normal``..``q_atypical``: the lowest
mean of normal mitoses on a scanner, the highest of atypical ones), sampling noise allowed
for. Card ``[fraction]`` keys: ``method``, ``platt_a``, ``platt_b``, ``shift_sd``, ``prior``,
``q_atypical``, ``q_normal``, ``source``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wsi_atm.fraction.stats import Z95, rogan_gladen, rogan_gladen_interval, wilson_interval

METHODS = ("raw", "rogan-gladen", "calibrated-mean", "calibrated-em")
_EPS = 1e-6


@dataclass(frozen=True)
class FractionModel:
    """What the estimators need from a card."""

    threshold: float
    method: str = "rogan-gladen"
    platt_a: float = 1.0
    platt_b: float = 0.0
    shift_sd: float = 0.0
    sensitivity: float | None = None
    specificity: float | None = None
    n_atypical: int | None = None
    n_normal: int | None = None
    # between-fold (or between-scanner) SD of the rates: how far they move on other data
    sensitivity_sd: float = 0.0
    specificity_sd: float = 0.0
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Estimate:
    value: float | None
    ci95: tuple[float, float] | None
    method: str
    warning: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value,
                               "ci95": list(self.ci95) if self.ci95 else None,
                               "method": self.method}
        if self.warning:
            out["warning"] = self.warning
        return out


def _defined(value: Any) -> float | None:
    """None for a missing or NaN (undefined: a fold without one class) number."""
    return None if value is None or value != value else float(value)


def card_rates(metrics: dict[str, Any], threshold: float) -> dict[str, Any]:
    """A card's cross-validated operating point (its ``[metrics]`` at its ``threshold``) as
    :class:`FractionModel` keywords; empty when its rates are undefined. Zero counts mean no
    count (older ``--cv none`` run cards)."""
    sens, spec = _defined(metrics.get("sensitivity")), _defined(metrics.get("specificity"))
    if sens is None or spec is None:
        return {}
    return {"threshold": threshold, "sensitivity": sens, "specificity": spec,
            "n_atypical": metrics.get("cv_n_atypical") or None,
            "n_normal": metrics.get("cv_n_normal") or None,
            "sensitivity_sd": _defined(metrics.get("cv_sensitivity_std")) or 0.0,
            "specificity_sd": _defined(metrics.get("cv_specificity_std")) or 0.0}


def calibrated_model(fraction: dict[str, Any], threshold: float,
                     rates: dict[str, Any]) -> FractionModel:
    """The :class:`FractionModel` of a card's calibrated ``[fraction]`` table, with the card's
    own operating point (``rates``, from :func:`card_rates`; the calibrated estimates ignore
    thresholds, the flag beyond the validated shares uses it) whatever ``threshold`` a run
    used."""
    f = fraction
    return FractionModel(
        **{"threshold": threshold, **rates}, method=str(f["method"]),
        platt_a=float(f["platt_a"]), platt_b=float(f["platt_b"]),
        shift_sd=float(f.get("shift_sd", 0.0)), source=str(f.get("source", "")),
        extra={"prior": float(f.get("prior", 0.224)),
               **{k: float(f[k]) for k in ("q_atypical", "q_normal") if k in f}})


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    out: np.ndarray = np.log(p / (1 - p))
    return out


def fit_platt(p: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(a, b) of ``sigmoid(a·logit(p) + b)`` by maximum likelihood (unpenalised)."""
    # Fitting happens in training and studies only; classify merely applies (a, b), and
    # importing scikit-learn would cost the review picture a second of start-up.
    from sklearn.linear_model import LogisticRegression

    x = logit(p).reshape(-1, 1)
    y = np.asarray(labels, dtype=int)
    if len(np.unique(y)) < 2:
        raise ValueError("Platt calibration needs both classes")
    fit = LogisticRegression(C=1e6, max_iter=1000).fit(x, y)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


def calibrate(p: np.ndarray, a: float, b: float) -> np.ndarray:
    return 1 / (1 + np.exp(-(a * logit(p) + b)))


def _clip_interval(centre: float, half: float) -> tuple[float, float]:
    return max(0.0, centre - half), min(1.0, centre + half)


def raw_share(p: np.ndarray, fm: FractionModel) -> Estimate:
    k, n = int(np.sum(p >= fm.threshold)), len(p)
    ci = wilson_interval(k, n, Z95)
    return Estimate(k / n if n else None, ci, "raw share at the card's threshold (Wilson)")


def calibrated_mean(p: np.ndarray, fm: FractionModel) -> Estimate:
    n = len(p)
    if n == 0:
        return Estimate(None, None, "calibrated-mean")
    q = calibrate(p, fm.platt_a, fm.platt_b)
    value = float(q.mean())
    # Sampling spread given calibrated probabilities, plus the between-domain calibration error.
    var = float(np.sum(q * (1 - q))) / n**2 + fm.shift_sd**2
    half = Z95 * math.sqrt(max(var, 1.0 / (4 * n * n)))
    return _checked(Estimate(value, _clip_interval(value, half),
                             "mean of Platt-calibrated probabilities (out-of-domain calibration); "
                             "interval adds the between-scanner error measured in "
                             "leave-scanner-out validation", outside_validation(q, fm)), p, fm)


# The largest true share the calibrated estimators were validated at (scripts/fraction_study.py
# builds pseudo-slides of shares 0 to 0.5). Above it they are pulled towards the training share
# and their intervals miss: on pseudo-slides of share 0.75 the calibrated mean's covered the
# truth 1-7 % of the time, of share 1.0 never.
VALIDATED_SHARE = 0.5


def beyond_validation(p: np.ndarray, fm: FractionModel) -> tuple[float, float] | None:
    """The Rogan-Gladen interval when the slide's calls show, beyond sampling noise, a true
    share above :data:`VALIDATED_SHARE`, else None. The calls' share expected at that true
    share is ``VALIDATED_SHARE·se + (1 − VALIDATED_SHARE)·(1 − sp)`` with the card's
    rates; a Wilson interval wholly above it is the sign."""
    se, sp = fm.sensitivity, fm.specificity
    if se is None or sp is None or se + sp <= 1 or len(p) == 0:
        return None
    k, n = int(np.sum(p >= fm.threshold)), len(p)
    expected = VALIDATED_SHARE * se + (1 - VALIDATED_SHARE) * (1 - sp)
    low = wilson_interval(k, n, Z95)
    if low is None or low[0] <= expected:
        return None
    return rogan_gladen_interval(k, n, se, fm.n_atypical, sp, fm.n_normal, Z95,
                                 sens_sd=fm.sensitivity_sd, spec_sd=fm.specificity_sd)


def _checked(est: Estimate, p: np.ndarray, fm: FractionModel) -> Estimate:
    """``est`` flagged, and its interval widened to the Rogan-Gladen one, when the slide's
    share lies beyond what the calibration was validated at (:func:`beyond_validation`)."""
    rg = beyond_validation(p, fm)
    if rg is None or est.ci95 is None:
        return est
    note = (f"the calls show a true atypical share above {VALIDATED_SHARE:g}, beyond the "
            "shares this estimate was validated at, where it reads low and its interval "
            "misses: the interval is widened to the Rogan-Gladen one; read the raw share too")
    ci = (min(est.ci95[0], rg[0]), max(est.ci95[1], rg[1]))
    return Estimate(est.value, ci, est.method,
                    f"{est.warning}; {note}" if est.warning else note)


def outside_validation(q: np.ndarray, fm: FractionModel) -> str | None:
    """A warning when the slide's mean calibrated probability lies beyond what a slide of only
    normal mitoses (``q_normal``, the lowest of any validation scanner) or only atypical ones
    (``q_atypical``, the highest) gave, by more than the sampling noise of that mean (the
    slide's own spread of q over √n): its scores are unlike every validation scanner's, so the
    calibration, and with it the estimate and its interval, may not hold here."""
    low, high = fm.extra.get("q_normal"), fm.extra.get("q_atypical")
    if low is None or high is None or len(q) < 2:
        return None
    mean = float(q.mean())
    noise = Z95 * float(np.std(q, ddof=1)) / math.sqrt(len(q))
    if low - noise <= mean <= high + noise:
        return None
    side = "below" if mean < low else "above"
    edge, who = (low, "only normal") if mean < low else (high, "only atypical")
    return (f"mean calibrated probability {mean:.3f} lies {side} {edge:.3f}, what a slide of "
            f"{who} mitoses gave on any validation scanner: this slide's scores are unlike "
            "validation's, so the estimate and its interval may not hold")


def prior_adjusted(q: np.ndarray, prior: float, iterations: int = 200) -> float:
    """Share of positives after re-weighting calibrated ``q`` to the slide's own prevalence.

    Calibrated probabilities carry the calibration set's prevalence (``prior``) and pull every
    slide towards it. Saerens et al. (2002): alternate between the slide's share and the
    probabilities re-weighted by (share / prior) until they agree (an EM fixed point).
    """
    q = np.clip(q, _EPS, 1 - _EPS)
    share = float(q.mean())
    for _ in range(iterations):
        w_pos, w_neg = share / prior, (1 - share) / (1 - prior)
        new = float(np.mean(w_pos * q / (w_pos * q + w_neg * (1 - q))))
        if abs(new - share) < 1e-9:
            return new
        share = new
    return share


def calibrated_em(p: np.ndarray, fm: FractionModel) -> Estimate:
    n = len(p)
    method = ("calibrated probabilities re-weighted to the slide's own prevalence (EM, "
              "Saerens et al. 2002); interval adds the between-scanner error")
    if n == 0:
        return Estimate(None, None, method)
    q = calibrate(p, fm.platt_a, fm.platt_b)
    prior = float(fm.extra.get("prior", 0.224))
    value = prior_adjusted(q, prior)
    var = float(np.sum(q * (1 - q))) / n**2 + fm.shift_sd**2
    half = Z95 * math.sqrt(max(var, 1.0 / (4 * n * n)))
    return _checked(Estimate(value, _clip_interval(value, half), method,
                             outside_validation(q, fm)), p, fm)


def rogan_gladen_estimate(p: np.ndarray, fm: FractionModel) -> Estimate:
    n = len(p)
    se, sp = fm.sensitivity, fm.specificity
    method = "Rogan-Gladen with the card's sensitivity/specificity"
    if n == 0 or se is None or sp is None or se + sp <= 1:
        return Estimate(None, None, method)
    k = int(np.sum(p >= fm.threshold))
    share = k / n
    value = rogan_gladen(share, se, sp)
    ci = rogan_gladen_interval(k, n, se, fm.n_atypical, sp, fm.n_normal, Z95,
                               sens_sd=fm.sensitivity_sd, spec_sd=fm.specificity_sd)
    wilson = wilson_interval(k, n, Z95)
    warning = None
    if wilson is not None and (wilson[1] < 1 - sp or wilson[0] > se):
        # The observed share is one the card's rates cannot produce (outside [1-sp, se])
        # beyond sampling noise: the rates do not hold on this slide, so the correction is not
        # to be trusted. (Regression: without the noise allowance half the slides of a true
        # share of 0 were flagged, whatever their size.)
        warning = (f"raw share {share:.3f} (95 % {wilson[0]:.3f}-{wilson[1]:.3f}) lies outside "
                   f"[{1 - sp:.3f}, {se:.3f}], the range the card's sensitivity/specificity "
                   "allow: the correction is unreliable here; the interval is widened to "
                   "include the raw share's")
    if ci is None or ci[1] - ci[0] < 1e-9 or warning:
        lo = min(ci[0] if ci else 1.0, wilson[0] if wilson else 0.0)
        hi = max(ci[1] if ci else 0.0, wilson[1] if wilson else 1.0)
        ci = (lo, hi)
    return Estimate(value, ci, method, warning)


ESTIMATORS = {"raw": raw_share, "rogan-gladen": rogan_gladen_estimate,
              "calibrated-mean": calibrated_mean, "calibrated-em": calibrated_em}


def estimate(p: np.ndarray, fm: FractionModel, method: str | None = None) -> Estimate:
    """The slide fraction by ``method`` (default: the card's)."""
    name = method or fm.method
    if name not in ESTIMATORS:
        raise ValueError(f"unknown fraction method {name!r}; known: {', '.join(METHODS)}")
    return ESTIMATORS[name](np.asarray(p, dtype=np.float64), fm)
