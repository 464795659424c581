"""Tissue area from the slide thumbnail: Otsu's threshold on HSV saturation.

Glass and background are bright and grey (low saturation); H&E-stained tissue is pink to
purple (high saturation). Otsu's method picks the saturation cut that best separates the two
from the thumbnail's histogram; the cut is never taken below ``MIN_SATURATION`` so that a slide
that is nearly all background (or nearly all tissue) does not turn noise into tissue. Pale
stroma and small gaps inside tissue fall below the cut pixel by pixel, so the mask is closed
(two 3×3 dilations then erosions) and its holes filled: lumens and fat enclosed by tissue
count as tissue, as they do in a pathologist's tissue area. Pen marks, folds and bubbles that
are saturated count as tissue too: the area is an estimate, stated with the thumbnail size
and the cut it used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

MIN_SATURATION = 20  # of 255: below this a pixel is never tissue


@dataclass(frozen=True)
class Tissue:
    area_mm2: float
    fraction: float  # share of the slide's area
    saturation_cut: int  # of 255
    thumbnail_size: tuple[int, int]  # (width, height) px the mask was computed on


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (0–255) of an H×W×3 uint8 image; black counts as unsaturated."""
    data = np.asarray(rgb)[..., :3].astype(np.int32)
    hi, lo = data.max(axis=2), data.min(axis=2)
    sat = np.zeros(hi.shape, dtype=np.int32)
    np.floor_divide((hi - lo) * 255, hi, out=sat, where=hi > 0)
    return sat.astype(np.uint8)


def otsu_threshold(values: np.ndarray) -> int:
    """The uint8 cut ``t`` maximising between-class variance of ``values <= t`` vs ``> t``."""
    hist = np.bincount(np.asarray(values, dtype=np.uint8).ravel(), minlength=256).astype(float)
    total = hist.sum()
    if total == 0:
        return 0
    levels = np.arange(256, dtype=float)
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * levels)
    w1 = total - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (m0[-1] * w0 - total * m0) ** 2 / (w0 * w1)
    between[(w0 == 0) | (w1 == 0)] = -1.0
    return int(np.argmax(between))


def tissue_mask(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    """Boolean tissue mask of a thumbnail and the saturation cut used."""
    sat = saturation(rgb)
    cut = max(otsu_threshold(sat), MIN_SATURATION)
    pad = 2  # edge-padded, so tissue running off the thumbnail is not eroded at the border
    raw = np.pad(sat > cut, pad, mode="edge")
    closed = ndimage.binary_closing(raw, iterations=2)[pad:-pad, pad:-pad]
    return np.asarray(ndimage.binary_fill_holes(closed), dtype=bool), cut


def tissue_area(rgb: np.ndarray, slide_size_um: tuple[float, float]) -> Tissue:
    """Tissue area of a slide from its whole-slide thumbnail ``rgb``.

    ``slide_size_um`` is the slide's level-0 (width, height) in µm.
    """
    mask, cut = tissue_mask(rgb)
    fraction = float(mask.mean()) if mask.size else 0.0
    area = fraction * slide_size_um[0] * slide_size_um[1] / 1e6
    h, w = mask.shape[:2]
    return Tissue(area_mm2=area, fraction=fraction, saturation_cut=cut, thumbnail_size=(w, h))
