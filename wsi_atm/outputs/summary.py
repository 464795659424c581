"""Per-slide summary JSON: counts, the atypical share with its uncertainty, and provenance."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import asdict, is_dataclass
from pathlib import PurePath
from typing import Any

import numpy as np

from wsi_atm import __version__
from wsi_atm.crops import UPSAMPLE_WARN
from wsi_atm.files import atomic_write_text
from wsi_atm.fraction.estimators import Estimate, FractionModel, calibrated_model, estimate
from wsi_atm.fraction.stats import Z95, wilson_interval
from wsi_atm.slide_result import ModelMeta, SlideResult
from wsi_atm.slides.mpp import override_warning

SUMMARY_VERSION = 1

NOTES = {
    "atypical_fraction": (
        "raw: share of classified candidates the classifier called atypical "
        "(atypical / (atypical + normal)); biased by the classifier's errors. "
        "ci95 is the Wilson score interval of that share."
    ),
    "atypical_fraction_corrected": (
        "headline estimate of the true atypical share, by the card's [fraction] method: "
        "'calibrated-mean' is the mean of Platt-calibrated probabilities, calibrated on "
        "leave-scanner-out predictions, its ci95 adding the between-scanner error measured "
        "there (it is pulled towards the training share, 0.22: see the README); without a "
        "[fraction] table, Rogan-Gladen with the card's sensitivity and specificity "
        "(delta-method ci95, with their spread between folds when the card has it). A "
        "'warning' says when the estimate may not hold: a raw share the card's rates cannot "
        "produce beyond sampling noise (the interval is then widened, never collapsed), a "
        "mean calibrated probability outside what its validation scanners gave, or calls "
        "showing a true share above the 0.5 the calibration was validated at (the interval "
        "then takes in the Rogan-Gladen one). null when the run's "
        "operating point (--threshold for Rogan-Gladen, --tta for both) is not the card's."
    ),
    "atypical_to_normal_ratio": "atypical / normal calls; null when there are no normal calls.",
    "hotspot": (
        "the circular field of area_mm2 (centred anywhere) holding the most classified "
        "mitoses, then the most atypical ones; exact maximum over all centres. center_px is "
        "OpenSlide's frame, center_qupath_px QuPath's. ci95 of its fraction: Wilson."
    ),
    "tissue": (
        "tissue area from the whole-slide thumbnail: HSV saturation above Otsu's cut "
        "(never below 20/255); pen marks and folds count as tissue. Densities are classified "
        "mitoses (and atypical calls) per mm² of that area."
    ),
    "review": (
        "a classified call is flagged when |p_atypical - threshold| <= band or, with more "
        "than one fold model, the fold models' standard deviation of p >= fold_std"
    ),
    "coordinates": (
        "CSV x/y are level-0 px in OpenSlide's frame; GeoJSON coordinates have the slide's "
        "bounds_offset subtracted (the frame QuPath shows)."
    ),
}


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON types; NaN and infinities become None (JSON has neither)."""
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, PurePath):
        return str(value)
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def _counts(result: SlideResult) -> dict[str, Any]:
    classified = result.classified
    skipped = Counter(str(s) for s in result.status[~classified])
    return {
        "candidates": len(result.candidates),
        "classified": int(np.count_nonzero(classified)),
        "skipped": dict(sorted(skipped.items())),
        "atypical": int(np.count_nonzero(result.atypical)),
        "normal": int(np.count_nonzero(result.normal)),
        "at_border": int(np.count_nonzero(classified & result.at_border.astype(bool))),
        "review": int(np.count_nonzero(result.review)),
    }


def _hotspot(result: SlideResult) -> dict[str, Any] | None:
    h = result.hotspot
    if h is None:
        return None
    dx, dy = result.slide.bounds_offset
    fraction = _fraction(h.atypical, h.mitoses - h.atypical)
    return {
        "area_mm2": h.area_mm2,
        "radius_um": h.radius_um,
        "mitoses": h.mitoses,
        "atypical": h.atypical,
        "normal": h.mitoses - h.atypical,
        "atypical_fraction": fraction,
        # False: the mitoses were spread so evenly that the search stopped with this field
        # and a proven ceiling (no field of this area holds more than mitoses_upper_bound)
        "exact": h.exact,
        "mitoses_upper_bound": max(h.mitoses, h.mitoses_bound),
        "center_px": [h.center_px[0], h.center_px[1]],
        "center_qupath_px": [h.center_px[0] - dx, h.center_px[1] - dy],
    }


def _per_mm2(count: int, area: float) -> float | None:
    return count / area if area > 0 else None


def _tissue(result: SlideResult, counts: dict[str, Any]) -> dict[str, Any] | None:
    t = result.tissue
    if t is None:
        return None
    return {
        "area_mm2": t.area_mm2,
        "fraction_of_slide": t.fraction,
        "saturation_cut": t.saturation_cut,
        "thumbnail_px": list(t.thumbnail_size),
        "mitoses_per_mm2": _per_mm2(counts["classified"], t.area_mm2),
        "atypical_per_mm2": _per_mm2(counts["atypical"], t.area_mm2),
    }


def _review(result: SlideResult) -> dict[str, Any] | None:
    rule = result.review_rule
    if rule is None:
        return None
    return {"flagged": int(np.count_nonzero(result.review)), "band": rule.band,
            "fold_std": rule.fold_std if rule.folds > 1 else None, "folds": rule.folds}


def _slide(result: SlideResult) -> dict[str, Any]:
    s = result.slide
    warning = None
    if s.resample_factor > UPSAMPLE_WARN:
        x, y = s.mpp_xy
        scanned = (f"{s.mpp:.3f} µm/px" if abs(x / y - 1) < 1e-3
                   else f"{x:.3f} µm/px across, {y:.3f} down")  # not their mean
        warning = (
            f"crops were upsampled {s.resample_factor:.2f}x: the slide ({scanned}) is "
            "coarser than the model's input; calls on blurred crops are less reliable"
        )
    return {
        "path": s.path,
        "name": s.name,
        "backend": s.backend,
        "pixel_reader": s.pixel_reader or s.backend,
        "mpp": s.mpp,
        "mpp_x": s.mpp_xy[0],
        "mpp_y": s.mpp_xy[1],
        "mpp_source": s.mpp_source,
        "mpp_warning": override_warning(s.detections_mpp, s.mpp, s.mpp_source),
        "detections_mpp": s.detections_mpp,
        "detections_mpp_note": "µm/px used to convert detections given in µm or mm: the "
                               "slide's declared spacing (the detector's), even under --mpp; "
                               "the --mpp value where the slide declares none",
        "width": s.width,
        "height": s.height,
        "bounds_offset": list(s.bounds_offset),
        "bounds_offset_note": (
            "GeoJSON coordinates are OpenSlide level-0 px minus bounds_offset (QuPath's frame)"
        ),
        "crop_level": s.crop_level,
        "resample_factor": s.resample_factor,
        "upsampled": bool(s.upsampled or s.resample_factor > UPSAMPLE_WARN),
        "upsample_warning": warning,
    }


def _detections(result: SlideResult) -> dict[str, Any]:
    cands = result.candidates
    return {
        "path": result.detections_path,
        "sha256": result.detections_sha256,
        "format": cands.source,
        "options": result.candidate_options,
        "report": cands.report,
    }


def _model(result: SlideResult) -> dict[str, Any]:
    m = result.model
    return {
        "name": m.name,
        "card_path": m.card_path,
        "weights_sha256": list(m.weights_sha256),
        "threshold": m.threshold,
        "tta": m.tta,
        "engine": m.engine,
        "precision": m.precision,
        "sensitivity": m.sensitivity,
        "specificity": m.specificity,
        "n_atypical": m.n_atypical,
        "n_normal": m.n_normal,
    }


def _fraction(atypical: int, normal: int) -> dict[str, Any] | None:
    ci = wilson_interval(atypical, atypical + normal, Z95)
    if ci is None:
        return None
    return {
        "value": atypical / (atypical + normal),
        "ci95": list(ci),
        "method": "Wilson score",
        "k": atypical,
        "n": atypical + normal,
    }


CALIBRATED = ("calibrated-mean", "calibrated-em")


def corrected_estimate(result: SlideResult) -> Estimate | None:
    """The headline estimate of the slide's true atypical share, or None when none applies.

    The card's ``[fraction]`` method when it has one (fitted on out-of-domain predictions);
    otherwise Rogan-Gladen with the card's sensitivity/specificity, which flags and widens a
    share those rates cannot produce.
    """
    m = result.model
    p = np.asarray(result.p_atypical[result.classified], dtype=np.float64)
    if len(p) == 0:
        return None
    f = m.fraction
    if f.get("method") == "raw":  # the card says no correction holds: the raw share it is
        return estimate(p, FractionModel(threshold=m.threshold, method="raw"))
    if f.get("method") in CALIBRATED:
        fm = calibrated_model(f, m.threshold, m.card_rates)
        return estimate(p, fm)
    if m.sensitivity is None or m.specificity is None:
        return None
    est = estimate(p, FractionModel(threshold=m.threshold, method="rogan-gladen", **_rates(m)))
    return est if est.value is not None else None


def _rates(m: ModelMeta) -> dict[str, Any]:
    return {"sensitivity": m.sensitivity, "specificity": m.specificity,
            "n_atypical": m.n_atypical, "n_normal": m.n_normal,
            "sensitivity_sd": m.sensitivity_sd or 0.0, "specificity_sd": m.specificity_sd or 0.0}


def _corrected(result: SlideResult) -> dict[str, Any] | None:
    est = corrected_estimate(result)
    if est is None:
        return None
    out = est.as_dict()
    m = result.model
    if m.fraction.get("method") == "raw":
        return out
    if m.fraction.get("method") in CALIBRATED:
        out.update({k: m.fraction.get(k) for k in ("platt_a", "platt_b", "shift_sd", "q_normal",
                                                   "q_atypical", "source") if k in m.fraction})
        return out
    exact = [
        name
        for name, k in (("sensitivity", m.n_atypical), ("specificity", m.n_normal))
        if k is None
    ]
    out["method"] = ("Rogan-Gladen; delta-method interval incl. sensitivity/specificity "
                     "uncertainty")
    if exact:
        out["method"] += f" ({' and '.join(exact)} taken as exact: sample size unknown)"
    if m.sensitivity_sd or m.specificity_sd:
        out["method"] += " and their spread between cross-validation folds"
    else:
        out["method"] += (" (the card gives no spread of the rates between folds or scanners: "
                          "on other data the error can be larger than this interval)")
    out.update({"sensitivity": m.sensitivity, "specificity": m.specificity,
                "n_atypical": m.n_atypical, "n_normal": m.n_normal,
                "sensitivity_sd": m.sensitivity_sd, "specificity_sd": m.specificity_sd})
    return out


def chance_reason(result: SlideResult) -> str | None:
    """:func:`no_better_than_chance` for a slide with calls to correct (none without them):
    the summary's warning, and the picture's and console's word on the missing estimate."""
    return no_better_than_chance(result.model) if result.classified.any() else None


def no_better_than_chance(m: ModelMeta) -> str | None:
    """Why a Rogan-Gladen card gives no corrected estimate, where its own rates are the reason
    (the summary's note blames a changed operating point, which this is not)."""
    if m.fraction.get("method", "rogan-gladen") != "rogan-gladen":  # a card naming it too
        return None
    if m.sensitivity is None or m.specificity is None:
        return None
    if m.sensitivity + m.specificity > 1:
        return None
    return (f"the card's sensitivity {m.sensitivity:.3f} and specificity {m.specificity:.3f} "
            "sum to 1 or less: its calls are no better than chance at this threshold, so no "
            "corrected estimate exists, and the raw share says nothing of the true one")


def build_summary(result: SlideResult,
                  timings: dict[str, float] | None = None) -> dict[str, Any]:
    """The summary of one slide as plain JSON types (safe for ``allow_nan=False``)."""
    counts = _counts(result)
    atypical, normal = counts["atypical"], counts["normal"]
    slide = _slide(result)
    warnings = [w for w in (slide["upsample_warning"], slide["mpp_warning"]) if w]
    warnings += list(result.candidates.report.warnings)
    h, t = result.hotspot, result.tissue
    if h is not None and t is not None and h.area_mm2 > t.area_mm2:
        found = (f"the tissue found ({t.area_mm2:.3g} mm²)" if t.area_mm2 > 0
                 else "the tissue, of which the thumbnail shows none")
        warnings.append(
            f"the hotspot field ({h.area_mm2:g} mm²) is larger than {found}: its count is "
            "close to the whole slide's, not a hotspot")
    if h is not None and not h.exact:
        warnings.append(
            f"the hotspot search stopped early (the mitoses are spread evenly): its field holds "
            f"{h.mitoses} mitoses, and no field of {h.area_mm2:g} mm² holds more than "
            f"{max(h.mitoses, h.mitoses_bound)}")
    chance = chance_reason(result)
    if chance:
        warnings.append(chance)
    summary = {
        "summary_version": SUMMARY_VERSION,
        "package_version": result.package_version or __version__,
        "slide": slide,
        "detections": _detections(result),
        "model": _model(result),
        "counts": counts,
        "atypical_fraction": _fraction(atypical, normal),
        "atypical_fraction_corrected": _corrected(result),
        "atypical_to_normal_ratio": atypical / normal if normal else None,
        "hotspot": _hotspot(result),
        "tissue": _tissue(result, counts),
        "review": _review(result),
        "notes": NOTES,
        "warnings": warnings,
        "elapsed_s": result.elapsed_s,
        "timings_s": result.timings if timings is None else timings,
    }
    out: dict[str, Any] = _jsonable(summary)
    return out


def write_summary(result: SlideResult, path: str | os.PathLike[str],
                  timings: dict[str, float] | None = None) -> dict[str, Any]:
    """Write :func:`build_summary` to ``path`` atomically; returns the summary written."""
    summary = build_summary(result, timings)
    text = json.dumps(summary, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    atomic_write_text(path, text)
    return summary
