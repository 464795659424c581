"""``wsi-atm classify`` end to end: real-format slides, real crops at known positions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image

from tests.cli_helpers import run_cli
from tests.test_infer import make_trained_card
from wsi_atm.detections import SlideFrame, read_detections
from wsi_atm.infer import Classifier
from wsi_atm.models.card import load_card
from wsi_atm.models.registry import find_card
from wsi_atm.synthetic import place_crops, tissue_image, write_pyramid_tiff

SCHEMA = json.loads((Path(__file__).parent / "fixtures" / "qupath_geojson.schema.json").read_text())
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def card_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled default model when it is trained, else a random-weights 128-px card."""
    default = find_card(None)
    if default.status == "trained":
        return default.path
    folder = tmp_path_factory.mktemp("card")
    path = make_trained_card(folder)
    path.write_text(path.read_text().replace("crop_size = 32", "crop_size = 128")
                    .replace("model_size = 32", "model_size = 128"))
    return path


@pytest.fixture(scope="module")
def crop_slide(amibr_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 0.25 µm/px slide holding 12 real AMi-Br crops at known positions (lossless + JPEG)."""
    folder = tmp_path_factory.mktemp("crop_slide")
    names = sorted((amibr_dir / "Atypical").glob("*.png"))[:6] + \
        sorted((amibr_dir / "Normal").glob("*.png"))[:6]
    crops = [np.asarray(Image.open(p).convert("RGB")) for p in names]
    centers = [(300.0 + 300 * (i % 4), 300.0 + 300 * (i // 4)) for i in range(len(crops))]
    canvas = place_crops(tissue_image(1500, 1200, seed=3), crops, centers)
    lossless = write_pyramid_tiff(folder / "crops_zlib.tif", canvas, 0.25, levels=(1, 4),
                                  compression="zlib")
    jpeg = write_pyramid_tiff(folder / "crops_jpeg.tif", canvas, 0.25, levels=(1, 4),
                              compression="jpeg", quality=95)
    det = folder / "crops.csv"
    with open(det, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "x", "y", "score"])
        for i, (x, y) in enumerate(centers):
            w.writerow([f"c{i}", x, y, 0.9])
        w.writerow(["outside", 5000, 5000, 0.9])
    return {"lossless": lossless, "jpeg": jpeg, "detections": det, "crops": np.stack(crops),
            "centers": centers}


def classify(slide: Path, det: Path, out: Path, card: Path, *extra: str) -> int:
    return run_cli(["classify", str(slide), "--detections", str(det), "--out-dir", str(out),
                    "--model", str(card), "--quiet", "--device", "cpu", *extra])


def load_outputs(out: Path, stem: str) -> tuple[dict, list[dict], dict]:
    geo = json.loads((out / f"{stem}.geojson").read_text())
    rows = list(csv.DictReader((out / f"{stem}.csv").read_text().splitlines()))
    summary = json.loads((out / f"{stem}.summary.json").read_text())
    return geo, rows, summary


def detections_in(geo: dict) -> list[dict]:
    """The candidate features of a wsi-atm GeoJSON (the hotspot is an annotation)."""
    return [f for f in geo["features"] if f["properties"]["objectType"] == "detection"]


def p_by_id(rows: list[dict]) -> dict[str, float]:
    return {r["id"]: float(r["p_atypical"]) for r in rows if r["p_atypical"]}


def test_crops_read_from_slide_score_like_their_pngs(crop_slide, card_path, tmp_path):
    clf = Classifier(load_card(card_path), device="cpu")
    direct = clf.predict(crop_slide["crops"])
    for kind, tol in (("lossless", 1e-5), ("jpeg", 0.05)):
        out = tmp_path / kind
        assert classify(crop_slide[kind], crop_slide["detections"], out, card_path) == 0
        _, rows, summary = load_outputs(out, crop_slide[kind].stem)
        got = p_by_id(rows)
        slide_p = np.array([got[f"c{i}"] for i in range(len(direct))])
        delta = float(np.max(np.abs(slide_p - direct)))
        # what a failure needs to be understood: how far off, and which engines scored
        assert delta < tol, (kind, delta, clf.engine, summary["model"]["engine"],
                             slide_p.round(6), direct.round(6))


def test_outputs_are_consistent_and_qupath_valid(crop_slide, card_path, tmp_path):
    out = tmp_path / "out"
    assert classify(crop_slide["lossless"], crop_slide["detections"], out, card_path) == 0
    geo, rows, summary = load_outputs(out, "crops_zlib")
    jsonschema.validate(geo, SCHEMA)
    counts = summary["counts"]
    assert counts["candidates"] == len(rows) == 13
    assert counts["classified"] == len(detections_in(geo)) == 12
    assert counts["skipped"] == {"outside_slide": 1}
    names = [f["properties"]["classification"]["name"] for f in detections_in(geo)]
    assert names.count("Atypical mitosis") == counts["atypical"]
    assert names.count("Normal mitosis") == counts["normal"]
    assert sum(r["label"] == "atypical" for r in rows) == counts["atypical"]
    assert [r["status"] for r in rows].count("outside_slide") == 1
    assert (out / "crops_zlib.png").stat().st_size > 10_000
    # Coordinates round-trip: GeoJSON read back as detections gives the input centres.
    frame = SlideFrame("crops_zlib.tif", 1500, 1200, 0.25)
    back = read_detections(out / "crops_zlib.geojson", frame)
    got = sorted(zip(back.x.tolist(), back.y.tolist(), strict=True))
    assert np.allclose(got, sorted(crop_slide["centers"]))


def test_openslide_and_tiffslide_give_the_same_calls(crop_slide, card_path, tmp_path):
    calls = {}
    for backend in ("openslide", "tiffslide"):
        out = tmp_path / backend
        assert classify(crop_slide["jpeg"], crop_slide["detections"], out, card_path,
                        "--backend", backend) == 0
        calls[backend] = p_by_id(load_outputs(out, "crops_jpeg")[1])
    assert calls["openslide"].keys() == calls["tiffslide"].keys()
    for k, p in calls["openslide"].items():
        assert abs(p - calls["tiffslide"][k]) < 1e-4


def test_bounds_offset_moves_features_into_qupaths_frame(crop_slide, card_path, tmp_path,
                                                         monkeypatch):
    from wsi_atm.slides import Slide

    monkeypatch.setattr(Slide, "bounds_offset", property(lambda self: (100, 40)))
    out = tmp_path / "out"
    assert classify(crop_slide["lossless"], crop_slide["detections"], out, card_path) == 0
    geo, _, summary = load_outputs(out, "crops_zlib")
    assert summary["slide"]["bounds_offset"] == [100, 40]
    pts = sorted(tuple(f["geometry"]["coordinates"]) for f in detections_in(geo))
    assert np.allclose(pts, sorted((x - 100, y - 40) for x, y in crop_slide["centers"]))


def test_returned_result_and_summary_agree_on_elapsed_time(crop_slide, card_path, tmp_path):
    # Regression: run_slide set elapsed_s again after writing, so the summary and the returned
    # result disagreed.
    from wsi_atm.detections import CandidateOptions
    from wsi_atm.infer import Classifier
    from wsi_atm.models.card import load_card
    from wsi_atm.pipeline import run_slide

    clf = Classifier(load_card(card_path), device="cpu")
    out = tmp_path / "out"
    result = run_slide(crop_slide["lossless"], crop_slide["detections"], clf, CandidateOptions(),
                       out_dir=out)
    _, _, summary = load_outputs(out, "crops_zlib")
    assert summary["elapsed_s"] == result.elapsed_s > 0


def test_sample_slide_at_half_micron_is_upsampled_and_recorded(card_path, tmp_path):
    det = tmp_path / "d.csv"
    det.write_text("x,y\n1000,1000\n1500,2000\n")
    svs = REPO / "sample_slides" / "cmu_small_region.svs"
    assert classify(svs, det, tmp_path, card_path, "--shape", "circle", "--tta") == 0
    geo, _, summary = load_outputs(tmp_path, "cmu_small_region")
    assert summary["slide"]["mpp"] == pytest.approx(0.499)
    assert summary["slide"]["resample_factor"] == pytest.approx(2.0, rel=0.01)
    assert summary["slide"]["upsampled"] is True
    # auto: OpenSlide opens the SVS, wsi-atm decodes its JPEG tiles itself
    assert (summary["slide"]["backend"], summary["slide"]["pixel_reader"]) == ("openslide", "tiles")
    assert summary["counts"]["classified"] == 2
    ring = geo["features"][0]["geometry"]["coordinates"][0]
    assert geo["features"][0]["geometry"]["type"] == "Polygon" and ring[0] == ring[-1]
    width = max(p[0] for p in ring) - min(p[0] for p in ring)
    assert 45 < width <= 50.5


def test_zero_candidates_is_a_valid_result(card_path, tmp_path):
    det = tmp_path / "empty.csv"
    det.write_text("x,y\n")
    svs = REPO / "sample_slides" / "cmu_small_region.svs"
    assert classify(svs, det, tmp_path, card_path) == 0
    geo, rows, summary = load_outputs(tmp_path, "cmu_small_region")
    assert geo["features"] == [] and rows == []
    assert summary["atypical_to_normal_ratio"] is None


@pytest.mark.parametrize("case", ["missing_slide", "not_a_slide", "bad_json", "unknown_format",
                                  "no_mpp", "bad_model_file", "unknown_model"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, card_path, tmp_path, capsys):
    svs = REPO / "sample_slides" / "cmu_small_region.svs"
    det = tmp_path / "d.csv"
    det.write_text("x,y\n100,100\n")
    slide, model = svs, str(card_path)
    if case == "missing_slide":
        slide = tmp_path / "nope.svs"
    elif case == "not_a_slide":
        slide = tmp_path / "notes.svs"
        slide.write_text("hello")
    elif case == "bad_json":
        det = tmp_path / "d.json"
        det.write_text('{"type": "Multiple points", "points": [')
    elif case == "unknown_format":
        det = tmp_path / "d.txt"
        det.write_text("just some words\nand more\n")
    elif case == "no_mpp":
        slide = write_pyramid_tiff(tmp_path / "nompp.tif", tissue_image(512, 512), None,
                                   levels=(1,), resolution_unit=None)
    elif case == "bad_model_file":
        bad = tmp_path / "bad.toml"
        bad.write_text("this is = = not toml")
        model = str(bad)
    elif case == "unknown_model":
        model = "no-such-model"
    out = tmp_path / "out"
    code = run_cli(["classify", str(slide), "--detections", str(det), "--out-dir", str(out),
                    "--model", model, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    errors = [ln for ln in err if "error" in ln]
    assert len(errors) == 1 and errors[0].startswith("wsi-atm: error:")
    assert "Traceback" not in "\n".join(err)
    assert not out.exists() or not any(out.iterdir())


def test_corrected_fraction_only_at_the_cards_operating_point(card_path, tmp_path):
    """Regression: --threshold/--tta must not reuse the card's sensitivity/specificity."""
    det = tmp_path / "d.csv"
    det.write_text("x,y\n1000,1000\n1500,2000\n")
    svs = REPO / "sample_slides" / "cmu_small_region.svs"
    card = load_card(card_path)
    # A Platt calibration does not depend on the threshold, so it survives --threshold; the
    # card's sensitivity/specificity (Rogan-Gladen) never do, and nothing survives --tta.
    calibrated = bool(card.fraction)
    for extra, expect_correction in (((), calibrated or "sensitivity" in card.metrics),
                                     (("--threshold", "0.9"), calibrated),
                                     (("--tta",), False)):
        out = tmp_path / "-".join(extra or ("default",))
        assert classify(svs, det, out, card_path, *extra) == 0
        corrected = load_outputs(out, "cmu_small_region")[2]["atypical_fraction_corrected"]
        assert (corrected is not None) == expect_correction
        if extra and corrected is not None:
            assert "Rogan" not in corrected["method"]


def test_mpp_override_does_not_move_points_given_in_mm(tmp_path):
    # Regression: mm → px used the --mpp override, so on the 0.499 µm/px sample with --mpp 0.45
    # grand-challenge points moved by a median 214 px and some left the slide. The detector
    # wrote its mm with the spacing the file declares; the override only changes cropping.
    from wsi_atm.detections import CandidateOptions
    from wsi_atm.models.registry import find_card
    from wsi_atm.options import OpenOptions
    from wsi_atm.pipeline import prepare_slide

    svs = REPO / "sample_slides" / "cmu_small_region.svs"
    points = REPO / "sample_slides" / "cmu_small_region.points.json"
    card = find_card(None)
    plain = prepare_slide(svs, points, card, CandidateOptions())
    forced = prepare_slide(svs, points, card, CandidateOptions(), OpenOptions(mpp=0.45))
    try:
        assert len(plain.candidates) == len(forced.candidates) > 0
        np.testing.assert_allclose(forced.candidates.x, plain.candidates.x)
        np.testing.assert_allclose(forced.candidates.y, plain.candidates.y)
        assert forced.slide.mpp == 0.45 and forced.slide.declared_mpp == plain.slide.mpp
        assert forced.plan.read_size != plain.plan.read_size  # cropping does follow --mpp
    finally:
        plain.close()
        forced.close()


def test_bf16_is_asked_for_run_and_recorded(crop_slide, card_path, tmp_path):
    full, half = tmp_path / "full", tmp_path / "half"
    assert classify(crop_slide["lossless"], crop_slide["detections"], full, card_path) == 0
    assert classify(crop_slide["lossless"], crop_slide["detections"], half, card_path,
                    "--precision", "bf16") == 0
    _, rows_full, summary_full = load_outputs(full, "crops_zlib")
    _, rows_half, summary_half = load_outputs(half, "crops_zlib")
    assert summary_full["model"]["precision"] == "float32"
    assert (summary_half["model"]["engine"], summary_half["model"]["precision"]) == (
        "torch", "bf16-autocast")
    p_full, p_half = p_by_id(rows_full), p_by_id(rows_half)
    delta = max(abs(p_full[k] - p_half[k]) for k in p_full)
    assert 0 < delta < 0.1, delta


@pytest.mark.parametrize(("mpp", "warned"), [("0.25", True), ("0.52", False)])
def test_an_mpp_override_far_from_the_slides_own_is_said(card_path, tmp_path, caplog, mpp,
                                                          warned):
    # Regression: --mpp 0.25 on the sample, which declares 0.499 µm/px, was taken without a
    # word: every crop held twice the tissue the model expects (27 of 60 atypical became 57)
    det = tmp_path / "d.csv"
    det.write_text("x,y\n1000,1000\n1500,2000\n")
    svs = REPO / "sample_slides" / "cmu_small_region.svs"
    assert classify(svs, det, tmp_path, card_path, "--mpp", mpp) == 0
    said = ("--mpp 0.25 overrides the 0.499 µm/px the slide declares (0.50×): if the slide's "
            "value is right, each crop holds 2.00× the width of tissue the model expects")
    _, _, summary = load_outputs(tmp_path, "cmu_small_region")
    assert any(said in r.getMessage() for r in caplog.records) is warned  # stderr, via console
    assert (said in summary["warnings"]) is warned
    assert (summary["slide"]["mpp_warning"] == said) is warned
