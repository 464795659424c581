"""The two slide readers behind :class:`~wsi_atm.slides.slide.Slide`: OpenSlide and tiffslide.

Each adapter reads H×W×3 uint8 RGB windows in pixels of a level, white outside the level and
where transparent. ``auto`` opens OpenSlide unless tiffslide sees more pyramid levels
(SubIFD pyramids) or OpenSlide refuses the file.

Threads: OpenSlide handles are thread-safe. tiffslide shares one ``TiffFile`` between threads
and has had races there (Bayer-Group/tiffslide#14), so the tiffslide adapter lends each
concurrent reader its own handle from a small pool.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from wsi_atm.errors import SlideError
from wsi_atm.slides.mpp import Mpp, level0_mpp, mpp_from_tiff, page_mpps
from wsi_atm.slides.tiff_pages import PageFacts, page_facts

log = logging.getLogger(__name__)

OPENSLIDE_CACHE_BYTES = 128 * 1024 * 1024


class Backend(Protocol):
    name: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    properties: dict[str, str]
    associated_images: tuple[str, ...]

    def read(self, origin: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """H×W×3 uint8 RGB of the window at ``origin`` in *level* pixels; white outside the
        level and where transparent."""
        ...

    def close(self) -> None: ...


def to_rgb(array: np.ndarray, premultiplied: bool = False) -> np.ndarray:
    """Any backend array (H×W, H×W×1/3/4, uint8/uint16) → H×W×3 uint8 RGB on white;
    ``premultiplied``: its alpha is associated (the colour already scaled by it)."""
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    elif array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    channels = array.shape[2]
    if channels == 1:
        return np.repeat(array, 3, axis=2)
    if channels == 2:  # grey + alpha
        array = np.concatenate([np.repeat(array[..., :1], 3, axis=2), array[..., 1:]], axis=2)
        channels = 4
    if channels >= 4:
        return _composite_on_white(array[..., :4], premultiplied)
    return np.ascontiguousarray(array[..., :3])


def _composite_on_white(rgba: np.ndarray, premultiplied: bool = False) -> np.ndarray:
    """Un-premultiplied (or, ``premultiplied``, associated-alpha) RGBA → RGB over white (exact
    where alpha is 255)."""
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha.astype(np.uint16)
    if premultiplied:  # the colour already carries its alpha: add white's share only
        over: np.ndarray = np.minimum(rgba[..., :3].astype(np.uint16) + (255 - a), 255)
        return over.astype(np.uint8)
    rgb = rgba[..., :3].astype(np.uint16) * a + 255 * (255 - a)
    return ((rgb + 127) // 255).astype(np.uint8)


class _OpenSlideBackend:
    name = "openslide"

    def __init__(self, path: Path) -> None:
        import openslide

        self._osr = openslide.OpenSlide(str(path))
        cache_cls = getattr(openslide, "OpenSlideCache", None)
        if cache_cls is not None:
            with contextlib.suppress(Exception):
                self._osr.set_cache(cache_cls(OPENSLIDE_CACHE_BYTES))
        self.level_dimensions = tuple(self._osr.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)
        self.properties = {str(k): str(v) for k, v in self._osr.properties.items()}
        self.associated_images = tuple(self._osr.associated_images.keys())

    def read(self, origin: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        # OpenSlide takes level-0 coordinates and interpolates fractional level positions;
        # rounding keeps that shift under half a level-0 pixel (none for integer downsamples)
        ds = self.level_downsamples[level]
        location = (round(origin[0] * ds), round(origin[1] * ds))
        region = self._osr.read_region(location, level, size)
        if region.getchannel("A").getextrema()[0] == 255:  # opaque: skip compositing
            return np.array(region.convert("RGB"))
        return _composite_on_white(np.asarray(region))

    def close(self) -> None:
        self._osr.close()


class _TiffSlideBackend:
    """tiffslide with one handle per concurrent reader (a pool, reused across calls)."""

    name = "tiffslide"

    def __init__(self, path: Path) -> None:
        self._path = path
        first = self._open()
        self._free: list[Any] = [first]
        self._all: list[Any] = [first]
        self._lock = threading.Lock()
        self.level_dimensions = tuple((int(w), int(h)) for w, h in first.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in first.level_downsamples)
        self.properties = {
            str(k): _prop_str(v) for k, v in first.properties.items() if v is not None
        }
        self.associated_images = tuple(first.associated_images.keys())
        self._facts = page_facts(path, self.level_dimensions)
        if any(facts.ycbcr_jp2k for facts in self._facts.values()):
            # Regression: its Y, Cb and Cr came back as R, G and B (colours off by up to 133)
            first.close()
            raise SlideError("Aperio YCbCr JPEG 2000 tiles (compression 33003), whose colours "
                             "tiffslide leaves unconverted; use --backend auto or openslide")

    def _open(self) -> Any:
        import tiffslide

        return tiffslide.TiffSlide(str(self._path))

    @contextlib.contextmanager
    def _handle(self) -> Iterator[Any]:
        with self._lock:
            handle = self._free.pop() if self._free else None
        if handle is None:
            handle = self._open()
            with self._lock:
                self._all.append(handle)
        try:
            yield handle
        finally:
            with self._lock:
                self._free.append(handle)

    def read(self, origin: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        (x0, y0), (width, height) = origin, size
        level_w, level_h = self.level_dimensions[level]
        cx0, cy0 = max(x0, 0), max(y0, 0)
        cx1, cy1 = min(x0 + width, level_w), min(y0 + height, level_h)
        out = np.full((height, width, 3), 255, np.uint8)
        if cx1 <= cx0 or cy1 <= cy0:
            return out
        ds = self.level_downsamples[level]
        location = (_level0_for(cx0, ds), _level0_for(cy0, ds))
        with self._handle() as handle:
            arr = np.asarray(handle.read_region(location, level, (cx1 - cx0, cy1 - cy0),
                                                as_array=True))
        facts = self._facts.get(level)
        if facts is not None and facts.min_is_white and arr.dtype.kind == "u":
            arr = _invert_grey(arr)  # Regression: white-is-zero grey came out inverted
        if facts is not None and facts.colormap is not None:
            # tiffslide hands back a palette image's indices: look them up (16-bit map)
            arr = (facts.colormap[:, arr.reshape(arr.shape[:2])] >> 8).astype(np.uint8)
            arr = arr.transpose(1, 2, 0)
        # Regression: associated alpha was composited as unassociated (up to 64 darker at half)
        premultiplied = facts is not None and facts.premultiplied
        out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = to_rgb(arr, premultiplied)
        if facts is not None and facts.missing:
            _whiten_missing(out, facts, (x0, y0), (cx0, cy0, cx1, cy1))
        return out

    def close(self) -> None:
        with self._lock:
            handles, self._all, self._free = self._all, [], []
        for handle in handles:
            with contextlib.suppress(Exception):
                handle.close()


def _whiten_missing(out: np.ndarray, facts: PageFacts, origin: tuple[int, int],
                    box: tuple[int, int, int, int]) -> None:
    """White over the tiles the file never wrote (tiffslide paints them black; OpenSlide and
    wsi-atm's own reader, transparent: white)."""
    x0, y0 = origin
    cx0, cy0, cx1, cy1 = box
    for row in range(cy0 // facts.tile_h, (cy1 - 1) // facts.tile_h + 1):
        for col in range(cx0 // facts.tile_w, (cx1 - 1) // facts.tile_w + 1):
            if row * facts.across + col in facts.missing:
                ty0, tx0 = max(row * facts.tile_h, cy0), max(col * facts.tile_w, cx0)
                ty1, tx1 = min((row + 1) * facts.tile_h, cy1), min((col + 1) * facts.tile_w, cx1)
                out[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0] = 255


def _level0_for(level_px: int, ds: float) -> int:
    """The level-0 coordinate that tiffslide maps (``int(c / ds)``) to ``level_px`` (≥ 0)."""
    location = math.ceil(level_px * ds)
    while location > 0 and int((location - 1) / ds) == level_px:
        location -= 1
    while int(location / ds) < level_px:
        location += 1
    return location


def _prop_str(value: object) -> str:
    return value if isinstance(value, str) else repr(value)


def open_backend(path: Path, name: str) -> Backend:
    """Open one backend; any failure becomes a SlideError naming the file."""
    try:
        if name == "openslide":
            return _OpenSlideBackend(path)
        return _TiffSlideBackend(path)
    except Exception as exc:  # backends raise many types (OpenSlideError, TiffFileError, …)
        raise SlideError(f"{path}: {name} cannot open it ({short_error(exc)})") from exc


def short_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def open_auto(path: Path, tiff_levels: int) -> Backend:
    """OpenSlide, unless tiffslide sees more levels (SubIFD pyramids) or OpenSlide refuses.

    ``tiff_levels``: the pyramid levels tifffile (and so tiffslide, built on it) sees in the
    file's first series (:class:`TiffFacts`); where that is no more than OpenSlide's, tiffslide
    is not opened at all (its import and open cost ~0.2 s)."""
    errors: list[str] = []
    opened: dict[str, Backend] = {}
    for name in ("openslide", "tiffslide"):
        if opened and tiff_levels <= len(opened["openslide"].level_dimensions):
            break
        try:
            opened[name] = open_backend(path, name)
        except SlideError as exc:
            errors.append(str(exc).removeprefix(f"{path}: "))
    if not opened:
        raise SlideError(f"{path}: not a readable slide ({'; '.join(errors)})")
    if len(opened) == 1:
        return next(iter(opened.values()))
    ops, ts = opened["openslide"], opened["tiffslide"]
    if len(ts.level_dimensions) > len(ops.level_dimensions):
        log.info("%s: tiffslide sees more pyramid levels than OpenSlide; using tiffslide", path)
        ops.close()
        return ts
    ts.close()
    return ops



@dataclass(frozen=True)
class TiffFacts:
    """What wsi-atm reads from a TIFF itself: µm/px from its tags, and whether it is cut short."""

    mpp: Mpp | None = None
    truncated: str | None = None
    levels: int = 0  # pyramid levels of the first series (what tiffslide would see)
    # samples no reader turns into true RGB (float, signed, 1-bit, > 16-bit): refused
    unsupported: str | None = None
    # 2 bytes a pixel (16-bit grey, 8-bit grey + alpha): OpenSlide 4.0 garbles partial
    # (right-edge) tiles of such levels, so auto opens them with tiffslide
    two_byte_pixels: bool = False
    # each main-chain page's size and the µm/px of its own resolution tags (() with OME-XML)
    page_mpp: tuple[tuple[tuple[int, int], Mpp | None], ...] = ()

    def level0_mpp(self, size: tuple[int, int]) -> Mpp | None:
        """µm/px of the page that is the opened slide's level 0 (``size``), not simply the
        first page's. Regression: a pyramid written smallest first took its smallest level's
        resolution for level 0 (4x the µm/px)."""
        return level0_mpp(self.mpp, self.page_mpp, size)


def _series_levels(tif: Any) -> int:
    try:
        return len(tif.series[0].levels) if tif.series else 0
    except Exception:  # a series tifffile cannot make sense of: no levels to compare
        return 0


def inspect_tiff(path: Path) -> TiffFacts:
    """OME-XML PhysicalSize or level-0 X/YResolution, and a check that every image's data lies
    inside the file (a truncated copy would otherwise fail mid-run). Not a TIFF: no facts."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            mpp, truncated = mpp_from_tiff(tif), _truncation(tif, path.stat().st_size)
            page = tif.pages.first
            return TiffFacts(mpp, truncated, _series_levels(tif), _unsupported_samples(page),
                             int(page.samplesperpixel) * int(page.bitspersample) == 16
                             and int(page.photometric) in (0, 1), page_mpps(tif, mpp))
    except Exception:  # not a TIFF (e.g. MIRAX), or unreadable: the backends decided it opens
        return TiffFacts()


def _invert_grey(arr: np.ndarray) -> np.ndarray:
    """White-is-zero grey (8 or 16 bits) the right way up; an alpha channel stays as it is.
    Regression: 16-bit grey was not inverted, and grey + alpha had its alpha inverted too."""
    full = np.iinfo(arr.dtype).max
    if arr.ndim == 3 and arr.shape[2] == 2:
        return np.stack([full - arr[..., 0], arr[..., 1]], axis=2)
    return full - arr


def _unsupported_samples(page: Any) -> str | None:
    """Why the first page's (level 0's) samples cannot become true RGB, or None: 8- or 16-bit
    unsigned integers, or a palette's indices of up to 8 bits."""
    bits, fmt = int(page.bitspersample), int(page.sampleformat)
    if not page.imagewidth or not page.imagelength:  # no image at all: the readers say so
        return None
    if fmt == 1 and (bits in (8, 16) or (int(page.photometric) == 3 and bits <= 8)):
        return None
    kind = {1: "unsigned", 2: "signed", 3: "floating-point"}.get(fmt, f"format-{fmt}")
    return (f"its samples are {bits}-bit {kind}; wsi-atm reads slides of 8- or 16-bit "
            "unsigned samples (RGB, grey or palette)")


def _truncation(tif: Any, file_size: int) -> str | None:
    for series in tif.series:
        for level in series.levels:
            for page in level.pages:
                if page is None or not hasattr(page, "dataoffsets"):
                    continue
                ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=False)]
                if ends and max(ends) > file_size:
                    return (
                        f"file is truncated: image data of {page.shape} extends to byte "
                        f"{max(ends)}, past its end ({file_size} bytes)"
                    )
    return None
