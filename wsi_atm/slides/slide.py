"""The slide the rest of wsi-atm uses: ``open_slide(path, backend, mpp) → Slide``.

:class:`Slide` adds what both backends need the same way: µm/px worked out by wsi-atm itself
(:mod:`wsi_atm.slides.mpp`, x and y apart), regions as H×W×3 uint8 RGB with anything outside
the slide or transparent composited on white, thumbnails, and errors that never leak a backend
exception.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from PIL import Image

from wsi_atm.errors import MppUnknownError, OptionError, SlideError
from wsi_atm.faults import inject
from wsi_atm.options import check_mpp
from wsi_atm.slides.backends import Backend, inspect_tiff, open_auto, open_backend, short_error
from wsi_atm.slides.held_log import tifffile_records_held
from wsi_atm.slides.mpp import Mpp, parse_float, resolve_mpp, unknown_mpp_message
from wsi_atm.slides.tiles import TileGrid, TileReader

# auto: OpenSlide or tiffslide for the slide, its tiled TIFF levels decoded directly (tiles.py);
# tiles: the same, refusing a slide without such levels; openslide / tiffslide: that library only.
BACKENDS = ("auto", "openslide", "tiffslide", "tiles")
TILE_VENDORS = ("aperio", "generic-tiff", "generic")


class Slide:
    """An open slide: geometry, µm/px and RGB regions, whichever backend reads it.

    ``read_region`` and ``get_thumbnail`` may be called from several threads at once.
    """

    def __init__(self, path: Path, backend: Backend, mpp: Mpp | None,
                 declared: Mpp | None = None, tiles: TileReader | None = None) -> None:
        self.path = path
        self._backend = backend
        self._tiles = tiles
        self._mpp = mpp
        self._declared = declared if declared is not None else mpp
        self.backend: str = backend.name  # the library that opened the slide
        # who decodes the pixels: "tiles" (wsi-atm, straight from the TIFF's tiles, for the
        # levels in tile_levels; the backend for any other) or the backend itself
        self.pixel_reader: str = "tiles" if tiles is not None else backend.name
        self.tile_levels: tuple[int, ...] = tiles.levels if tiles is not None else ()
        self.level_dimensions: tuple[tuple[int, int], ...] = backend.level_dimensions
        self.level_downsamples: tuple[float, ...] = backend.level_downsamples
        self.properties: dict[str, str] = dict(backend.properties)
        self._closed = False

    # geometry ---------------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def bounds_offset(self) -> tuple[int, int]:
        """``openslide.bounds-x/y``: where the scanned area starts in level 0 ((0, 0) if absent)."""
        x = parse_float(self.properties.get("openslide.bounds-x"))
        y = parse_float(self.properties.get("openslide.bounds-y"))
        return int(x or 0), int(y or 0)

    @property
    def vendor(self) -> str:
        props = self.properties
        return props.get("openslide.vendor") or props.get("tiffslide.vendor") or "generic-tiff"

    # µm/px --------------------------------------------------------------------------------
    @property
    def mpp(self) -> float:
        """µm per level-0 pixel (mean of x and y)."""
        return self.mpp_xy.value

    @property
    def mpp_xy(self) -> Mpp:
        """µm per level-0 pixel along x and y, with its source."""
        if self._mpp is None:
            raise MppUnknownError(unknown_mpp_message(self.path))
        return self._mpp

    @property
    def declared_mpp(self) -> float | None:
        """µm/px as the file declares it, ignoring any override (None: it declares none)."""
        return self._declared.value if self._declared is not None else None

    @property
    def declared_mpp_xy(self) -> Mpp | None:
        """x and y µm/px as the file declares them, ignoring any override."""
        return self._declared

    @property
    def detections_mpp_xy(self) -> Mpp:
        """The spacing a detector's µm/mm refer to: what the file declares (what the detector
        saw), else the override (a file that declares none)."""
        return self._declared or self.mpp_xy

    @property
    def mpp_source(self) -> str:
        return self._mpp.source if self._mpp is not None else "unknown"

    @property
    def has_mpp(self) -> bool:
        return self._mpp is not None

    # pixels -------------------------------------------------------------------------------
    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """H×W×3 uint8 RGB of ``size`` (w, h) at ``level``, top-left at level-0 ``location``.

        Anything outside the slide, or transparent, is white. The top-left maps to level pixel
        ``floor(location / downsample)`` on both backends.
        """
        ds = self._level_downsample(level)
        origin = (math.floor(location[0] / ds), math.floor(location[1] / ds))
        return self.read_level_region(origin, level, size)

    def read_level_region(
        self, origin: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """Like :meth:`read_region`, but ``origin`` is the top-left in pixels of ``level``."""
        self._check_open()
        self._level_downsample(level)
        width, height = int(size[0]), int(size[1])
        if width <= 0 or height <= 0:
            raise SlideError(f"{self.path}: region size must be positive, got {size}")
        xy = (int(origin[0]), int(origin[1]))
        try:
            if self._tiles is not None and self._tiles.has_level(level):
                return self._tiles.read(xy, level, (width, height))
            return self._backend.read(xy, level, (width, height))
        except SlideError:
            raise
        except Exception as exc:
            raise SlideError(
                f"{self.path}: cannot read {width}x{height} px at {xy} of level {level} "
                f"({short_error(exc)})"
            ) from exc

    def tile_grid(self, level: int) -> TileGrid | None:
        """How ``level`` is tiled where wsi-atm decodes its tiles itself, else None."""
        if self._tiles is None or not self._tiles.has_level(level) or self._closed:
            return None
        return self._tiles.grid(level)

    def decode_tiles(self, level: int, indices: list[int],
                     out: np.ndarray | None = None) -> Iterator[np.ndarray]:
        """Tiles ``indices`` (row-major, see :meth:`tile_grid`) of ``level`` as RGB, in that
        order, decoded now (into ``out`` where the format allows: each is valid until the next
        is taken) and not cached. Thread-safe."""
        self._check_open()
        if self._tiles is None or not self._tiles.has_level(level):
            raise SlideError(f"{self.path}: level {level} is not read from its tiles")
        try:
            yield from self._tiles.decode_run(level, indices, out)
        except SlideError:
            raise
        except Exception as exc:
            raise SlideError(f"{self.path}: cannot decode tiles of level {level} "
                             f"({short_error(exc)})") from exc

    def _level_downsample(self, level: int) -> float:
        if not 0 <= level < self.level_count:
            raise SlideError(f"{self.path}: level {level} does not exist ({self.level_count})")
        return self.level_downsamples[level]

    def get_thumbnail(self, max_size: int) -> np.ndarray:
        """The whole slide, longest side ``max_size`` px (H×W×3 uint8), read band by band."""
        if max_size <= 0:
            raise OptionError(f"thumbnail size must be positive, got {max_size}")
        width, height = self.dimensions
        scale = min(1.0, max_size / max(width, height))
        out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
        level = self._best_level(1 / scale)
        ds = self.level_downsamples[level]
        level_w, level_h = self.level_dimensions[level]
        factor = max(1, int((1 / scale) / ds))
        band_rows = max(factor, (min(2048, 2**24 // level_w) // factor) * factor)
        bands = []
        for top in range(0, level_h, band_rows):
            rows = min(band_rows, level_h - top)
            band = self.read_level_region((0, top), level, (level_w, rows))
            bands.append(band if factor == 1 else np.asarray(Image.fromarray(band).reduce(factor)))
        whole = bands[0] if len(bands) == 1 else np.concatenate(bands, axis=0)
        if whole.shape[:2] == (out_h, out_w):
            whole.setflags(write=False)  # read-only, as PIL's arrays on the other paths
            return whole
        # area averaging: a downscale's right filter, 3× cheaper than Lanczos at this size
        return np.asarray(Image.fromarray(whole).resize((out_w, out_h), Image.Resampling.BOX))

    def _best_level(self, downsample: float) -> int:
        best = 0
        for index, ds in enumerate(self.level_downsamples):
            if ds <= downsample + 1e-6:
                best = index
        return best

    # metadata -----------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Everything ``slide-info`` shows, JSON-serialisable."""
        objective = parse_float(
            self.properties.get("openslide.objective-power")
            or self.properties.get("tiffslide.objective-power")
            or self.properties.get("aperio.AppMag")
        )
        return {
            "path": str(self.path),
            "backend": self.backend,
            "pixel_reader": self.pixel_reader,
            "tile_levels": list(self.tile_levels),
            "vendor": self.vendor,
            "dimensions": list(self.dimensions),
            "level_count": self.level_count,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples),
            "mpp": self._mpp.value if self._mpp else None,
            "mpp_x": self._mpp.x if self._mpp else None,
            "mpp_y": self._mpp.y if self._mpp else None,
            "mpp_source": self.mpp_source,
            "objective_power": objective,
            "bounds_offset": list(self.bounds_offset),
            "associated_images": list(self._backend.associated_images),
            "file_size": self.path.stat().st_size if self.path.is_file() else None,
            "properties": dict(self.properties),
        }

    # lifetime -----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise SlideError(f"{self.path}: slide is closed")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self._backend.close()
            if self._tiles is not None:
                self._tiles.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        mpp = f"{self._mpp.value:.4g}" if self._mpp else "?"
        w, h = self.dimensions
        return f"Slide({self.path.name!r}, {self.backend}, {w}x{h}, {mpp} µm/px)"


def open_slide(
    path: str | Path,
    backend: str = "auto",
    mpp: float | None = None,
    *,
    require_mpp: bool = True,
    mpp_origin: str = "--mpp",
) -> Slide:
    """Open a whole-slide image with ``backend`` (see :data:`BACKENDS`); see :func:`_open`.
    tifffile's warnings while it opens are said only when it opens."""
    with tifffile_records_held():
        return _open(path, backend, mpp, require_mpp, mpp_origin)


def _open(
    path: str | Path,
    backend: str,
    mpp: float | None,
    require_mpp: bool,
    mpp_origin: str,
) -> Slide:
    """Open a whole-slide image with ``backend``.

    ``mpp`` (µm/px at level 0, > 0) overrides what the slide declares (``mpp_origin`` names
    who gave it, for its recorded source and warnings). Without it, a slide
    that declares none raises :class:`MppUnknownError`, unless ``require_mpp=False`` (for
    ``slide-info``, which reports it as unknown). Unreadable input raises :class:`SlideError`.
    """
    if backend not in BACKENDS:
        raise OptionError(f"unknown slide backend {backend!r}; choose from {', '.join(BACKENDS)}")
    check_mpp(mpp)
    path = Path(path)
    if not path.exists():
        raise SlideError(f"{path}: no such file")
    if path.is_dir():
        raise SlideError(f"{path}: is a directory, not a slide file")
    if not path.is_file():  # Regression: a FIFO hung the reader for ever
        raise SlideError(f"{path}: not a regular file (a pipe or device cannot be a slide)")
    inject("open")
    direct = backend in ("auto", "tiles")
    tiff = inspect_tiff(path)
    if tiff.unsupported:  # Regression: float, signed and 1-bit samples came out black
        raise SlideError(f"{path}: {tiff.unsupported}")
    if tiff.two_byte_pixels and backend == "openslide":
        raise SlideError(f"{path}: OpenSlide garbles the partial edge tiles of 16-bit grey and "
                         "grey + alpha TIFFs; use --backend auto or tiffslide")
    if not direct:
        handle = open_backend(path, backend)
    elif tiff.two_byte_pixels:  # Regression: auto took OpenSlide and its garbled edge tiles
        handle = open_backend(path, "tiffslide")
    else:
        handle = open_auto(path, tiff.levels)
    if tiff.truncated:
        handle.close()
        raise SlideError(f"{path}: {tiff.truncated}")
    vendor = handle.properties.get("openslide.vendor") or handle.properties.get(
        "tiffslide.vendor") or "generic-tiff"
    # Only formats whose levels are plain tiled TIFF pages: Ventana BIF tiles overlap, NDPI
    # levels are restart-marker strips, Philips and Leica keep sparse tiles and several images.
    tiles = (TileReader.open(path, handle.level_dimensions)
             if direct and vendor in TILE_VENDORS else None)
    if backend == "tiles" and tiles is None:
        handle.close()
        raise SlideError(f"{path}: --backend tiles needs an Aperio SVS or generic TIFF with "
                         "tiled levels it decodes itself (JPEG with a chroma subsampling "
                         "TurboJPEG reads, JPEG 2000, LZW, deflate or uncompressed); "
                         f"this is {vendor} without such levels")
    from_tiff = tiff.level0_mpp(handle.level_dimensions[0])
    declared = resolve_mpp(handle.properties, from_tiff, None)
    found = resolve_mpp(handle.properties, from_tiff, mpp, mpp_origin)
    if found is None and require_mpp:
        handle.close()
        if tiles is not None:
            tiles.close()
        raise MppUnknownError(unknown_mpp_message(path))
    return Slide(path, handle, found, declared, tiles)
