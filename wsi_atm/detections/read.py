"""read_detections: recognise the file, run its reader, then the shared steps."""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import numpy as np

from wsi_atm.detections import gcpoints, geojson, midog, sliderunner, sniff, table
from wsi_atm.detections.images import ImageInfo
from wsi_atm.detections.postprocess import extent_warnings, merge_duplicates, px_per_unit
from wsi_atm.detections.records import (
    CSV,
    EMPTY,
    GC_POINTS,
    MIDOG_JSON,
    QUPATH_GEOJSON,
    SLIDERUNNER,
    CandidateOptions,
    Candidates,
    CandidateStatus,
    RawDetections,
    ReadReport,
    SlideFrame,
    snap,
)
from wsi_atm.errors import DetectionsError
from wsi_atm.faults import inject

logger = logging.getLogger("wsi_atm.detections")


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format of a detection file, from its content; ``"empty"`` for an empty file.

    Raises ``DetectionsError`` for a missing file, malformed JSON or an unknown format.
    """
    return sniff.load(path).fmt


def list_images(path: str | os.PathLike[str]) -> list[ImageInfo]:
    """The images of a multi-slide file (MIDOG JSON, SlideRunner, a table with an Image or
    slide column) with counts per label (a table's: rows)."""
    loaded = sniff.load(path)
    if loaded.fmt == MIDOG_JSON:
        return list(loaded.payload.images)
    if loaded.fmt == SLIDERUNNER:
        return sliderunner.list_slides(loaded.path)
    images = table.table_images(loaded.payload, loaded.path.name) if loaded.fmt == CSV else []
    if images:
        return images
    raise DetectionsError(
        f"{loaded.path.name}: a {loaded.fmt} file holds one slide's detections; "
        f"only {MIDOG_JSON}, {SLIDERUNNER} files and tables with an Image or slide column "
        "list images"
    )


def _raw(loaded: sniff.Loaded, frame: SlideFrame, options: CandidateOptions) -> RawDetections:
    name = loaded.path.name
    if loaded.fmt == MIDOG_JSON:
        return midog.read_midog(loaded.payload, frame, options, name)
    if loaded.fmt == GC_POINTS:
        return gcpoints.read_points(loaded.payload, name)
    if loaded.fmt == SLIDERUNNER:
        return sliderunner.read_sliderunner(loaded.path, frame, options)
    if loaded.fmt == CSV:
        return table.read_table(loaded.payload, name, frame.name, options.image)
    if loaded.fmt == QUPATH_GEOJSON:
        return geojson.read_geojson(loaded.payload, name, frame.mpp)
    if loaded.fmt != EMPTY:  # pragma: no cover - sniff only yields known formats
        raise AssertionError(f"no reader for format {loaded.fmt!r}")
    empty = RawDetections.build([], [], [], [], [], [])
    empty.warnings.append("the detection file is empty: no candidates")
    return empty


def _check_finite(raw: RawDetections, name: str, when: str = "") -> None:
    bad = np.flatnonzero(~(np.isfinite(raw.x) & np.isfinite(raw.y)))
    if len(bad):
        i = int(bad[0])
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise DetectionsError(
            f"{name}: non-finite coordinates (x={raw.x[i]}, y={raw.y[i]}){when} in "
            f"{raw.where(i)}{more}"
        )


def _check_units(raw: RawDetections, asked: str | None, name: str) -> None:
    """Refuse a units option that contradicts the units the file's columns name.

    Regression: --units px on a table with x_um,y_um columns read microns as pixels without a
    word, and every crop was cut at half the distance from the slide's corner.
    """
    if asked is not None and raw.units_declared and asked != raw.units:
        raise DetectionsError(
            f"{name}: its coordinate columns are in {raw.units}, but the units option says "
            f"{asked}: drop --units (units= in Python) for this file"
        )


def read_detections(
    path: str | os.PathLike[str],
    frame: SlideFrame,
    options: CandidateOptions | None = None,
) -> Candidates:
    """Candidates for the slide ``frame`` from a detection file of any supported format.

    Coordinates end in level-0 px of OpenSlide's frame. Imposters are dropped unless asked for,
    then candidates under ``min_score`` (those without a score stay), then near-duplicates
    within ``merge_radius_um`` merge into the higher-scored one; candidates outside the slide
    stay with status ``outside_slide``. ``report`` counts each step and carries warnings.
    """
    options = options or CandidateOptions()
    inject("detections")
    loaded = sniff.load(path)
    name = loaded.path.name
    raw = _raw(loaded, frame, options)
    _check_finite(raw, name)
    _check_units(raw, options.units, name)
    units = options.units or raw.units
    report = ReadReport(
        rows_read=len(raw),
        skipped=raw.skipped,
        image=raw.image,
        units=units,
        warnings=list(raw.warnings),
    )
    report.warnings += extent_warnings(raw.x, raw.y, units, frame)
    if options.image and raw.image is None:
        report.warnings.append(f"the image option ({options.image!r}) is ignored: the file "
                               "names no images")

    mpp_x, mpp_y = frame.detector_mpp_xy
    with np.errstate(over="ignore"):
        x, y = raw.x * px_per_unit(units, mpp_x), raw.y * px_per_unit(units, mpp_y)
    if raw.qupath_frame:
        x, y = x + frame.bounds_offset[0], y + frame.bounds_offset[1]
    # Regression: finite millimetres beyond 1e304 became infinite pixels, written as an empty
    # cell to a CSV that is meant to read back as detections
    _check_finite(replace(raw, x=x, y=y), name, f" after conversion from {units} to px")

    keep = np.ones(len(raw), dtype=bool)
    if not options.include_imposters:
        report.excluded_imposters = int(np.count_nonzero(raw.imposter))
        keep &= ~raw.imposter
    if options.min_score is not None:
        below = keep & (raw.score < options.min_score)  # NaN (no score) compares False: kept
        report.below_min_score = int(np.count_nonzero(below))
        keep &= ~below
        if len(raw) and not np.isfinite(raw.score).any():
            report.warnings.append(
                f"min score {options.min_score:g} has no effect: the file gives no candidate "
                "a score"
            )
    idx = np.flatnonzero(keep)
    if options.merge_radius_um > 0:
        kept = merge_duplicates(x[idx], y[idx], raw.score[idx], options.merge_radius_um / frame.mpp)
        report.merged_duplicates = int(np.count_nonzero(~kept))
        idx = idx[kept]
        if report.merged_duplicates:
            report.warnings.append(
                f"merged {report.merged_duplicates} near-duplicate candidate(s) within "
                f"{options.merge_radius_um:g} µm of a higher-scored one"
            )

    # Snapped here, once (+ 0.0 turns -0.0 into 0.0): the inside test, the crops and every
    # output then see one coordinate (767.99999 was classified inside a 768-px slide but
    # written as 768.0000, outside when read back)
    x, y = snap(x[idx]) + 0.0, snap(y[idx]) + 0.0
    inside = (x >= 0) & (x < frame.width) & (y >= 0) & (y < frame.height)
    report.outside_slide = int(np.count_nonzero(~inside))
    if report.outside_slide:
        report.warnings.append(
            f"{report.outside_slide} of {len(idx)} candidate(s) lie outside the slide's "
            f"{frame.width}×{frame.height} px (kept with status outside_slide)"
        )
    for message in report.warnings:
        logger.warning("%s: %s", name, message)
    return Candidates(
        ids=np.array([raw.ids[i] for i in idx], dtype=object),
        x=x.astype(np.float64),
        y=y.astype(np.float64),
        score=raw.score[idx].astype(np.float64),
        label=np.array([raw.label[i] for i in idx], dtype=object),
        status=np.where(inside, CandidateStatus.OK.value,
                        CandidateStatus.OUTSIDE_SLIDE.value).astype(object),
        source=loaded.fmt,
        report=report,
    )
