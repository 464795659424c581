"""Damaged slide files stop with an error naming the tile, in every path, never grey crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsi_atm.crops import plan_crops, stream_crops
from wsi_atm.errors import SlideError
from wsi_atm.slides import open_slide
from wsi_atm.synthetic import tissue_image, write_svs

TILE = 5  # row 1, column 1 of the 4-across level 0 (256-px tiles of a 1000-px image)


@pytest.fixture()
def svs(tmp_path: Path) -> Path:
    return write_svs(tmp_path / "s.svs", tissue_image(1000, 700, seed=3), mpp=0.25)


def _assert_every_path_refuses(src: Path, said: str) -> None:
    with open_slide(src, backend="tiles") as slide:
        plan = plan_crops(slide)
        for workers in (0, 2):
            with pytest.raises(SlideError, match=said):
                list(stream_crops(slide, [384.0], [384.0], plan=plan, workers=workers))
        with pytest.raises(SlideError, match=said):
            slide.read_level_region((300, 300), 0, (64, 64))  # the region cache's path


def test_a_tile_cut_short_is_an_error_not_grey_rows(svs: Path) -> None:
    # Regression: a JPEG tile whose byte count was halved decoded without complaint, its
    # missing rows flat grey (128), and the crops were classified; OpenSlide refuses it
    with tifffile.TiffFile(svs, mode="r+b") as tif:
        tag = tif.pages[0].tags["TileByteCounts"]
        counts = list(tag.value)
        counts[TILE] //= 2
        tag.overwrite(counts)
    _assert_every_path_refuses(svs, rf"tile {TILE} of level 0 is cut short")


@pytest.mark.parametrize("padding", [7, 200])  # 200: past the 64 bytes looked at first
def test_zero_padding_after_the_end_marker_is_accepted(svs: Path, padding: int) -> None:
    with open_slide(svs, backend="tiles") as slide:
        before = slide.read_level_region((300, 300), 0, (64, 64))
    with tifffile.TiffFile(svs) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[TILE], page.databytecounts[TILE]
    data = svs.read_bytes()
    with open(svs, "ab") as fh:
        end = fh.seek(0, 2)
        fh.write(data[offset:offset + count] + b"\0" * padding)
    with tifffile.TiffFile(svs, mode="r+b") as tif:
        offsets, counts = tif.pages[0].tags["TileOffsets"], tif.pages[0].tags["TileByteCounts"]
        new_offsets, new_counts = list(offsets.value), list(counts.value)
        new_offsets[TILE], new_counts[TILE] = end, count + padding
        offsets.overwrite(new_offsets)
        counts.overwrite(new_counts)
    with open_slide(svs, backend="tiles") as slide:
        np.testing.assert_array_equal(slide.read_level_region((300, 300), 0, (64, 64)), before)


def _damage(path: Path, tile: int, variant: int) -> None:
    """Zero 96 bytes, or flip three bits, inside the tile's entropy-coded data."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offset, count = int(page.dataoffsets[tile]), int(page.databytecounts[tile])
    rng = np.random.default_rng(variant)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        blob = bytearray(fh.read(count))
        if variant % 2:
            at = int(rng.integers(count // 3, count - 200))
            blob[at:at + 96] = bytes(96)
        else:
            for at in rng.integers(count // 3, count - 8, 3).tolist():
                blob[at] ^= 1 << int(rng.integers(0, 8))
        fh.seek(offset)
        fh.write(blob)


def _openslide_refuses(path: Path, tile: int) -> bool:
    import openslide

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        across = -(-page.imagewidth // page.tilewidth)
        w, h = page.tilewidth, page.tilelength
    with openslide.OpenSlide(path) as ref:
        try:
            ref.read_region(((tile % across) * w, (tile // across) * h), 0, (w, h))
        except openslide.OpenSlideError:
            return True
    return False


@pytest.mark.parametrize("real", [False, True], ids=["synthetic-ycbcr", "aperio-rgb-tables"])
def test_damaged_tile_data_that_openslide_refuses_is_refused(tmp_path: Path, svs: Path,
                                                             cmu_svs: Path, real: bool) -> None:
    # Regression: imagecodecs drops libjpeg's "corrupt data" warnings, so a tile whose
    # entropy-coded data was damaged (bits flipped, a block zeroed) but still ended with its
    # end marker decoded without a word, partly grey, and was classified; OpenSlide refuses
    # such tiles. Every damage OpenSlide refuses must be refused by every path here too.
    source = cmu_svs if real else svs
    tile = 5
    refused = 0
    for variant in range(20):
        path = tmp_path / f"damaged-{variant}.svs"
        path.write_bytes(source.read_bytes())
        _damage(path, tile, variant)
        if not _openslide_refuses(path, tile):
            continue
        refused += 1
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            across = -(-page.imagewidth // page.tilewidth)
            x = (tile % across) * page.tilewidth + page.tilewidth // 2
            y = (tile // across) * page.tilelength + page.tilelength // 2
        with open_slide(path, backend="tiles") as slide:
            plan = plan_crops(slide)
            said = rf"tile {tile} of level 0 is damaged \(libjpeg: "
            for workers in (0, 2):
                with pytest.raises(SlideError, match=said):
                    list(stream_crops(slide, [float(x)], [float(y)], plan=plan,
                                      workers=workers))
            with pytest.raises(SlideError, match=said):
                slide.read_level_region((x - 32, y - 32), 0, (64, 64))  # the region cache
    assert refused >= 2  # the checks above really ran, on damage OpenSlide sees


def test_the_tile_reader_refuses_what_is_not_jpeg_at_all(svs: Path) -> None:
    with tifffile.TiffFile(svs) as tif:
        offset = int(tif.pages[0].dataoffsets[TILE])
    with open(svs, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\0" * 16)  # the start marker and the first header bytes gone
    _assert_every_path_refuses(svs, rf"tile {TILE} of level 0 is damaged \(libjpeg: ")


@pytest.mark.parametrize("tail", [b"\xff\xff", b"\x01\x02 not JPEG"])
def test_bytes_after_the_end_marker_are_not_read(svs: Path, tail: bytes) -> None:
    # Regression: the end-marker check looked at the tile's last bytes and refused a tile
    # with anything but zeros after its end marker as cut short, where libjpeg (and so
    # OpenSlide) stops reading at the end marker and reads the tile
    import openslide

    with tifffile.TiffFile(svs) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[TILE], page.databytecounts[TILE]
    data = svs.read_bytes()
    with open(svs, "ab") as fh:
        end = fh.seek(0, 2)
        fh.write(data[offset:offset + count] + tail)
    with tifffile.TiffFile(svs, mode="r+b") as tif:
        offsets, counts = tif.pages[0].tags["TileOffsets"], tif.pages[0].tags["TileByteCounts"]
        new_offsets, new_counts = list(offsets.value), list(counts.value)
        new_offsets[TILE], new_counts[TILE] = end, count + len(tail)
        offsets.overwrite(new_offsets)
        counts.overwrite(new_counts)
    with openslide.OpenSlide(svs) as ref:
        want = np.asarray(ref.read_region((300, 300), 0, (64, 64)))[..., :3]
    with open_slide(svs, backend="tiles") as slide:
        got = slide.read_level_region((300, 300), 0, (64, 64))
        list(stream_crops(slide, [384.0], [384.0], plan=plan_crops(slide), workers=2))
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
