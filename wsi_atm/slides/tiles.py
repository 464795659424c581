"""Direct tile reads for TIFF-family slides (SVS, generic and pyramidal TIFF).

OpenSlide decodes a tile, copies it into its cache and then into a cairo surface for every
``read_region``; for the small crops wsi-atm reads, that overhead costs more than the JPEG
decode itself. This reader takes each needed tile's compressed bytes from the file once
(``os.pread``: thread-safe, no shared file position), decodes it (8-bit RGB JPEG strictly
through :mod:`~wsi_atm.slides.jpeg`; others with imagecodecs through tifffile's own decoder:
JPEG tables, colour space, predictors as the file says). Two ways
out: :meth:`TileReader.decode_run` hands a caller that cuts everything it needs from each tile
at once (the crop engine) runs of tiles, decoded into the caller's own buffer and not kept;
region reads (:meth:`TileReader.read`) go through a bounded LRU of RGB tiles shared by the
reader threads, where two threads wanting the same tile wait for one decode. The decoders
release the GIL, so threads scale with cores.

OpenSlide or tiffslide still open the slide (levels, properties, µm/px); this reader serves
pixels for the levels it can map one-to-one to tiled TIFF pages, and the backend serves the
rest.
"""

from __future__ import annotations

import contextlib
import os
import sys
import sysconfig
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi_atm.errors import SlideError
from wsi_atm.slides.backends import to_rgb
from wsi_atm.slides.jpeg import DamagedTile, JpegTiles, OtherSizeTile, check_jpeg_end
from wsi_atm.slides.tiff_pages import Level, find_levels

TILE_CACHE_BYTES = 256 * 1024 * 1024
# bytes of other data one pread may read over between two wanted tiles: about what a second
# pread costs
READ_GAP = 8 * 1024
SPARE_BUFFERS = 32  # evicted tile arrays kept for the next decodes
# The recycling test counts references (sys.getrefcount); CPython 3.14 may borrow references
# for locals, and a free-threaded build counts them per thread, which makes that count
# unreliable, so recycling is off there.
RECYCLE = sys.version_info < (3, 14) and not sysconfig.get_config_var("Py_GIL_DISABLED")


@dataclass(frozen=True)
class TileGrid:
    """How a level is cut into tiles: ``across`` tiles per row, row-major indices."""

    width: int
    height: int
    tile_w: int
    tile_h: int
    across: int


# Where a reused tile buffer starts, in bytes past a 64-byte boundary. libjpeg-turbo's SIMD
# colour conversion wrote the same tiles ~20 % slower into 32-byte-aligned output than at any
# other offset tried (the benchmark's tiles, 35 offsets across a page; most likely store/load
# aliasing against its own 32-byte-aligned sample rows). A heap buffer lands on either side by
# chance, so a run's decode speed was a coin flip; this places it on purpose.
BUFFER_OFFSET = 16


def decode_buffer(shape: tuple[int, int, int]) -> np.ndarray:
    """A writable C-contiguous uint8 array of ``shape`` starting :data:`BUFFER_OFFSET` bytes
    past a 64-byte boundary: the buffer to hand :meth:`TileReader.decode_run` again and
    again."""
    size = shape[0] * shape[1] * shape[2]
    raw = np.empty(size + 64, np.uint8)
    start = (BUFFER_OFFSET - raw.ctypes.data) % 64
    return raw[start : start + size].reshape(shape)


def pieces(grid: TileGrid, origins: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Where windows' pixels come from: one row ``[window, tile, y0, y1, x0, x1]`` per
    (window, tile) pair, the rectangle in level pixels clipped to the level, for windows of
    ``size`` (w, h) at ``origins`` (N×2 level pixels). Windows wholly outside have none."""
    w, h = size
    ox, oy = origins[:, 0].astype(np.int64), origins[:, 1].astype(np.int64)
    ix0, iy0 = np.maximum(ox, 0), np.maximum(oy, 0)
    ix1, iy1 = np.minimum(ox + w, grid.width), np.minimum(oy + h, grid.height)
    window = np.flatnonzero((ix0 < ix1) & (iy0 < iy1))
    ix0, iy0, ix1, iy1 = ix0[window], iy0[window], ix1[window], iy1[window]
    c0, c1 = ix0 // grid.tile_w, (ix1 - 1) // grid.tile_w
    r0, r1 = iy0 // grid.tile_h, (iy1 - 1) // grid.tile_h
    parts = [np.empty((0, 6), np.int64)]
    for dr in range(int((r1 - r0).max(initial=0)) + 1):
        for dc in range(int((c1 - c0).max(initial=0)) + 1):
            hit = (r0 + dr <= r1) & (c0 + dc <= c1)
            row, col = r0[hit] + dr, c0[hit] + dc
            parts.append(np.stack([
                window[hit], row * grid.across + col,
                np.maximum(iy0[hit], row * grid.tile_h),
                np.minimum(iy1[hit], (row + 1) * grid.tile_h),
                np.maximum(ix0[hit], col * grid.tile_w),
                np.minimum(ix1[hit], (col + 1) * grid.tile_w),
            ], axis=1))
    return np.concatenate(parts)


class TileReader:
    """RGB windows of a level assembled from decoded tiles; white outside the level."""

    name = "tiles"

    def __init__(self, path: Path, tif: Any, levels: dict[int, Level],
                 cache_bytes: int = TILE_CACHE_BYTES) -> None:
        self.path = path
        self._tif = tif
        self._levels = levels
        self._fd = os.open(path, os.O_RDONLY)
        self._budget = cache_bytes
        self._used = 0
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._inflight: dict[tuple[int, int], threading.Event] = {}
        # Evicted tiles nobody holds any more: JPEG tiles decode into them (libjpeg-turbo
        # writes straight into the array), so a slide's tens of thousands of tiles cost a
        # bounded set of allocations instead of one each (faster, and the heap stays flat).
        self._spare: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._closed = False
        self.recycled = 0  # decodes into an evicted tile's array
        self.decoded = 0  # tiles decoded so far
        # its own lock: a generator abandoned mid-run may be finalised by a garbage collection
        # that starts while another thread's code holds ``_lock``
        self._count_lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, level_dimensions: tuple[tuple[int, int], ...],
             cache_bytes: int = TILE_CACHE_BYTES) -> TileReader | None:
        """A reader for the levels tifffile can serve, or None (not a TIFF, or no such level)."""
        import tifffile

        try:
            tif = tifffile.TiffFile(path)
        except Exception:
            return None
        try:
            levels = find_levels(tif, level_dimensions)
        except Exception:
            levels = {}
        if not levels:
            tif.close()
            return None
        try:
            return cls(path, tif, levels, cache_bytes)
        except OSError:
            tif.close()
            return None

    def has_level(self, level: int) -> bool:
        return level in self._levels

    def grid(self, level: int) -> TileGrid:
        lv = self._levels[level]
        return TileGrid(lv.width, lv.height, lv.tile_w, lv.tile_h, lv.across)

    def decode_run(self, level: int, indices: list[int],
                   out: np.ndarray | None = None) -> Iterator[np.ndarray]:
        """Tiles ``indices`` of ``level`` as RGB (tile_h × tile_w × 3), in that order, decoded
        now and not cached: for a caller that cuts everything it needs from each tile at once
        (the crop engine), a few tiles at a time. JPEG tiles decode into ``out`` when given (a
        buffer the caller reuses: each tile is valid until the next is asked for). Tiles lying
        next to each other in the file are read with one ``pread``."""
        self._check_open()
        lv = self._levels[level]
        data = self._read_together(lv, indices)
        if lv.jpeg is not None and out is not None and out.shape == (lv.tile_h, lv.tile_w, 3):
            return self._jpeg_run(level, lv, indices, data, out)
        return self._generic_run(level, indices, out, data)

    def _generic_run(self, level: int, indices: list[int], out: np.ndarray | None,
                     data: dict[int, memoryview]) -> Iterator[np.ndarray]:
        for index in indices:
            self._check_open()
            yield self._decode(level, index, out, data.get(index))

    def _jpeg_run(self, level: int, lv: Level, indices: list[int],
                  data: dict[int, memoryview], out: np.ndarray) -> Iterator[np.ndarray]:
        """The usual case, 8-bit JPEG tiles of the declared size decoded into ``out``, with
        libjpeg-turbo called straight from the loop: the layers of :meth:`_decode` per tile
        cost the crop engine a few per cent."""
        jpeg = lv.jpeg
        assert jpeg is not None
        for index in indices:
            self._check_open()
            blob: bytes | memoryview | None = data.get(index)
            if blob is None:
                if not lv.counts[index]:  # never written: white, from the generic path
                    yield self._decode(level, index, out, None)
                    continue
                blob = os.pread(self._fd, lv.counts[index], lv.offsets[index])
            tile = self._jpeg_tile(jpeg, level, index, blob, out)
            with self._count_lock:
                self.decoded += 1
            yield tile

    def _jpeg_tile(self, jpeg: JpegTiles, level: int, index: int, blob: bytes | memoryview,
                   out: np.ndarray | None) -> np.ndarray:
        try:
            return jpeg.decode(blob, out)
        except DamagedTile as exc:
            # libjpeg reads nothing after the end marker (OpenSlide reads such tiles): looked
            # for only now, for the plainer message where a tile was cut short
            check_jpeg_end(blob, self.path, level, index)
            raise SlideError(f"{self._where(level, index)} is damaged (libjpeg: {exc}): the "
                             "slide file is corrupt") from None
        except OtherSizeTile as exc:
            raise self._other_size(level, index, exc.width, exc.height) from None

    def _other_size(self, level: int, index: int, width: int, height: int) -> SlideError:
        lv = self._levels[level]
        return SlideError(f"{self.path}: tile {index} of level {level} decodes to {width}x"
                          f"{height} px, not the {lv.tile_w}x{lv.tile_h} px the file declares")

    def _where(self, level: int, index: int) -> str:
        return f"{self.path.name}: tile {index} of level {level}"

    def _check_open(self) -> None:
        """Checked before every tile, not once a run: a closed descriptor's number may be
        reused by another file."""
        if self._closed:
            raise ValueError(f"{self.path}: tile reader is closed")

    def _read_together(self, lv: Level, indices: list[int]) -> dict[int, memoryview]:
        """The compressed bytes of those of ``indices`` that lie next to another wanted tile
        in the file (a row's neighbours, as scanners write them), one ``pread`` per such
        group; tiles standing alone are left out (the caller reads them when it gets there)."""
        parts = sorted((lv.offsets[i], lv.counts[i], i) for i in indices if lv.counts[i])
        found: dict[int, memoryview] = {}
        first = 0
        while first < len(parts):
            last, end = first, parts[first][0] + parts[first][1]
            while last + 1 < len(parts) and parts[last + 1][0] - end <= READ_GAP:
                last += 1
                end = max(end, parts[last][0] + parts[last][1])
            if last > first:
                lo = parts[first][0]
                group = memoryview(os.pread(self._fd, end - lo, lo))
                for offset, count, index in parts[first : last + 1]:
                    found[index] = group[offset - lo : offset - lo + count]
            first = last + 1
        return found

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(sorted(self._levels))

    def read(self, origin: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """The window of ``size`` (w, h) at ``origin`` (level pixels), through the tile cache;
        white outside the level."""
        self._check_open()
        x0, y0 = origin
        out = np.full((size[1], size[0], 3), 255, np.uint8)
        lv = self._levels[level]
        for _, index, sy0, sy1, sx0, sx1 in pieces(self.grid(level), np.array([origin]),
                                                   size).tolist():
            top, left = (index // lv.across) * lv.tile_h, (index % lv.across) * lv.tile_w
            out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = \
                self._tile(level, index)[sy0 - top : sy1 - top, sx0 - left : sx1 - left]
        return out

    def _tile(self, level: int, index: int) -> np.ndarray:
        key = (level, index)
        with self._lock:
            tile = self._cache.get(key)
            if tile is not None:
                self._cache.move_to_end(key)
                return tile
            event = self._inflight.get(key)
            mine = event is None
            if event is None:
                event = self._inflight[key] = threading.Event()
        if not mine:
            event.wait()
            with self._lock:
                tile = self._cache.get(key)
            if tile is None:  # decoded, but already evicted again (a tiny cache)
                tile = self._decode(level, index)
            return tile
        try:
            tile = self._decode(level, index)
            tile.setflags(write=False)  # shared by reader threads from now on
            with self._lock:
                self._store(key, tile)
        finally:
            with self._lock:
                del self._inflight[key]
            event.set()
        return tile

    def _store(self, key: tuple[int, int], tile: np.ndarray) -> None:
        self._cache[key] = tile
        self._used += tile.nbytes
        while self._used > self._budget and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._used -= old.nbytes
            # 2 = this name and getrefcount's argument: no reader thread still copies from it
            # (readers take their reference under this lock); a view (tifffile's LZW/zlib
            # output) can never be made writable again, so only arrays owning their memory
            if (RECYCLE and len(self._spare) < SPARE_BUFFERS and old.flags.owndata
                    and sys.getrefcount(old) == 2):
                self._spare.append(old)

    def _buffer(self, shape: tuple[int, int, int]) -> np.ndarray | None:
        with self._lock:
            while self._spare:
                spare = self._spare.pop()
                if spare.shape == shape:
                    spare.setflags(write=True)
                    self.recycled += 1
                    return spare
        return None

    def _decode(self, level: int, index: int, out: np.ndarray | None = None,
                data: bytes | memoryview | None = None) -> np.ndarray:
        tile = self._decode_pixels(level, index, out, data)
        with self._count_lock:
            self.decoded += 1
        return tile

    def _decode_pixels(self, level: int, index: int, out: np.ndarray | None,
                       data: bytes | memoryview | None) -> np.ndarray:
        lv = self._levels[level]
        count = lv.counts[index]
        if count == 0:  # a tile the scanner never wrote: transparent, so white
            return np.full((lv.tile_h, lv.tile_w, 3), 255, np.uint8)
        if data is None:
            data = os.pread(self._fd, count, lv.offsets[index])
        if len(data) < count:  # the file ends before the tile does
            raise SlideError(f"{self._where(level, index)} lies past the end of the file: the "
                             "slide file is damaged or incompletely copied")
        if lv.jpeg is not None:  # libjpeg-turbo reads the memoryview in place
            return self._jpeg_tile(lv.jpeg, level, index, data,
                                   out if out is not None else self._buffer(lv.jpeg.shape))
        segment, _, _ = lv.page.decode(bytes(data), index, jpegtables=lv.jpegtables)
        tile = to_rgb(np.asarray(segment).reshape(segment.shape[-3:]))
        if tile.shape[:2] != (lv.tile_h, lv.tile_w):  # larger would cut wrong pixels silently
            raise self._other_size(level, index, tile.shape[1], tile.shape[0])
        return tile

    def close(self) -> None:
        """Callers join their reader threads first (the crop stream does)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._cache.clear()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        with contextlib.suppress(Exception):
            self._tif.close()
