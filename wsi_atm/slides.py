"""Slide reading: ``open_slide(path, backend, mpp) → Slide`` over OpenSlide or tiffslide.

One small interface for the rest of wsi-atm. Two adapters hide the backends; :class:`Slide`
adds what both need the same way: µm/px worked out by wsi-atm itself (so both backends agree),
regions as H×W×3 uint8 RGB with anything outside the slide or transparent composited on white,
thumbnails, and errors that never leak a backend exception.

µm/px, first plausible value wins (plausible: 0.05–20 µm/px):

1. ``aperio.MPP`` (Aperio SVS ImageDescription);
2. ``openslide.mpp-x/y`` from a vendor driver (not generic-tiff, whose value comes from the
   TIFF tags that step 5 reads itself);
3. ``tiffslide.mpp-x/y`` from a vendor parser (same rule);
4. ``PhysicalSizeX/Y`` in OME-XML;
5. level-0 TIFF ``X/YResolution`` with ``ResolutionUnit`` inch or centimeter (unit none or an
   implausible value such as the 72-dpi default counts as unknown).

An ``mpp`` argument overrides all of them.

Threads: OpenSlide handles are thread-safe. tiffslide shares one ``TiffFile`` between threads
and has had races there (Bayer-Group/tiffslide#14), so the tiffslide adapter lends each
concurrent reader its own handle from a small pool.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np
from PIL import Image

from wsi_atm.errors import MppUnknownError, OptionError, SlideError
from wsi_atm.faults import inject

log = logging.getLogger(__name__)

BACKENDS = ("auto", "openslide", "tiffslide")
MPP_RANGE = (0.05, 20.0)
OPENSLIDE_CACHE_BYTES = 128 * 1024 * 1024
_OME_UNITS_UM = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


# ---------------------------------------------------------------------------- backend adapters


class _Backend(Protocol):
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


def _to_rgb(array: np.ndarray) -> np.ndarray:
    """Any backend array (H×W, H×W×1/3/4, uint8/uint16) → H×W×3 uint8 RGB on white."""
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
        return _composite_on_white(array[..., :4])
    return np.ascontiguousarray(array[..., :3])


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Un-premultiplied RGBA → RGB over white (exact where alpha is 255)."""
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha.astype(np.uint16)
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
        import tiffslide

        self._open = lambda: tiffslide.TiffSlide(str(path))
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
            arr = handle.read_region(location, level, (cx1 - cx0, cy1 - cy0), as_array=True)
        out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = _to_rgb(np.asarray(arr))
        return out

    def close(self) -> None:
        with self._lock:
            handles, self._all, self._free = self._all, [], []
        for handle in handles:
            with contextlib.suppress(Exception):
                handle.close()


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


def _open_backend(path: Path, name: str) -> _Backend:
    """Open one backend; any failure becomes a SlideError naming the file."""
    try:
        if name == "openslide":
            return _OpenSlideBackend(path)
        return _TiffSlideBackend(path)
    except Exception as exc:  # backends raise many types (OpenSlideError, TiffFileError, …)
        raise SlideError(f"{path}: {name} cannot open it ({_short(exc)})") from exc


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _open_auto(path: Path) -> _Backend:
    """OpenSlide, unless tiffslide sees more levels (SubIFD pyramids) or OpenSlide refuses."""
    errors: list[str] = []
    opened: dict[str, _Backend] = {}
    for name in ("openslide", "tiffslide"):
        try:
            opened[name] = _open_backend(path, name)
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


# ---------------------------------------------------------------------------- µm/px


@dataclass(frozen=True)
class _Mpp:
    value: float
    source: str


def _plausible(value: float | None) -> bool:
    return value is not None and MPP_RANGE[0] <= value <= MPP_RANGE[1]


def _float(text: object) -> float | None:
    try:
        value = float(str(text).strip().strip('"'))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _mean_xy(x: float | None, y: float | None) -> float | None:
    values = [v for v in (x, y) if v is not None and v > 0]
    return sum(values) / len(values) if values else None


def _mpp_from_properties(props: Mapping[str, str]) -> _Mpp | None:
    candidates: list[tuple[float | None, str]] = [(_float(props.get("aperio.MPP")), "aperio.MPP")]
    if props.get("openslide.vendor", "generic-tiff") != "generic-tiff":
        value = _mean_xy(_float(props.get("openslide.mpp-x")), _float(props.get("openslide.mpp-y")))
        candidates.append((value, "openslide.mpp-x"))
    if props.get("tiffslide.vendor", "generic-tiff") != "generic-tiff":
        value = _mean_xy(_float(props.get("tiffslide.mpp-x")), _float(props.get("tiffslide.mpp-y")))
        candidates.append((value, "tiffslide.mpp-x"))
    for value, source in candidates:
        if value is not None and _plausible(value):
            return _Mpp(value, source)
    return None


@dataclass(frozen=True)
class _TiffFacts:
    """What wsi-atm reads from a TIFF itself: µm/px from its tags, and whether it is cut short."""

    mpp: _Mpp | None = None
    truncated: str | None = None


def _inspect_tiff(path: Path) -> _TiffFacts:
    """OME-XML PhysicalSize or level-0 X/YResolution, and a check that every image's data lies
    inside the file (a truncated copy would otherwise fail mid-run). Not a TIFF: no facts."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            mpp = _mpp_from_ome(tif.ome_metadata) if tif.is_ome else None
            mpp = mpp or _mpp_from_resolution(tif.pages.first.tags)
            return _TiffFacts(mpp, _truncation(tif, path.stat().st_size))
    except Exception:  # not a TIFF (e.g. MIRAX), or unreadable: the backends decided it opens
        return _TiffFacts()


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


def _mpp_from_ome(xml: str | None) -> _Mpp | None:
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for element in root.iter():
        if element.tag.endswith("}Pixels") or element.tag == "Pixels":
            values = []
            for axis in ("X", "Y"):
                size = _float(element.get(f"PhysicalSize{axis}"))
                scale = _OME_UNITS_UM.get(element.get(f"PhysicalSize{axis}Unit", "µm"))
                values.append(size * scale if size is not None and scale else None)
            value = _mean_xy(*values)
            return _Mpp(value, "ome.PhysicalSizeX") if value and _plausible(value) else None
    return None


def _mpp_from_resolution(tags: Any) -> _Mpp | None:
    unit_tag, x_tag, y_tag = (tags.get(k) for k in ("ResolutionUnit", "XResolution", "YResolution"))
    if unit_tag is None or x_tag is None:
        return None
    unit = {2: ("inch", 25_400.0), 3: ("centimeter", 10_000.0)}.get(int(unit_tag.value))
    if unit is None:
        return None
    per_unit = [_rational(t.value) for t in (x_tag, y_tag) if t is not None]
    mpps = [unit[1] / r for r in per_unit if r and r > 0]
    value = sum(mpps) / len(mpps) if mpps else None
    if value is None or not _plausible(value):
        return None
    return _Mpp(value, f"tiff.XResolution ({unit[0]})")


def _rational(value: Any) -> float | None:
    if isinstance(value, tuple) and len(value) == 2:
        return value[0] / value[1] if value[1] else None
    return _float(value)


def _resolve_mpp(props: Mapping[str, str], tiff: _TiffFacts, override: float | None) -> _Mpp | None:
    if override is not None:
        return _Mpp(float(override), "--mpp override")
    return _mpp_from_properties(props) or tiff.mpp


# ---------------------------------------------------------------------------- the Slide


class Slide:
    """An open slide: geometry, µm/px and RGB regions, whichever backend reads it.

    ``read_region`` and ``get_thumbnail`` may be called from several threads at once.
    """

    def __init__(self, path: Path, backend: _Backend, mpp: _Mpp | None,
                 declared: _Mpp | None = None) -> None:
        self.path = path
        self._backend = backend
        self._mpp = mpp
        self._declared = declared if declared is not None else mpp
        self.backend: str = backend.name
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
        x = _float(self.properties.get("openslide.bounds-x"))
        y = _float(self.properties.get("openslide.bounds-y"))
        return int(x or 0), int(y or 0)

    @property
    def vendor(self) -> str:
        props = self.properties
        return props.get("openslide.vendor") or props.get("tiffslide.vendor") or "generic-tiff"

    # µm/px --------------------------------------------------------------------------------
    @property
    def mpp(self) -> float:
        """µm per level-0 pixel (mean of x and y)."""
        if self._mpp is None:
            raise MppUnknownError(_mpp_message(self.path))
        return self._mpp.value

    @property
    def declared_mpp(self) -> float | None:
        """µm/px as the file declares it, ignoring any override (None: it declares none)."""
        return self._declared.value if self._declared is not None else None

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
            return self._backend.read(xy, level, (width, height))
        except SlideError:
            raise
        except Exception as exc:
            raise SlideError(
                f"{self.path}: cannot read {width}x{height} px at {xy} of level {level} "
                f"({_short(exc)})"
            ) from exc

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
            bands.append(np.asarray(Image.fromarray(band).reduce(factor)))
        image = Image.fromarray(np.concatenate(bands, axis=0))
        return np.asarray(image.resize((out_w, out_h), Image.Resampling.LANCZOS))

    def _best_level(self, downsample: float) -> int:
        best = 0
        for index, ds in enumerate(self.level_downsamples):
            if ds <= downsample + 1e-6:
                best = index
        return best

    # metadata -----------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Everything ``slide-info`` shows, JSON-serialisable."""
        objective = _float(
            self.properties.get("openslide.objective-power")
            or self.properties.get("tiffslide.objective-power")
            or self.properties.get("aperio.AppMag")
        )
        return {
            "path": str(self.path),
            "backend": self.backend,
            "vendor": self.vendor,
            "dimensions": list(self.dimensions),
            "level_count": self.level_count,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples),
            "mpp": self._mpp.value if self._mpp else None,
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


def _mpp_message(path: Path) -> str:
    return (
        f"{path}: the slide declares no usable µm/px (no vendor metadata or plausible TIFF "
        "resolution); pass --mpp, e.g. --mpp 0.25"
    )


def open_slide(
    path: str | Path,
    backend: str = "auto",
    mpp: float | None = None,
    *,
    require_mpp: bool = True,
) -> Slide:
    """Open a whole-slide image with ``backend`` ("auto", "openslide" or "tiffslide").

    ``mpp`` (µm/px at level 0, > 0) overrides what the slide declares. Without it, a slide
    that declares none raises :class:`MppUnknownError`, unless ``require_mpp=False`` (for
    ``slide-info``, which reports it as unknown). Unreadable input raises :class:`SlideError`.
    """
    if backend not in BACKENDS:
        raise OptionError(f"unknown slide backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if mpp is not None and not (isinstance(mpp, int | float) and math.isfinite(mpp) and mpp > 0):
        raise OptionError(f"--mpp must be a positive number of µm per pixel, got {mpp!r}")
    path = Path(path)
    if not path.exists():
        raise SlideError(f"{path}: no such file")
    if path.is_dir():
        raise SlideError(f"{path}: is a directory, not a slide file")
    inject("open")
    handle = _open_auto(path) if backend == "auto" else _open_backend(path, backend)
    tiff = _inspect_tiff(path)
    if tiff.truncated:
        handle.close()
        raise SlideError(f"{path}: {tiff.truncated}")
    declared = _resolve_mpp(handle.properties, tiff, None)
    found = _resolve_mpp(handle.properties, tiff, mpp)
    if found is None and require_mpp:
        handle.close()
        raise MppUnknownError(_mpp_message(path))
    return Slide(path, handle, found, declared)
