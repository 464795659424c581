"""Output writers: QuPath GeoJSON, candidate CSV, summary JSON, review PNG, atomic writes."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_atm.batch.cohort import cohort_row
from wsi_atm.batch.plan import Job, Outcome
from wsi_atm.detections import Candidates, ReadReport
from wsi_atm.files import atomic_path, atomic_write_bytes, atomic_write_text
from wsi_atm.outputs.figures import _header_lines, pick_gallery, review_png
from wsi_atm.outputs.geojson import ATYPICAL_RGB, NORMAL_RGB, feature_collection, write_geojson
from wsi_atm.outputs.summary import build_summary, write_summary
from wsi_atm.outputs.tables import CSV_COLUMNS, write_candidates_csv
from wsi_atm.slide_result import ModelMeta, SlideMeta, SlideResult

jsonschema = pytest.importorskip("jsonschema")

SCHEMA_PATH = Path(__file__).parent / "fixtures" / "qupath_geojson.schema.json"
OFFSET = (100, 200)

# id, x, y, detector score, detection status, result status, p_atypical, at_border
ROWS = [
    ("c1", 1000.0, 2000.0, 0.9, "ok", "classified", 0.92, False),
    ("c2", 1500.5, 2500.25, math.nan, "ok", "classified", 0.20, False),
    ("c3", 3000.0, 500.0, 0.7, "ok", "classified", 0.55, True),
    ("c4", -50.0, 100.0, 0.8, "outside_slide", "outside_slide", math.nan, False),
    ("c5", 4000.0, 4000.0, 0.6, "ok", "classified", 0.10, False),
    ("c6", 2000.0, 3000.0, 0.5, "ok", "read_failed", math.nan, False),
]


def make_result(
    rows: list[tuple] = ROWS,
    *,
    sensitivity: float | None = None,
    specificity: float | None = None,
    resample_factor: float = 1.0,
    fraction: dict | None = None,
    rates_sd: tuple[float, float] | None = None,
) -> SlideResult:
    ids, xs, ys, scores, det_status, status, p, border = (
        (list(c) for c in zip(*rows, strict=True)) if rows else ([],) * 8
    )
    candidates = Candidates(
        ids=np.array(ids, dtype=object),
        x=np.array(xs, dtype=np.float64),
        y=np.array(ys, dtype=np.float64),
        score=np.array(scores, dtype=np.float64),
        label=np.array(["mitotic figure"] * len(ids), dtype=object),
        status=np.array(det_status, dtype=object),
        source="csv",
        report=ReadReport(rows_read=len(ids), outside_slide=det_status.count("outside_slide")),
    )
    return SlideResult(
        slide=SlideMeta(
            path="/slides/case 1.mrxs",
            name="case 1.mrxs",
            backend="openslide",
            width=5000,
            height=5000,
            mpp=0.25,
            mpp_source="openslide.mpp-x",
            bounds_offset=OFFSET,
            crop_level=0,
            resample_factor=resample_factor,
            upsampled=resample_factor > 1.0,
        ),
        model=ModelMeta(
            name="test-model",
            card_path="models/test.toml",
            weights_sha256=("ab" * 32,),
            threshold=0.5,
            sensitivity=sensitivity,
            specificity=specificity,
            n_atypical=120 if sensitivity is not None else None,
            n_normal=400 if specificity is not None else None,
            sensitivity_sd=rates_sd[0] if rates_sd else None,
            specificity_sd=rates_sd[1] if rates_sd else None,
            fraction=fraction or {},
        ),
        candidates=candidates,
        p_atypical=np.array(p, dtype=np.float64),
        status=np.array(status, dtype=object),
        at_border=np.array(border, dtype=bool),
        detections_path="/slides/case 1.csv",
        detections_sha256="cd" * 32,
        candidate_options={"min_score": None, "merge_radius_um": 3.0},
        elapsed_s=12.5,
        timings={"read": 1.0, "infer": 10.0, "nan_stage": math.nan},
        package_version="0.1.0",
    )


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def strict_load(path: Path) -> object:
    """json.loads that refuses NaN/Infinity (Python's json accepts them by default)."""

    def refuse(token: str) -> None:
        raise AssertionError(f"non-standard JSON constant {token} in {path.name}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# --- GeoJSON ---------------------------------------------------------------------------------


def test_geojson_has_one_detection_per_classified_candidate(tmp_path: Path, validator) -> None:
    result = make_result()
    path = tmp_path / "out.geojson"
    write_geojson(result, path)
    data = strict_load(path)
    validator.validate(data)
    features = data["features"]
    assert len(features) == int(result.classified.sum()) == 4
    by_id = {f["properties"]["metadata"]["candidate_id"]: f for f in features}
    assert set(by_id) == {"c1", "c2", "c3", "c5"}
    for f in features:
        assert "objectType" not in f
        assert f["properties"]["objectType"] == "detection"
        assert set(f["properties"]["metadata"]) >= {"candidate_id", "model", "source"}
    assert by_id["c1"]["properties"]["classification"] == {
        "name": "Atypical mitosis",
        "color": list(ATYPICAL_RGB),
    }
    assert by_id["c2"]["properties"]["classification"]["name"] == "Normal mitosis"
    assert by_id["c3"]["properties"]["classification"]["name"] == "Atypical mitosis"
    assert by_id["c5"]["properties"]["classification"]["color"] == list(NORMAL_RGB)


def test_geojson_coordinates_are_offset_subtracted_and_measurements_finite() -> None:
    data = feature_collection(make_result())
    rows = {r[0]: r for r in ROWS}
    for f in data["features"]:
        row = rows[f["properties"]["metadata"]["candidate_id"]]
        assert f["geometry"]["type"] == "Point"
        assert f["geometry"]["coordinates"] == pytest.approx([row[1] - 100, row[2] - 200])
        m = f["properties"]["measurements"]
        assert isinstance(m, dict)
        assert m["p_atypical"] == pytest.approx(row[6])
        if math.isnan(row[3]):
            assert "detector_score" not in m
        else:
            assert m["detector_score"] == pytest.approx(row[3])
    json.dumps(data, allow_nan=False)


def test_geojson_ids_are_stable_uuids(validator) -> None:
    first = feature_collection(make_result())
    second = feature_collection(make_result())
    ids = [f["id"] for f in first["features"]]
    assert ids == [f["id"] for f in second["features"]]
    assert len(set(ids)) == len(ids)
    duplicated = [*ROWS, ("c1", 10.0, 10.0, 0.5, "ok", "classified", 0.7, False)]
    dup_ids = [f["id"] for f in feature_collection(make_result(duplicated))["features"]]
    assert len(set(dup_ids)) == len(dup_ids)


def test_geojson_circles_are_closed_rings_of_50_px(tmp_path: Path, validator) -> None:
    path = tmp_path / "circles.geojson"
    write_geojson(make_result(), path, shape="circle")
    data = strict_load(path)
    validator.validate(data)
    rows = {r[0]: r for r in ROWS}
    for f in data["features"]:
        assert f["geometry"]["type"] == "Polygon"
        ring = np.array(f["geometry"]["coordinates"][0])
        assert len(ring) >= 17
        assert ring[0].tolist() == ring[-1].tolist()
        row = rows[f["properties"]["metadata"]["candidate_id"]]
        centre = np.array([row[1] - 100, row[2] - 200])
        assert np.linalg.norm(ring - centre, axis=1) == pytest.approx(25.0, abs=0.01)


def test_geojson_rejects_unknown_shape() -> None:
    with pytest.raises(ValueError, match="shape"):
        feature_collection(make_result(), shape="square")  # type: ignore[arg-type]


def test_empty_result_gives_valid_empty_collection(tmp_path: Path, validator) -> None:
    result = make_result([])
    path = tmp_path / "empty.geojson"
    write_geojson(result, path)
    data = strict_load(path)
    validator.validate(data)
    assert data == {"type": "FeatureCollection", "features": []}
    summary = build_summary(result)
    assert summary["atypical_fraction"] is None
    assert summary["atypical_to_normal_ratio"] is None
    assert summary["counts"]["candidates"] == 0
    write_candidates_csv(result, tmp_path / "empty.csv")
    assert (tmp_path / "empty.csv").read_text() == ",".join(CSV_COLUMNS) + "\n"


def _good_feature() -> dict:
    return {
        "type": "Feature",
        "id": "3f0c7f5e-1b2a-4c3d-8e9f-0a1b2c3d4e5f",
        "geometry": {"type": "Point", "coordinates": [1.0, 2.0]},
        "properties": {
            "objectType": "detection",
            "classification": {"name": "Atypical mitosis", "color": [220, 20, 60]},
            "measurements": {"p_atypical": 0.8},
        },
    }


def _with(path: tuple, value: object, *, delete: bool = False) -> dict:
    feature = _good_feature()
    node = feature
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return feature


@pytest.mark.parametrize(
    "feature",
    [
        _with(("properties", "classification", "color"), None, delete=True),
        _with(("properties", "classification", "color"), [300, 0, 0]),
        _with(("properties", "classification", "color"), [1, 2]),
        _with(("id",), "candidate-17"),
        _with(("objectType",), "detection"),
        _with(("properties", "objectType"), "mitosis"),
        _with(("properties", "measurements"), {"p_atypical": "high"}),
        _with(("properties", "measurements"), [0.8]),
        _with(("properties", "metadata"), {"n": 3}),
        _with(("geometry",), {"type": "Point", "coordinates": [1.0]}),
        _with(("geometry",), {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]}),
    ],
    ids=[
        "classification-without-color",
        "color-out-of-range",
        "color-two-values",
        "non-uuid-id",
        "top-level-objectType",
        "unknown-objectType",
        "non-numeric-measurement",
        "measurements-bare-list",
        "non-string-metadata",
        "point-one-coordinate",
        "ring-too-short",
    ],
)
def test_schema_rejects_what_qupath_cannot_read(validator, feature: dict) -> None:
    assert not validator.is_valid({"type": "FeatureCollection", "features": [feature]})


def test_schema_accepts_qupath_variants(validator) -> None:
    assert validator.is_valid(_good_feature())
    assert validator.is_valid([_good_feature()])
    assert validator.is_valid(_with(("properties", "classification"), "Tumor"))
    legacy = [{"name": "p_atypical", "value": 0.8}]
    assert validator.is_valid(_with(("properties", "measurements"), legacy))
    assert validator.is_valid(_with(("id",), None, delete=True))


# --- CSV and summary -------------------------------------------------------------------------


def test_csv_has_every_candidate_in_openslide_frame(tmp_path: Path) -> None:
    path = tmp_path / "candidates.csv"
    write_candidates_csv(make_result(), path)
    rows = read_csv(path)
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [r["id"] for r in rows] == [r[0] for r in ROWS]
    by_id = {r["id"]: r for r in rows}
    assert float(by_id["c2"]["x"]) == 1500.5 and float(by_id["c2"]["y"]) == 2500.25
    assert by_id["c2"]["detector_score"] == ""
    assert by_id["c1"]["p_atypical"] == "0.920000"
    assert by_id["c1"]["label"] == "atypical" and by_id["c5"]["label"] == "normal"
    assert by_id["c3"]["at_border"] == "true" and by_id["c1"]["at_border"] == "false"
    for skipped in ("c4", "c6"):
        assert by_id[skipped]["p_atypical"] == by_id[skipped]["label"] == ""
    assert by_id["c4"]["status"] == "outside_slide"
    assert by_id["c4"]["detector_score"] == "0.800000"


def test_counts_agree_across_summary_csv_and_geojson(tmp_path: Path) -> None:
    result = make_result()
    write_candidates_csv(result, tmp_path / "c.csv")
    write_geojson(result, tmp_path / "c.geojson")
    summary = write_summary(result, tmp_path / "s.json")
    assert strict_load(tmp_path / "s.json") == summary

    rows = read_csv(tmp_path / "c.csv")
    by_status = Counter(r["status"] for r in rows)
    by_label = Counter(r["label"] for r in rows if r["label"])
    by_class = Counter(
        f["properties"]["classification"]["name"]
        for f in strict_load(tmp_path / "c.geojson")["features"]
    )
    counts = summary["counts"]
    assert counts["candidates"] == len(rows) == 6
    assert counts["classified"] == by_status["classified"] == 4
    assert counts["skipped"] == {"outside_slide": 1, "read_failed": 1}
    assert counts["skipped"] == {k: v for k, v in by_status.items() if k != "classified"}
    assert counts["atypical"] == by_label["atypical"] == by_class["Atypical mitosis"] == 2
    assert counts["normal"] == by_label["normal"] == by_class["Normal mitosis"] == 2
    assert counts["at_border"] == 1


def test_summary_fraction_ratio_and_provenance() -> None:
    summary = build_summary(make_result())
    json.dumps(summary, allow_nan=False)
    fraction = summary["atypical_fraction"]
    assert fraction["value"] == pytest.approx(0.5)
    assert fraction["method"] == "Wilson score"
    assert fraction["ci95"][0] < 0.5 < fraction["ci95"][1]
    assert summary["atypical_to_normal_ratio"] == pytest.approx(1.0)
    assert summary["atypical_fraction_corrected"] is None
    slide = summary["slide"]
    assert slide["bounds_offset"] == [100, 200]
    assert "GeoJSON" in slide["bounds_offset_note"]
    assert slide["upsampled"] is False and slide["upsample_warning"] is None
    assert summary["detections"]["format"] == "csv"
    assert summary["detections"]["sha256"] == "cd" * 32
    assert summary["detections"]["report"]["outside_slide"] == 1
    assert summary["model"]["weights_sha256"] == ["ab" * 32]
    assert summary["timings_s"]["nan_stage"] is None
    assert summary["elapsed_s"] == 12.5
    assert set(summary["notes"]) >= {"atypical_fraction", "atypical_fraction_corrected"}


def test_summary_ratio_null_when_no_normal_calls() -> None:
    rows = [r for r in ROWS if r[0] in ("c1", "c3", "c4")]
    summary = build_summary(make_result(rows))
    assert summary["counts"]["normal"] == 0
    assert summary["atypical_to_normal_ratio"] is None
    assert summary["atypical_fraction"]["value"] == 1.0
    json.dumps(summary, allow_nan=False)


def test_summary_corrected_fraction_and_upsample_warning() -> None:
    summary = build_summary(make_result(sensitivity=0.75, specificity=0.80, resample_factor=1.5))
    corrected = summary["atypical_fraction_corrected"]
    # raw 0.5 → (0.5 - 0.2) / 0.55
    assert corrected["value"] == pytest.approx(0.3 / 0.55)
    lo, hi = corrected["ci95"]
    assert 0.0 <= lo <= corrected["value"] <= hi <= 1.0
    assert corrected["sensitivity"] == 0.75 and corrected["n_atypical"] == 120
    assert summary["slide"]["upsampled"] is True
    assert "upsampled" in summary["slide"]["upsample_warning"]
    assert summary["warnings"][0] == summary["slide"]["upsample_warning"]
    json.dumps(summary, allow_nan=False)


def test_rogan_gladen_interval_never_collapses_when_the_data_contradict_the_rates() -> None:
    # Regression (issue: held-out slides): every call normal → raw share 0 < 1 − spec = 0.2.
    # The corrected estimate used to come out as 0 with ci95 [0, 0], as if certain.
    rows = [(*r[:6], 0.05 if r[5] == "classified" else r[6], r[7]) for r in ROWS]
    summary = build_summary(make_result(rows, sensitivity=0.75, specificity=0.80))
    corrected = summary["atypical_fraction_corrected"]
    lo, hi = corrected["ci95"]
    # 0 of 4 is no contradiction beyond sampling noise (Wilson up to 0.49): no flag, wide
    assert "warning" not in corrected
    assert hi - lo > 0.3
    many = [(f"c{i}", 100.0 + i, 200.0, 0.9, "ok", "classified", 0.05, False) for i in range(60)]
    summary = build_summary(make_result(many, sensitivity=0.75, specificity=0.80))
    corrected = summary["atypical_fraction_corrected"]
    lo, hi = corrected["ci95"]
    assert "outside" in corrected["warning"]  # 0 of 60: Wilson up to 0.06 < 0.2
    assert hi >= summary["atypical_fraction"]["ci95"][1] - 1e-4
    json.dumps(summary, allow_nan=False)


CALIBRATED = {"method": "calibrated-mean", "platt_a": 1.0, "platt_b": 0.0, "shift_sd": 0.05,
              "prior": 0.22, "source": "test"}


def test_calibrated_mean_is_the_headline_when_the_card_has_a_fraction_table() -> None:
    result = make_result(sensitivity=0.75, specificity=0.80, fraction=CALIBRATED)
    summary = build_summary(result)
    corrected = summary["atypical_fraction_corrected"]
    # Platt (1, 0) is the identity: the mean of the classified candidates' probabilities.
    assert corrected["value"] == pytest.approx((0.92 + 0.20 + 0.55 + 0.10) / 4)
    lo, hi = corrected["ci95"]
    assert hi - lo >= 2 * 1.959 * 0.05 - 1e-9  # the between-scanner term is always in it
    assert "Platt" in corrected["method"] and "warning" not in corrected
    assert corrected["shift_sd"] == 0.05
    _, lines = _header_lines(result)
    headline = f"Estimated true atypical share: {corrected['value']:.1%} (95% CI {lo:.1%}"
    assert any(line.startswith(headline) for line in lines)
    outcome = Outcome(job=Job(slide=Path("a.svs"), detections=None), status="ok",
                      summary=summary)
    row = cohort_row(outcome)
    assert float(row["atypical_fraction_corrected"]) == pytest.approx(corrected["value"], abs=1e-6)
    assert float(row["corrected_ci95_low"]) == pytest.approx(lo, abs=1e-6)
    assert row["corrected_method"] == corrected["method"] and row["corrected_warning"] == ""


def test_cohort_csv_carries_the_summarys_warnings() -> None:
    """Regression: cohort.csv dropped the summary's warnings (upsampled crops, a hotspot
    larger than the tissue, every candidate outside the slide), which report.html and the review
    picture show: the table gave those slides' numbers as if nothing were wrong."""
    from wsi_atm.batch.cohort import COLUMNS, WARNINGS_SEP

    summary = build_summary(make_result(resample_factor=2.0))
    assert summary["warnings"]  # the upsampling
    row = cohort_row(Outcome(job=Job(slide=Path("a.svs"), detections=None), status="ok",
                             summary=summary))
    assert "warnings" in COLUMNS and set(row) == set(COLUMNS)
    assert row["warnings"].split(WARNINGS_SEP) == summary["warnings"]
    clean = build_summary(make_result([ROWS[0]]))
    assert clean["warnings"] == []
    assert cohort_row(Outcome(job=Job(slide=Path("b.svs"), detections=None), status="ok",
                              summary=clean))["warnings"] == ""


def test_a_stopped_hotspot_search_is_flagged_in_the_summary_and_picture() -> None:
    """Regression: a hotspot whose search stopped (exact false: the best field found, with a
    ceiling) was told only by the summary's hotspot block and the console; the review
    picture, report.html and cohort.csv gave its count as the hotspot's."""
    from wsi_atm.slide_result import HotspotMeta

    result = make_result()
    result.hotspot = HotspotMeta(area_mm2=2.0, radius_um=797.9, center_px=(2000.0, 2000.0),
                                 radius_px=(3191.5, 3191.5), mitoses=3, atypical=1,
                                 mitoses_bound=5, exact=False)
    summary = build_summary(result)
    assert any("no field of 2 mm² holds more than 5" in w for w in summary["warnings"])
    _, lines = _header_lines(result)
    assert any("3 mitoses (no field more than 5)" in line for line in lines)
    result.hotspot = HotspotMeta(area_mm2=2.0, radius_um=797.9, center_px=(2000.0, 2000.0),
                                 radius_px=(3191.5, 3191.5), mitoses=3, atypical=1,
                                 mitoses_bound=3, exact=True)
    assert not any("hotspot search" in w for w in build_summary(result)["warnings"])


def test_the_card_names_the_headline_estimator() -> None:
    # Regression: a card naming "raw" (or an EM table) got Rogan-Gladen without a word
    raw = build_summary(make_result(sensitivity=0.75, specificity=0.80,
                                    fraction={"method": "raw"}))
    assert raw["atypical_fraction_corrected"]["value"] == raw["atypical_fraction"]["value"]
    assert raw["atypical_fraction_corrected"]["method"].startswith("raw share")
    em = build_summary(make_result(fraction=dict(CALIBRATED, method="calibrated-em")))
    mean = build_summary(make_result(fraction=CALIBRATED))
    assert "EM" in em["atypical_fraction_corrected"]["method"]
    assert em["atypical_fraction_corrected"]["value"] != pytest.approx(
        mean["atypical_fraction_corrected"]["value"])


def test_rogan_gladen_headline_takes_in_the_rates_spread_or_says_it_has_none() -> None:
    rows = [(f"c{i}", 100.0 + i, 200.0, 0.9, "ok", "classified", 0.9 if i % 2 else 0.1,
             False) for i in range(400)]
    bare = build_summary(make_result(rows, sensitivity=0.75, specificity=0.80))
    spread = build_summary(make_result(rows, sensitivity=0.75, specificity=0.80,
                                       rates_sd=(0.07, 0.08)))
    b, s = bare["atypical_fraction_corrected"], spread["atypical_fraction_corrected"]
    assert b["value"] == s["value"]
    assert s["ci95"][0] <= b["ci95"][0] and s["ci95"][1] > b["ci95"][1]
    assert "spread between cross-validation folds" in s["method"]
    assert (s["sensitivity_sd"], s["specificity_sd"]) == (0.07, 0.08)
    assert "can be larger than this interval" in b["method"]


def test_a_calibrated_headline_the_data_contradict_is_flagged() -> None:
    table = dict(CALIBRATED, q_atypical=0.44, q_normal=0.16)
    low = [(*r[:6], 0.01, *r[7:]) for r in ROWS]  # every classified p far below validation's
    corrected = build_summary(make_result(low, fraction=table))["atypical_fraction_corrected"]
    assert "only normal" in corrected["warning"]
    assert (corrected["q_normal"], corrected["q_atypical"]) == (0.16, 0.44)
    _, lines = _header_lines(make_result(low, fraction=table))
    line = next(ln for ln in lines if ln.startswith("Estimated true atypical share"))
    assert "calibrated mean)" in line and "not to be trusted as it stands" in line


def test_undefined_rates_give_no_corrected_estimate_rather_than_a_crash() -> None:
    # a `--cv none` refit has no out-of-fold rates: NaN in its card, which the Rogan-Gladen
    # fallback took for numbers (and rejected with a ValueError while writing the summary)
    import types

    from wsi_atm.pipeline import model_meta

    card = types.SimpleNamespace(
        name="refit", path=Path("refit.toml"), threshold=0.5, fraction={},
        metrics={"sensitivity": math.nan, "specificity": math.nan, "cv_sensitivity_std": math.nan})
    clf = types.SimpleNamespace(card=card, weight_sha256=("ab" * 32,), tta=False,
                                engine="onnx", precision="float32")
    meta = model_meta(clf, None)  # type: ignore[arg-type]
    assert (meta.sensitivity, meta.specificity, meta.sensitivity_sd) == (None, None, None)
    result = make_result()
    summary = build_summary(type(result)(**{**result.__dict__, "model": meta}))
    assert summary["atypical_fraction_corrected"] is None


def test_platt_calibration_moves_the_headline() -> None:
    shifted = dict(CALIBRATED, platt_b=1.0)
    plain = build_summary(make_result(fraction=CALIBRATED))["atypical_fraction_corrected"]
    moved = build_summary(make_result(fraction=shifted))["atypical_fraction_corrected"]
    assert moved["value"] > plain["value"] + 0.1


# --- atomic writes ---------------------------------------------------------------------------


def test_atomic_writes_replace_and_leave_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    atomic_write_text(target, "first\n")
    atomic_write_text(target, "second\n")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert target.read_text() == "second\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "out.txt"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failed_write_keeps_the_previous_file(tmp_path: Path, error: type[BaseException]) -> None:
    target = tmp_path / "summary.json"
    target.write_text("good\n")
    with pytest.raises(error), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".summary.json.")
        assert tmp.name.endswith(".tmp")
        tmp.write_text("half-writ")
        raise error()
    assert target.read_text() == "good\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_failed_write_of_new_file_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError), atomic_path(tmp_path / "sub" / "new.json") as tmp:
        tmp.write_text("{")
        raise ValueError("boom")
    assert list((tmp_path / "sub").iterdir()) == []


def test_streamed_geojson_and_csv_are_the_whole_documents(tmp_path: Path) -> None:
    # The writers stream feature by feature / row by row (bounded memory on 50,000
    # candidates); the bytes must be those of the document dumped whole.
    result = make_result()
    write_geojson(result, tmp_path / "s.geojson", shape="circle")
    whole = json.dumps(feature_collection(result, shape="circle"), allow_nan=False,
                       ensure_ascii=False) + "\n"
    assert (tmp_path / "s.geojson").read_text(encoding="utf-8") == whole
    write_candidates_csv(result, tmp_path / "s.csv")
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == ",".join(CSV_COLUMNS) and len(lines) == len(result.candidates) + 1


def test_a_streamed_write_that_fails_midway_leaves_nothing(tmp_path: Path) -> None:
    # A coordinate strict JSON refuses, in the last feature, fails the write after the others
    # are on disk: no file and no temp file may remain.
    result = make_result()
    last = int(np.flatnonzero(result.classified)[-1])
    assert last > 0
    result.candidates.x[last] = np.inf
    with pytest.raises(ValueError):
        write_geojson(result, tmp_path / "bad.geojson")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_at_the_summary_leaves_no_output_and_names_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: the GeoJSON, CSV and points were renamed into place, then the summary could
    # not be written (ENOSPC): they stayed, from a run that failed, and the error was
    # "internal error (OSError at pathlib.py:… in write_bytes)"
    import errno

    from wsi_atm.errors import WsiAtmError
    from wsi_atm.options import OutputOptions
    from wsi_atm.outputs import write as write_module

    write_bytes = Path.write_bytes

    def full(self: Path, data: bytes) -> int:  # the disk fills midway through the summary
        if ".summary.json." not in self.name:
            return write_bytes(self, data)
        write_bytes(self, data[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    result = make_result()
    out = tmp_path / "out"
    with pytest.raises(Exception) as caught:  # its type is checked below
        write_module.write_outputs(result, out, OutputOptions(figure=False, points_json=True))
    assert list(out.iterdir()) == []
    # a user error the CLI reports in one line (exit status 1), not an internal error
    assert isinstance(caught.value, WsiAtmError) and caught.value.exit_code == 1
    assert str(caught.value) == (f"{out}: cannot write the outputs of {result.slide.name} "
                                 "(No space left on device)")
    monkeypatch.undo()  # with room again, all are written
    paths = write_module.write_outputs(result, out, OutputOptions(figure=False))
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths.values())


# --- review figure ---------------------------------------------------------------------------

THUMB_RGB = (180, 220, 250)  # a colour the synthetic crops never take


def _locate_thumbnail(image: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1) of the uniformly coloured thumbnail in the figure."""
    mask = np.all(image == THUMB_RGB, axis=2)
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _synthetic_crop(rng: np.random.Generator, dark: bool) -> np.ndarray:
    yy, xx = np.mgrid[:128, :128]
    crop = np.empty((128, 128, 3), dtype=np.float64)
    crop[:] = (236, 190, 214)
    crop += rng.normal(0, 8, crop.shape)
    blob = ((yy - 64) ** 2 / 18**2 + (xx - 64) ** 2 / (10 if dark else 22) ** 2) < 1
    crop[blob] = (70, 30, 110) if dark else (120, 70, 150)
    return np.clip(crop, 0, 255).astype(np.uint8)


def test_review_png_marks_candidates_in_call_colours(tmp_path: Path) -> None:
    result = make_result()
    thumb_scale = 0.1  # 5000 px slide → 500 px thumbnail
    thumbnail = np.empty((500, 500, 3), dtype=np.uint8)
    thumbnail[:] = THUMB_RGB
    rng = np.random.default_rng(1)
    confident, uncertain = pick_gallery(result, n_atypical=2, n_uncertain=2)
    assert confident == [0, 2]  # c1 (0.92) then c3 (0.55)
    assert uncertain == [1, 4]  # c2 (|0.2-0.5|) then c5 (|0.1-0.5|)
    gallery = [
        (_synthetic_crop(rng, result.atypical[i]), float(result.p_atypical[i]), ROWS[i][0])
        for i in confident + uncertain
    ]
    data = review_png(thumbnail, thumb_scale, result, gallery,
                      sections=[("Most confident atypical", 2), ("Most uncertain", 2)])
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        assert 800 <= im.width <= 4000 and 600 <= im.height <= 4000
        pixels = np.asarray(im.convert("RGB"))
    x0, y0, x1, _ = _locate_thumbnail(pixels)
    shown = (x1 - x0) / 500
    for i, row in enumerate(ROWS):
        if not result.classified[i]:
            continue
        px = round(x0 + row[1] * thumb_scale * shown)
        py = round(y0 + row[2] * thumb_scale * shown)
        expected = ATYPICAL_RGB if result.atypical[i] else NORMAL_RGB
        assert tuple(pixels[py, px]) == expected, row[0]


def test_review_png_without_candidates_or_gallery(tmp_path: Path) -> None:
    thumbnail = np.full((300, 400, 4), 255, dtype=np.uint8)
    data = review_png(thumbnail, 0.08, make_result([]))
    with Image.open(io.BytesIO(data)) as im:
        assert im.width > 400 and im.height > 300


def test_review_png_numbers_agree_with_the_calls_at_an_unround_threshold(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: at the default card's threshold 0.332895 the picture said "threshold 0.33"
    and "Atypical mitosis (p >= 0.33)" beside crops framed normal captioned p = 0.331 and
    p = 0.333."""
    from dataclasses import replace

    from PIL import ImageDraw

    threshold = 0.332895
    ps = [0.331, 0.3327, 0.3328949, 0.332895, 0.33289511, 0.5, 0.1]
    rows = [(f"c{i}", 100.0 + 50 * i, 200.0, 0.5, "ok", "classified", p, False)
            for i, p in enumerate(ps)]
    result = make_result(rows)
    result.model = replace(result.model, threshold=threshold)
    drawn: list[str] = []
    real_text = ImageDraw.ImageDraw.text

    def record(self: ImageDraw.ImageDraw, xy: object, text: str, *args: object,
               **kwargs: object) -> None:
        drawn.append(text)
        real_text(self, xy, text, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", record)
    crop = np.zeros((128, 128, 3), dtype=np.uint8)
    review_png(np.full((50, 50, 3), 230, dtype=np.uint8), 0.01, result,
               [(crop, p, f"c{i}") for i, p in enumerate(ps)])
    assert any("threshold 0.332895" in t for t in drawn)
    assert "Atypical mitosis (p >= 0.332895): 3" in drawn
    assert "Normal mitosis (p < 0.332895): 4" in drawn
    captions = [float(t.removeprefix("p = ")) for t in drawn if t.startswith("p = ")]
    assert len(captions) == len(ps)
    for p, shown in zip(ps, captions, strict=True):  # each caption on its frame's side
        assert (shown >= threshold) == (p >= threshold), (p, shown)
        assert abs(shown - p) < 5e-4


def test_review_png_header_is_never_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: without a gallery (no atypical and no flagged calls) the picture was as
    wide as a portrait slide's thumbnail, and the header's findings and flags ("crops
    UPSAMPLED 2.00x", the hotspot and tissue line) ran off its right edge."""
    from PIL import ImageDraw

    drawn: list[tuple[float, str, object]] = []
    real_text = ImageDraw.ImageDraw.text

    def record(self: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, *args: object,
               **kwargs: object) -> None:
        if kwargs.get("anchor") is None:  # left-aligned: the header's lines
            drawn.append((xy[0], text, kwargs.get("font")))
        real_text(self, xy, text, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", record)
    rows = [("c1", 1000.0, 2000.0, 0.9, "ok", "classified", 0.1, False)]
    result = make_result(rows, resample_factor=2.0)
    thumbnail = np.full((1600, 400, 3), 230, dtype=np.uint8)  # a tall, narrow slide
    data = review_png(thumbnail, 0.08, result)
    with Image.open(io.BytesIO(data)) as im:
        width = im.width
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    assert any("UPSAMPLED" in text for _, text, _ in drawn)
    for x, text, font in drawn:
        assert x + measure.textlength(text, font=font) <= width, text  # type: ignore[arg-type]


def test_pick_gallery_on_empty_result() -> None:
    assert pick_gallery(make_result([])) == ([], [])


def _inside(ring: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test of each point (as QuPath places detections in annotations)."""
    inside = np.zeros(len(pts), dtype=bool)
    for (x1, y1), (x2, y2) in itertools.pairwise(ring):
        crosses = (y1 > pts[:, 1]) != (y2 > pts[:, 1])
        with np.errstate(divide="ignore", invalid="ignore"):
            at = x1 + (pts[:, 1] - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (pts[:, 0] < at)
    return inside


@pytest.mark.parametrize("seed", range(6))
def test_hotspot_polygon_holds_every_mitosis_it_counts(seed: int) -> None:
    """Regression: the 128-gon was inscribed in the field, so the mitoses on its rim (the best
    field has them there) fell outside the annotation QuPath shows, while in_hotspot and the
    annotation's own count took them in."""
    from wsi_atm.findings import add_hotspot

    rng = np.random.default_rng(seed)
    rows = [(f"c{i}", float(x), float(y), 0.5, "ok", "classified", float(rng.random()), False)
            for i, (x, y) in enumerate(rng.uniform(100, 4900, (300, 2)))]
    result = make_result(rows)
    add_hotspot(result, 0.2)
    (hot,) = [f for f in feature_collection(result)["features"]
              if f["properties"]["objectType"] == "annotation"]
    ring = np.array(hot["geometry"]["coordinates"][0])
    qupath = np.column_stack([result.candidates.x - OFFSET[0], result.candidates.y - OFFSET[1]])
    inside = _inside(ring, qupath)
    assert hot["properties"]["measurements"]["mitoses"] == result.hotspot_mask.sum()
    assert np.array_equal(inside, result.hotspot_mask)


def test_a_probability_just_below_the_threshold_is_never_written_on_its_other_side(
        tmp_path: Path) -> None:
    # Regression: the CSV wrote p to 6 decimals whatever the call: p = 0.4999996 at threshold
    # 0.5 read "0.500000" beside "normal" (points.json the same, rounded to 0.5)
    from wsi_atm.outputs.points import points_document

    rows = [("c1", 1000.0, 2000.0, 0.9, "ok", "classified", 0.4999996, False),
            ("c2", 1500.0, 2500.0, 0.9, "ok", "classified", 0.5, False)]
    result = make_result(rows)
    write_candidates_csv(result, tmp_path / "c.csv")
    got = list(csv.DictReader(io.StringIO((tmp_path / "c.csv").read_text())))
    assert [(r["p_atypical"], r["label"]) for r in got] == [
        ("0.4999996", "normal"), ("0.500000", "atypical")]
    probs = [p["probability"] for p in points_document(result)["points"]]
    assert probs[0] < 0.5 <= probs[1]


def test_cohort_paths_through_a_linked_folder_name_the_files_used(tmp_path: Path,
                                                                  monkeypatch) -> None:
    # Regression: cohort.csv normalised "../" lexically: a manifest in a linked folder
    # (proj -> real/proj) naming ../slides/a.svs was listed as work/slides/a.svs, another file
    (tmp_path / "real" / "proj").mkdir(parents=True)
    (tmp_path / "real" / "slides").mkdir()
    (tmp_path / "work" / "slides").mkdir(parents=True)
    (tmp_path / "work" / "proj").symlink_to(tmp_path / "real" / "proj")
    used = tmp_path / "real" / "slides" / "a.svs"
    used.write_bytes(b"used")
    (tmp_path / "work" / "slides" / "a.svs").write_bytes(b"another")
    monkeypatch.chdir(tmp_path / "work")
    given = Path("proj/../slides/a.svs")
    row = cohort_row(Outcome(job=Job(slide=given, detections=given), status="ok"))
    assert Path(row["slide"]).read_bytes() == given.read_bytes() == b"used"
    assert row["slide"] == row["detections"] == str(used.resolve())
    plain = cohort_row(Outcome(job=Job(slide=Path("./slides/a.svs"), detections=None),
                               status="ok"))
    assert plain["slide"] == str(Path.cwd() / "slides" / "a.svs")  # the names given kept
