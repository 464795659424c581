"""The TIFF's Photometric tag decides how JPEG tiles are converted, as OpenSlide decides it,
whatever JFIF or Adobe markers the page's JPEGTables or a tile carry; the tables end at their
end-of-image marker."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile

from wsi_atm.slides import open_slide
from wsi_atm.synthetic import tissue_image

T = 256
SOI, EOI = b"\xff\xd8", b"\xff\xd9"
TABLE_MARKERS = (b"\xff\xdb", b"\xff\xc4")


def _segments(blob: bytes) -> tuple[list[bytes], bytes]:
    """The marker segments after the start marker, up to the scan, and the rest."""
    at, found = 2, []
    while blob[at:at + 2] != b"\xff\xda":
        n = struct.unpack(">H", blob[at + 2:at + 4])[0]
        found.append(blob[at:at + 2 + n])
        at += 2 + n
    return found, blob[at:]


def _aperio_like(tile: np.ndarray) -> tuple[bytes, bytes]:
    """RGB-coded JPEG as Aperio stores it: tables apart, no colour marker in the tile."""
    segs, rest = _segments(bytes(imagecodecs.jpeg8_encode(tile, level=90, outcolorspace="RGB")))
    tables = SOI + b"".join(s for s in segs if s[:2] in TABLE_MARKERS) + EOI
    other = b"".join(s for s in segs if s[:2] not in (*TABLE_MARKERS, b"\xff\xee"))
    return tables, SOI + other + rest


def _jfif_app0() -> bytes:
    segs, _ = _segments(bytes(imagecodecs.jpeg8_encode(np.zeros((8, 8, 3), np.uint8))))
    return next(s for s in segs if s[:2] == b"\xff\xe0")


ADOBE_YCC = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x01"  # transform 1: YCbCr


def _write(path: Path, change_tables: Callable[[bytes], bytes],
           change_tile: Callable[[int, bytes], bytes]) -> Path:
    image = tissue_image(2 * T, 2 * T, seed=7)
    parts = [_aperio_like(image[r:r + T, c:c + T]) for r in (0, T) for c in (0, T)]
    tables = change_tables(parts[0][0])
    tiles = [change_tile(i, tile) for i, (_, tile) in enumerate(parts)]
    with tifffile.TiffWriter(path) as tif:
        tif.write(iter(tiles), shape=(2 * T, 2 * T, 3), dtype=np.uint8, tile=(T, T),
                  compression=7, photometric="rgb", metadata=None,
                  extratags=[(347, 7, len(tables), tables, True)])
    with tifffile.TiffFile(path, mode="r+b") as tif:  # tifffile wrote YCbCr: RGB, as Aperio
        tif.pages[0].tags["PhotometricInterpretation"].overwrite(2)
    return path


def _keep(blob: bytes) -> bytes:
    return blob


CASES: dict[str, tuple[Callable[[bytes], bytes], Callable[[int, bytes], bytes]]] = {
    "tables-with-jfif": (lambda t: SOI + _jfif_app0() + t[2:], lambda i, b: b),
    "later-tiles-with-jfif": (_keep, lambda i, b: b if i == 0 else SOI + _jfif_app0() + b[2:]),
    "tiles-with-adobe-ycbcr": (_keep, lambda i, b: SOI + ADOBE_YCC + b[2:]),
    "tables-padded-after-eoi": (lambda t: t + b"\0", lambda i, b: b),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rgb_tiles_equal_openslide_whatever_markers_they_carry(tmp_path: Path,
                                                                case: str) -> None:
    # Regression: an Adobe marker put first said RGB, but libjpeg lets a JFIF marker (in the
    # tables or a tile) win over it and takes the last Adobe marker, so such tiles were
    # converted as YCbCr, silently wrong colours where OpenSlide (and the decoder before)
    # follow the Photometric tag; zero padding after the tables' end marker was refused as
    # damage, which OpenSlide reads
    import openslide

    path = _write(tmp_path / f"{case}.tif", *CASES[case])
    with openslide.OpenSlide(path) as ref:
        want = np.asarray(ref.read_region((0, 0), 0, (2 * T, 2 * T)))[..., :3].astype(int)
    with open_slide(path, backend="tiles", mpp=0.25) as slide:
        got = slide.read_level_region((0, 0), 0, (2 * T, 2 * T)).astype(int)
        grid = slide.tile_grid(0)
        assert grid is not None
        out = np.empty((T, T, 3), np.uint8)
        run = [tile.astype(int) for tile in slide.decode_tiles(0, [0, 1, 2, 3], out)]
    assert np.abs(got - want).max() <= 1
    for i, tile in enumerate(run):
        r, c = divmod(i, 2)
        assert np.abs(tile - want[r * T:(r + 1) * T, c * T:(c + 1) * T]).max() <= 1
