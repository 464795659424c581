"""Crops cut straight out of decoded tiles, for the levels wsi-atm decodes itself.

The windows are known before any pixel is read, so the work is planned per tile, not per
crop (:func:`plan_cuts`): every distinct tile the windows touch, in the order the windows first
need it, with the pieces of every window it serves. A thread decodes a tile into its own
buffer (the same memory every time, so it stays in the core's cache and never page-faults),
copies each piece into its window, and is done with the tile. Each tile is decoded exactly
once, no thread ever waits for another's tile, and nothing is cached.

Threads run a bounded number of tiles ahead of the batch being handed out (the tiles the
next ``prefetch`` batches need). A tile serves windows up to ``AHEAD_BYTES`` of crops beyond
its first (a tile row's worth on any real slide; a second decode beyond that), so memory stays
bounded: the batches being filled, at most that span ahead, one tile buffer per thread, and,
process-wide, up to ``KEPT_BATCHES`` batch arrays already handed out (filled again, by any
stream, once their consumer drops them).
Batches come out in read order and equal the backend's pixels.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

from wsi_atm.crops.plan import CropBatch, CropPlan, resample
from wsi_atm.faults import inject
from wsi_atm.slides import Slide
from wsi_atm.slides.tiles import RECYCLE, TileGrid, decode_buffer, pieces

TILES_PER_TASK = 8  # tiles one pool task decodes and cuts
# Crops filled ahead of the one handed out: a tile is cut into every window it serves that
# lies within this many bytes of crops from its first; windows further on get a second decode.
AHEAD_BYTES = 256 * 1024 * 1024
# Batch arrays handed out are kept, process-wide (at most this many, and this many bytes), and
# filled again once the consumer has dropped them: fresh memory costs a page fault per 4 KiB on
# its first write, ~12,000 a benchmark run on two threads and a tenth of its time.
KEPT_BATCHES = 8
KEPT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class CutPlan:
    """Which tiles to decode, in which order, and where their pixels go.

    ``tiles[k]``: the tile decoded at rank ``k`` (ranks follow the windows' first need; a tile
    whose windows lie further apart than the plan's span is decoded once per span, so no
    window far ahead is filled early); ``rows[starts[k]:starts[k + 1]]``: its pieces
    ``[window, tile, y0, y1, x0, x1]`` (level pixels), windows ascending; ``need[i]``: how
    many ranks windows ``0..i`` need, so a batch ending at window ``i`` is complete once
    ranks ``< need[i]`` are cut.
    """

    tiles: np.ndarray
    rows: np.ndarray
    starts: np.ndarray
    need: np.ndarray


def plan_cuts(grid: TileGrid, origins: np.ndarray, size: tuple[int, int],
              span: int | None = None) -> CutPlan:
    """The cut plan for windows of ``size`` (w, h) at ``origins`` (N×2, in read order); a
    decode serves windows at most ``span`` apart (default: all of them)."""
    found = pieces(grid, origins, size)
    window, tile = found[:, 0], found[:, 1]
    n = len(origins)
    span = max(1, span or n)
    keys, inverse = np.unique(tile, return_inverse=True)
    first = np.full(len(keys), n, np.int64)
    np.minimum.at(first, inverse, window)
    # one decode per tile and span of windows from its first use
    per_tile = n // span + 1
    units, unit = np.unique(inverse * per_tile + (window - first[inverse]) // span,
                            return_inverse=True)
    unit_first = np.full(len(units), n, np.int64)
    np.minimum.at(unit_first, unit, window)
    by_first = np.argsort(unit_first, kind="stable")
    rank = np.empty(len(units), np.int64)
    rank[by_first] = np.arange(len(units))
    piece_rank = rank[unit]
    order = np.lexsort((window, piece_rank))
    starts = np.searchsorted(piece_rank[order], np.arange(len(units) + 1))
    need = np.zeros(n, np.int64)
    np.maximum.at(need, window, piece_rank + 1)
    return CutPlan(keys[units[by_first] // per_tile], found[order], starts,
                   np.maximum.accumulate(need))


class ArrayPool:
    """Batch arrays handed out to consumers, kept so that one every consumer has dropped is
    filled again by the next batch of any stream, this one's or a later slide's, instead of
    fresh memory. Bounded by count and bytes (oldest out first); thread-safe."""

    def __init__(self, arrays: int, nbytes: int) -> None:
        self._kept: deque[np.ndarray] = deque()
        self._arrays, self._bytes = arrays, nbytes
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...]) -> np.ndarray:
        """A kept array of ``shape`` that nobody holds any more, else a fresh one."""
        with self._lock:
            for k in range(len(self._kept) if RECYCLE else 0):
                old = self._kept[k]
                # 3 = the deque, this name and getrefcount's argument: nobody else holds it,
                # not even through a view (a view holds its base)
                if old.shape == shape and old.flags.writeable and sys.getrefcount(old) == 3:
                    del self._kept[k]
                    return old
        return np.empty(shape, np.uint8)

    def keep(self, array: np.ndarray) -> None:
        """Remember ``array``, now handed out, for reuse once it is dropped."""
        if not RECYCLE or array.nbytes > self._bytes:
            return
        with self._lock:
            self._kept.append(array)
            total = sum(kept.nbytes for kept in self._kept)
            while self._kept and (len(self._kept) > self._arrays or total > self._bytes):
                total -= self._kept.popleft().nbytes

    def __len__(self) -> int:
        return len(self._kept)


# every crop stream's: a batch process cuts slide after slide, and more than one at a time
BATCH_ARRAYS = ArrayPool(KEPT_BATCHES, KEPT_BYTES)


class _Batches:
    """Batch arrays the cutting threads fill, each made on its first piece (white where a
    window reaches past the level) and handed out once, then kept in :data:`BATCH_ARRAYS`."""

    def __init__(self, n: int, batch_size: int, shape: tuple[int, int],
                 partial: np.ndarray) -> None:
        self._n, self._size, self._shape, self._partial = n, batch_size, shape, partial
        self._arrays: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def get(self, batch: int) -> np.ndarray:
        array = self._arrays.get(batch)
        if array is None:
            with self._lock:
                array = self._arrays.get(batch)
                if array is None:
                    lo, hi = batch * self._size, min(self._n, (batch + 1) * self._size)
                    array = BATCH_ARRAYS.take((hi - lo, *self._shape, 3))
                    edge = self._partial[lo:hi]
                    if edge.any():
                        array[edge] = 255
                    self._arrays[batch] = array
        return array

    def take(self, batch: int) -> np.ndarray:
        array = self.get(batch)
        with self._lock:
            del self._arrays[batch]
        BATCH_ARRAYS.keep(array)
        return array


class _CutJob:
    """One stream's cutting: :meth:`cut` runs on pool threads, :meth:`take` on the stream's."""

    def __init__(self, slide: Slide, plan: CropPlan, grid: TileGrid, origins: np.ndarray,
                 partial: np.ndarray, batch_size: int) -> None:
        self.slide, self.plan, self.grid, self.batch_size = slide, plan, grid, batch_size
        width, height = plan.read_shape
        self.native = plan.read_shape == (plan.crop_size, plan.crop_size)
        per_window = 3 * (width * height + (0 if self.native else plan.crop_size ** 2))
        self.cuts = plan_cuts(grid, origins, plan.read_shape,
                              span=max(batch_size, AHEAD_BYTES // per_window))
        n = len(origins)
        self.regions = _Batches(n, batch_size, (height, width), partial)
        self.origins = origins
        self.steps = self._steps()
        self._local = threading.local()
        self._lock = threading.Lock()
        if not self.native:  # pieces still to come per window: resampled once complete
            self.crops = _Batches(n, batch_size, (plan.crop_size, plan.crop_size),
                                  np.zeros(n, bool))
            self.missing = np.bincount(self.cuts.rows[:, 0], minlength=n)
            self.pieceless = np.flatnonzero(self.missing == 0)  # wholly outside the level

    def need(self, batch: int) -> int:
        """Ranks that must be cut before ``batch`` is complete."""
        last = min(len(self.origins), (batch + 1) * self.batch_size) - 1
        return int(self.cuts.need[last]) if last >= 0 else 0

    def _steps(self) -> np.ndarray:
        """Every piece's copy, worked out once for the whole plan (the pool threads only slice
        and copy, holding the GIL as briefly as they can): ``[rank, batch, slot, dy0, dy1, dx0,
        dx1, sy0, sy1, sx0, sx1]``, destination in its window, source in its tile."""
        cuts, grid, size = self.cuts, self.grid, self.batch_size
        rows = cuts.rows
        window, index = rows[:, 0], rows[:, 1]
        wy, wx = self.origins[window, 1], self.origins[window, 0]
        ty, tx = (index // grid.across) * grid.tile_h, (index % grid.across) * grid.tile_w
        ranks = np.repeat(np.arange(len(cuts.tiles)), np.diff(cuts.starts))
        return np.stack([ranks, window // size, window % size,
                         rows[:, 2] - wy, rows[:, 3] - wy, rows[:, 4] - wx, rows[:, 5] - wx,
                         rows[:, 2] - ty, rows[:, 3] - ty, rows[:, 4] - tx, rows[:, 5] - tx],
                        axis=1).astype(np.int32)

    def cut(self, start: int, stop: int) -> None:
        """Decode the tiles of ranks ``start..stop-1`` and copy out all their pieces."""
        inject("crop")
        cuts, grid = self.cuts, self.grid
        buffer = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = decode_buffer((grid.tile_h, grid.tile_w, 3))
        lo, hi = int(cuts.starts[start]), int(cuts.starts[stop])
        steps = self.steps[lo:hi].tolist()
        tiles = self.slide.decode_tiles(self.plan.level, cuts.tiles[start:stop].tolist(), buffer)
        current = current_batch = -1
        tile = target = buffer
        for rank, batch, slot, dy0, dy1, dx0, dx1, sy0, sy1, sx0, sx1 in steps:
            if rank != current:  # steps come rank by rank, in the order decoded
                tile = next(tiles)
                current = rank
            if batch != current_batch:
                target, current_batch = self.regions.get(batch), batch
            # the reader hands out tiles of the declared size only
            target[slot, dy0:dy1, dx0:dx1] = tile[sy0:sy1, sx0:sx1]
        if not self.native:
            self._resample_complete(cuts.rows[lo:hi, 0])

    def _resample_complete(self, windows: np.ndarray) -> None:
        with self._lock:
            np.subtract.at(self.missing, windows, 1)
            done = np.unique(windows[self.missing[windows] == 0])
        for window in done.tolist():
            self._resample_one(window)

    def _resample_one(self, window: int) -> None:
        batch, slot = divmod(window, self.batch_size)
        region = self.regions.get(batch)[slot]
        self.crops.get(batch)[slot] = resample(region, self.plan)

    def take(self, batch: int) -> np.ndarray:
        """Batch ``batch``, complete (every rank below :meth:`need` has been cut)."""
        regions = self.regions.take(batch)
        if self.native:
            return regions
        lo = batch * self.batch_size
        inside = self.pieceless[(self.pieceless >= lo) & (self.pieceless < lo + len(regions))]
        for window in inside.tolist():  # no piece, so no thread resampled them: white
            self.crops.get(batch)[window - lo] = resample(regions[window - lo], self.plan)
        return self.crops.take(batch)


def cut_crops(slide: Slide, grid: TileGrid, plan: CropPlan, origins: np.ndarray,
              partial: np.ndarray, order: np.ndarray, batch_size: int, workers: int,
              prefetch: int) -> Iterator[CropBatch]:
    """Batches of crops for windows at ``origins`` (read order; ``order`` maps them back to
    the input) cut from the level's tiles, ``workers`` threads decoding."""
    job = _CutJob(slide, plan, grid, origins, partial, batch_size)
    n_batches = -(-len(origins) // batch_size)

    def batch(b: int) -> CropBatch:
        lo, hi = b * batch_size, min(len(origins), (b + 1) * batch_size)
        return CropBatch(job.take(b), order[lo:hi], partial[lo:hi])

    if workers <= 1:
        done = 0
        for b in range(n_batches):
            goal = job.need(b)
            for start in range(done, goal, TILES_PER_TASK):  # runs of nearby tiles
                done = min(goal, start + TILES_PER_TASK)
                job.cut(start, done)
            yield batch(b)
        return
    yield from _cut_threaded(job, n_batches, batch, workers, prefetch)


def _cut_threaded(job: _CutJob, n_batches: int, batch: Callable[[int], CropBatch],
                  workers: int, prefetch: int) -> Iterator[CropBatch]:
    pending: deque[tuple[int, Future[None]]] = deque()
    submitted = 0
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wsi-atm-tiles")
    try:
        for b in range(n_batches):
            goal = job.need(b)
            ahead = max(goal, job.need(min(n_batches - 1, b + prefetch)))
            while submitted < ahead:
                stop = min(ahead, submitted + TILES_PER_TASK)
                pending.append((submitted, pool.submit(job.cut, submitted, stop)))
                submitted = stop
            needed = []
            while pending and pending[0][0] < goal:
                needed.append(pending.popleft()[1])
            # one wake-up for the batch, not one per task: on two cores a woken consumer
            # preempts a decoding thread and contends for the GIL
            wait(needed, return_when=FIRST_EXCEPTION)
            for future in needed:
                future.result()  # a thread's error is this stream's error
            yield batch(b)
    finally:
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
