"""The tiffslide backend's pixels follow the backend contract: white where the file wrote no
tile, grey right side up whatever its photometric interpretation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsi_atm.slides import open_slide
from wsi_atm.synthetic import tissue_image

T = 128


def _write(path: Path, image: np.ndarray, skip: set[tuple[int, int]], **kwargs: object) -> Path:
    h, w = image.shape[:2]

    def tiles() -> Iterator[np.ndarray | None]:
        for ty in range(0, h, T):
            for tx in range(0, w, T):
                if (ty // T, tx // T) in skip:
                    yield None
                    continue
                tile = np.zeros((T, T, *image.shape[2:]), np.uint8)
                part = image[ty:ty + T, tx:tx + T]
                tile[:part.shape[0], :part.shape[1]] = part
                yield tile

    with tifffile.TiffWriter(path) as tif:
        tif.write(tiles(), shape=image.shape, dtype=np.uint8, tile=(T, T),
                  resolution=(40_000, 40_000), resolutionunit="CENTIMETER", metadata=None,
                  **kwargs)  # type: ignore[arg-type]
    return path


def test_a_tile_never_written_is_white_through_tiffslide(tmp_path: Path) -> None:
    # Regression: tiffslide painted it black, OpenSlide and wsi-atm's reader white
    image = tissue_image(600, 500, seed=5)
    path = _write(tmp_path / "sparse.tif", image, {(1, 1)}, photometric="rgb",
                  compression="zlib")
    for backend in ("tiffslide", "openslide", "tiles"):
        with open_slide(path, backend=backend, mpp=0.25) as slide:
            region = slide.read_level_region((100, 100), 0, (200, 200))
        assert (region[28:156, 28:156] == 255).all(), backend  # tile (1, 1): px 128-255
        np.testing.assert_array_equal(region[:28, :28], image[100:128, 100:128], backend)


@pytest.mark.parametrize("photometric", ["minisblack", "miniswhite"])
def test_grey_reads_the_same_whatever_its_photometric(tmp_path: Path, photometric: str) -> None:
    # Regression: a white-is-zero grey slide came out inverted through tiffslide
    grey = tissue_image(300, 260, seed=1)[..., 1]
    stored = grey if photometric == "minisblack" else 255 - grey
    path = _write(tmp_path / f"{photometric}.tif", stored, set(), photometric=photometric,
                  compression="lzw")
    with open_slide(path, backend="tiffslide", mpp=0.25) as slide:
        region = slide.read_level_region((0, 0), 0, (300, 260))
    np.testing.assert_array_equal(region[..., 0], grey)


def _ycbcr_jp2k_svs(path: Path, image: np.ndarray) -> Path:
    """An SVS laid out as Aperio's JPEG 2000 ones: compression 33003, each tile a codestream
    of Y, Cb and Cr (JFIF full range) with no colour transform of its own."""
    from wsi_atm.synthetic import aperio_description

    rgb = image.astype(np.float64)
    matrix = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5],
                       [0.5, -0.418688, -0.081312]])
    ycc = np.clip(np.round(rgb @ matrix.T + [0, 128, 128]), 0, 255).astype(np.uint8)
    h, w = image.shape[:2]
    tifffile.imwrite(path, ycc, tile=(256, 256), photometric="rgb", compression=33003,
                     compressionargs={"mct": False, "level": 100}, metadata=None,
                     description=aperio_description(w, h, 0.25, 256))
    return path


def test_aperio_ycbcr_jpeg2000_is_refused_by_tiffslide_and_read_right_by_auto(
        tmp_path: Path) -> None:
    # Regression: --backend tiffslide handed Y, Cb, Cr back as R, G, B (off by up to 133)
    from wsi_atm.errors import SlideError

    image = tissue_image(600, 400, seed=4)
    path = _ycbcr_jp2k_svs(tmp_path / "jp2k.svs", image)
    with pytest.raises(SlideError) as excinfo:
        open_slide(path, "tiffslide")
    message = str(excinfo.value)
    assert excinfo.value.exit_code == 2 and "\n" not in message
    assert "33003" in message and "--backend auto or openslide" in message
    for backend in ("auto", "openslide"):
        with open_slide(path, backend) as slide:
            assert slide.backend == "openslide"
            pixels = slide.read_region((0, 0), 0, (600, 400)).astype(int)
        assert np.abs(pixels - image).max() <= 6
