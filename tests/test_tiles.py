"""The direct tile path (slides/tiles.py) gives OpenSlide's pixels, at edges too, from many
threads, with a bounded cache; and the backend choice it adds (auto, tiles) behaves."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.cli_helpers import run_cli
from wsi_atm.crops import cutting, plan_crops, read_crop, stream_crops
from wsi_atm.errors import SlideError
from wsi_atm.slides import open_slide
from wsi_atm.slides.tiles import BUFFER_OFFSET, READ_GAP, TileReader, decode_buffer
from wsi_atm.synthetic import tissue_image, write_pyramid_tiff, write_single_level_tiff, write_svs

# Not multiples of the 256-px tile, so the right and bottom tiles are padded in the file.
W, H = 1000, 700


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return tissue_image(W, H, seed=11)


@pytest.fixture(scope="module")
def tiffs(tmp_path_factory: pytest.TempPathFactory, image: np.ndarray) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiles")
    return {
        "jpeg": write_pyramid_tiff(d / "jpeg.tif", image, 0.25, (1, 2, 4)),
        "lzw": write_pyramid_tiff(d / "lzw.tif", image, 0.25, (1, 2), compression="lzw"),
        "zlib": write_pyramid_tiff(d / "zlib.tif", image, 0.25, (1, 2), compression="zlib"),
        "raw": write_pyramid_tiff(d / "raw.tif", image, 0.25, (1, 2), compression=None),
        "svs": write_svs(d / "s.svs", image, mpp=0.25),
        # JPEG 2000: Aperio's RGB form (33005), which OpenSlide reads, and the generic one
        # (34712), which it refuses; both lossless as imagecodecs writes them by default
        "svs-jp2k": write_svs(d / "j.svs", image, mpp=0.25, compression="aperio_jp2000_rgb"),
        "jp2k": write_pyramid_tiff(d / "jp2k.tif", image, 0.25, (1, 2), compression="jpeg2000"),
        # OME-TIFF style: the reduced levels in SubIFDs, which OpenSlide does not see
        "subifds": write_pyramid_tiff(d / "sub.tif", image, 0.25, (1, 2, 4), subifds=True),
    }


def windows(level_w: int, level_h: int, n: int, seed: int) -> list[tuple[int, int, int, int]]:
    """Random windows, many of them over an edge or partly outside the level."""
    rng = np.random.default_rng(seed)
    out = [(-5, -5, 40, 30), (level_w - 20, level_h - 10, 64, 64), (level_w + 3, 0, 8, 8)]
    for _ in range(n):
        out.append((int(rng.integers(-80, level_w)), int(rng.integers(-80, level_h)),
                    int(rng.integers(1, 300)), int(rng.integers(1, 300))))
    return out


def page_pixels(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A level's pixels decoded whole by tifffile (padded with white for windows outside)."""
    with tifffile.TiffFile(path) as tif:
        page = next(p for p in tif.pages if p.is_tiled and (p.imagewidth, p.imagelength) == size)
        return np.pad(page.asarray(), ((400, 400), (400, 400), (0, 0)), constant_values=255)


def assert_same_as_openslide(path: Path, n: int = 60) -> None:
    """Every level with an integer downsample against OpenSlide; the others (OpenSlide moves
    their windows by a fraction of a pixel) against the page decoded whole."""
    with open_slide(path, backend="openslide") as ref, open_slide(path, backend="tiles") as fast:
        assert (fast.backend, fast.pixel_reader) == ("openslide", "tiles")
        assert (ref.pixel_reader, ref.tile_levels) == ("openslide", ())
        assert fast.tile_levels == tuple(range(ref.level_count))
        for level in range(ref.level_count):
            lw, lh = ref.level_dimensions[level]
            exact = float(ref.level_downsamples[level]).is_integer()
            whole = None if exact else page_pixels(path, (lw, lh))
            for x, y, w, h in windows(lw, lh, n, seed=level):
                b = fast.read_level_region((x, y), level, (w, h))
                a = ref.read_level_region((x, y), level, (w, h)) if whole is None else \
                    whole[y + 400 : y + 400 + h, x + 400 : x + 400 + w]
                assert a.shape == b.shape == (h, w, 3)
                # the two libjpeg builds may round an IDCT differently: at most one grey level
                diff = np.abs(a.astype(int) - b.astype(int)).max()
                assert diff <= 1, (path.name, level, x, y, w, h, diff)


def test_real_svs_equals_openslide(cmu_svs: Path) -> None:
    assert_same_as_openslide(cmu_svs, n=150)


@pytest.mark.parametrize("kind", ["jpeg", "lzw", "zlib", "raw", "svs", "svs-jp2k"])
def test_synthetic_slides_equal_openslide(tiffs: dict[str, Path], kind: str) -> None:
    assert_same_as_openslide(tiffs[kind])


def test_lossless_tiles_equal_the_written_image(tiffs: dict[str, Path], image: np.ndarray) -> None:
    for kind in ("lzw", "zlib", "raw", "svs-jp2k", "jp2k"):
        with open_slide(tiffs[kind], backend="tiles") as s:
            assert np.array_equal(s.read_level_region((0, 0), 0, (W, H)), image), kind


@pytest.mark.parametrize("kind, levels", [("jp2k", (0, 1)), ("subifds", (0, 1, 2))])
def test_slides_tiffslide_opens_are_decoded_directly(tiffs: dict[str, Path], kind: str,
                                                     levels: tuple[int, ...]) -> None:
    # OpenSlide refuses compression 34712 and sees only level 0 of a SubIFD pyramid; these
    # slides open through tiffslide and their pixels come from wsi-atm's own decoder, every
    # level (regression: the SubIFD levels were left to tiffslide), equal to tiffslide's
    with open_slide(tiffs[kind], backend="tiffslide") as ref, open_slide(tiffs[kind]) as fast:
        assert (fast.backend, fast.pixel_reader, fast.tile_levels) == ("tiffslide", "tiles", levels)
        for level in range(ref.level_count):
            lw, lh = ref.level_dimensions[level]
            for x, y, w, h in windows(lw, lh, 30, seed=level):
                assert np.array_equal(fast.read_level_region((x, y), level, (w, h)),
                                      ref.read_level_region((x, y), level, (w, h)))


def test_crops_are_the_same_through_either_path(cmu_svs: Path) -> None:
    rng = np.random.default_rng(3)
    xs, ys = rng.uniform(-50, 2270, 300), rng.uniform(-50, 3000, 300)
    crops = {}
    for backend in ("openslide", "auto"):
        with open_slide(cmu_svs, backend=backend, mpp=0.25) as s:
            plan = plan_crops(s)
            assert plan.native
            out = np.empty((300, 128, 128, 3), np.uint8)
            for batch in stream_crops(s, xs, ys, plan=plan, workers=4, batch_size=32):
                out[batch.indices] = batch.images
            crops[backend] = out
    assert np.array_equal(crops["openslide"], crops["auto"])


def test_threads_share_one_decode_per_tile(tiffs: dict[str, Path]) -> None:
    with open_slide(tiffs["jpeg"], backend="tiles") as s:
        ref = s.read_level_region((0, 0), 0, (W, H))
    reader = TileReader.open(tiffs["jpeg"], ((W, H), (W // 2, H // 2), (W // 4, H // 4)))
    assert reader is not None and reader.levels == (0, 1, 2)
    rng = np.random.default_rng(5)
    boxes = [(int(rng.integers(0, W - 128)), int(rng.integers(0, H - 128))) for _ in range(400)]

    def read(box: tuple[int, int]) -> bool:
        x, y = box
        return bool(np.array_equal(reader.read((x, y), 0, (128, 128)),
                                   ref[y : y + 128, x : x + 128]))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(read, boxes))
    assert reader.decoded == 4 * 3  # every level-0 tile once (1000 x 700 px = 4 x 3 tiles)
    reader.close()


def test_cache_stays_within_its_budget(tiffs: dict[str, Path]) -> None:
    tile_bytes = 256 * 256 * 3
    reader = TileReader.open(tiffs["raw"], ((W, H), (W // 2, H // 2)), cache_bytes=2 * tile_bytes)
    assert reader is not None
    with open_slide(tiffs["raw"], backend="openslide") as ref:
        for x in range(0, W, 100):
            for y in range(0, H, 100):
                got = reader.read((x, y), 0, (120, 120))
                assert np.array_equal(got, ref.read_level_region((x, y), 0, (120, 120)))
                assert reader._used <= 2 * tile_bytes
    assert reader.decoded > 12  # evicted tiles were decoded again
    reader.close()


def test_recycled_tile_buffers_never_change_a_crop_under_threads(tiffs: dict[str, Path]) -> None:
    # A cache of two tiles, eight threads and 600 reads: evicted tiles are decoded into again
    # (JPEG), so a buffer still being copied from must never be handed to a decode.
    with open_slide(tiffs["jpeg"], backend="tiles") as s:
        ref = s.read_level_region((0, 0), 0, (W, H))
    tile_bytes = 256 * 256 * 3
    reader = TileReader.open(tiffs["jpeg"], ((W, H), (W // 2, H // 2), (W // 4, H // 4)),
                             cache_bytes=2 * tile_bytes)
    assert reader is not None
    rng = np.random.default_rng(9)
    boxes = [(int(rng.integers(0, W - 200)), int(rng.integers(0, H - 200))) for _ in range(600)]

    def read(box: tuple[int, int]) -> bool:
        x, y = box
        return bool(np.array_equal(reader.read((x, y), 0, (200, 200)),
                                   ref[y : y + 200, x : x + 200]))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(read, boxes))
    assert reader.decoded > 100 and reader.recycled > 0  # buffers were in fact reused
    reader.close()


def test_auto_falls_back_where_there_are_no_tiled_levels(tmp_path: Path,
                                                          image: np.ndarray) -> None:
    strips = write_single_level_tiff(tmp_path / "strips.tif", image, 0.25, tile=None)
    with open_slide(strips) as s:
        # OpenSlide refuses stripped TIFF; tiffslide reads it, with no tile path
        assert (s.backend, s.pixel_reader) == ("tiffslide", "tiffslide")
        assert s.read_level_region((0, 0), 0, (8, 8)).shape == (8, 8, 3)
    with pytest.raises(SlideError, match="--backend tiles needs an Aperio SVS or generic TIFF"):
        open_slide(strips, backend="tiles")
    assert run_cli(["slide-info", str(strips), "--backend", "tiles"]) == 2


def test_forced_library_backends_do_not_use_tiles(tiffs: dict[str, Path]) -> None:
    for backend in ("openslide", "tiffslide"):
        with open_slide(tiffs["jpeg"], backend=backend) as s:
            assert s.backend == s.pixel_reader == backend


def test_only_plain_tiff_vendors_get_the_tile_path(tiffs: dict[str, Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # A Ventana BIF or Hamamatsu NDPI is a TIFF too, but its levels are not plain tile grids
    # (overlapping tiles, restart-marker strips): the library must read those.
    from wsi_atm.slides import slide as slide_module

    monkeypatch.setattr(slide_module, "TILE_VENDORS", ("aperio",))
    with open_slide(tiffs["jpeg"]) as s:  # generic-tiff, now outside the list
        assert s.pixel_reader == "openslide" and s.tile_levels == ()
    with open_slide(tiffs["svs"]) as s:
        assert s.pixel_reader == "tiles"


@pytest.mark.parametrize("photometric, compression, samples, extra, ok", [
    (2, 7, 3, (), True), (6, 7, 3, (), True), (1, 8, 1, (), True), (2, 5, 4, (2,), True),
    (6, 5, 3, (), False),  # YCbCr outside JPEG: tifffile would return it unconverted
    (6, 33003, 3, (), False),  # Aperio YCbCr JPEG 2000: left to OpenSlide
    (2, 8, 4, (1,), False),  # premultiplied alpha
    (1, 8, 3, (), False),  # grey photometric with three samples
])
def test_only_layouts_decoded_to_true_rgb_take_the_tile_path(photometric: int, compression: int,
                                                             samples: int, extra: tuple[int, ...],
                                                             ok: bool) -> None:
    from types import SimpleNamespace

    from wsi_atm.slides.tiff_pages import usable

    page = SimpleNamespace(is_tiled=True, planarconfig=1, bitspersample=8,
                           compression=compression, photometric=photometric,
                           samplesperpixel=samples, extrasamples=extra, imagedepth=1)
    assert usable(page) is ok


def test_a_closed_reader_refuses_reads(tiffs: dict[str, Path]) -> None:
    reader = TileReader.open(tiffs["raw"], ((W, H), (W // 2, H // 2)))
    assert reader is not None
    reader.close()
    with pytest.raises(ValueError, match="closed"):
        reader.read((0, 0), 0, (8, 8))
    with pytest.raises(ValueError, match="closed"):
        reader.decode_run(0, [0, 1])
    reader.close()  # twice is harmless


@pytest.mark.parametrize("kind", ["svs", "zlib"])
def test_a_tile_the_scanner_never_wrote_is_white_in_every_path(tmp_path: Path, image: np.ndarray,
                                                               kind: str) -> None:
    """A tile with no bytes (byte count 0, as sparse scans leave them) reads as white, the same
    through the crop cutter (neighbouring tiles' bytes read in one go) and the region cache."""
    src = tmp_path / f"sparse.{'svs' if kind == 'svs' else 'tif'}"
    if kind == "svs":
        write_svs(src, image, mpp=0.25)
    else:
        write_pyramid_tiff(src, image, 0.25, (1, 2), compression="zlib")
    with tifffile.TiffFile(src, mode="r+b") as tif:
        tag = tif.pages[0].tags["TileByteCounts"]
        counts = list(tag.value)
        counts[5] = 0  # row 1, column 1 of the 4-across level 0
        tag.overwrite(counts)
    xs = np.array([320.0, 384.0, 500.0, 300.0, 700.0, 60.0])
    ys = np.array([320.0, 384.0, 380.0, 450.0, 100.0, 60.0])
    with open_slide(src, backend="tiles") as slide:
        plan = plan_crops(slide)
        assert plan.native
        assert (slide.read_level_region((256, 256), 0, (256, 256)) == 255).all()
        got = {int(i): img for batch in stream_crops(slide, xs, ys, plan=plan, workers=2,
                                                       batch_size=4)
               for i, img in zip(batch.indices, batch.images, strict=True)}
        for i in range(len(xs)):
            expected, _ = read_crop(slide, float(xs[i]), float(ys[i]), plan)
            np.testing.assert_array_equal(got[i], expected)
    assert (got[1] == 255).all()  # wholly inside the missing tile
    assert not (got[5] == 255).all()  # elsewhere, tissue


def test_only_arrays_owning_their_memory_are_kept_for_reuse(tiffs: dict[str, Path]) -> None:
    """LZW/zlib tiles come back from tifffile as read-only views that can never be made
    writable again: kept as spare buffers, the next JPEG decode into one would fail."""
    tile_bytes = 256 * 256 * 3
    reader = TileReader.open(tiffs["lzw"], ((W, H), (W // 2, H // 2)), cache_bytes=2 * tile_bytes)
    assert reader is not None
    for x in range(0, W, 200):
        for y in range(0, H, 200):
            reader.read((x, y), 0, (120, 120))
    assert reader.decoded > 2  # tiles were evicted
    buffer = reader._buffer((256, 256, 3))  # what a JPEG decode would write into
    assert buffer is None or buffer.flags.writeable
    reader.close()


def test_decode_buffers_are_placed_off_a_32_byte_boundary(tiffs: dict[str, Path]) -> None:
    """libjpeg-turbo writes 32-byte-aligned output ~20 % slower on the benchmark machine; a
    heap array lands there by chance, so the reused buffer is placed on purpose — and must
    still decode every tile to the same pixels as a fresh array."""
    reader = TileReader.open(tiffs["jpeg"], ((W, H),))
    assert reader is not None
    for _ in range(8):  # whatever the heap hands out
        buffer = decode_buffer((256, 256, 3))
        assert buffer.ctypes.data % 64 == BUFFER_OFFSET
        assert buffer.flags.c_contiguous and buffer.flags.writeable
        assert buffer.shape == (256, 256, 3) and buffer.dtype == np.uint8
    grid = reader.grid(0)
    indices = list(range(grid.across * -(-H // grid.tile_h)))
    fresh = [tile.copy() for tile in reader.decode_run(0, indices)]
    placed = [tile.copy() for tile in reader.decode_run(0, indices, buffer)]
    assert all(np.array_equal(a, b) for a, b in zip(fresh, placed, strict=True))
    reader.close()


def test_the_cutting_threads_decode_into_placed_buffers(tiffs: dict[str, Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[np.ndarray] = []

    def recording(shape: tuple[int, int, int]) -> np.ndarray:
        made.append(decode_buffer(shape))
        return made[-1]

    monkeypatch.setattr(cutting, "decode_buffer", recording)
    with open_slide(tiffs["jpeg"]) as slide:
        xs, ys = np.linspace(50, W - 50, 40), np.linspace(40, H - 40, 40)
        for workers in (0, 3):
            made.clear()
            n = sum(len(b.indices) for b in stream_crops(slide, xs, ys, workers=workers))
            assert n == 40
            assert 1 <= len(made) <= max(1, workers)  # one per cutting thread, reused


def test_neighbouring_tiles_are_read_together_and_nothing_far_between(
        tiffs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A run of tiles from two rows: each row's neighbours come from one ``pread``, and the
    tiles of the rows between (unwanted, far more than READ_GAP) are never read; pixels are the
    same as tile-by-tile reads."""
    reader = TileReader.open(tiffs["svs"], ((W, H),))
    assert reader is not None
    indices = [0, 1, 2, 9, 10]  # 4 tiles across: row 0 columns 0-2, row 2 columns 1-2
    one_by_one = [tile.copy() for index in indices for tile in reader.decode_run(0, [index])]
    reads: list[tuple[int, int]] = []
    real_pread = os.pread

    def counting(fd: int, n: int, offset: int) -> bytes:
        reads.append((offset, n))
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", counting)
    before = reader.decoded
    together = [tile.copy() for tile in reader.decode_run(0, indices, decode_buffer((256, 256, 3)))]
    assert reader.decoded == before + len(indices)
    lv = reader._levels[0]
    wanted = sum(lv.counts[i] for i in indices)
    between = sum(lv.counts[i] for i in range(3, 9))
    assert between > 4 * READ_GAP  # the rows between really are far
    assert len(reads) == 2
    assert sum(n for _, n in reads) <= wanted + 2 * READ_GAP
    assert all(np.array_equal(a, b) for a, b in zip(one_by_one, together, strict=True))
    reader.close()


@pytest.mark.parametrize("size", [(128, 128), (512, 256)])
def test_a_tile_decoding_to_another_size_is_an_error_naming_it(tmp_path: Path, image: np.ndarray,
                                                                size: tuple[int, int]) -> None:
    """A JPEG tile whose stream holds another image size than the file's tile size: every path
    stops with one error naming the tile and both sizes. Regression: a larger tile (here twice
    as wide) used to be cut without complaint, the crops silently taking the wrong pixels."""
    import imagecodecs

    width, height = size
    src = write_svs(tmp_path / "odd.svs", image, mpp=0.25)
    odd = imagecodecs.jpeg8_encode(np.ascontiguousarray(image[:height, :width]), level=90)
    with open(src, "ab") as fh:
        offset = fh.seek(0, os.SEEK_END)
        fh.write(odd)
    with tifffile.TiffFile(src, mode="r+b") as tif:
        offsets, counts = tif.pages[0].tags["TileOffsets"], tif.pages[0].tags["TileByteCounts"]
        new_offsets, new_counts = list(offsets.value), list(counts.value)
        new_offsets[5], new_counts[5] = offset, len(odd)
        offsets.overwrite(new_offsets)
        counts.overwrite(new_counts)
    message = (rf"tile 5 of level 0 decodes to {width}x{height} px, not the 256x256 px the "
               r"file declares")
    with open_slide(src, backend="tiles") as slide:
        plan = plan_crops(slide)
        for workers in (0, 2):
            with pytest.raises(SlideError, match=message):
                list(stream_crops(slide, [384.0], [384.0], plan=plan, workers=workers))
        with pytest.raises(SlideError, match=message):
            slide.read_level_region((300, 300), 0, (64, 64))  # the region cache's path
