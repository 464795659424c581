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
