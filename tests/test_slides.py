"""Slide reading on real-format files: tifffile-written TIFF/SVS and the real CMU Aperio SVS."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np
import openslide
import pytest
from PIL import Image

from wsi_atm.errors import MppUnknownError, OptionError, SlideError
from wsi_atm.slides import Slide, open_slide
from wsi_atm.synthetic import (
    place_crops,
    tissue_image,
    write_pyramid_tiff,
    write_single_level_tiff,
    write_svs,
)

W, H = 1024, 768
BACKENDS = ("openslide", "tiffslide")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return tissue_image(W, H, seed=7)


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory, image: np.ndarray) -> dict[str, Path]:
    """One of each kind of synthetic slide, written once for the module."""
    d = tmp_path_factory.mktemp("slides")
    return {
        "pyramid_zlib": write_pyramid_tiff(
            d / "pyr.tif", image, 0.25, (1, 2, 4), compression="zlib"
        ),
        "pyramid_jpeg": write_pyramid_tiff(d / "pyr_jpeg.tif", image, 0.25, (1, 4, 16)),
        "svs": write_svs(d / "synthetic.svs", image, mpp=0.25),
        "single": write_single_level_tiff(d / "single.tif", image, 0.5),
        "strips": write_single_level_tiff(d / "strips.tif", image, 0.5, tile=None),
        "subifds": write_pyramid_tiff(
            d / "sub.ome.tif", image, 0.25, (1, 2, 4), compression="zlib", subifds=True
        ),
    }


def one_line(excinfo: pytest.ExceptionInfo[BaseException], path: Path | None = None) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    assert excinfo.value.exit_code == 2  # type: ignore[attr-defined]
    if path is not None:
        assert str(path) in message
    return message


# ---------------------------------------------------------------------------- formats, levels


def test_pyramid_in_main_chain_is_three_levels_for_openslide(slides: dict[str, Path]) -> None:
    with open_slide(slides["pyramid_jpeg"]) as slide:
        assert slide.backend == "openslide"
        assert slide.level_count == 3
        assert slide.dimensions == (W, H)
        assert slide.level_dimensions == ((W, H), (W // 4, H // 4), (W // 16, H // 16))
        assert slide.level_downsamples == pytest.approx((1.0, 4.0, 16.0))
        assert slide.mpp == pytest.approx(0.25)
        assert slide.mpp_source == "tiff.XResolution (centimeter)"
        assert slide.bounds_offset == (0, 0)


def test_svs_is_read_by_the_aperio_driver(slides: dict[str, Path]) -> None:
    assert openslide.OpenSlide.detect_format(str(slides["svs"])) == "aperio"
    for backend in BACKENDS:
        with open_slide(slides["svs"], backend) as slide:
            assert slide.vendor == "aperio"
            assert slide.level_count == 3
            assert slide.mpp == pytest.approx(0.25)
            assert slide.mpp_source == "aperio.MPP"
            assert "thumbnail" in slide.info()["associated_images"]
            assert slide.info()["objective_power"] == 40


def test_single_level_tiff(slides: dict[str, Path], image: np.ndarray) -> None:
    for backend in BACKENDS:
        with open_slide(slides["single"], backend) as slide:
            assert slide.level_count == 1
            assert slide.mpp == pytest.approx(0.5)
            np.testing.assert_array_equal(slide.read_region((0, 0), 0, (W, H)), image)


def test_stripped_tiff_falls_back_to_tiffslide(slides: dict[str, Path], image: np.ndarray) -> None:
    with pytest.raises(SlideError) as excinfo:
        open_slide(slides["strips"], "openslide")
    one_line(excinfo, slides["strips"])
    with open_slide(slides["strips"]) as slide:
        assert slide.backend == "tiffslide"
        np.testing.assert_array_equal(slide.read_region((100, 50), 0, (300, 200)),
                                      image[50:250, 100:400])  # fmt: skip


def test_subifd_pyramid_auto_chooses_tiffslide(slides: dict[str, Path], image: np.ndarray) -> None:
    with open_slide(slides["subifds"], "openslide") as slide:
        assert slide.level_count == 1  # OpenSlide does not see SubIFD levels
    with open_slide(slides["subifds"]) as slide:
        assert slide.backend == "tiffslide"
        assert slide.level_count == 3
        assert slide.level_dimensions[2] == (W // 4, H // 4)
        expected = np.asarray(Image.fromarray(image).resize((W // 2, H // 2), Image.Resampling.BOX))
        np.testing.assert_array_equal(
            slide.read_level_region((0, 0), 1, (W // 2, H // 2)), expected
        )


# ---------------------------------------------------------------------------- µm/px


@pytest.mark.parametrize("unit", ["centimeter", "inch"])
@pytest.mark.parametrize("mpp", [0.2527, 0.5, 1.0])
@pytest.mark.parametrize("backend", BACKENDS)
def test_resolution_tags_give_mpp(tmp_path: Path, unit: str, mpp: float, backend: str) -> None:
    path = write_pyramid_tiff(
        tmp_path / "r.tif", tissue_image(512, 512, 1), mpp, (1, 2), compression="zlib",
        resolution_unit=unit,
    )  # fmt: skip
    with open_slide(path, backend) as slide:
        assert slide.mpp == pytest.approx(mpp, rel=1e-6)
        assert slide.mpp_source == f"tiff.XResolution ({unit})"


def _no_mpp_slides(tmp_path: Path) -> list[Path]:
    img = tissue_image(512, 512, 3)
    return [
        write_pyramid_tiff(tmp_path / "unit_none.tif", img, 0.25, (1, 2), resolution_unit=None),
        write_pyramid_tiff(tmp_path / "no_tags.tif", img, None, (1, 2)),
        write_pyramid_tiff(
            tmp_path / "dpi72.tif", img, None, (1, 2), resolution=(72, 72), resolution_unit="inch"
        ),
        write_pyramid_tiff(
            tmp_path / "dpi72cm.tif",
            img,
            None,
            (1, 2),
            resolution=(72, 72),
            resolution_unit="centimeter",
        ),
    ]


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_unknown_mpp_needs_override(tmp_path: Path, backend: str) -> None:
    for path in _no_mpp_slides(tmp_path):
        with pytest.raises(MppUnknownError) as excinfo:
            open_slide(path, backend)
        assert "--mpp" in one_line(excinfo, path)
        with open_slide(path, backend, mpp=0.26) as slide:
            assert slide.mpp == 0.26
            assert slide.mpp_source == "--mpp override"
        with open_slide(path, backend, require_mpp=False) as slide:
            assert slide.info()["mpp"] is None
            assert slide.mpp_source == "unknown"
            with pytest.raises(MppUnknownError):
                _ = slide.mpp


def test_ome_tiff_physical_size(tmp_path: Path, image: np.ndarray) -> None:
    """OME-TIFF pyramid in SubIFDs, µm/px only in the OME-XML (no resolution tags)."""
    import tifffile

    path = tmp_path / "slide.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        meta = {"axes": "YXS", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.3}
        opts = {"photometric": "rgb", "tile": (256, 256), "compression": "zlib"}
        tif.write(image, subifds=1, metadata=meta, **opts)
        tif.write(image[::2, ::2], subfiletype=1, **opts)
    with open_slide(path) as slide:
        assert slide.backend == "tiffslide"
        assert slide.level_count == 2
        assert slide.mpp == pytest.approx(0.25)
        assert slide.mpp_source == "ome.PhysicalSizeX"


def test_mpp_comes_from_the_page_that_is_level_0(tmp_path: Path) -> None:
    """A pyramid written smallest first: each page's resolution tags are its own, and OpenSlide
    sorts the largest page to level 0. Regression: the first (smallest) page's 1.0 µm/px was
    taken for level 0, whose tags say 0.25, so crops were read 4x too small and upsampled."""
    import tifffile

    image = tissue_image(1024, 768, 3)
    path = tmp_path / "smallest_first.tif"
    with tifffile.TiffWriter(path) as tif:
        for k, factor in enumerate((4, 2, 1)):
            tif.write(image[::factor, ::factor], tile=(256, 256), photometric="rgb",
                      compression="zlib", metadata=None, subfiletype=1 if k else 0,
                      resolution=(40_000 / factor, 40_000 / factor), resolutionunit="CENTIMETER")
    for backend in ("auto", "openslide"):
        with open_slide(path, backend) as slide:
            assert slide.dimensions == (1024, 768)
            assert slide.mpp_xy.x == pytest.approx(0.25) and slide.mpp_xy.y == pytest.approx(0.25)
            assert slide.mpp_source == "tiff.XResolution (centimeter)"
    with open_slide(path, "tiffslide") as slide:  # tiffslide's level 0 is the first page
        assert slide.dimensions == (256, 192)
        assert slide.mpp == pytest.approx(1.0)


@pytest.mark.parametrize(("size", "unit"), [(250_000, "pm"), (2_500, "\u00c5"),
                                           (0.25, "\u03bcm"), (0.00025, "mm")])
def test_ome_physical_size_in_other_units(tmp_path: Path, size: float, unit: str) -> None:
    # Regression: picometres, ångströms and µm spelt with a Greek mu were refused as "no
    # usable µm/px" though the OME-XML declares one
    import tifffile

    path = tmp_path / "units.ome.tif"
    meta = {"axes": "YXS", "PhysicalSizeX": size, "PhysicalSizeXUnit": unit,
            "PhysicalSizeY": size, "PhysicalSizeYUnit": unit}
    tifffile.imwrite(path, tissue_image(256, 256, 2), ome=True, metadata=meta, tile=(256, 256),
                     photometric="rgb", compression="zlib")
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.25)
        assert slide.mpp_source == "ome.PhysicalSizeX"


def test_override_beats_declared_mpp(slides: dict[str, Path]) -> None:
    with open_slide(slides["svs"], mpp=0.3) as slide:
        assert (slide.mpp, slide.mpp_source) == (0.3, "--mpp override")


@pytest.mark.parametrize("bad", [0, -0.25, math.nan, math.inf])
def test_bad_mpp_override(slides: dict[str, Path], bad: float) -> None:
    with pytest.raises(OptionError):
        open_slide(slides["svs"], mpp=bad)


def test_bad_backend_name(slides: dict[str, Path]) -> None:
    with pytest.raises(OptionError):
        open_slide(slides["svs"], backend="bioformats")


# ---------------------------------------------------------------------------- backends agree


@pytest.mark.parametrize("kind", ["pyramid_zlib", "pyramid_jpeg", "svs", "single"])
def test_backends_agree(slides: dict[str, Path], kind: str) -> None:
    with open_slide(slides[kind], "openslide") as a, open_slide(slides[kind], "tiffslide") as b:
        assert a.mpp == b.mpp
        assert a.mpp_source == b.mpp_source
        assert a.dimensions == b.dimensions
        assert a.level_dimensions == b.level_dimensions
        for level in range(a.level_count):
            w, h = a.level_dimensions[level]
            np.testing.assert_array_equal(
                a.read_level_region((0, 0), level, (w, h)),
                b.read_level_region((0, 0), level, (w, h)),
            )
        np.testing.assert_array_equal(
            a.read_region((333, 222), 0, (300, 200)), b.read_region((333, 222), 0, (300, 200))
        )


def test_level_pixels_with_fractional_downsample(tmp_path: Path) -> None:
    """1030×770 / 4 → 257×192: downsample ≈ 4.009; level coordinates still address level pixels."""
    import tifffile

    path = write_pyramid_tiff(
        tmp_path / "odd.tif", tissue_image(1030, 770, 4), 0.25, (1, 4), compression="zlib"
    )
    with tifffile.TiffFile(path) as tif:
        level1 = tif.pages[1].asarray()
    assert level1.shape == (192, 257, 3)
    with open_slide(path, "tiffslide") as slide:
        assert slide.level_downsamples[1] == pytest.approx(4.009, abs=1e-3)
        for x, y in ((0, 0), (101, 53), (240, 180)):
            region = slide.read_level_region((x, y), 1, (20, 12))
            expected = np.full((12, 20, 3), 255, np.uint8)
            part = level1[y : y + 12, x : x + 20]
            expected[: part.shape[0], : part.shape[1]] = part
            np.testing.assert_array_equal(region, expected)
    with open_slide(path, "openslide") as slide:  # OpenSlide interpolates sub-pixel offsets
        region = slide.read_level_region((101, 53), 1, (20, 12)).astype(int)
        assert np.abs(region - level1[53:65, 101:121]).mean() < 5  # off by one px: ≈ 14


def test_lossless_level0_equals_source(slides: dict[str, Path], image: np.ndarray) -> None:
    for backend in BACKENDS:
        with open_slide(slides["pyramid_zlib"], backend) as slide:
            np.testing.assert_array_equal(slide.read_region((0, 0), 0, (W, H)), image)
            np.testing.assert_array_equal(slide.read_region((17, 9), 0, (5, 3)), image[9:12, 17:22])


def test_real_cmu_svs(cmu_svs: Path) -> None:
    with open_slide(cmu_svs, "openslide") as a, open_slide(cmu_svs, "tiffslide") as b:
        for slide in (a, b):
            assert slide.dimensions == (2220, 2967)
            assert slide.level_count == 1
            assert slide.mpp == pytest.approx(0.499)
            assert slide.mpp_source == "aperio.MPP"
            assert slide.vendor == "aperio"
        np.testing.assert_array_equal(
            a.read_region((1000, 1500), 0, (256, 256)), b.read_region((1000, 1500), 0, (256, 256))
        )
    with open_slide(cmu_svs) as slide:
        assert slide.backend == "openslide"
        info = slide.info()
        json.dumps(info)
        assert info["dimensions"] == [2220, 2967]
        assert info["objective_power"] == 20
        assert {"label", "macro", "thumbnail"} <= set(info["associated_images"])


# ---------------------------------------------------------------------------- outside, alpha


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_outside_is_white(slides: dict[str, Path], image: np.ndarray, backend: str) -> None:
    with open_slide(slides["pyramid_zlib"], backend) as slide:
        far = slide.read_region((W + 500, -900), 0, (64, 32))
        assert far.shape == (32, 64, 3)
        assert far.dtype == np.uint8
        assert (far == 255).all()
        part = slide.read_region((-10, H - 20), 0, (40, 30))
        assert (part[:, :10] == 255).all()
        assert (part[20:] == 255).all()
        np.testing.assert_array_equal(part[:20, 10:], image[H - 20 :, :30])
        corner = slide.read_level_region((W // 2 - 8, -4), 1, (16, 8))
        assert (corner[:4] == 255).all()
        assert (corner[4:, 8:] == 255).all()
        assert not (corner[4:, :8] == 255).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_transparent_is_white(tmp_path: Path, image: np.ndarray, backend: str) -> None:
    import tifffile

    alpha = np.zeros((H, W, 1), np.uint8)
    alpha[:, : W // 2] = 255
    path = tmp_path / "rgba.tif"
    tifffile.imwrite(
        path, np.concatenate([image, alpha], axis=2), tile=(256, 256), photometric="rgb",
        extrasamples=["unassalpha"], compression="zlib", resolution=(40000, 40000),
        resolutionunit="CENTIMETER",
    )  # fmt: skip
    with open_slide(path, backend) as slide:
        region = slide.read_region((W // 2 - 8, 0), 0, (16, 4))
        np.testing.assert_array_equal(region[:, :8], image[:4, W // 2 - 8 : W // 2])
        assert (region[:, 8:] == 255).all()


# ---------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.svs"
    with pytest.raises(SlideError) as excinfo:
        open_slide(path)
    one_line(excinfo, path)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(SlideError) as excinfo:
        open_slide(tmp_path)
    assert "directory" in one_line(excinfo, tmp_path)


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_text_and_png_are_not_slides(tmp_path: Path, backend: str) -> None:
    text = tmp_path / "notes.svs"
    text.write_text("x,y\n1,2\n", encoding="utf-8")
    png = tmp_path / "picture.png"
    Image.fromarray(tissue_image(64, 64, 0)).save(png)
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    for path in (text, png, empty):
        with pytest.raises(SlideError) as excinfo:
            open_slide(path, backend)
        one_line(excinfo, path)


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.97])
@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_truncated_tiff(
    slides: dict[str, Path], tmp_path: Path, fraction: float, backend: str
) -> None:
    data = slides["pyramid_zlib"].read_bytes()
    path = tmp_path / "cut.tif"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(SlideError) as excinfo, open_slide(path, backend) as slide:
        for level in range(slide.level_count):
            slide.read_level_region((0, 0), level, slide.level_dimensions[level])
    one_line(excinfo, path)


def test_bad_level_and_size(slides: dict[str, Path]) -> None:
    with open_slide(slides["svs"]) as slide:
        with pytest.raises(SlideError):
            slide.read_region((0, 0), 3, (10, 10))
        with pytest.raises(SlideError):
            slide.read_region((0, 0), 0, (0, 10))


def test_closed_slide_refuses_reads(slides: dict[str, Path]) -> None:
    with open_slide(slides["svs"]) as slide:
        pass
    with pytest.raises(SlideError):
        slide.read_region((0, 0), 0, (4, 4))


# ------------------------------------------------------------------ thumbnail, info, threads


@pytest.mark.parametrize("kind", ["pyramid_jpeg", "single", "subifds"])
def test_thumbnail(slides: dict[str, Path], image: np.ndarray, kind: str) -> None:
    with open_slide(slides[kind]) as slide:
        thumb = slide.get_thumbnail(200)
        assert thumb.shape == (150, 200, 3)
        assert thumb.dtype == np.uint8
        expected = np.asarray(Image.fromarray(image).resize((200, 150), Image.Resampling.LANCZOS))
        assert np.abs(thumb.astype(int) - expected).mean() < 6
        assert slide.get_thumbnail(5000).shape == (H, W, 3)
        with pytest.raises(OptionError):
            slide.get_thumbnail(0)


def test_info_is_json(slides: dict[str, Path]) -> None:
    with open_slide(slides["subifds"]) as slide:
        info = json.loads(json.dumps(slide.info()))
    assert info["backend"] == "tiffslide"
    assert info["level_count"] == 3
    assert info["mpp"] == pytest.approx(0.25)
    assert info["mpp_source"] == "tiff.XResolution (centimeter)"
    assert info["bounds_offset"] == [0, 0]
    assert info["file_size"] == slides["subifds"].stat().st_size
    assert all(isinstance(v, str) for v in info["properties"].values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_reads_match_serial(tmp_path: Path, backend: str) -> None:
    rng = np.random.default_rng(3)
    crops = [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(24)]
    centers = [(100.0 + 150 * (i % 6), 100.0 + 150 * (i // 6)) for i in range(24)]
    canvas = place_crops(tissue_image(1000, 700, 5), crops, centers)
    path = write_pyramid_tiff(tmp_path / "c.tif", canvas, 0.25, (1, 4), compression="zlib")
    with open_slide(path, backend) as slide:
        results: dict[int, np.ndarray] = {}
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                for _ in range(5):
                    x, y = centers[i]
                    results[i] = slide.read_region((round(x) - 64, round(y) - 64), 0, (128, 128))
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(24)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        for i, crop in enumerate(crops):
            np.testing.assert_array_equal(results[i], crop)


def test_slide_is_the_public_type(slides: dict[str, Path]) -> None:
    with open_slide(slides["svs"]) as slide:
        assert isinstance(slide, Slide)
        assert "synthetic.svs" in repr(slide)


@pytest.mark.parametrize(("content", "said"), [
    # an empty first IFD: it was refused as "its samples are 1-bit unsigned" (TIFF defaults)
    (b"II*\x00\x08\x00\x00\x00\x00\x00", "not a readable slide"),
    # the first IFD past the end: tifffile's "invalid offset" warning came before the error
    (b"II*\x00\xff\xff\xff\x7f" + bytes(range(200)), "not a readable slide"),
])
def test_a_broken_tiff_header_gives_one_line(tmp_path: Path, content: bytes, said: str) -> None:
    import subprocess
    import sys

    slide = tmp_path / "broken.tif"
    slide.write_bytes(content)
    det = tmp_path / "d.csv"
    det.write_text("x,y\n10,10\n")
    run = subprocess.run([sys.executable, "-m", "wsi_atm", "classify", str(slide), "--detections",
                          str(det), "--out-dir", str(tmp_path / "out"), "--quiet"],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 2
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsi-atm: error:") and said in lines[0], lines


def test_tifffile_records_while_opening_are_said_only_when_it_opens() -> None:
    import logging

    from wsi_atm.slides.held_log import tifffile_records_held

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    log = logging.getLogger("tifffile")
    log.addHandler(handler)
    try:
        with pytest.raises(SlideError), tifffile_records_held():
            log.warning("invalid offset to first page")
            raise SlideError("not a readable slide")
        assert seen == []
        with tifffile_records_held():
            log.warning("damaged but readable")
            other = threading.Thread(target=lambda: log.warning("another slide's read"))
            other.start()
            other.join()
            assert seen == ["another slide's read"]  # other threads' records pass at once
        assert seen == ["another slide's read", "damaged but readable"]
    finally:
        log.removeHandler(handler)
