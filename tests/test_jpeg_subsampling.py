"""JPEG tiles with a chroma subsampling libjpeg-turbo's TurboJPEG interface does not know (the
strict decoder's) are read as OpenSlide reads them, not refused as damage."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsi_atm.crops import plan_crops, stream_crops
from wsi_atm.errors import SlideError
from wsi_atm.slides import open_slide

T = 256
# Annex K luminance DC and AC Huffman tables
DC = bytes([0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]) + bytes(range(12))
AC = bytes([0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D]) + bytes.fromhex(
    "01020300041105122131410613516107227114328191a1082342b1c11552d1f02433627282090a1617"
    "18191a25262728292a3435363738393a434445464748494a535455565758595a636465666768696a"
    "737475767778797a838485868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7"
    "b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9fa")


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _flat_jpeg(factors: list[tuple[int, int]]) -> bytes:
    """A baseline YCbCr JPEG of flat mid grey with the components' sampling ``factors``:
    every block a DC difference of 0 ('00') and an end of block ('1010')."""
    hmax, vmax = max(h for h, _ in factors), max(v for _, v in factors)
    blocks = -(-T // (8 * hmax)) * -(-T // (8 * vmax)) * sum(h * v for h, v in factors)
    bits = "001010" * blocks
    bits += "1" * (-len(bits) % 8)
    scan = bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)).replace(
        b"\xff", b"\xff\x00")
    sof = struct.pack(">BHHB", 8, T, T, 3) + b"".join(
        bytes([i + 1, h << 4 | v, 0]) for i, (h, v) in enumerate(factors))
    sos = bytes([3]) + b"".join(bytes([i + 1, 0]) for i in range(3)) + b"\x00\x3f\x00"
    return (b"\xff\xd8" + _segment(0xDB, b"\x00" + bytes([1] * 64))
            + _segment(0xC4, b"\x00" + DC + b"\x10" + AC) + _segment(0xC0, sof)
            + _segment(0xDA, sos) + scan + b"\xff\xd9")


@pytest.mark.parametrize("factors", [[(2, 2), (2, 1), (1, 1)], [(4, 2), (1, 1), (1, 1)]],
                         ids=["2x2-2x1-1x1", "4x2-1x1-1x1"])
def test_unusual_chroma_subsampling_reads_as_openslide(tmp_path: Path,
                                                       factors: list[tuple[int, int]]) -> None:
    # Regression: TurboJPEG ("Could not determine subsampling level") refused every tile of
    # such a healthy slide, each called damaged, where OpenSlide (plain libjpeg) reads it
    import openslide

    path = tmp_path / "odd.tif"
    tile = _flat_jpeg(factors)
    with tifffile.TiffWriter(path) as tif:
        tif.write(iter([tile] * 4), shape=(2 * T, 2 * T, 3), dtype=np.uint8, tile=(T, T),
                  compression=7, photometric="ycbcr", metadata=None)
    with openslide.OpenSlide(path) as ref:
        want = np.asarray(ref.read_region((0, 0), 0, (2 * T, 2 * T)))[..., :3]
    with open_slide(path, mpp=0.25) as slide:
        got = slide.read_level_region((100, 100), 0, (300, 300))
        crops = list(stream_crops(slide, [256.0], [256.0], plan=plan_crops(slide), workers=2))
    assert np.abs(got.astype(int) - want[100:400, 100:400]).max() <= 1
    assert len(crops) == 1
    with pytest.raises(SlideError, match="JPEG with a chroma subsampling TurboJPEG reads"):
        open_slide(path, backend="tiles", mpp=0.25)  # insisting on the direct path: said why
