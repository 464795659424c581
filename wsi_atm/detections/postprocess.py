"""Steps every format shares: units → pixels, sanity of the extent, near-duplicate merging."""

from __future__ import annotations

import numpy as np

from wsi_atm.detections.records import MICRONS_PER_UNIT, SlideFrame

FAR_OUTSIDE = 4.0  # points reaching beyond this many slide sizes are in the wrong units
TOO_LARGE = 1.25  # a cloud reaching beyond this many slide sizes: another µm/px was assumed
TOO_SMALL = 0.6  # a cloud within this fraction of the slide: another µm/px was perhaps assumed
MIN_CLOUD = 10  # points needed before judging the cloud's size
FIT_MARGIN = 1.05


def px_per_unit(units: str, mpp: float) -> float:
    """How many level-0 pixels one ``units`` is on a slide of ``mpp`` µm/px."""
    return 1.0 if units == "px" else MICRONS_PER_UNIT[units] / mpp


def _reach(x: np.ndarray, y: np.ndarray, frame: SlideFrame) -> tuple[float, float]:
    """(largest, smallest) coordinate of the cloud in slide sizes, over both axes."""
    high = max(float(np.max(x)) / frame.width, float(np.max(y)) / frame.height)
    low = min(float(np.min(x)) / frame.width, float(np.min(y)) / frame.height)
    return high, low


def _fits(x: np.ndarray, y: np.ndarray, frame: SlideFrame) -> bool:
    high, low = _reach(x, y, frame)
    return 0.05 < high <= FIT_MARGIN and low >= -(FIT_MARGIN - 1)


def extent_warnings(x: np.ndarray, y: np.ndarray, units: str, frame: SlideFrame) -> list[str]:
    """Warnings when raw coordinates in ``units`` do not fit the slide the way they should.

    Far outside the slide → the values are really in other units (say which fit); a cloud
    reaching ~2× the slide, or filling only ~half of it, in physical units → the detector
    assumed another µm/px than the slide's.
    """
    if len(x) == 0:
        return []
    mpp = frame.detector_mpp
    scale = px_per_unit(units, mpp)
    # infinite when converted is fine here (the caller refuses it); numpy's overflow warning
    # was a second stderr line before that one-line error
    with np.errstate(over="ignore"):
        high, low = _reach(x * scale, y * scale, frame)
        fitting = [
            alt
            for alt in ("px", "um", "mm")
            if alt != units
            and _fits(x * px_per_unit(alt, mpp), y * px_per_unit(alt, mpp), frame)
        ]
    if high > FAR_OUTSIDE or low < -FAR_OUTSIDE:
        cause = (
            f"they fit the slide as {' or '.join(fitting)} values: "
            f"read them with --units {fitting[0]} (units={fitting[0]!r} in Python)"
            if fitting
            else "wrong slide, or wrong units?"
        )
        return [
            f"coordinates read as {units} reach {max(high, -low):.3g}× the slide's size "
            f"({frame.width}×{frame.height} px at {mpp:.4g} µm/px): {cause}"
        ]
    if units == "px":
        if len(x) >= 3 and high < 0.02 and fitting:
            return [
                f"all coordinates lie within {high:.2%} of the slide's size from its corner: "
                f"they look like {fitting[-1]} values: read them with --units {fitting[-1]} "
                f"(units={fitting[-1]!r} in Python)"
            ]
        return _pixel_cloud_warnings(x, y, high, frame)
    if high > TOO_LARGE:
        return [
            f"points in {units} reach {high:.2f}× the slide's size: the detector probably "
            f"assumed a coarser µm/px (about {mpp * high:.3g} or more) than the slide's "
            f"declared {mpp:.4g}"
        ]
    if len(x) >= MIN_CLOUD and 0 < high < TOO_SMALL:
        return [
            f"points in {units} fill only {high:.0%} of the slide's extent: the detector may "
            f"have assumed a finer µm/px (about {mpp * high:.3g}) than the slide's "
            f"declared {mpp:.4g}"
        ]
    return []


def _pixel_cloud_warnings(x: np.ndarray, y: np.ndarray, high: float,
                          frame: SlideFrame) -> list[str]:
    """Why pixel coordinates overrun the slide, where the cloud says: x and y exchanged (they fit
    the other way round), or pixels of another scan or level (the cloud reaches ~2× the slide).
    Regression: both only counted the candidates outside the slide, and the slide's fraction was
    computed on the few that fell inside by chance."""
    if len(x) < MIN_CLOUD or _fits(x, y, frame):
        return []
    if _fits(y, x, frame):
        return [f"the coordinates fit the slide ({frame.width}×{frame.height} px) only with x "
                "and y exchanged: are the detections' x and y columns swapped?"]
    if high > TOO_LARGE:
        return [f"pixel coordinates reach {high:.2f}× the slide's size ({frame.width}×"
                f"{frame.height} px): were they made on another scan or level of this slide "
                f"(about {frame.detector_mpp / high:.3g} µm/px or finer, where this slide's "
                f"level 0 is {frame.detector_mpp:.4g})? Pixels are read as this slide's level 0"]
    return []


def merge_duplicates(x: np.ndarray, y: np.ndarray, score: np.ndarray, radius: float) -> np.ndarray:
    """Mask of candidates kept when those within ``radius`` of a better one are merged into it.

    Greedy by score (highest first, missing scores last, ties in input order); a grid of
    ``radius``-sized cells makes each candidate compare only with kept ones in the 3×3 cells
    around it, and kept candidates are > ``radius`` apart so a cell holds at most a few:
    O(n log n) for the sort, O(n) after.
    """
    n = len(x)
    keep = np.zeros(n, dtype=bool)
    if n == 0 or radius <= 0:
        keep[:] = True
        return keep
    order = np.lexsort((np.arange(n), -np.nan_to_num(score, nan=-np.inf)))
    xl, yl = x.tolist(), y.tolist()
    # cells clipped into int64 (a point at 1e300 px warned on the cast); points that far out
    # may share a cell, and the distance test below still tells them apart
    gx = np.clip(np.floor(x / radius), -2.0**62, 2.0**62).astype(np.int64).tolist()
    gy = np.clip(np.floor(y / radius), -2.0**62, 2.0**62).astype(np.int64).tolist()
    r2 = radius * radius
    grid: dict[tuple[int, int], list[int]] = {}
    for i in order.tolist():
        xi, yi, cx, cy = xl[i], yl[i], gx[i], gy[i]
        duplicate = any(
            (xl[j] - xi) ** 2 + (yl[j] - yi) ** 2 <= r2
            for dx in (-1, 0, 1)
            for dy in (-1, 0, 1)
            for j in grid.get((cx + dx, cy + dy), ())
        )
        if not duplicate:
            keep[i] = True
            grid.setdefault((cx, cy), []).append(i)
    return keep
