"""Write real-format synthetic slides (tiled pyramidal TIFF, Aperio SVS) with tifffile.

Plain functions, not fixtures, so the tests, the benchmarks and sample_slides/make_synthetic.py
import them from the installed package::

    from wsi_atm.synthetic import tissue_image, write_pyramid_tiff, write_svs

The images are tissue-like (pink stroma, pale gaps, purple nuclei), deterministic from a seed,
and defined on an infinite canvas: ``tissue_region(x0, y0, w, h, seed)`` gives the same pixels
for a window whether it is drawn alone or as part of a larger image, so big slides can be
written strip by strip.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image, ImageDraw

RESOLUTION_UNITS = {"centimeter": (10_000.0, "CENTIMETER"), "inch": (25_400.0, "INCH")}

_CELL = 40  # nucleus grid pitch in px (one candidate position per cell)


# ---------------------------------------------------------------------------- tissue images


def _hash(*keys: np.ndarray | int) -> np.ndarray:
    """A vectorised splitmix64-style hash of integer arrays → uint64 (deterministic)."""
    h = np.uint64(0x9E3779B97F4A7C15)
    out: np.ndarray = np.zeros(np.broadcast(*[np.asarray(k) for k in keys]).shape, np.uint64)
    out += h
    with np.errstate(over="ignore"):
        for key in keys:
            out ^= np.asarray(key).astype(np.int64).astype(np.uint64)
            out *= np.uint64(0xBF58476D1CE4E5B9)
            out ^= out >> np.uint64(31)
            out *= np.uint64(0x94D049BB133111EB)
            out ^= out >> np.uint64(29)
    return out


def _unit(*keys: np.ndarray | int) -> np.ndarray:
    """Deterministic uniform floats in [0, 1) from integer keys."""
    return (_hash(*keys) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _smooth_field(xs: np.ndarray, ys: np.ndarray, seed: int, scale: float) -> np.ndarray:
    """A smooth pseudo-random field in about [-1, 1] from a few seeded sinusoids."""
    field = np.zeros(np.broadcast(xs, ys).shape, np.float32)
    for k in range(4):
        a, b, c = (float(v) for v in _unit(seed, k, np.arange(3)))
        angle = 2 * np.pi * a
        freq = (0.6 + b) / scale
        field += np.sin(
            (xs * np.cos(angle) + ys * np.sin(angle)) * (2 * np.pi * freq) + 2 * np.pi * c
        ).astype(np.float32)
    return field / 2.0


def tissue_region(x0: int, y0: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """Pixels ``[x0, x0+width) × [y0, y0+height)`` of the seeded tissue canvas (H×W×3 uint8)."""
    ys = np.arange(y0, y0 + height, dtype=np.float32)[:, None]
    xs = np.arange(x0, x0 + width, dtype=np.float32)[None, :]
    tissue = _smooth_field(xs, ys, seed, scale=900.0)  # > 0: stroma, < -0.6: pale gap
    shade = _smooth_field(xs, ys, seed + 1, scale=150.0)
    stroma = np.array([226, 160, 196], np.float32)
    gap = np.array([242, 228, 236], np.float32)
    w = np.clip((tissue[..., None] + 0.6) * 2.0, 0.0, 1.0)
    rgb = gap * (1 - w) + stroma * w + shade[..., None] * np.float32(10.0)
    noise = _unit(seed, np.arange(y0, y0 + height)[:, None], np.arange(x0, x0 + width)[None, :])
    rgb += ((noise.astype(np.float32) - 0.5) * 12.0)[..., None]
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    _draw_nuclei(image, x0, y0, seed)
    return np.asarray(image)


def nuclei(x0: int, y0: int, width: int, height: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The nuclei drawn on (or reaching into) a window of the seeded canvas: level-0 centres
    ``x``/``y``, ``radius`` (px), ``aspect`` (minor/major axis) and ``shade`` (0 = darkest)."""
    margin = _CELL
    cx = np.arange((x0 - margin) // _CELL, (x0 + width + margin) // _CELL + 1)
    cy = np.arange((y0 - margin) // _CELL, (y0 + height + margin) // _CELL + 1)
    gx, gy = (g.ravel() for g in np.meshgrid(cx, cy))
    px = (gx + _unit(seed, gx, gy, 1)) * _CELL
    py = (gy + _unit(seed, gx, gy, 2)) * _CELL
    tissue = _smooth_field(px.astype(np.float32), py.astype(np.float32), seed, scale=900.0)
    keep = _unit(seed, gx, gy, 3) < 0.15 + 0.5 * np.clip(tissue, 0, 1)
    return {
        "x": px[keep],
        "y": py[keep],
        "radius": (7 + 8 * _unit(seed, gx, gy, 4))[keep],
        "aspect": (0.6 + 0.4 * _unit(seed, gx, gy, 5))[keep],
        "shade": _unit(seed, gx, gy, 6)[keep],
    }


def _draw_nuclei(image: Image.Image, x0: int, y0: int, seed: int) -> None:
    """Purple elliptical nuclei on a jittered grid; denser where the tissue field is high."""
    found = nuclei(x0, y0, image.size[0], image.size[1], seed)
    draw = ImageDraw.Draw(image)
    for x, y, r, a, d in zip(
        found["x"] - x0, found["y"] - y0, found["radius"], found["aspect"], found["shade"],
        strict=True,
    ):  # fmt: skip
        color = (int(70 + 60 * d), int(30 + 40 * d), int(110 + 50 * d))
        draw.ellipse((x - r, y - r * a, x + r, y + r * a), fill=color)


def tissue_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A tissue-like RGB image (H×W×3 uint8), deterministic from ``seed``."""
    return tissue_region(0, 0, width, height, seed)


def place_crops(
    canvas: np.ndarray, crops: Sequence[np.ndarray], centers: Sequence[tuple[float, float]]
) -> np.ndarray:
    """A copy of ``canvas`` with each crop pasted centred on its (x, y).

    The crop lands where the crop engine's native window for (x, y) lies
    (:func:`~wsi_atm.crops.plan.window_origins`: even sides centred on the nearest pixel
    corner, halves up; odd on the pixel the point lies in), so a lossless slide gives the crops
    back exactly. (It used ``round``, which takes halves to even: a crop planted at x = 100.5
    sat a pixel left of the engine's window.)
    """
    out = canvas.copy()
    for crop, (x, y) in zip(crops, centers, strict=True):
        h, w = crop.shape[:2]
        left = math.floor(x + (0.5 if w % 2 == 0 else 0.0)) - w // 2
        top = math.floor(y + (0.5 if h % 2 == 0 else 0.0)) - h // 2
        if left < 0 or top < 0 or left + w > out.shape[1] or top + h > out.shape[0]:
            raise ValueError(f"crop centred at ({x}, {y}) does not fit in the canvas")
        out[top : top + h, left : left + w] = crop[..., :3]
    return out


# ---------------------------------------------------------------------------- writers


def _downsample(image: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return image
    h, w = image.shape[:2]
    size = (max(1, w // factor), max(1, h // factor))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


def _resolution(
    mpp: float | None, unit: str | None
) -> tuple[tuple[float, float] | None, str | None]:
    """X/YResolution and ResolutionUnit for ``mpp``; unit None writes the value with unit NONE."""
    if mpp is None:
        return None, None
    if unit is None:
        return (10_000.0 / mpp, 10_000.0 / mpp), "NONE"
    if unit not in RESOLUTION_UNITS:
        raise ValueError(f"resolution_unit must be centimeter, inch or None, not {unit!r}")
    per_unit, name = RESOLUTION_UNITS[unit]
    return (per_unit / mpp, per_unit / mpp), name


def _write_options(compression: str | None, quality: int) -> dict[str, Any]:
    if compression is None:
        return {}
    if compression == "jpeg":
        return {"compression": "jpeg", "compressionargs": {"level": quality}}
    return {"compression": compression}


def write_pyramid_tiff(
    path: str | Path,
    image: np.ndarray,
    mpp: float | None,
    levels: Sequence[int] = (1, 4, 16),
    tile: int | None = 256,
    compression: str | None = "jpeg",
    subifds: bool = False,
    resolution_unit: str | None = "centimeter",
    resolution: tuple[float, float] | None = None,
    quality: int = 90,
    description: str | None = None,
) -> Path:
    """A tiled pyramidal TIFF; levels are downsample factors of ``image`` (the first must be 1).

    Levels go in the main IFD chain (each reduced level marked ``NewSubfileType=1``), which is
    what OpenSlide's generic-tiff driver reads as a pyramid; ``subifds=True`` puts them in
    SubIFDs of the first page instead (OME-TIFF style; OpenSlide then sees one level).
    ``mpp`` is written as X/YResolution in ``resolution_unit`` ("centimeter", "inch" or None
    for ResolutionUnit NONE); ``resolution`` (pixels per unit) overrides it, e.g. (72, 72) with
    ``resolution_unit="inch"`` for the 72-dpi default. ``tile=None`` writes strips.
    """
    path = Path(path)
    if levels[0] != 1:
        raise ValueError("the first level must have downsample 1")
    res, unit = _resolution(mpp, resolution_unit)
    if resolution is not None:
        res, unit = resolution, RESOLUTION_UNITS[resolution_unit][1] if resolution_unit else "NONE"
    common: dict[str, Any] = {"photometric": "rgb", **_write_options(compression, quality)}
    if tile is not None:
        common["tile"] = (tile, tile)
    with tifffile.TiffWriter(path, bigtiff=image.nbytes > 2**31) as tif:
        first: dict[str, Any] = dict(common, metadata=None, description=description)
        if res is not None:
            first.update(resolution=res, resolutionunit=unit)
        elif unit is not None:
            first.update(resolutionunit=unit)
        if subifds and len(levels) > 1:
            first["subifds"] = len(levels) - 1
        tif.write(image, **first)
        for factor in levels[1:]:
            level_res = None if res is None else (res[0] / factor, res[1] / factor)
            extra: dict[str, Any] = {"subfiletype": 1}
            if level_res is not None:
                extra.update(resolution=level_res, resolutionunit=unit)
            tif.write(_downsample(image, factor), **common, **extra)
    return path


def write_single_level_tiff(
    path: str | Path,
    image: np.ndarray,
    mpp: float | None,
    tile: int | None = 256,
    compression: str | None = "zlib",
    resolution_unit: str | None = "centimeter",
) -> Path:
    """A one-level TIFF (tiled by default; ``tile=None`` writes strips, which OpenSlide refuses)."""
    return write_pyramid_tiff(
        path, image, mpp, levels=(1,), tile=tile, compression=compression,
        resolution_unit=resolution_unit,
    )  # fmt: skip


def aperio_description(width: int, height: int, mpp: float, tile: int, app_mag: int = 40) -> str:
    """An Aperio ImageDescription as OpenSlide's aperio driver and tifffile recognise it."""
    return (
        f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}] "
        f"({tile}x{tile}) JPEG/RGB Q=90|AppMag = {app_mag}|MPP = {mpp}"
        "|Filename = synthetic|Title = wsi-atm synthetic slide"
    )


def _svs_thumbnail(tif: tifffile.TiffWriter, source: np.ndarray, shape: tuple[int, int]) -> None:
    """The stripped thumbnail IFD (≤ 512 px) that sits second in a real SVS."""
    h, w = shape
    factor = max(1, -(-max(source.shape[:2]) // 512))
    thumb = _downsample(source, factor)
    tif.write(
        thumb, photometric="rgb", compression="jpeg", rowsperstrip=16,
        description=f"Aperio Image Library v12.0.15 \r\n{w}x{h} -> {thumb.shape[1]}x"
        f"{thumb.shape[0]} - ",
    )  # fmt: skip


def _svs_level_description(width: int, height: int, factor: int, tile: int) -> str:
    return (
        f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}] "
        f"({tile}x{tile}) -> {width // factor}x{height // factor} JPEG/RGB Q=90"
    )


def write_svs(
    path: str | Path,
    image: np.ndarray,
    mpp: float = 0.25,
    levels: Sequence[int] = (1, 4, 16),
    tile: int = 256,
    compression: str | None = "jpeg",
    quality: int = 90,
    app_mag: int = 40,
) -> Path:
    """An Aperio-style SVS laid out like a real one, which OpenSlide reads as vendor ``aperio``.

    IFD 0 is level 0 (tiled; ImageDescription ``Aperio Image Library …|AppMag = 40|MPP = 0.25``),
    IFD 1 a stripped thumbnail, then the reduced levels, tiled, in the main chain. No
    X/YResolution tags, so µm/px can only come from ``aperio.MPP``.
    """
    path = Path(path)
    h, w = image.shape[:2]
    if levels[0] != 1:
        raise ValueError("the first level must have downsample 1")
    opts: dict[str, Any] = {
        "photometric": "rgb", "tile": (tile, tile), **_write_options(compression, quality)
    }  # fmt: skip
    with tifffile.TiffWriter(path, bigtiff=image.nbytes > 2**31) as tif:
        tif.write(
            image, metadata=None, description=aperio_description(w, h, mpp, tile, app_mag), **opts
        )
        _svs_thumbnail(tif, image, (h, w))
        for factor in levels[1:]:
            desc = _svs_level_description(w, h, factor, tile)
            tif.write(_downsample(image, factor), description=desc, **opts)
    return path


def write_svs_strips(
    path: str | Path,
    width: int,
    height: int,
    region: Callable[[int, int, int, int], np.ndarray],
    mpp: float = 0.25,
    levels: Sequence[int] = (1, 4, 16),
    tile: int = 256,
    quality: int = 85,
) -> Path:
    """A large JPEG SVS (same layout as :func:`write_svs`) written tile-row by tile-row.

    ``region(x0, y0, w, h)`` returns the pixels of a level-0 window (e.g. a partial of
    :func:`tissue_region`). Reduced levels (factors dividing ``tile``) are accumulated from
    box-downsampled strips, so memory stays at about one strip plus the reduced levels.
    """
    path = Path(path)
    factors = list(levels)
    if factors[0] != 1 or any(tile % f for f in factors):
        raise ValueError("levels must start at 1 and divide the tile size")
    reduced = {
        f: np.zeros((max(1, height // f), max(1, width // f), 3), np.uint8) for f in factors[1:]
    }

    def tiles() -> Iterator[np.ndarray]:
        for top in range(0, height, tile):
            rows = min(tile, height - top)
            strip = region(0, top, width, rows)
            for f, arr in reduced.items():
                _accumulate(arr, strip, top, f)
            for left in range(0, width, tile):
                block = np.full((tile, tile, 3), 255, np.uint8)
                part = strip[:, left : left + tile]
                block[: part.shape[0], : part.shape[1]] = part
                yield block

    opts: dict[str, Any] = {
        "photometric": "rgb", "tile": (tile, tile), "compression": "jpeg",
        "compressionargs": {"level": quality},
    }  # fmt: skip
    with tifffile.TiffWriter(path, bigtiff=width * height * 3 > 2**31) as tif:
        tif.write(
            tiles(), shape=(height, width, 3), dtype=np.uint8, metadata=None,
            description=aperio_description(width, height, mpp, tile), **opts,
        )  # fmt: skip
        smallest = reduced[factors[-1]] if len(factors) > 1 else region(0, 0, width, height)
        _svs_thumbnail(tif, smallest, (height, width))
        for f, arr in reduced.items():
            tif.write(arr, description=_svs_level_description(width, height, f, tile), **opts)
    return path


def _accumulate(target: np.ndarray, strip: np.ndarray, top: int, factor: int) -> None:
    """Box-downsample a level-0 strip into rows of a reduced level (strip rows align to factor)."""
    rows = strip.shape[0] // factor
    if rows == 0:
        return
    cols = target.shape[1]
    block = strip[: rows * factor, : cols * factor].astype(np.uint16)
    small = block.reshape(rows, factor, cols, factor, 3).mean(axis=(1, 3))
    start = top // factor
    stop = min(start + rows, target.shape[0])
    target[start:stop] = np.round(small[: stop - start]).astype(np.uint8)
