"""The crop engine: square crops at a target µm/px, centred on candidates, streamed in batches.

Planning (:func:`plan_crops`) decides once per slide where crops come from:

- level 0 within ``tolerance`` of the target µm/px, square pixels: read natively, no
  resampling, so a crop equals the slide pixels of its window ``[floor(x + 0.5) - size//2,
  +size)``;
- non-square pixels (x and y µm/px differ by more than half a pixel over the crop): a
  rectangular window, each side at the target, resized to the square crop;
- finer than the target: the coarsest level still at least as fine as the target (a level
  within tolerance is read natively), then downsampled with an antialiasing Lanczos filter;
- coarser than the target (20× scans at ~0.5 µm/px): upsampled from level 0 with a bicubic
  filter; the plan says so (``upsampled``) and more than ~1.2× raises an
  :class:`UpsamplingWarning`.

Streaming (:func:`stream_crops`) sorts candidates by the tile their window starts in at the
read level (row, then column), so neighbouring candidates reuse OpenSlide's tile cache, and
reads them with a thread pool over the one slide handle. At most about ``prefetch + 2``
batches are in memory; batches come out in tile order, and ``CropBatch.indices`` says which
input candidate each crop is. The order, and so every batch, is the same for any worker count.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from wsi_atm.errors import OptionError
from wsi_atm.faults import inject
from wsi_atm.slides import Slide

DEFAULT_SIZE = 128
DEFAULT_MPP = 0.25
DEFAULT_TOLERANCE = 0.10
UPSAMPLE_WARN = 1.2
DEFAULT_TILE = 256
_CHUNK = 8  # crops per worker task


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
    if square and abs(level_mpp / target_mpp - 1) <= tolerance:
        return CropPlan(level, size, 1.0, True, False, target_mpp, size, level_mpp)
    # Non-square pixels are always resampled, each axis to the target on its own.
    read_w = max(1, round(size * target_mpp / (slide.mpp_xy.x * ds)))
    read_h = max(1, round(size * target_mpp / (slide.mpp_xy.y * ds)))
    scale = size / read_w
    scale_max = size / min(read_w, read_h)
    upsampled = scale_max > 1
    if scale_max > UPSAMPLE_WARN:
        warnings.warn(
            f"{slide.path.name}: scanned at {mpp0:.3g} µm/px, coarser than the {target_mpp:g} "
            f"µm/px the crops need; crops are upsampled {scale_max:.2f}× from level 0, so their "
            "fine detail is interpolated, not scanned",
            UpsamplingWarning,
            stacklevel=2,
        )
    read_height = 0 if read_h == read_w else read_h
    return CropPlan(level, read_w, scale, False, upsampled, target_mpp, size, level_mpp,
                    read_height)


def _finest_adequate_level(slide: Slide, target_mpp: float, tolerance: float) -> int:
    """The coarsest level whose µm/px is at most the target (within tolerance), else 0."""
    downsamples = slide.level_downsamples
    limit = target_mpp * (1 + tolerance)
    adequate = [level for level, ds in enumerate(downsamples) if slide.mpp * ds <= limit]
    return max(adequate, key=lambda level: downsamples[level]) if adequate else 0


# ---------------------------------------------------------------------------- one crop


def _origin(slide: Slide, plan: CropPlan, x: float, y: float) -> tuple[int, int]:
    """Top-left of the read window, in pixels of the plan's level."""
    ds = slide.level_downsamples[plan.level]
    width, height = plan.read_shape
    return nearest_pixel(x / ds) - width // 2, nearest_pixel(y / ds) - height // 2


def nearest_pixel(v: float) -> int:
    """The pixel a coordinate falls nearest to, halves rounded up (floor(v + 0.5)).

    Python's round() rounds halves to even (63.5 → 64, 64.5 → 64), so the same point written
    as 270.5 in one detector format and 270.501 in another would crop 1 px apart.
    """
    return math.floor(v + 0.5)


def _resample(region: np.ndarray, plan: CropPlan) -> np.ndarray:
    if plan.read_shape == (plan.crop_size, plan.crop_size):
        return region
    method = Image.Resampling.BICUBIC if plan.upsampled else Image.Resampling.LANCZOS
    image = Image.fromarray(region).resize((plan.crop_size, plan.crop_size), method)
    return np.asarray(image)


def _window(slide: Slide, plan: CropPlan, x: float, y: float) -> tuple[int, int, bool]:
    """Top-left of the read window at the plan's level, and whether it reaches past the edge."""
    ox, oy = _origin(slide, plan, x, y)
    width, height = plan.read_shape
    level_w, level_h = slide.level_dimensions[plan.level]
    return ox, oy, ox < 0 or oy < 0 or ox + width > level_w or oy + height > level_h


def read_crop(slide: Slide, x: float, y: float, plan: CropPlan) -> tuple[np.ndarray, bool]:
    """One crop (H×W×3 uint8) centred on level-0 (x, y), and whether it reaches past the edge
    (those pixels are white)."""
    ox, oy, at_border = _window(slide, plan, x, y)
    region = slide.read_level_region((ox, oy), plan.level, plan.read_shape)
    return _resample(region, plan), at_border


# ---------------------------------------------------------------------------- streaming


def _tile_size(slide: Slide, level: int) -> tuple[int, int]:
    props = slide.properties
    try:
        return (
            int(props[f"openslide.level[{level}].tile-width"]),
            int(props[f"openslide.level[{level}].tile-height"]),
        )
    except (KeyError, ValueError):
        return DEFAULT_TILE, DEFAULT_TILE


def tile_order(slide: Slide, xs: np.ndarray, ys: np.ndarray, plan: CropPlan) -> np.ndarray:
    """Candidate positions sorted by (tile row, tile column) of their window's top-left at the
    read level; ties keep input order."""
    ds = slide.level_downsamples[plan.level]
    tile_w, tile_h = _tile_size(slide, plan.level)
    width, height = plan.read_shape
    ox = np.floor(xs / ds + 0.5).astype(np.int64) - width // 2  # the rule of nearest_pixel
    oy = np.floor(ys / ds + 0.5).astype(np.int64) - height // 2
    return np.lexsort((np.arange(len(xs)), ox // tile_w, oy // tile_h)).astype(np.int64)


def _coordinates(xs: Any, ys: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(xs, dtype=np.float64).reshape(-1)
    y = np.asarray(ys, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise OptionError(f"got {len(x)} x but {len(y)} y coordinates")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise OptionError("candidate coordinates must be finite numbers")
    return x, y


def _read_chunk(
    slide: Slide, xs: np.ndarray, ys: np.ndarray, idx: np.ndarray, plan: CropPlan
) -> tuple[np.ndarray, np.ndarray]:
    size = plan.crop_size
    images = np.empty((len(idx), size, size, 3), np.uint8)
    border = np.empty(len(idx), bool)
    native = plan.read_shape == (size, size)
    for k, i in enumerate(idx):
        inject("crop")
        if native:  # straight into the batch: the hot path of a 0.25 µm/px slide
            ox, oy, border[k] = _window(slide, plan, float(xs[i]), float(ys[i]))
            slide.read_level_into(images[k], (ox, oy), plan.level)
        else:
            images[k], border[k] = read_crop(slide, float(xs[i]), float(ys[i]), plan)
    return images, border


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def stream_crops(
    slide: Slide,
    xs: Any,
    ys: Any,
    *,
    plan: CropPlan | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    prefetch: int = 2,
) -> Generator[CropBatch, None, None]:
    """Crops for candidates at level-0 (xs[i], ys[i]), in batches of at most ``batch_size``.

    Every input position appears exactly once in ``indices`` over all batches. ``workers``
    threads read (default: up to 8 CPU cores; 0 or 1 reads in the calling thread), keeping at
    most ``prefetch`` batches ready ahead of the consumer.
    """
    x, y = _coordinates(xs, ys)
    if batch_size < 1:
        raise OptionError(f"batch size must be at least 1, got {batch_size}")
    if prefetch < 0:
        raise OptionError(f"prefetch must be at least 0, got {prefetch}")
    plan = plan or plan_crops(slide)
    order = tile_order(slide, x, y, plan)
    n_workers = default_workers() if workers is None else int(workers)
    batches = (order[i : i + batch_size] for i in range(0, len(order), batch_size))
    if n_workers <= 1:
        for idx in batches:
            images, border = _read_chunk(slide, x, y, idx, plan)
            yield CropBatch(images, idx, border)
        return
    yield from _stream_threaded(slide, x, y, order, plan, batch_size, n_workers, prefetch)


def _stream_threaded(
    slide: Slide,
    x: np.ndarray,
    y: np.ndarray,
    order: np.ndarray,
    plan: CropPlan,
    batch_size: int,
    workers: int,
    prefetch: int,
) -> Iterator[CropBatch]:
    """Chunks of ≤ 8 crops go to the pool in tile order; a window of futures bounds memory."""
    chunk = max(1, min(_CHUNK, batch_size))
    chunks = [order[i : i + chunk] for i in range(0, len(order), chunk)]
    window = max(workers, math.ceil((prefetch + 1) * batch_size / chunk))
    pending: deque[Future[tuple[np.ndarray, np.ndarray]]] = deque()
    size = plan.crop_size
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wsi-atm-crops")
    try:
        submitted = 0
        filled = 0
        images = np.empty((batch_size, size, size, 3), np.uint8)
        border = np.empty(batch_size, bool)
        indices = np.empty(batch_size, np.int64)
        for part in chunks:
            while submitted < len(chunks) and len(pending) < window:
                part_idx = chunks[submitted]
                pending.append(pool.submit(_read_chunk, slide, x, y, part_idx, plan))
                submitted += 1
            part_images, part_border = pending.popleft().result()
            offset = 0
            while offset < len(part):
                take = min(len(part) - offset, batch_size - filled)
                images[filled : filled + take] = part_images[offset : offset + take]
                border[filled : filled + take] = part_border[offset : offset + take]
                indices[filled : filled + take] = part[offset : offset + take]
                filled += take
                offset += take
                if filled == batch_size:
                    yield CropBatch(images, indices, border)
                    images = np.empty((batch_size, size, size, 3), np.uint8)
                    border = np.empty(batch_size, bool)
                    indices = np.empty(batch_size, np.int64)
                    filled = 0
        if filled:
            yield CropBatch(images[:filled].copy(), indices[:filled].copy(), border[:filled].copy())
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
