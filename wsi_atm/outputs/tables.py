"""Per-candidate CSV: every candidate, classified or not, one row each.

Columns: ``id,x,y,p_atypical,label,detector_score,at_border,status,fold_std,review,
in_hotspot``. ``x``/``y`` are level-0
pixels in **OpenSlide's frame** (no bounds offset subtracted, unlike the GeoJSON), so the file
reads back as a detections CSV for the same slide. ``p_atypical``, ``label`` and ``at_border``
are empty for candidates that were not classified; ``detector_score`` is empty when the
detector gave none. ``fold_std`` is the fold models' standard deviation of p (empty with a
single network), ``review`` whether the call is flagged for review, ``in_hotspot`` whether the
candidate lies in the mitotic hotspot (both empty when not classified).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator

from wsi_atm.detections.records import SNAP_DECIMALS, snap
from wsi_atm.files import atomic_text_file
from wsi_atm.slide_result import SlideResult

CSV_COLUMNS: tuple[str, ...] = (
    "id",
    "x",
    "y",
    "p_atypical",
    "label",
    "detector_score",
    "at_border",
    "status",
    "fold_std",
    "review",
    "in_hotspot",
)


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _number(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}" if math.isfinite(value) else ""


def p_text(p: float, threshold: float, decimals: int = 3) -> str:
    """``p`` to ``decimals`` decimals, or as many more as it takes for the text to fall on the
    side of the threshold that ``p`` itself does (p = 0.3327 is not shown as 0.333 beside a
    threshold of 0.332895; p = 0.4999996 not as 0.500000 labelled normal at 0.5)."""
    if not math.isfinite(p):
        return ""
    for places in range(decimals, 17):
        text = f"{p:.{places}f}"
        if (float(text) >= threshold) == (p >= threshold):
            return text
    return repr(p)


def candidate_rows(result: SlideResult) -> Iterator[list[str]]:
    """The CSV body as strings, one list per candidate in input order."""
    cands = result.candidates
    classified = result.classified
    atypical = result.atypical
    review, hot = result.review, result.hotspot_mask
    folds = result.review_rule.folds if result.review_rule else 1
    spread = result.fold_std if result.fold_std is not None and folds > 1 else None
    for i in range(len(cands)):
        done = bool(classified[i])
        label = ("atypical" if atypical[i] else "normal") if done else ""
        yield [
            str(cands.ids[i]),
            _number(float(snap(cands.x[i])), SNAP_DECIMALS),
            _number(float(snap(cands.y[i])), SNAP_DECIMALS),
            p_text(float(result.p_atypical[i]), result.model.threshold, 6) if done else "",
            label,
            _number(float(cands.score[i]), 6),
            _flag(bool(result.at_border[i])) if done else "",
            str(result.status[i]),
            _number(float(spread[i]), 6) if done and spread is not None else "",
            _flag(bool(review[i])) if done else "",
            _flag(bool(hot[i])) if done else "",
        ]


def write_candidates_csv(result: SlideResult, path: str | os.PathLike[str]) -> None:
    """Write every candidate of ``result`` to ``path`` atomically (see the module docstring)."""
    with atomic_text_file(path) as fh:  # streamed: 50,000 rows never sit in memory at once
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows(candidate_rows(result))
