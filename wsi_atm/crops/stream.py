"""Streaming crops in batches (:func:`stream_crops`): candidates in tile order, read by a
thread pool over the one slide handle, in bounded memory.

Levels wsi-atm decodes itself are cut tile by tile (:mod:`~wsi_atm.crops.cutting`); others
are read crop by crop through the backend, in chunks of 8 per pool task.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from wsi_atm.cpus import usable_cpus
from wsi_atm.crops.cutting import cut_crops
from wsi_atm.crops.plan import (
    CropBatch,
    CropPlan,
    beyond_edge,
    plan_crops,
    resample,
    tile_order,
    window_origins,
)
from wsi_atm.errors import OptionError
from wsi_atm.faults import inject
from wsi_atm.slides import Slide

_CHUNK = 8  # crops per pool task on the backend path


def _coordinates(xs: Any, ys: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(xs, dtype=np.float64).reshape(-1)
    y = np.asarray(ys, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise OptionError(f"got {len(x)} x but {len(y)} y coordinates")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise OptionError("candidate coordinates must be finite numbers")
    return x, y


def default_workers() -> int:
    return max(1, min(8, usable_cpus()))


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

    Every input position appears exactly once in ``indices`` over all batches; batches come
    in tile order, the same for any worker count. ``workers`` threads read (default: up to 8
    CPU cores; 0 or 1 reads in the calling thread), about ``prefetch`` batches' reads ahead
    of the consumer. Memory: those batches; where tiles are cut (:mod:`~wsi_atm.crops.cutting`)
    also the windows a decoded tile serves further on, at most ``AHEAD_BYTES`` of crops, and,
    process-wide, a few batch arrays already handed out (at most ``KEPT_BYTES``), filled again
    by this or a later stream once the consumer has dropped every reference to them (a batch
    kept, or a view of it, is never touched). So a consumer keeps a Python reference for as
    long as it uses the pixels: memory handed to C code without one (a raw pointer, an ONNX
    Runtime IO binding) may be filled again under it.
    """
    x, y = _coordinates(xs, ys)
    if batch_size < 1:
        raise OptionError(f"batch size must be at least 1, got {batch_size}")
    if prefetch < 0:
        raise OptionError(f"prefetch must be at least 0, got {prefetch}")
    plan = plan or plan_crops(slide)
    order = tile_order(slide, x, y, plan)
    origins = window_origins(slide, x[order], y[order], plan)
    partial = beyond_edge(slide, origins, plan)
    n_workers = default_workers() if workers is None else int(workers)
    grid = slide.tile_grid(plan.level)
    if grid is not None:
        yield from cut_crops(slide, grid, plan, origins, partial, order, batch_size, n_workers,
                             prefetch)
        return
    if n_workers <= 1:
        for start in range(0, len(order), batch_size):
            part = slice(start, start + batch_size)
            yield CropBatch(_read_chunk(slide, origins[part], plan), order[part], partial[part])
        return
    yield from _stream_threaded(slide, origins, partial, order, plan, batch_size, n_workers,
                                prefetch)


def _read_chunk(slide: Slide, origins: np.ndarray, plan: CropPlan) -> np.ndarray:
    """Crops for windows at ``origins`` read through the backend, one by one."""
    inject("crop")
    size = plan.crop_size
    images = np.empty((len(origins), size, size, 3), np.uint8)
    for k, (ox, oy) in enumerate(origins.tolist()):
        images[k] = resample(slide.read_level_region((ox, oy), plan.level, plan.read_shape),
                             plan)
    return images


def _stream_threaded(
    slide: Slide,
    origins: np.ndarray,
    partial: np.ndarray,
    order: np.ndarray,
    plan: CropPlan,
    batch_size: int,
    workers: int,
    prefetch: int,
) -> Iterator[CropBatch]:
    """Chunks of ≤ 8 crops go to the pool in tile order; a window of futures bounds memory."""
    chunk = max(1, min(_CHUNK, batch_size))
    starts = range(0, len(order), chunk)
    window = max(workers, math.ceil((prefetch + 1) * batch_size / chunk))
    pending: deque[Future[np.ndarray]] = deque()
    size = plan.crop_size
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wsi-atm-crops")
    try:
        submitted = filled = first = 0
        images = np.empty((min(batch_size, len(order)), size, size, 3), np.uint8)
        for _ in starts:
            while submitted < len(starts) and len(pending) < window:
                lo = starts[submitted]
                pending.append(pool.submit(_read_chunk, slide, origins[lo : lo + chunk], plan))
                submitted += 1
            part = pending.popleft().result()
            offset = 0
            while offset < len(part):
                take = min(len(part) - offset, len(images) - filled)
                images[filled : filled + take] = part[offset : offset + take]
                filled += take
                offset += take
                if filled == len(images):
                    end = first + filled
                    yield CropBatch(images, order[first:end], partial[first:end])
                    first, filled = end, 0
                    left = len(order) - first
                    images = np.empty((min(batch_size, left), size, size, 3), np.uint8)
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
