"""Cohort outputs of a batch: ``cohort.csv`` (one row per slide), ``cohort.png`` and
``report.html`` (see :mod:`wsi_atm.batch.report`)."""

from __future__ import annotations

import csv
import io
import os
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont

from wsi_atm.batch.plan import COHORT_FILES, SlideStatus
from wsi_atm.batch.report import write_report
from wsi_atm.files import atomic_path, atomic_write_text, printable

if TYPE_CHECKING:
    from wsi_atm.batch.plan import Outcome

COLUMNS = ("slide", "detections", "status", "candidates", "classified", "atypical", "normal",
           "atypical_fraction", "fraction_ci95_low", "fraction_ci95_high",
           "atypical_fraction_corrected", "corrected_ci95_low", "corrected_ci95_high",
           "corrected_method", "corrected_warning", "atypical_to_normal_ratio",
           "hotspot_area_mm2", "hotspot_mitoses", "hotspot_atypical", "hotspot_atypical_fraction",
           "hotspot_fraction_ci95_low", "hotspot_fraction_ci95_high", "hotspot_center_x",
           "hotspot_center_y", "tissue_mm2", "mitoses_per_mm2",
           "atypical_per_mm2", "review_flagged", "warnings", "elapsed_s", "error")
# The summary's warnings in one cell: the caveats on this row's numbers (upsampled crops, a
# hotspot larger than the tissue, every candidate outside the slide ...), which report.html
# and the review picture show and the table had dropped.
WARNINGS_SEP = " | "


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.6f}" if isinstance(value, float) else str(value)


def absolute(path: Path) -> str:
    """``path`` absolute and without "..": its folder resolved where it holds one, since
    "link/../x" is the link target's sibling, not "x" (regression: a manifest in a linked folder
    naming "../slides/a.svs" was listed as another, or no, file); else only made absolute,
    keeping the names the user gave."""
    if ".." not in path.parts:
        return os.path.abspath(path)
    return os.path.join(os.path.realpath(path.parent), path.name)


def cohort_row(o: Outcome) -> dict[str, str]:
    s = o.summary
    counts = s.get("counts", {})
    frac = s.get("atypical_fraction") or {}
    corrected = s.get("atypical_fraction_corrected") or {}
    hot = s.get("hotspot") or {}
    tissue = s.get("tissue") or {}
    center = hot.get("center_px") or [None, None]
    ci = frac.get("ci95") or [None, None]
    cci = corrected.get("ci95") or [None, None]
    hci = (hot.get("atypical_fraction") or {}).get("ci95") or [None, None]
    # skipped: the time of the run that made the outputs; not run: blank
    elapsed = s.get("elapsed_s") if o.status == SlideStatus.SKIPPED else (o.elapsed_s or None)
    row = {
        # absolute and normalised: relative to the batch's working directory (or a
        # manifest's "../" kept) they named nothing once read from elsewhere
        "slide": printable(absolute(o.job.slide)),
        "detections": printable(absolute(o.job.detections)) if o.job.detections else "",
        "status": o.status,
        "candidates": counts.get("candidates"), "classified": counts.get("classified"),
        "atypical": counts.get("atypical"), "normal": counts.get("normal"),
        "atypical_fraction": frac.get("value"), "fraction_ci95_low": ci[0],
        "fraction_ci95_high": ci[1], "atypical_fraction_corrected": corrected.get("value"),
        "corrected_ci95_low": cci[0], "corrected_ci95_high": cci[1],
        "corrected_method": corrected.get("method"), "corrected_warning": corrected.get("warning"),
        "atypical_to_normal_ratio": s.get("atypical_to_normal_ratio"),
        "hotspot_area_mm2": hot.get("area_mm2"), "hotspot_mitoses": hot.get("mitoses"),
        "hotspot_atypical": hot.get("atypical"),
        "hotspot_atypical_fraction": (hot.get("atypical_fraction") or {}).get("value"),
        "hotspot_fraction_ci95_low": hci[0], "hotspot_fraction_ci95_high": hci[1],
        "hotspot_center_x": center[0], "hotspot_center_y": center[1],
        "tissue_mm2": tissue.get("area_mm2"), "mitoses_per_mm2": tissue.get("mitoses_per_mm2"),
        "atypical_per_mm2": tissue.get("atypical_per_mm2"),
        "review_flagged": counts.get("review"),
        "warnings": WARNINGS_SEP.join(str(w) for w in s.get("warnings") or []) or None,
        "elapsed_s": round(elapsed, 3) if isinstance(elapsed, float) else elapsed,
        "error": o.error,
    }
    return {k: _fmt(v) for k, v in row.items()}


def write_cohort(outcomes: list[Outcome], out_dir: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(cohort_row(o) for o in outcomes)
    table, histogram, _ = (out_dir / name for name in COHORT_FILES)
    atomic_write_text(table, buf.getvalue())
    raw = [o.summary["atypical_fraction"]["value"] for o in outcomes
           if o.summary.get("atypical_fraction")]
    headline = [o.summary["atypical_fraction_corrected"]["value"] for o in outcomes
                if (o.summary.get("atypical_fraction_corrected") or {}).get("value") is not None]
    # The headline estimate when every slide with calls has one; a mix would mislead.
    use_headline = bool(headline) and len(headline) == len(raw)
    label = ("estimated true atypical share per slide" if use_headline
             else "atypical / (atypical + normal) per slide")
    with atomic_path(histogram) as tmp:
        draw_histogram(headline if use_headline else raw, len(outcomes), label=label).save(
            tmp, format="PNG")
    write_report(outcomes, out_dir)  # last: it links the histogram and each slide's files


def draw_histogram(fractions: list[float], n_slides: int, bins: int = 20,
                   label: str = "atypical / (atypical + normal) per slide") -> Image.Image:
    """Distribution of the atypical fraction across slides (PIL only)."""
    w, h, left, bottom, top = 720, 440, 70, 60, 70
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=14)
    counts = [0] * bins
    for f in fractions:
        counts[min(int(f * bins), bins - 1)] += 1
    peak = max([*counts, 1])
    plot_w, plot_h = w - left - 30, h - top - bottom
    d.text((left, 15), f"Atypical fraction across slides ({len(fractions)} of {n_slides} "
           "slides with classified mitoses)", fill="black", font=font)
    d.line([(left, top), (left, top + plot_h), (left + plot_w, top + plot_h)], fill="black")
    for i, c in enumerate(counts):
        x0 = left + i * plot_w / bins
        bar_h = plot_h * c / peak
        d.rectangle([x0 + 1, top + plot_h - bar_h, x0 + plot_w / bins - 1, top + plot_h],
                    fill=(220, 20, 60))
    for t in range(0, 11, 2):
        x = left + plot_w * t / 10
        d.line([(x, top + plot_h), (x, top + plot_h + 5)], fill="black")
        d.text((x - 12, top + plot_h + 8), f"{t * 10}%", fill="black", font=font)
    for t in range(peak + 1) if peak <= 10 else range(0, peak + 1, max(1, peak // 5)):
        y = top + plot_h - plot_h * t / peak
        d.text((left - 30, y - 8), str(t), fill="black", font=font)
    d.text((left + plot_w / 2 - 120, h - 25), label,
           fill="black", font=font)
    d.text((12, top - 30), "slides", fill="black", font=font)
    if fractions:
        median = statistics.median(fractions)
        x = left + plot_w * median
        for y in range(top, top + plot_h, 8):
            d.line([(x, y), (x, y + 4)], fill=(40, 40, 40), width=2)
        d.text((x + 4, top - 16), f"median {median:.0%}", fill=(40, 40, 40), font=font)
    return img
