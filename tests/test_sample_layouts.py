"""Sample layouts a slide reader could turn into wrong RGB without a word: every backend gives
the true grey, or the slide is refused at open (exit 2), never silently wrong pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsi_atm.errors import SlideError
from wsi_atm.slides import open_slide

RES = {"resolution": (40000, 40000), "resolutionunit": "CENTIMETER"}
W, H = 300, 200  # not a multiple of the 64-px tiles: partial tiles on the right and bottom


def _grey() -> np.ndarray:
    grey = np.full((H, W), 200, np.uint8)
    grey[20:40, 280:300] = 0  # a mark in the right-edge (partial) tile column
    grey[100:110, 100:110] = 0
    return grey


def _read(path: Path, backend: str) -> np.ndarray:
    with open_slide(path, backend=backend) as slide:
        return slide.read_region((0, 0), 0, (W, H))


@pytest.mark.parametrize("backend", ["auto", "tiffslide"])
@pytest.mark.parametrize("layout", ["palette-tiled", "palette-strips", "grey16", "grey-alpha"])
def test_readable_layouts_give_true_grey(tmp_path: Path, backend: str, layout: str) -> None:
    grey = _grey()
    path = tmp_path / f"{layout}.tif"
    if layout.startswith("palette"):
        colormap = np.tile(np.minimum(np.arange(256) * 2, 255).astype(np.uint16) * 257, (3, 1))
        layout_args = {"tile": (64, 64)} if layout == "palette-tiled" else {"rowsperstrip": 32}
        tifffile.imwrite(path, grey // 2, photometric="palette", colormap=colormap,
                         **layout_args, **RES)
    elif layout == "grey16":
        tifffile.imwrite(path, grey.astype(np.uint16) * 257, tile=(64, 64), **RES)
    else:
        tifffile.imwrite(path, np.stack([grey, np.full_like(grey, 255)], axis=2),
                         photometric="minisblack", extrasamples=["unassalpha"], tile=(64, 64),
                         **RES)
    region = _read(path, backend)
    assert np.abs(region.astype(int) - grey[..., None]).max() == 0


@pytest.mark.parametrize("backend", ["auto", "openslide", "tiffslide"])
@pytest.mark.parametrize("channels", [1, 3])
def test_associated_alpha_is_composited_as_premultiplied(tmp_path: Path, backend: str,
                                                         channels: int) -> None:
    # Regression: tiffslide's samples of an associated-alpha TIFF (the colour premultiplied)
    # were composited as unassociated: up to 64 darker where alpha is 128, with --backend
    # tiffslide, and with auto for grey + alpha (which goes to tiffslide)
    if channels == 1 and backend == "openslide":
        pytest.skip("grey + alpha is refused by openslide (test above)")
    grey = _grey()
    alpha = np.full_like(grey, 255)
    alpha[:, 150:] = 128
    alpha[:, 250:] = 0
    colour = (grey.astype(np.uint16) * alpha // 255).astype(np.uint8)
    path = tmp_path / "assoc.tif"
    tifffile.imwrite(path, np.stack([colour] * channels + [alpha], axis=2),
                     photometric="minisblack" if channels == 1 else "rgb",
                     extrasamples=["assocalpha"], tile=(64, 64), **RES)
    truth = grey.astype(int) * alpha // 255 + 255 - alpha  # over white
    assert np.abs(_read(path, backend).astype(int) - truth[..., None]).max() <= 1


@pytest.mark.parametrize("backend", ["auto", "openslide", "tiffslide"])
@pytest.mark.parametrize("dtype", ["float32", "int16", "bool"])
def test_unconvertible_samples_are_refused(tmp_path: Path, backend: str, dtype: str) -> None:
    grey = _grey()
    data = {"float32": grey / np.float32(255), "int16": grey.astype(np.int16),
            "bool": grey > 100}[dtype]
    path = tmp_path / f"{dtype}.tif"
    tifffile.imwrite(path, data, tile=(64, 64), **RES)
    with pytest.raises(SlideError, match="unsigned"):
        _read(path, backend)


def test_openslide_is_refused_for_two_byte_pixels(tmp_path: Path) -> None:
    # OpenSlide 4.0 garbles the partial right-edge tiles of 16-bit grey: refused, not read
    path = tmp_path / "grey16.tif"
    tifffile.imwrite(path, _grey().astype(np.uint16) * 257, tile=(64, 64), **RES)
    with pytest.raises(SlideError, match="garbles"):
        _read(path, "openslide")


@pytest.mark.parametrize("backend", ["auto", "tiffslide"])
@pytest.mark.parametrize("layout", ["white16", "white-alpha"])
def test_white_is_zero_grey_of_two_bytes_a_pixel_is_the_right_way_up(
        tmp_path: Path, backend: str, layout: str) -> None:
    # Regression (review): such slides go to tiffslide, whose adapter inverted 8-bit grey only:
    # 16-bit white-is-zero came out inverted, and grey + alpha had its alpha inverted (white)
    grey = _grey()
    path = tmp_path / f"{layout}.tif"
    if layout == "white16":
        data = (255 - grey).astype(np.uint16) * 257
    else:
        data = np.stack([255 - grey, np.full_like(grey, 255)], axis=2)
    extra = {} if layout == "white16" else {"extrasamples": ["unassalpha"]}
    tifffile.imwrite(path, data, photometric="miniswhite", tile=(64, 64), **extra, **RES)
    assert np.abs(_read(path, backend).astype(int) - grey[..., None]).max() == 0
