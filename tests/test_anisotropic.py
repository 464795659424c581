"""Non-square pixels (0.25 × 0.26 µm): x and y stay apart from µm/px to crops and summary.

Regression: ``Slide.mpp`` was the mean of x and y and served both axes, so a point at
(0.9, 0.702) mm landed at (3529, 2753) px instead of (3600, 2700), and crops covered
32.0 × 33.3 µm.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli_helpers import run_cli
from wsi_atm.crops import plan_crops, read_crop
from wsi_atm.crops.plan import UpsamplingWarning
from wsi_atm.detections import CandidateOptions
from wsi_atm.models.registry import find_card
from wsi_atm.options import OpenOptions
from wsi_atm.pipeline import prepare_slide
from wsi_atm.slides import open_slide
from wsi_atm.synthetic import tissue_image, write_pyramid_tiff

MPP_X, MPP_Y = 0.25, 0.26
BACKENDS = ("openslide", "tiffslide", "tiles")


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("aniso") / "aniso.tif"
    image = tissue_image(4000, 3000, seed=11)
    return write_pyramid_tiff(
        path, image, None, levels=(1, 4), compression="zlib",
        resolution=(10_000 / MPP_X, 10_000 / MPP_Y), resolution_unit="centimeter",
    )  # fmt: skip


def write_points(path: Path) -> Path:
    path.write_text(json.dumps({
        "type": "Multiple points", "version": {"major": 1, "minor": 0},
        "points": [{"point": [0.9, 0.702, 0], "name": "mitotic figure"}],
    }))  # fmt: skip
    return path


@pytest.mark.parametrize("backend", BACKENDS)
def test_slide_keeps_x_and_y_spacing(slide_path: Path, backend: str) -> None:
    with open_slide(slide_path, backend) as slide:
        assert (slide.mpp_xy.x, slide.mpp_xy.y) == pytest.approx((MPP_X, MPP_Y))
        assert slide.mpp == pytest.approx((MPP_X + MPP_Y) / 2)
        info = slide.info()
    assert (info["mpp_x"], info["mpp_y"]) == pytest.approx((MPP_X, MPP_Y))
    with open_slide(slide_path, backend, mpp=0.3) as forced:  # an override is square
        assert (forced.mpp_xy.x, forced.mpp_xy.y) == (0.3, 0.3)
        assert forced.declared_mpp_xy is not None
        assert forced.declared_mpp_xy.y == pytest.approx(MPP_Y)


def test_points_in_mm_convert_each_axis(slide_path: Path, tmp_path: Path) -> None:
    points = write_points(tmp_path / "points.json")
    card = find_card("wsi-atm-default")
    for mpp in (None, 0.3):  # the detector's spacing is the declared one, override or not
        prepared = prepare_slide(slide_path, points, card, CandidateOptions(), OpenOptions(mpp=mpp))
        try:
            x, y = prepared.candidates.x[0], prepared.candidates.y[0]
        finally:
            prepared.slide.close()
        assert (x, y) == pytest.approx((3600, 2700))


@pytest.mark.parametrize("backend", BACKENDS)
def test_crops_cover_the_target_on_both_axes(slide_path: Path, backend: str) -> None:
    with open_slide(slide_path, backend) as slide:
        plan = plan_crops(slide)
        assert not plan.native and plan.level == 0
        assert plan.read_shape == (128, 123)  # 128 × 0.25 / 0.26 = 123.1 rows
        width_um = plan.read_shape[0] * MPP_X
        height_um = plan.read_shape[1] * MPP_Y
        assert width_um == pytest.approx(32.0) and height_um == pytest.approx(32.0, abs=0.1)
        crop, at_border = read_crop(slide, 2000.0, 1500.0, plan)
        window = slide.read_level_region((2000 - 64, 1500 - 61), 0, (128, 123))
    assert crop.shape == (128, 128, 3) and not at_border
    expected = Image.fromarray(window).resize((128, 128), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(crop, np.asarray(expected))


def test_classify_records_both_spacings(slide_path: Path, tmp_path: Path) -> None:
    points = write_points(tmp_path / "points.json")
    out = tmp_path / "out"
    assert run_cli(["classify", str(slide_path), "--detections", str(points), "--out-dir",
                    str(out), "--device", "cpu", "--quiet"]) == 0
    summary = json.loads((out / "aniso.summary.json").read_text())["slide"]
    assert (summary["mpp_x"], summary["mpp_y"]) == pytest.approx((MPP_X, MPP_Y))
    assert summary["mpp"] == pytest.approx((MPP_X + MPP_Y) / 2)
    with (out / "aniso.csv").open() as fh:
        row = next(csv.DictReader(fh))
    assert (float(row["x"]), float(row["y"])) == pytest.approx((3600, 2700))


def test_upsampling_of_either_axis_is_reported(tmp_path: Path) -> None:
    # Regression: a slide of 0.25 × 0.5 µm/px upsampled y 2× while the summary, slide-info and
    # the review picture said "resample_factor 1.0" and carried no warning (x's factor only)
    path = write_pyramid_tiff(
        tmp_path / "tall.tif", tissue_image(800, 600, seed=2), None, levels=(1,),
        compression="zlib", resolution=(10_000 / 0.25, 10_000 / 0.5),
        resolution_unit="centimeter",
    )  # fmt: skip
    with open_slide(path) as slide, pytest.warns(UpsamplingWarning) as said:
        plan = plan_crops(slide)
    assert plan.scale == pytest.approx(1.0) and plan.largest_scale == pytest.approx(2.0)
    # each axis said, not the mean (0.375 µm/px, "upsampled 2.00×" read as both axes)
    assert "0.25 µm/px across and 0.5 down" in str(said[0].message)
    assert "upsampled 1.00× across and 2.00× down" in str(said[0].message)
    detections = tmp_path / "d.csv"
    detections.write_text("x,y\n400,300\n")
    out = tmp_path / "out"
    assert run_cli(["classify", str(path), "--detections", str(detections), "--out-dir",
                    str(out), "--device", "cpu", "--quiet"]) == 0
    summary = json.loads((out / "tall.summary.json").read_text())["slide"]
    assert summary["resample_factor"] == pytest.approx(2.0)
    assert summary["upsampled"] and "upsampled 2.00x" in summary["upsample_warning"]
    assert "0.250 µm/px across, 0.500 down" in summary["upsample_warning"]


def test_a_level_is_chosen_by_its_coarser_axis(tmp_path: Path) -> None:
    # Regression: the level was chosen by the mean of x and y: at 0.12 × 0.14 µm/px the
    # downsample-2 level (0.24 × 0.28, mean 0.26) passed for 0.25, and its y axis was upsampled
    # 1.12× (interpolated) where level 0 had the detail
    path = write_pyramid_tiff(
        tmp_path / "fine.tif", tissue_image(2048, 2048, seed=3), None, levels=(1, 2),
        compression="zlib", resolution=(10_000 / 0.12, 10_000 / 0.14),
        resolution_unit="centimeter",
    )  # fmt: skip
    with open_slide(path, "openslide") as slide:
        plan = plan_crops(slide, 128, 0.25)
    assert plan.level == 0 and not plan.upsampled
    assert plan.read_shape == (267, 229)
