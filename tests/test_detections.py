"""Detection readers: real MIDOG++ data and every supported format built in tmp_path."""

from __future__ import annotations

import gzip
import json
import math
import sqlite3
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from wsi_atm.detections import (
    SUPPORTED_FORMATS,
    CandidateOptions,
    Candidates,
    SlideFrame,
    detect_format,
    list_images,
    merge_duplicates,
    read_detections,
)
from wsi_atm.errors import DetectionsError, OptionError

MIDOG_SIZE = (7215, 5412)
FRAME = SlideFrame("slide.svs", width=10_000, height=8_000, mpp=0.25)


def rows(cands: Candidates) -> list[dict[str, object]]:
    """Each candidate as a plain dict, for comparing readers' results."""
    return [{"id": str(cands.ids[i]), "x": float(cands.x[i]), "y": float(cands.y[i]),
             "score": None if math.isnan(cands.score[i]) else float(cands.score[i]),
             "label": str(cands.label[i]), "status": str(cands.status[i])}
            for i in range(len(cands))]


def midog_frame(name: str) -> SlideFrame:
    return SlideFrame(name, *MIDOG_SIZE, mpp=0.25)


def write(path: Path, content: str | bytes | object) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content), encoding="utf-8")
    return path


def by_id(cands: Candidates) -> dict[str, dict[str, object]]:
    return {row["id"]: row for row in rows(cands)}


def one_line_error(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    assert excinfo.value.exit_code == 2  # type: ignore[attr-defined]
    return message


# --------------------------------------------------------------------- real MIDOG++ database


def count_midog_labels(path: Path) -> tuple[int, Counter[str]]:
    """Images and annotations per category over the whole file, via the parsing layer."""
    images = list_images(path)
    totals: Counter[str] = Counter()
    for image in images:
        totals.update(image.counts)
    return len(images), totals


def test_midogpp_whole_file_counts(midogpp_json: Path) -> None:
    assert detect_format(midogpp_json) == "midog-json"
    n_images, totals = count_midog_labels(midogpp_json)
    assert n_images == 553
    assert totals["mitotic figure"] == 11_937
    assert totals["not mitotic figure"] == 14_349
    assert sum(totals.values()) == 26_286


def test_midogpp_slide_007(midogpp_json: Path) -> None:
    cands = read_detections(midogpp_json, midog_frame("007.tiff"))
    assert cands.source == "midog-json"
    assert len(cands) == 22
    assert set(cands.label) == {"mitotic figure"}
    assert cands.inside().all()
    assert len(set(cands.ids)) == 22
    assert np.isnan(cands.score).all()
    assert cands.report.rows_read == 40
    assert cands.report.excluded_imposters == 18
    assert cands.report.image == "007.tiff"
    # centres are the midpoints of [x1, y1, x2, y2] boxes
    doc = json.loads(midogpp_json.read_text())
    ann = next(a for a in doc["annotations"] if a["image_id"] == 7 and a["category_id"] == 1)
    x1, y1, x2, y2 = ann["bbox"]
    row = by_id(cands)[str(ann["id"])]
    assert (row["x"], row["y"]) == ((x1 + x2) / 2, (y1 + y2) / 2)


def test_midogpp_007_with_imposters_keeps_all_neighbours(midogpp_json: Path) -> None:
    merged = read_detections(
        midogpp_json, midog_frame("007.tiff"), CandidateOptions(include_imposters=True)
    )
    unmerged = read_detections(
        midogpp_json,
        midog_frame("007.tiff"),
        CandidateOptions(include_imposters=True, merge_radius_um=0),
    )
    assert len(unmerged) == 40
    assert len(merged) == 40
    assert merged.report.merged_duplicates == 0
    assert Counter(merged.label) == {"mitotic figure": 22, "not mitotic figure": 18}


def test_midogpp_default_merge_collapses_no_real_annotations(midogpp_json: Path) -> None:
    """Across all 553 images, the default radius merges none of the distinct annotations."""
    merged = 0
    for image in list_images(midogpp_json):
        frame = SlideFrame(image.name, image.width, image.height, mpp=0.25)
        cands = read_detections(midogpp_json, frame, CandidateOptions(include_imposters=True))
        assert len(cands) == sum(image.counts.values())
        merged += cands.report.merged_duplicates
    assert merged == 0


def test_midogpp_slide_without_mitoses_is_empty_not_error(midogpp_json: Path) -> None:
    cands = read_detections(midogpp_json, midog_frame("001.tiff"))
    assert len(cands) == 0
    assert cands.report.excluded_imposters == 4
    assert rows(cands) == []
    with_imposters = read_detections(
        midogpp_json, midog_frame("001.tiff"), CandidateOptions(include_imposters=True)
    )
    assert len(with_imposters) == 4
    assert set(with_imposters.label) == {"not mitotic figure"}


def test_midogpp_absent_slide_is_error(midogpp_json: Path) -> None:
    with pytest.raises(DetectionsError) as excinfo:
        read_detections(midogpp_json, midog_frame("999.tiff"))
    message = one_line_error(excinfo)
    assert "999.tiff" in message and "001.tiff" in message and "553" in message


def test_midogpp_select_by_id_name_or_stem(midogpp_json: Path) -> None:
    other = midog_frame("unrelated_name.mrxs")
    by_numeric_id = read_detections(midogpp_json, other, CandidateOptions(image="7"))
    by_name = read_detections(midogpp_json, other, CandidateOptions(image="007.tiff"))
    by_stem = read_detections(midogpp_json, midog_frame("/slides/007.svs"))
    for cands in (by_numeric_id, by_name, by_stem):
        assert len(cands) == 22
        assert cands.report.image == "007.tiff"
    with pytest.raises(DetectionsError) as excinfo:
        read_detections(midogpp_json, other, CandidateOptions(image="100000"))
    assert "100000" in one_line_error(excinfo)


def test_midogpp_size_mismatch_warns(midogpp_json: Path) -> None:
    cands = read_detections(midogpp_json, SlideFrame("007.tiff", 50_000, 40_000, 0.25))
    assert any("7215×5412" in w for w in cands.report.warnings)


# --------------------------------------------------------------------- SlideRunner SQLite

SLIDERUNNER_SCHEMA = """
CREATE TABLE Slides (uid INTEGER PRIMARY KEY AUTOINCREMENT UNIQUE, filename TEXT,
    width INTEGER, height INTEGER, directory TEXT, uuid TEXT, exactImageID TEXT);
CREATE TABLE Annotations (uid INTEGER PRIMARY KEY AUTOINCREMENT UNIQUE, slide INTEGER,
    guid TEXT, lastModified REAL DEFAULT 0, deleted INTEGER DEFAULT 0, type INTEGER,
    agreedClass INTEGER, description TEXT, clickable INTEGER DEFAULT 1);
CREATE TABLE Annotations_coordinates (uid INTEGER PRIMARY KEY AUTOINCREMENT UNIQUE,
    coordinateX INTEGER, coordinateY INTEGER, coordinateZ INTEGER DEFAULT 0, slide INTEGER,
    annoId INTEGER, orderIdx INTEGER);
CREATE TABLE Annotations_label (uid INTEGER PRIMARY KEY AUTOINCREMENT UNIQUE, person INTEGER,
    class INTEGER, exact_id INTEGER, annoId INTEGER);
CREATE TABLE Classes (uid INTEGER PRIMARY KEY AUTOINCREMENT UNIQUE, name TEXT,
    clickable INTEGER DEFAULT 1, color TEXT);
"""


def make_sliderunner(path: Path) -> Path:
    """Two slides; on slide 1: a spot, a circle, a polygon, a deleted spot and an imposter."""
    annotations = [
        # uid, slide, deleted, type, class, coordinates
        (1, 1, 0, 1, 1, [(100, 200)]),
        (2, 1, 0, 5, 1, [(1000, 1000), (1050, 1060)]),
        (3, 1, 0, 3, 1, [(10, 10), (30, 10), (30, 50), (10, 50)]),
        (4, 1, 1, 1, 1, [(500, 500)]),
        (5, 1, 0, 1, 2, [(700, 800)]),
        (6, 2, 0, 1, 1, [(42, 43)]),
    ]
    with sqlite3.connect(path) as conn:
        conn.executescript(SLIDERUNNER_SCHEMA)
        conn.executemany(
            "INSERT INTO Classes (uid, name, color) VALUES (?, ?, ?)",
            [(1, "Mitotic figure", "#ff0000"), (2, "Non-mitotic figure", "#00ff00")],
        )
        conn.executemany(
            "INSERT INTO Slides (uid, filename, width, height, directory) VALUES (?, ?, ?, ?, ?)",
            [(1, "a1b2_slide.svs", 10_000, 8_000, "/data"), (2, "other.svs", 9_000, 9_000, "")],
        )
        for uid, slide, deleted, kind, cls, coords in annotations:
            conn.execute(
                "INSERT INTO Annotations (uid, slide, guid, deleted, type, agreedClass) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (uid, slide, f"guid-{uid}", deleted, kind, cls),
            )
            conn.execute(
                "INSERT INTO Annotations_label (person, class, annoId) VALUES (1, ?, ?)",
                (cls, uid),
            )
            conn.executemany(
                "INSERT INTO Annotations_coordinates "
                "(coordinateX, coordinateY, slide, annoId, orderIdx) VALUES (?, ?, ?, ?, ?)",
                [(x, y, slide, uid, k) for k, (x, y) in enumerate(coords)],
            )
    conn.close()
    return path


def test_sliderunner(tmp_path: Path) -> None:
    db = make_sliderunner(tmp_path / "MIDOG.sqlite")
    assert detect_format(db) == "sliderunner-sqlite"
    frame = SlideFrame("a1b2_slide.tiff", 10_000, 8_000, 0.25)  # stem match across extensions
    cands = read_detections(db, frame)
    assert cands.source == "sliderunner-sqlite"
    rows = by_id(cands)
    assert sorted(rows) == ["1", "2", "3"]  # deleted (4) and imposter (5) left out
    assert (rows["1"]["x"], rows["1"]["y"]) == (100, 200)
    assert (rows["2"]["x"], rows["2"]["y"]) == (1025, 1030)  # circle: mean of its corners
    assert (rows["3"]["x"], rows["3"]["y"]) == (20, 30)  # polygon: mean of its vertices
    assert set(cands.label) == {"Mitotic figure"}
    assert cands.report.excluded_imposters == 1
    assert cands.report.rows_read == 4
    assert cands.report.warnings == []

    everything = read_detections(db, frame, CandidateOptions(include_imposters=True))
    assert by_id(everything)["5"]["label"] == "Non-mitotic figure"
    assert len(everything) == 4

    other = read_detections(db, FRAME, CandidateOptions(image="2"))
    assert other.ids.tolist() == ["6"] and other.report.image == "other.svs"
    other_by_name = read_detections(db, FRAME, CandidateOptions(image="other"))
    assert other_by_name.ids.tolist() == ["6"]

    with pytest.raises(DetectionsError) as excinfo:
        read_detections(db, FRAME)
    message = one_line_error(excinfo)
    assert "slide.svs" in message and "a1b2_slide.svs" in message and "other.svs" in message

    images = {im.name: im.counts for im in list_images(db)}
    assert images == {
        "a1b2_slide.svs": {"Mitotic figure": 3, "Non-mitotic figure": 1},
        "other.svs": {"Mitotic figure": 1},
    }


def test_sliderunner_custom_class_and_not_sliderunner(tmp_path: Path) -> None:
    db = make_sliderunner(tmp_path / "db.sqlite")
    frame = SlideFrame("a1b2_slide.svs", 10_000, 8_000, 0.25)
    lookalikes = read_detections(db, frame, CandidateOptions(mitosis_class="non-mitotic FIGURE"))
    assert lookalikes.ids.tolist() == ["5"]

    plain = tmp_path / "plain.sqlite"
    with sqlite3.connect(plain) as conn:
        conn.execute("CREATE TABLE t (a INTEGER)")
    conn.close()
    with pytest.raises(DetectionsError, match="not a SlideRunner database"):
        read_detections(plain, frame)


# --------------------------------------------------------------------- grand-challenge points


def gc_points(points: list[dict[str, object]], kind: str = "Multiple points") -> dict:
    return {"type": kind, "points": points, "version": {"major": 1, "minor": 0}}


def test_gc_points_in_mm(tmp_path: Path) -> None:
    doc = gc_points(
        [
            {"point": [0.1464, 0.1580, 0], "probability": 0.534, "name": "mitotic figure"},
            {"point": [0.0353, 0.1572, 0], "probability": 0.302, "name": "non-mitotic figure"},
            {"point": [1.5, 1.25, 0], "probability": 0.9, "name": "mitotic figure"},
        ]
    )
    path = write(tmp_path / "points.json", doc)
    assert detect_format(path) == "gc-points"
    cands = read_detections(path, FRAME)
    assert cands.source == "gc-points"
    assert len(cands) == 2
    np.testing.assert_allclose(cands.x, [0.1464 * 1000 / 0.25, 1.5 * 1000 / 0.25])
    np.testing.assert_allclose(cands.y, [0.1580 * 1000 / 0.25, 1.25 * 1000 / 0.25])
    np.testing.assert_allclose(cands.score, [0.534, 0.9])
    assert cands.report.excluded_imposters == 1
    assert cands.report.units == "mm"
    assert cands.report.warnings == []

    everything = read_detections(path, FRAME, CandidateOptions(include_imposters=True))
    assert len(everything) == 3
    assert everything.label.tolist()[1] == "non-mitotic figure"

    confident = read_detections(path, FRAME, CandidateOptions(min_score=0.6))
    assert len(confident) == 1 and confident.score[0] == 0.9
    assert confident.report.below_min_score == 1


def test_gc_points_misspelled_type_and_points_of_interest(tmp_path: Path) -> None:
    doc = gc_points(
        [
            {"point": [0.5, 0.5, 0], "probability": 0.7, "name": "Points of interest"},
            {"point": [1.0, 1.0, 0], "probability": 0.4, "name": "Points of interest"},
        ],
        kind="Mulitple points",
    )
    path = write(tmp_path / "mitotic-figures.json", doc)
    assert detect_format(path) == "gc-points"
    cands = read_detections(path, FRAME)
    assert len(cands) == 2
    np.testing.assert_allclose(cands.x, [2000, 4000])
    assert set(cands.label) == {"Points of interest"}


def test_gc_points_empty(tmp_path: Path) -> None:
    path = write(tmp_path / "none.json", gc_points([]))
    cands = read_detections(path, FRAME)
    assert len(cands) == 0 and cands.report.warnings == []


def uniform_points(n: int, width: float, height: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform([0.02 * width, 0.02 * height], [0.98 * width, 0.98 * height], (n, 2))


def test_gc_points_in_pixels_warns_and_units_option_fixes(tmp_path: Path) -> None:
    px = uniform_points(30, FRAME.width, FRAME.height)
    doc = gc_points([{"point": [x, y, 0], "probability": 0.8} for x, y in px])
    path = write(tmp_path / "px.json", doc)
    wrong = read_detections(path, FRAME)
    # the command line's words first (it said only "units='px'", a Python keyword)
    assert any("read them with --units px (units='px' in Python)" in w
               for w in wrong.report.warnings)
    assert (wrong.status == "outside_slide").all()
    assert wrong.report.outside_slide == 30

    right = read_detections(path, FRAME, CandidateOptions(units="px"))
    np.testing.assert_allclose(right.x, px[:, 0])
    assert right.inside().all()
    assert right.report.warnings == []

    microns = write(
        tmp_path / "um.json", gc_points([{"point": [x * 0.25, y * 0.25, 0]} for x, y in px])
    )
    in_um = read_detections(microns, FRAME, CandidateOptions(units="um"))
    np.testing.assert_allclose(in_um.x, px[:, 0])
    assert np.isnan(in_um.score).all()


@pytest.mark.parametrize(("detector_mpp", "word"), [(0.5, "coarser"), (0.125, "finer")])
def test_gc_points_with_another_mpp_warns(tmp_path: Path, detector_mpp: float, word: str) -> None:
    """The detector wrote mm with its own µm/px: the cloud is ~2× or ~½ of the slide."""
    px = uniform_points(60, FRAME.width, FRAME.height, seed=1)
    mm = px * detector_mpp / 1000
    path = write(tmp_path / "points.json", gc_points([{"point": [x, y, 0]} for x, y in mm]))
    cands = read_detections(path, FRAME)
    assert len(cands) == 60
    assert any(word in w and "µm/px" in w for w in cands.report.warnings), cands.report.warnings

    correct = write(
        tmp_path / "ok.json", gc_points([{"point": [x, y, 0]} for x, y in px * FRAME.mpp / 1000])
    )
    assert read_detections(correct, FRAME).report.warnings == []


@pytest.mark.parametrize(("change", "said"), [
    (lambda p: p[:, ::-1], "only with x and y exchanged: are the detections' x and y columns "
                           "swapped?"),
    (lambda p: p * 2, "were they made on another scan or level of this slide (about 0.13"),
])
def test_pixels_swapped_or_of_another_scan_say_so(tmp_path: Path, change, said: str) -> None:
    # Regression: both only counted the candidates outside the slide; the slide's fraction came
    # from the few that fell inside by chance
    px = change(uniform_points(60, FRAME.width, FRAME.height, seed=2))
    path = write(tmp_path / "d.csv", "x,y\n" + "".join(f"{x},{y}\n" for x, y in px))
    cands = read_detections(path, FRAME)
    assert cands.report.outside_slide > 0
    assert any(said in w for w in cands.report.warnings), cands.report.warnings
    fine = uniform_points(60, FRAME.width, FRAME.height, seed=2)
    path = write(tmp_path / "ok.csv", "x,y\n" + "".join(f"{x},{y}\n" for x, y in fine))
    assert read_detections(path, FRAME).report.warnings == []


# --------------------------------------------------------------------- CSV / TSV


def test_csv_with_aliases_score_label_id(tmp_path: Path) -> None:
    path = write(tmp_path / "dets.txt", "ID,X,Y,Score,Label\na,10.5,20,0.9,mitosis\nb,30,40,,\n")
    assert detect_format(path) == "csv"
    cands = read_detections(path, FRAME)
    assert cands.source == "csv"
    assert cands.ids.tolist() == ["a", "b"]
    np.testing.assert_allclose(cands.x, [10.5, 30])
    np.testing.assert_allclose(cands.y, [20, 40])
    assert cands.score[0] == 0.9 and math.isnan(cands.score[1])
    assert cands.label.tolist() == ["mitosis", ""]
    assert rows(cands)[1] == {
        "id": "b",
        "x": 30.0,
        "y": 40.0,
        "score": None,
        "label": "",
        "status": "ok",
    }


@pytest.mark.parametrize(
    ("text", "expected_x"),
    [
        ("centroid_x\tcentroid_y\tprobability\n100\t200\t0.5\n300\t400\t0.6\n", [100, 300]),
        ("x_px;y_px;confidence\n100;200;0.5\n300;400;0.6\n", [100, 300]),
        (
            "Image\tName\tClass\tCentroid X µm\tCentroid Y µm\n"
            "s.svs\tPoint\tMitosis\t25\t50\ns.svs\tPoint\tMitosis\t75\t100\n",
            [100, 300],
        ),
        ("x,y\n", []),
    ],
)
def test_tsv_and_other_delimiters(tmp_path: Path, text: str, expected_x: list[float]) -> None:
    path = write(tmp_path / "dets.tsv", text)
    cands = read_detections(path, FRAME)
    np.testing.assert_allclose(cands.x, expected_x)
    assert cands.ids.tolist() == [str(i) for i in range(len(expected_x))]


@pytest.mark.parametrize(("header", "said"), [
    ("x,x,y", "names x more than once"),
    ("x,y,w,h,centroid_x,centroid_y", "two coordinate pairs, x,y and centroid_x,centroid_y"),
    ("x_um,y_um,x_mm,y_mm", "two coordinate pairs, x_um,y_um and x_mm,y_mm"),
])
def test_ambiguous_coordinate_columns_are_refused(tmp_path: Path, header: str, said: str) -> None:
    # Regression: one of the columns was used without a word
    row = ",".join(["10"] * len(header.split(",")))
    path = write(tmp_path / "d.csv", f"{header}\n{row}\n")
    with pytest.raises(DetectionsError, match=said):
        read_detections(path, FRAME)


def test_a_pixel_pair_beside_a_physical_one_is_read_in_pixels(tmp_path: Path) -> None:
    # the pixel pair is exact; a detector writing both is not ambiguous (and read so before)
    for header in ("id,x,y,x_um,y_um,score", "x_um,y_um,centroid_x,centroid_y",
                   "x,y,x_um,x_um,y_um"):  # a repeat in the unused pair does not matter
        names = header.split(",")
        values = {"x": 400, "y": 300, "centroid_x": 400, "centroid_y": 300, "x_um": 100,
                  "y_um": 75, "id": "a", "score": 0.9}
        row = ",".join(str(values[n]) for n in names)
        cands = read_detections(write(tmp_path / "d.csv", f"{header}\n{row}\n"), FRAME)
        assert (cands.x.tolist(), cands.y.tolist()) == ([400.0], [300.0]), header


def test_qupath_measurement_csv_is_in_qupaths_frame(tmp_path: Path) -> None:
    # Regression: "Centroid X µm" (QuPath's measurement export) ignored openslide.bounds-x/y,
    # while the same points exported as QuPath GeoJSON were shifted back; a MIRAX slide with a
    # bounds offset then cropped every candidate at the wrong place.
    frame = SlideFrame("x.mrxs", 10_000, 8_000, 0.25, bounds_offset=(1000, 2000))
    measured = write(
        tmp_path / "measurements.tsv",
        "Image\tName\tClass\tCentroid X µm\tCentroid Y µm\ns.mrxs\tp\tMitosis\t25\t50\n",
    )
    as_geojson = write(
        tmp_path / "same.geojson",
        [feature({"type": "Point", "coordinates": [100, 200]}, classification="Mitosis")],
    )
    from_csv = read_detections(measured, frame)
    from_geojson = read_detections(as_geojson, frame)
    assert (from_csv.x.tolist(), from_csv.y.tolist()) == ([1100], [2200])
    assert (from_csv.x.tolist(), from_csv.y.tolist()) == (
        from_geojson.x.tolist(),
        from_geojson.y.tolist(),
    )
    # Regression: an uncalibrated image's export ("Centroid X px") was read in OpenSlide's
    # frame, bounds-x/y off
    pixels = write(tmp_path / "measurements_px.tsv",
                   "Image\tName\tClass\tCentroid X px\tCentroid Y px\n"
                   "s.mrxs\tp\tMitosis\t100\t200\n")
    from_px = read_detections(pixels, frame)
    assert (from_px.x.tolist(), from_px.y.tolist()) == ([1100], [2200])
    # other detectors' µm columns and plain centroid pixels are in OpenSlide's frame
    other = write(tmp_path / "um.csv", "x_um,y_um\n25,50\n")
    plain = write(tmp_path / "px.csv", "centroid_x,centroid_y\n100,200\n")
    own = write(tmp_path / "own_px.csv", "centroid_x_px,centroid_y_px\n100,200\n")
    for path in (other, plain, own):
        cands = read_detections(path, frame)
        assert (cands.x.tolist(), cands.y.tolist()) == ([100], [200])


def test_csv_units_option_and_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "mm.csv", "x,y\n0.5,0.25\n")
    cands = read_detections(path, FRAME, CandidateOptions(units="mm"))
    np.testing.assert_allclose([cands.x[0], cands.y[0]], [2000, 1000])

    nan_row = write(tmp_path / "nan.csv", "x,y\n1,2\n3,4\nnan,5\n")
    with pytest.raises(DetectionsError) as excinfo:
        read_detections(nan_row, FRAME)
    message = one_line_error(excinfo)
    assert "non-finite" in message and "line 4" in message

    text_cell = write(tmp_path / "bad.csv", "x,y\n1,two\n")
    with pytest.raises(DetectionsError, match=r"line 2: y value 'two' is not a number"):
        read_detections(text_cell, FRAME)

    no_xy = write(tmp_path / "noxy.csv", "a,b\n1,2\n")
    with pytest.raises(DetectionsError) as excinfo:
        read_detections(no_xy, FRAME)
    assert "no x/y columns" in one_line_error(excinfo)


def test_units_option_contradicting_the_columns_is_refused(tmp_path: Path) -> None:
    # Regression: --units px on x_um,y_um columns read microns as pixels, silently
    microns = write(tmp_path / "um.csv", "x_um,y_um\n500,250\n")
    qupath = write(tmp_path / "qupath.tsv", "Class\tCentroid X µm\tCentroid Y µm\nM\t500\t250\n")
    for path in (microns, qupath):
        with pytest.raises(DetectionsError) as excinfo:
            read_detections(path, FRAME, CandidateOptions(units="px"))
        assert "columns are in um, but the units option says px" in one_line_error(excinfo)
    pixels = write(tmp_path / "px.csv", "x_px,y_px\n500,250\n")
    with pytest.raises(DetectionsError, match="columns are in px, but the units option says mm"):
        read_detections(pixels, FRAME, CandidateOptions(units="mm"))
    # the same units as the columns, or a table that names none, still follow the option
    same = read_detections(microns, FRAME, CandidateOptions(units="um"))
    assert (same.x.tolist(), same.y.tolist()) == ([2000], [1000])
    plain = read_detections(write(tmp_path / "plain.csv", "x,y\n500,250\n"), FRAME,
                            CandidateOptions(units="um"))
    assert (plain.x.tolist(), plain.y.tolist()) == ([2000], [1000])


# --------------------------------------------------------------------- QuPath GeoJSON


def feature(geometry: dict, **properties: object) -> dict:
    fid = properties.pop("id", None)
    out = {"type": "Feature", "geometry": geometry, "properties": properties}
    if fid is not None:
        out["id"] = fid
    return out


def test_qupath_geojson_points_polygons_and_offset(tmp_path: Path) -> None:
    square = [[[100, 100], [140, 100], [140, 160], [100, 160], [100, 100]]]
    shifted = [[[x + 1000, y] for x, y in square[0]]]
    doc = {
        "type": "FeatureCollection",
        "features": [
            feature(
                {"type": "Point", "coordinates": [10, 20]},
                id="p-1",
                classification={"name": "Mitosis", "color": [255, 0, 0]},
                measurements={"detector_score": 0.75},
            ),
            feature(
                {"type": "MultiPoint", "coordinates": [[300, 300], [400, 400]]},
                classification="Mitosis",
            ),
            feature(
                {"type": "Polygon", "coordinates": square},
                id="poly",
                measurements=[{"name": "probability", "value": 0.5}],
            ),
            feature({"type": "MultiPolygon", "coordinates": [square, shifted]}),
            feature(None),
        ],
    }
    path = write(tmp_path / "export.geojson", doc)
    assert detect_format(path) == "qupath-geojson"
    frame = SlideFrame("x.mrxs", 10_000, 8_000, 0.25, bounds_offset=(1000, 2000))
    cands = read_detections(path, frame)
    assert cands.source == "qupath-geojson"
    rows = by_id(cands)
    assert sorted(rows) == ["1.0", "1.1", "3", "p-1", "poly"]
    assert (rows["p-1"]["x"], rows["p-1"]["y"]) == (1010, 2020)
    assert rows["p-1"]["label"] == "Mitosis" and rows["p-1"]["score"] == 0.75
    assert (rows["1.1"]["x"], rows["1.1"]["y"]) == (1400, 2400)
    assert rows["1.0"]["label"] == "Mitosis"
    assert rows["poly"]["x"] == pytest.approx(1120) and rows["poly"]["y"] == pytest.approx(2130)
    assert rows["poly"]["score"] == 0.5 and rows["poly"]["label"] == ""
    assert (rows["3"]["x"], rows["3"]["y"]) == pytest.approx((1620, 2130))
    assert cands.report.merged_duplicates == 0
    assert cands.report.skipped == 1
    assert any("no geometry" in w for w in cands.report.warnings)


def test_qupath_bare_array_single_feature_gzip_and_empty(tmp_path: Path) -> None:
    point = feature({"type": "Point", "coordinates": [5, 6]}, classification="Mitosis")
    bare = read_detections(write(tmp_path / "a.json", [point, point | {"id": "x"}]), FRAME)
    assert len(bare) == 1  # the same point twice merges
    single = read_detections(write(tmp_path / "f.json", point), FRAME)
    assert single.x.tolist() == [5] and single.y.tolist() == [6]
    packed = write(tmp_path / "f.geojson.gz", gzip.compress(json.dumps([point]).encode()))
    assert detect_format(packed) == "qupath-geojson"
    assert len(read_detections(packed, FRAME)) == 1
    for empty in ({"type": "FeatureCollection", "features": []}, []):
        path = write(tmp_path / "empty.geojson", empty)
        assert detect_format(path) == "qupath-geojson"
        cands = read_detections(path, FRAME)
        assert len(cands) == 0 and cands.report.warnings == []


# --------------------------------------------------------------------- bad and empty files


def test_zero_byte_file_is_zero_candidates(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.csv", b"")
    assert detect_format(path) == "empty"
    cands = read_detections(path, FRAME)
    assert len(cands) == 0
    assert cands.x.dtype == np.float64 and rows(cands) == []


def test_malformed_json_names_line_and_column(tmp_path: Path) -> None:
    text = '{"type": "Multiple points",\n "points": [\n  {"point": [1, 2,]}\n]}'
    path = write(tmp_path / "bad.json", text)
    with pytest.raises(DetectionsError) as excinfo:
        read_detections(path, FRAME)
    message = one_line_error(excinfo)
    assert "malformed JSON" in message and "line 3 column" in message


@pytest.mark.parametrize(
    "content",
    [b"\x89PNG\r\n\x1a\n\x00\x00binary", "just some words\n", {"hello": "world"}, [1, 2, 3]],
)
def test_unknown_format_lists_supported(tmp_path: Path, content: object) -> None:
    path = write(tmp_path / "detections.csv", content)
    with pytest.raises(DetectionsError) as excinfo:
        detect_format(path)
    message = one_line_error(excinfo)
    assert "unknown detection format" in message
    for name in SUPPORTED_FORMATS:
        assert name in message


def test_missing_file_and_bad_options(tmp_path: Path) -> None:
    with pytest.raises(DetectionsError, match="not found"):
        read_detections(tmp_path / "nope.json", FRAME)
    with pytest.raises(DetectionsError, match="not a regular file"):
        read_detections(tmp_path, FRAME)
    with pytest.raises(OptionError):
        CandidateOptions(units="furlong")
    with pytest.raises(OptionError):
        CandidateOptions(merge_radius_um=-1)
    with pytest.raises(OptionError):
        CandidateOptions(min_score=math.nan)
    with pytest.raises(OptionError):
        SlideFrame("s", 100, 100, mpp=0)
    assert CandidateOptions(units="µm").units == "um"


def test_non_finite_coordinates_name_the_row(tmp_path: Path) -> None:
    doc = gc_points([{"point": [0.1, 0.1, 0]}, {"point": [float("nan"), 0.2, 0]}])
    path = write(tmp_path / "nan.json", json.dumps(doc))  # json.dumps writes NaN
    with pytest.raises(DetectionsError) as excinfo:
        read_detections(path, FRAME)
    assert "point #1" in one_line_error(excinfo)

    geo = [feature({"type": "Point", "coordinates": [1, float("inf")]}, id="abc")]
    with pytest.raises(DetectionsError, match=r"non-finite.*id abc"):
        read_detections(write(tmp_path / "inf.json", json.dumps(geo)), FRAME)


# --------------------------------------------------------------------- shared steps


def test_outside_slide_is_kept_and_counted(tmp_path: Path) -> None:
    text = "id,x,y\nleft,-5,500\nright,10000,10\nin,9999.5,7999.5\nbelow,10,8000\norigin,0,0\n"
    cands = read_detections(write(tmp_path / "o.csv", text), FRAME)
    status = dict(zip(cands.ids.tolist(), cands.status.tolist(), strict=True))
    assert status == {
        "left": "outside_slide",
        "right": "outside_slide",
        "in": "ok",
        "below": "outside_slide",
        "origin": "ok",
    }
    assert cands.report.outside_slide == 3
    assert cands.inside().tolist() == [False, False, True, False, True]
    assert any("outside the slide" in w for w in cands.report.warnings)


def test_duplicates_merge_keeping_higher_score(tmp_path: Path) -> None:
    # 1 µm apart (4 px at 0.25 µm/px) → merged; 25 µm away → separate
    text = "id,x,y,score\nlow,100,100,0.3\nhigh,104,100,0.9\nfar,200,100,0.5\nnoscore,201,101,\n"
    path = write(tmp_path / "dup.csv", text)
    cands = read_detections(path, FRAME)
    assert cands.ids.tolist() == ["high", "far"]
    assert cands.report.merged_duplicates == 2
    assert any("merged 2" in w for w in cands.report.warnings)
    unmerged = read_detections(path, FRAME, CandidateOptions(merge_radius_um=0))
    assert len(unmerged) == 4 and unmerged.report.merged_duplicates == 0


def test_merging_points_far_beyond_any_slide_is_quiet_and_exact() -> None:
    # Regression: a point at 1e300 px warned "invalid value encountered in cast" twice
    import warnings

    from wsi_atm.detections.postprocess import merge_duplicates

    x = np.array([1e300, -1e300, 500.0, 501.0, 1e300])
    y = np.array([5.0, 1e300, 400.0, 400.0, 5.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keep = merge_duplicates(x, y, np.array([0.9, 0.8, 0.7, 0.6, 0.5]), radius=12.0)
    assert keep.tolist() == [True, True, True, False, False]


def test_console_says_a_damaged_tiffs_complaint_once_as_a_warning(capsys) -> None:
    import logging

    from wsi_atm.console import _LowerLevelFormatter, _OnceAsWarning

    handler = logging.StreamHandler()
    handler.setFormatter(_LowerLevelFormatter("wsi-atm: %(levelname)s: %(message)s"))
    handler.addFilter(_OnceAsWarning())
    log = logging.getLogger("tifffile.test")
    log.addHandler(handler)
    log.propagate = False
    try:
        for _ in range(3):
            log.error("<TiffPages @1275950> invalid page offset 1938212")
    finally:
        log.removeHandler(handler)
    assert capsys.readouterr().err.splitlines() == [
        "wsi-atm: warning: <TiffPages @1275950> invalid page offset 1938212"]


def test_merge_is_greedy_not_transitive() -> None:
    x = np.array([0.0, 10.0, 20.0])
    keep = merge_duplicates(x, np.zeros(3), np.array([0.9, 0.8, 0.7]), radius=12.0)
    assert keep.tolist() == [True, False, True]


def test_min_score_keeps_unscored(tmp_path: Path) -> None:
    text = "x,y,probability\n100,100,0.2\n500,500,0.8\n900,900,\n"
    cands = read_detections(write(tmp_path / "s.csv", text), FRAME, CandidateOptions(min_score=0.5))
    assert cands.x.tolist() == [500, 900]
    assert cands.report.below_min_score == 1


def brute_force_merge(x: np.ndarray, y: np.ndarray, score: np.ndarray, r: float) -> np.ndarray:
    keep = np.zeros(len(x), dtype=bool)
    for i in np.argsort(-score, kind="stable"):
        kept = np.flatnonzero(keep)
        if not np.any((x[kept] - x[i]) ** 2 + (y[kept] - y[i]) ** 2 <= r * r):
            keep[i] = True
    return keep


def test_merge_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 400, (1500, 2))
    score = rng.random(1500)
    fast = merge_duplicates(xy[:, 0], xy[:, 1], score, 12.0)
    assert 0 < fast.sum() < 1500
    np.testing.assert_array_equal(fast, brute_force_merge(xy[:, 0], xy[:, 1], score, 12.0))


def test_fifty_thousand_candidates_merge(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    frame = SlideFrame("big.svs", 200_000, 100_000, 0.25)
    xy = rng.uniform(0, [200_000, 100_000], (45_000, 2))
    dup = xy[:5_000] + rng.uniform(-2, 2, (5_000, 2))  # tiles' double reports, < 1 µm away
    pts = np.vstack([xy, dup])
    scores = rng.random(len(pts))
    lines = [
        "x,y,score",
        *(f"{x:.2f},{y:.2f},{s:.4f}" for (x, y), s in zip(pts, scores, strict=True)),
    ]
    path = write(tmp_path / "big.csv", "\n".join(lines) + "\n")
    cands = read_detections(path, frame)
    assert cands.report.rows_read == 50_000
    assert 5_000 <= cands.report.merged_duplicates < 5_200
    assert len(cands) == 50_000 - cands.report.merged_duplicates


IMPOSTER_LABELS = ["mitotic figure", "Non-mitotic figure", "IMPOSTER", "hard_negative",
                   "something new", "Atypical mitosis", "non mitotic figure"]


def _same_points_in_three_formats(tmp_path: Path) -> list[Path]:
    pts = [(1000.0 + 100 * i, 2000.0 + 50 * i) for i in range(len(IMPOSTER_LABELS))]
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("x,y,class\n" + "".join(
        f"{x},{y},{lab}\n" for (x, y), lab in zip(pts, IMPOSTER_LABELS, strict=True)))
    gj = tmp_path / "d.geojson"
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [x, y]},
         "properties": {"objectType": "detection", "classification": {"name": lab}}}
        for (x, y), lab in zip(pts, IMPOSTER_LABELS, strict=True)]}))
    gc = tmp_path / "d.json"
    gc.write_text(json.dumps({"type": "Multiple points", "version": {"major": 1, "minor": 0},
                              "points": [{"name": lab, "point": [x * 0.25e-3, y * 0.25e-3, 0]}
                                         for (x, y), lab in zip(pts, IMPOSTER_LABELS,
                                                                strict=True)]}))
    return [csv_path, gj, gc]


def test_imposter_labels_are_dropped_the_same_in_every_format(tmp_path):
    # Regression: only the grand-challenge reader honoured imposter names; CSV label columns and
    # GeoJSON classifications kept them, so converting a file between formats changed counts.
    for path in _same_points_in_three_formats(tmp_path):
        cands = read_detections(path, FRAME)
        # kept: "mitotic figure", the unknown name, wsi-atm's own class
        assert np.allclose(sorted(cands.x.tolist()), [1000.0, 1400.0, 1500.0]), path.name
        assert cands.report.excluded_imposters == 4, path.name
        everything = read_detections(path, FRAME, CandidateOptions(include_imposters=True))
        assert len(everything) == len(IMPOSTER_LABELS)
