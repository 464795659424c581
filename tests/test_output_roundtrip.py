"""wsi-atm's own outputs read back as detections crop exactly where the first run did, keep
their ids; an output path blocked by a folder is refused up front; the tissue area ignores a
dark scan margin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.batch_helpers import card_128
from tests.cli_helpers import run_cli
from wsi_atm.crops import plan_crops
from wsi_atm.crops.plan import window_origins
from wsi_atm.density.tissue import tissue_area
from wsi_atm.detections import CandidateOptions, SlideFrame, read_detections
from wsi_atm.slides import open_slide
from wsi_atm.synthetic import tissue_image, write_pyramid_tiff

# Coordinates where rounding decides the pixel: halves, just under halves, plain values.
XS = [500.5, 1000.4996, 700.49999, 300.25, 1203.5, 99.5]
YS = [300.5, 800.4996, 650.5, 410.75, 901.5, 1100.49995]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("roundtrip")
    slide = write_pyramid_tiff(d / "s.tif", tissue_image(1400, 1300, seed=4), 0.25, (1, 4))
    dets = d / "dets.csv"
    dets.write_text("id,x,y,score\n" + "".join(
        f"k{i},{x},{y},0.9\n" for i, (x, y) in enumerate(zip(XS, YS, strict=True))))
    card = card_128(d / "card")
    outs = {}
    for shape in ("point", "circle"):
        out = d / shape
        assert run_cli(["classify", str(slide), "--detections", str(dets), "--out-dir", str(out),
                        "--model", str(card), "--device", "cpu", "--quiet", "--points-json",
                        "--shape", shape, "--merge-radius", "0"]) == 0
        outs[shape] = out
    return {"slide": slide, "dets": dets, **outs}


def _origins(run: dict[str, Path], path: Path) -> dict[str, tuple[int, int]]:
    with open_slide(run["slide"]) as slide:
        frame = SlideFrame(slide.path.name, *slide.dimensions, mpp=slide.mpp)
        cands = read_detections(path, frame, CandidateOptions(merge_radius_um=0))
        origins = window_origins(slide, cands.x, cands.y, plan_crops(slide))
    return {str(i): (int(o[0]), int(o[1])) for i, o in zip(cands.ids, origins, strict=True)}


@pytest.mark.parametrize("output", ["point/s.csv", "point/s.geojson", "point/s.points.json",
                                    "circle/s.geojson"])
def test_every_output_reads_back_to_the_same_crops_and_ids(run: dict[str, Path],
                                                            output: str) -> None:
    # Regression: 500.5 px written as 0.125125 mm read back as 500.49999999999994, and
    # 1000.4996 written as 1000.500: both crops moved a pixel; the GeoJSON's ids came back as
    # its feature UUIDs
    expected = _origins(run, run["dets"])
    shape, name = output.split("/")
    got = _origins(run, run[shape] / name)
    assert got == expected


def test_a_rerun_from_its_own_csv_gives_the_same_calls(run: dict[str, Path],
                                                        tmp_path: Path) -> None:
    card = next((run["slide"].parent / "card").glob("*.toml"))
    out = tmp_path / "again"
    assert run_cli(["classify", str(run["slide"]), "--detections", str(run["point"] / "s.csv"),
                    "--out-dir", str(out), "--model", str(card), "--device", "cpu", "--quiet",
                    "--merge-radius", "0"]) == 0

    def calls(path: Path) -> dict[str, str]:
        rows = [ln.split(",") for ln in path.read_text().splitlines()[1:]]
        return {r[0]: r[3] for r in rows}

    assert calls(out / "s.csv") == calls(run["point"] / "s.csv")


def test_an_output_path_taken_by_a_folder_is_refused_before_anything(
        run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Regression: an internal error (exit 1) after the model loaded and the earlier outputs
    # were deleted
    out = tmp_path / "out"
    (out / "s.png").mkdir(parents=True)
    (out / "s.summary.json").write_text("{}")
    card = next((run["slide"].parent / "card").glob("*.toml"))
    code = run_cli(["classify", str(run["slide"]), "--detections", str(run["dets"]),
                    "--out-dir", str(out), "--model", str(card), "--device", "cpu", "--quiet"])
    assert code == 2
    assert "s.png is a folder" in capsys.readouterr().err
    assert (out / "s.summary.json").read_text() == "{}"


def test_a_dark_scan_margin_is_not_tissue() -> None:
    # Regression: near-black noise had HSV saturation up to 255, counted as tissue and moved
    # Otsu's cut (fraction 0.54 against 0.38 beside white)
    rng = np.random.default_rng(0)
    tissue = tissue_image(200, 200, seed=1)
    white = np.concatenate([tissue, np.full_like(tissue, 255)], axis=1)
    dark = np.concatenate([tissue, rng.integers(0, 4, tissue.shape, dtype=np.uint8)], axis=1)
    size = (400 * 0.25, 200 * 0.25)
    assert tissue_area(dark, size).fraction == pytest.approx(tissue_area(white, size).fraction,
                                                             abs=0.01)


@pytest.mark.parametrize("colour", [(40, 70, 170), (30, 140, 90), (20, 60, 230)])
def test_glass_ringed_in_marker_ink_is_not_tissue(colour: tuple[int, int, int]) -> None:
    # Regression: a blue or green ring drawn round the tissue on the glass was saturated, so it
    # counted as tissue and the glass it enclosed was filled in as a lumen (fraction 0.45
    # against 0.13 for the tissue alone)
    yy, xx = np.mgrid[:400, :400]
    radius = np.hypot(xx - 200, yy - 200)
    glass = np.full((400, 400, 3), 240, dtype=np.uint8)
    tissue = glass.copy()
    tissue[radius < 80] = tissue_image(400, 400, seed=2)[radius < 80]
    ringed = tissue.copy()
    ringed[(radius > 148) & (radius < 153)] = colour
    ringed[195:205, 160:240] = colour  # a stroke inside the tissue: filled back in, as a hole
    size = (400 * 0.25, 400 * 0.25)
    alone = tissue_area(tissue, size).fraction
    assert 0.05 < alone <= np.pi * 80**2 / 400**2  # the synthetic tissue has pale gaps
    assert tissue_area(ringed, size).fraction == pytest.approx(alone, rel=0.03)


def test_the_review_header_says_when_the_hotspot_is_larger_than_the_tissue() -> None:
    # Regression: the header promised a blue outline that lay wholly off the picture
    from types import SimpleNamespace

    from tests.test_outputs import make_result
    from wsi_atm.outputs.figures import _findings_line

    result = make_result()
    result.hotspot = SimpleNamespace(area_mm2=2.0, mitoses=3, atypical=1,  # type: ignore[assignment]
                                     exact=True, mitoses_bound=3)
    result.tissue = SimpleNamespace(area_mm2=0.45)  # type: ignore[assignment]
    assert "blue - larger than the tissue" in str(_findings_line(result))
    result.tissue = SimpleNamespace(area_mm2=20.0)  # type: ignore[assignment]
    assert "larger than the tissue" not in str(_findings_line(result))


def test_inside_or_outside_is_decided_on_the_coordinate_written(tmp_path: Path) -> None:
    # Regression: 767.99999 on a 768-px slide was classified, then written as 768.0000 (outside
    # when read back); -0.00001 was outside but written as -0.0000
    dets = tmp_path / "d.csv"
    dets.write_text("x,y\n767.99999,100\n-0.00001,200\n300,767.99996\n300,-0.00004\n")
    frame = SlideFrame("s.tif", 768, 768, mpp=0.25)
    cands = read_detections(dets, frame, CandidateOptions(merge_radius_um=0))
    assert list(cands.status) == ["outside_slide", "ok", "outside_slide", "ok"]
    assert list(cands.x[:2]) == [768.0, 0.0] and str(cands.x[1]) == "0.0"


def test_a_name_too_long_for_the_output_files_is_refused_up_front(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Regression: a legal 226-byte slide name failed only while writing (its temp names are
    # 36 bytes longer), an internal error after the earlier outputs were deleted
    from wsi_atm.outputs.paths import name_too_long

    out = tmp_path / "out"
    assert name_too_long("a" * 150 + ".svs", out) is None
    long_name = "病理切片" * 18 + "样本.svs"  # 226 bytes
    assert "too long" in str(name_too_long(long_name, out))
    repo = Path(__file__).resolve().parents[1] / "sample_slides"
    slide = tmp_path / long_name
    slide.symlink_to(repo / "cmu_small_region.svs")
    code = run_cli(["classify", str(slide), "--detections",
                    str(repo / "cmu_small_region.candidates.csv"), "--out-dir", str(out)])
    assert code == 2 and "the name is too long" in capsys.readouterr().err
    assert not out.exists()


def test_the_summary_names_its_inputs_by_absolute_paths(
        run: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: stored as typed, relative to wherever the command had been run
    import json
    import shutil

    shutil.copy(run["slide"], tmp_path / "s.tif")
    shutil.copy(run["dets"], tmp_path / "d.csv")
    card = next((run["slide"].parent / "card").glob("*.toml"))
    monkeypatch.chdir(tmp_path)
    assert run_cli(["classify", "s.tif", "--detections", "d.csv", "--out-dir", "out",
                    "--model", str(card), "--device", "cpu", "--quiet"]) == 0
    summary = json.loads((tmp_path / "out" / "s.summary.json").read_text())
    assert summary["slide"]["path"] == str(tmp_path / "s.tif")
    assert summary["detections"]["path"] == str(tmp_path / "d.csv")


def test_small_tissue_areas_are_not_printed_as_zero() -> None:
    # Regression: 0.0257 mm² of tissue read "0.00 mm²"; a slide without any, the same
    from types import SimpleNamespace

    from tests.test_outputs import make_result
    from wsi_atm.outputs.summary import build_summary

    result = make_result()
    result.hotspot = SimpleNamespace(  # type: ignore[assignment]
        area_mm2=2.0, mitoses=3, atypical=1, radius_um=800.0, radius_px=(3200.0, 3200.0),
        center_px=(10.0, 10.0), exact=True, mitoses_bound=3)
    for area, said in ((0.0257, "(0.0257 mm²)"), (0.0, "of which the thumbnail shows none")):
        result.tissue = SimpleNamespace(area_mm2=area, fraction=0.1,  # type: ignore[assignment]
                                        saturation_cut=30, thumbnail_size=(10, 10))
        warnings = build_summary(result)["warnings"]
        assert any(said in w for w in warnings), warnings


def test_output_problems_name_every_reason_both_commands_refuse(tmp_path: Path) -> None:
    # classify and batch check their outputs through this one function: each reason once
    from wsi_atm.outputs.paths import file_ids, output_problems

    out = tmp_path / "out"
    out.mkdir()
    assert output_problems("s.svs", out, set()) == []
    (out / "s.png").mkdir()
    detections = out / "s.csv"
    detections.write_text("x,y\n")
    problems = output_problems("s.svs", out, file_ids([detections]))
    assert len(problems) == 2
    assert problems[0] == f"{detections} would overwrite an input file: choose another --out-dir"
    assert problems[1].startswith(f"{out / 's.png'} is a folder")
    long_name = "病理切片" * 18 + "样本.svs"
    assert "the name is too long" in output_problems(long_name, tmp_path, set())[0]
