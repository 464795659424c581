"""Why the crop engine decodes whole tiles: what decoding only the rows the crops need would
save, and what it would cost in damage detection.

    python benchmarks/partial_decode.py [--keep /path/bench.svs] [--variants 200]

No installed binding exposes libjpeg-turbo's scanline skipping, but a baseline JPEG can be cut
short another way: write a smaller image height into its frame header (SOF). libjpeg then
decodes the rows down to that height and stops; the entropy-coded data left over makes it
warn ("N extraneous bytes before marker") once the rows are out. On the benchmark slide and
candidates of ``benchmarks/crops.py`` this script measures, on one thread:

1. speed: every touched tile decoded whole, against each decoded only down to one row past the
   last row a crop takes from it (fancy chroma upsampling makes a cut image's last row differ);
2. exactness: those rows against the whole tile's;
3. damage: tiles of the slide with their entropy-coded data damaged as
   ``tests/test_damaged_slides.py`` damages them (three bits flipped, or 96 bytes zeroed);
   of those the whole-tile strict decode refuses, how many the cut decode also refuses, and
   how many it decodes silently, right or wrong, in the rows the crops use.

A whole-tile decode notices most damage only at the end of the tile's data, where the
decoder's position no longer matches the end marker; a cut decode never gets there.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # a checkout runs without installing wsi_atm
sys.path.insert(0, str(HERE))

import crops as bench  # noqa: E402
import simplejpeg  # noqa: E402
import tifffile  # noqa: E402

from wsi_atm.crops import plan_crops  # noqa: E402
from wsi_atm.crops.cutting import plan_cuts  # noqa: E402
from wsi_atm.crops.plan import tile_order, window_origins  # noqa: E402
from wsi_atm.slides import open_slide  # noqa: E402
from wsi_atm.slides.jpeg import JpegTiles  # noqa: E402

SEQUENTIAL_FRAMES = (0xC0, 0xC1)  # baseline and extended Huffman: one scan of all components


def frame_at(stream: bytes) -> int:
    """Offset of the frame header (SOF) marker in a complete JPEG stream."""
    at = 2
    while at + 4 <= len(stream):
        marker = stream[at + 1]
        if marker in SEQUENTIAL_FRAMES:
            return at
        if marker == 0xDA:
            break
        at += 2 + int.from_bytes(stream[at + 2 : at + 4], "big")
    raise ValueError("no sequential frame header before the scan")


def with_height(stream: bytes, height: int) -> bytes:
    at = frame_at(stream)
    cut = bytearray(stream)
    cut[at + 5 : at + 7] = height.to_bytes(2, "big")
    return bytes(cut)


def decode_top(stream: bytes, height: int, out: np.ndarray) -> str:
    """Decode rows ``0..height-1`` into ``out``; "" or libjpeg's first warning, except the
    leftover-data one the cut itself causes."""
    try:
        simplejpeg.decode_jpeg(with_height(stream, height), colorspace="RGB",
                               buffer=out[:height], strict=True)
    except ValueError as exc:
        return "" if "extraneous bytes" in str(exc) else str(exc)
    return ""


def tile_streams(path: Path, tiles: list[int]) -> list[bytes]:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        jpeg = JpegTiles.for_page(page.jpegtables, False, (bench.TILE, bench.TILE, 3))
        with open(path, "rb") as fh:
            found = []
            for k in tiles:
                fh.seek(page.dataoffsets[k])
                found.append(bytes(jpeg.stream(fh.read(page.databytecounts[k]))))
    return found


def rows_needed(path: Path, xs: np.ndarray, ys: np.ndarray) -> tuple[list[int], list[int]]:
    """The engine's tiles and, for each, one past the last row a crop takes from it."""
    with open_slide(path) as slide:
        plan = plan_crops(slide)
        order = tile_order(slide, xs, ys, plan)
        origins = window_origins(slide, xs[order], ys[order], plan)
        grid = slide.tile_grid(plan.level)
        assert grid is not None
        cuts = plan_cuts(grid, origins, plan.read_shape)
    tops = (cuts.rows[:, 1] // grid.across) * grid.tile_h
    last = np.maximum.reduceat(cuts.rows[:, 3] - tops, cuts.starts[:-1])
    return cuts.tiles.tolist(), last.tolist()


def speed(streams: list[bytes], heights: list[int], repeats: int = 3) -> tuple[float, float]:
    out = np.empty((bench.TILE, bench.TILE, 3), np.uint8)
    cut = [with_height(s, h) for s, h in zip(streams, heights, strict=True)]

    def whole() -> float:
        start = time.perf_counter()
        for stream in streams:
            simplejpeg.decode_jpeg(stream, colorspace="RGB", buffer=out, strict=True)
        return time.perf_counter() - start

    def top() -> float:
        start = time.perf_counter()
        for stream, height in zip(cut, heights, strict=True):
            with contextlib.suppress(ValueError):  # the leftover data's warning
                simplejpeg.decode_jpeg(stream, colorspace="RGB", buffer=out[:height],
                                       strict=True)
        return time.perf_counter() - start

    return min(whole() for _ in range(repeats)), min(top() for _ in range(repeats))


def damaged(stream: bytes, variant: int) -> bytes:
    """As tests/test_damaged_slides.py damages a tile (after the headers: the last two
    thirds of the bytes)."""
    rng = np.random.default_rng(variant)
    blob, count = bytearray(stream), len(stream)
    if variant % 2:
        at = int(rng.integers(count // 3, count - 200))
        blob[at : at + 96] = bytes(96)
    else:
        for at in rng.integers(count // 3, count - 8, 3).tolist():
            blob[at] ^= 1 << int(rng.integers(0, 8))
    return bytes(blob)


def damage_counts(streams: list[bytes], heights: list[int], variants: int) -> dict[str, int]:
    counts = dict.fromkeys(("whole refuses", "cut refuses too", "cut silent, right rows",
                            "cut silent, wrong rows"), 0)
    out = np.empty((bench.TILE, bench.TILE, 3), np.uint8)
    for variant in range(variants):
        k = variant % len(streams)
        stream, height = streams[k], heights[k]
        reference = simplejpeg.decode_jpeg(stream, colorspace="RGB")
        bad = damaged(stream, variant)
        try:
            simplejpeg.decode_jpeg(bad, colorspace="RGB", strict=True)
            continue  # damage libjpeg does not see even whole
        except ValueError:
            counts["whole refuses"] += 1
        if decode_top(bad, height, out):
            counts["cut refuses too"] += 1
        elif np.array_equal(out[: height - 1], reference[: height - 1]):
            counts["cut silent, right rows"] += 1
        else:
            counts["cut silent, wrong rows"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20_000)
    parser.add_argument("--candidates", type=int, default=2_000)
    parser.add_argument("--variants", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None)
    args = parser.parse_args(argv)
    path = args.keep or Path(f"/tmp/wsi-atm-bench-{args.size}.svs")
    bench.ensure_slide(path, args.size, args.seed)
    xs, ys = bench.candidates(args.candidates, args.size, args.seed)
    tiles, last = rows_needed(path, xs, ys)
    heights = [min(bench.TILE, r + 1) for r in last]
    streams = tile_streams(path, tiles)
    out = np.empty((bench.TILE, bench.TILE, 3), np.uint8)
    wrong = 0
    for stream, r, height in zip(streams, last, heights, strict=True):
        whole = simplejpeg.decode_jpeg(stream, colorspace="RGB", strict=True)
        assert not decode_top(stream, height, out)
        wrong += not np.array_equal(out[:r], whole[:r])
    whole_s, top_s = speed(streams, heights)
    counts = damage_counts(streams, heights, args.variants)
    rows = sum(heights) / (len(heights) * bench.TILE)
    print(f"{len(tiles)} tiles, {args.candidates} candidates; the cut decodes {rows:.0%} of "
          f"the tiles' rows\n")
    print("| measurement | value |\n|---|---:|")
    print(f"| whole tiles, one thread (s) | {whole_s:.3f} |")
    print(f"| cut at one row past the last a crop takes (s) | {top_s:.3f} |")
    print(f"| cut ÷ whole | {top_s / whole_s:.2f} |")
    print(f"| tiles whose needed rows differ from the whole decode | {wrong} |")
    for name, value in counts.items():
        print(f"| damaged tiles: {name} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
