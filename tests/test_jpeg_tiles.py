"""How a TIFF's JPEG tiles become complete streams (slides/jpeg.py): tables spliced in, the
file's RGB colour space said with an Adobe marker, each the same pixels as imagecodecs with the
file's own colour space forced."""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile

from wsi_atm.slides.jpeg import ADOBE_RGB, SOI, DamagedTile, JpegTiles, OtherSizeTile
from wsi_atm.slides.tiles import decode_buffer

SHAPE = (64, 64, 3)


def _encode(image: np.ndarray, rgb: bool) -> bytes:
    """As a TIFF holds it: RGB-coded data without the Adobe marker saying so (the TIFF's
    Photometric tag does)."""
    blob = bytes(imagecodecs.jpeg8_encode(image, level=90, outcolorspace="RGB" if rgb else None))
    if rgb:
        assert blob[2:4] == ADOBE_RGB[:2]
        blob = SOI + blob[2 + len(ADOBE_RGB):]
    return blob


@pytest.fixture()
def image() -> np.ndarray:
    return np.random.default_rng(4).integers(0, 256, SHAPE, dtype=np.uint8)


def test_tables_lose_their_own_markers_and_rgb_gains_adobe() -> None:
    tables = SOI + b"\xff\xdb tables" + b"\xff\xd9"
    assert JpegTiles.for_page(tables, False, SHAPE).head == SOI + b"\xff\xdb tables"
    assert JpegTiles.for_page(tables, True, SHAPE).head == SOI + ADOBE_RGB + b"\xff\xdb tables"
    assert JpegTiles.for_page(None, False, SHAPE).head == b""
    jpeg = JpegTiles.for_page(tables, False, SHAPE)
    assert jpeg.stream(b"\0\0abc") == b"\0\0abc"  # not JPEG: left for libjpeg to refuse
    assert bytes(jpeg.stream(SOI + b"abc")) == SOI + b"\xff\xdb tablesabc"


@pytest.mark.parametrize("rgb", [False, True])
def test_decodes_as_imagecodecs_with_the_colour_space_forced(image: np.ndarray,
                                                             rgb: bool) -> None:
    blob = _encode(image, rgb)
    want = imagecodecs.jpeg8_decode(blob, colorspace=2 if rgb else None, outcolorspace=2)
    out = decode_buffer(SHAPE)
    got = JpegTiles.for_page(None, rgb, SHAPE).decode(blob, out)
    assert np.shares_memory(got, out)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("size", [(32, 64), (64, 128)])
def test_another_size_is_refused_with_its_size(size: tuple[int, int]) -> None:
    h, w = size
    blob = _encode(np.zeros((h, w, 3), np.uint8), False)
    for out in (None, decode_buffer(SHAPE)):
        with pytest.raises(OtherSizeTile) as caught:
            JpegTiles.for_page(None, False, SHAPE).decode(blob, out)
        assert (caught.value.width, caught.value.height) == (w, h)


def test_a_cut_short_stream_is_damaged(image: np.ndarray) -> None:
    blob = _encode(image, False)
    with pytest.raises(DamagedTile, match=r"Corrupt JPEG data|Premature end"):
        JpegTiles.for_page(None, False, SHAPE).decode(blob[: len(blob) * 2 // 3] + b"\xff\xd9")


def test_real_aperio_tiles_equal_imagecodecs_forced_rgb(cmu_svs: Path) -> None:
    """The CMU SVS: abbreviated RGB-coded tiles with JPEGTables, every tile of level 0."""
    with tifffile.TiffFile(cmu_svs) as tif:
        page = tif.pages[0]
        tables = page.jpegtables
        shape = (page.tilelength, page.tilewidth, 3)
        jpeg = JpegTiles.for_page(tables, True, shape)
        fh = tif.filehandle
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
            fh.seek(offset)
            blob = fh.read(count)
            want = imagecodecs.jpeg8_decode(blob, tables=tables, colorspace=2, outcolorspace=2)
            np.testing.assert_array_equal(jpeg.decode(blob, decode_buffer(shape)), want)
        # Aperio's components carry no R, G, B names: without the Adobe marker libjpeg would
        # take them for YCbCr and convert them into other colours
        plain = JpegTiles.for_page(tables, False, shape).decode(blob)
        assert np.abs(plain.astype(int) - want.astype(int)).max() > 50
