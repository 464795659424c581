"""Where a slide's crops come from: level, window and resampling (:func:`plan_crops`), one crop
(:func:`read_crop`), and where every candidate's window lies (:func:`window_origins`)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from wsi_atm.detections.records import snap
from wsi_atm.errors import OptionError
from wsi_atm.slides import Slide

DEFAULT_SIZE = 128
DEFAULT_MPP = 0.25
DEFAULT_TOLERANCE = 0.10
UPSAMPLE_WARN = 1.2
DEFAULT_TILE = 256


class UpsamplingWarning(UserWarning):
    """The slide is coarser than the target µm/px: crops are interpolated, not scanned."""


@dataclass(frozen=True)
class CropPlan:
    """Where a slide's crops come from and how they are resampled.

    ``read_size`` × ``read_height`` pixels (w × h; ``read_height`` 0: square) are read at
    ``level`` and resized to ``crop_size`` square; ``scale`` (= crop_size / read_size) is the
    x factor. ``level_mpp`` is the µm/px of the level read (mean of x and y).
    """

    level: int
    read_size: int
    scale: float
    native: bool
    upsampled: bool
    target_mpp: float
    crop_size: int
    level_mpp: float = 0.0
    read_height: int = 0

    @property
    def read_shape(self) -> tuple[int, int]:
        """(width, height) of the window read at ``level``."""
        return self.read_size, self.read_height or self.read_size

    @property
    def largest_scale(self) -> float:
        """The larger of the two axes' resize factors (> 1: that axis is upsampled). ``scale``
        is x's alone: a slide of 0.25 × 0.5 µm/px upsampled y 2× while ``scale`` said 1."""
        return self.crop_size / min(self.read_shape)

    @property
    def effective_mpp(self) -> float:
        """µm/px of the crops as produced (the target, up to rounding of ``read_size``)."""
        return self.level_mpp / self.scale if self.level_mpp else self.target_mpp


@dataclass
class CropBatch:
    """Crops (N×H×W×3 uint8), the input positions they belong to, and which touch the edge."""

    images: np.ndarray
    indices: np.ndarray
    at_border: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)


# ---------------------------------------------------------------------------- planning


def _check_options(size: int, target_mpp: float, tolerance: float) -> None:
    if not isinstance(size, int | np.integer) or size < 8:
        raise OptionError(f"crop size must be an integer of at least 8 px, got {size!r}")
    if not (math.isfinite(target_mpp) and target_mpp > 0):
        raise OptionError(f"target µm/px must be positive, got {target_mpp!r}")
    if not (math.isfinite(tolerance) and 0 <= tolerance < 1):
        raise OptionError(f"µm/px tolerance must be in [0, 1), got {tolerance!r}")


def plan_crops(
    slide: Slide,
    size: int = DEFAULT_SIZE,
    target_mpp: float = DEFAULT_MPP,
    tolerance: float = DEFAULT_TOLERANCE,
) -> CropPlan:
    """Choose the level and resampling for ``size``-px crops at ``target_mpp`` µm/px."""
    _check_options(size, target_mpp, tolerance)
    size = int(size)
    mpp0 = slide.mpp
    level = _finest_adequate_level(slide, target_mpp, tolerance)
    ds = slide.level_downsamples[level]
    level_mpp = mpp0 * ds
    square = abs(slide.mpp_xy.x / slide.mpp_xy.y - 1) <= 0.5 / size
    # the same bound as the level's choice: exactly +tolerance (0.275 for 0.25) was chosen as
    # adequate, then missed this check by a rounding error and was resampled 1.10x
    within = target_mpp * (1 - tolerance) <= level_mpp <= target_mpp * (1 + tolerance)
    if square and within:
        return CropPlan(level, size, 1.0, True, False, target_mpp, size, level_mpp)
    # Non-square pixels are always resampled, each axis to the target on its own.
    read_w = max(1, round(size * target_mpp / (slide.mpp_xy.x * ds)))
    read_h = max(1, round(size * target_mpp / (slide.mpp_xy.y * ds)))
    scale = size / read_w
    scale_max = size / min(read_w, read_h)
    upsampled = scale_max > 1
    if scale_max > UPSAMPLE_WARN:
        # non-square pixels: each axis said, not their mean (one may be read at native size)
        scanned, factor = (f"{mpp0:.3g} µm/px", f"{scale_max:.2f}×") if square else (
            f"{slide.mpp_xy.x:.3g} µm/px across and {slide.mpp_xy.y:.3g} down",
            f"{size / read_w:.2f}× across and {size / read_h:.2f}× down")
        warnings.warn(
            f"{slide.path.name}: scanned at {scanned}, coarser than the {target_mpp:g} µm/px "
            f"the crops need; crops are upsampled {factor} from level 0, so their fine detail "
            "is interpolated, not scanned",
            UpsamplingWarning,
            stacklevel=2,
        )
    read_height = 0 if read_h == read_w else read_h
    return CropPlan(level, read_w, scale, False, upsampled, target_mpp, size, level_mpp,
                    read_height)


def _finest_adequate_level(slide: Slide, target_mpp: float, tolerance: float) -> int:
    """The coarsest level whose µm/px is at most the target (within tolerance) along both
    axes, else 0 (the mean of x and y chose a level whose coarser axis was then upsampled)."""
    downsamples = slide.level_downsamples
    limit = target_mpp * (1 + tolerance)
    coarser = max(slide.mpp_xy.x, slide.mpp_xy.y)
    adequate = [level for level, ds in enumerate(downsamples) if coarser * ds <= limit]
    return max(adequate, key=lambda level: downsamples[level]) if adequate else 0


# ---------------------------------------------------------------------------- one crop


def nearest_pixel(v: float) -> int:
    """The pixel a coordinate falls nearest to, halves rounded up (floor(v + 0.5)), after
    :func:`~wsi_atm.detections.records.snap`.

    Python's round() rounds halves to even (63.5 → 64, 64.5 → 64), so the same point written
    as 270.5 in one detector format and 270.501 in another would crop 1 px apart.
    """
    return math.floor(float(snap(v)) + 0.5)


def resample(region: np.ndarray, plan: CropPlan) -> np.ndarray:
    """A read window resized to the crop (no-op when read natively)."""
    if plan.read_shape == (plan.crop_size, plan.crop_size):
        return region
    method = Image.Resampling.BICUBIC if plan.upsampled else Image.Resampling.LANCZOS
    image = Image.fromarray(region).resize((plan.crop_size, plan.crop_size), method)
    return np.asarray(image)


def read_crop(slide: Slide, x: float, y: float, plan: CropPlan) -> tuple[np.ndarray, bool]:
    """One crop (H×W×3 uint8) centred on level-0 (x, y), and whether it reaches past the edge
    (those pixels are white)."""
    origin = window_origins(slide, np.array([x], np.float64), np.array([y], np.float64), plan)
    ox, oy = origin[0].tolist()
    region = slide.read_level_region((ox, oy), plan.level, plan.read_shape)
    return resample(region, plan), bool(beyond_edge(slide, origin, plan)[0])


# ---------------------------------------------------------------------------- windows


def _tile_size(slide: Slide, level: int) -> tuple[int, int]:
    props = slide.properties
    try:
        return (
            int(props[f"openslide.level[{level}].tile-width"]),
            int(props[f"openslide.level[{level}].tile-height"]),
        )
    except (KeyError, ValueError):
        return DEFAULT_TILE, DEFAULT_TILE


def window_origins(slide: Slide, xs: np.ndarray, ys: np.ndarray, plan: CropPlan) -> np.ndarray:
    """Top-left (N×2, pixels of the plan's level) of every candidate's read window, placed so
    that the window's centre lies as near the point as the pixel grid allows. An even window's
    centre is a pixel corner, the one :func:`nearest_pixel` gives; an odd window's is a pixel's
    centre, that of the pixel the point lies in (floor(v)), not the next one, which put crops
    read at 71 or 63 px half a read pixel right and down."""
    ds = slide.level_downsamples[plan.level]
    width, height = plan.read_shape
    xs, ys = snap(xs) / ds, snap(ys) / ds
    ox = np.floor(xs + (0.5 if width % 2 == 0 else 0.0)).astype(np.int64) - width // 2
    oy = np.floor(ys + (0.5 if height % 2 == 0 else 0.0)).astype(np.int64) - height // 2
    return np.stack([ox, oy], axis=1)


def beyond_edge(slide: Slide, origins: np.ndarray, plan: CropPlan) -> np.ndarray:
    """Which windows at ``origins`` reach past the level's edge (those pixels are white)."""
    width, height = plan.read_shape
    level_w, level_h = slide.level_dimensions[plan.level]
    ox, oy = origins[:, 0], origins[:, 1]
    return np.asarray((ox < 0) | (oy < 0) | (ox + width > level_w) | (oy + height > level_h))


def tile_order(slide: Slide, xs: np.ndarray, ys: np.ndarray, plan: CropPlan) -> np.ndarray:
    """Candidate positions sorted by (tile row, tile column) of their window's top-left at the
    read level; ties keep input order."""
    tile_w, tile_h = _tile_size(slide, plan.level)
    origins = window_origins(slide, xs, ys, plan)
    return np.lexsort((np.arange(len(xs)), origins[:, 0] // tile_w,
                       origins[:, 1] // tile_h)).astype(np.int64)
