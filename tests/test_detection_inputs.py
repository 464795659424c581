"""Detection files that looked readable but were read wrong (or crashed): one regression each."""

from __future__ import annotations

import codecs
import json
import math
import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.test_detections import FRAME, make_sliderunner, one_line_error, rows, write
from wsi_atm.detections import CandidateOptions, SlideFrame, read_detections
from wsi_atm.errors import DetectionsError
from wsi_atm.outputs.geojson import circle_ring


def midog_doc(annotations: list[dict[str, object]], **image: object) -> dict[str, object]:
    return {
        "images": [{"id": 1, "file_name": "slide.tiff", **image}],
        "categories": [{"id": 1, "name": "mitotic figure"}, {"id": 2, "name": "imposter"}],
        "annotations": [{"id": i, "image_id": 1, "category_id": 1, **a}
                        for i, a in enumerate(annotations)],
    }


def test_coco_boxes_are_refused_not_read_as_corners(tmp_path: Path) -> None:
    # COCO's [x, y, width, height] read as [x1, y1, x2, y2] put the centre at (175, 225)
    path = write(tmp_path / "coco.json", midog_doc([{"bbox": [300, 400, 50, 50]}]))
    with pytest.raises(DetectionsError) as excinfo:
        read_detections(path, FRAME)
    message = one_line_error(excinfo)
    assert "x2 < x1" in message and "COCO" in message
    path = write(tmp_path / "midog.json", midog_doc([{"bbox": [300, 400, 350, 450]}]))
    assert rows(read_detections(path, FRAME))[0]["x"] == 325.0


def test_midog_detector_scores_are_read_and_filtered(tmp_path: Path) -> None:
    annotations = [{"bbox": [100 * i, 100, 100 * i + 50, 150], "score": i / 10}
                   for i in range(1, 10)]
    path = write(tmp_path / "det.json", midog_doc(annotations))
    cands = read_detections(path, FRAME, CandidateOptions(min_score=0.5))
    assert sorted(r["score"] for r in rows(cands)) == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9])
    assert cands.report.below_min_score == 4
    bad = write(tmp_path / "bad.json", midog_doc([{"bbox": [0, 0, 5, 5], "score": "high"}]))
    with pytest.raises(DetectionsError, match="score 'high' is not a number"):
        read_detections(bad, FRAME)


def test_min_score_without_any_score_says_it_does_nothing(tmp_path: Path) -> None:
    path = write(tmp_path / "plain.csv", "x,y\n10,20\n30,40\n")
    cands = read_detections(path, FRAME, CandidateOptions(min_score=0.99))
    assert len(cands) == 2
    assert any("no effect" in w for w in cands.report.warnings)
    scored = write(tmp_path / "scored.csv", "x,y,score\n10,20,0.1\n30,40,\n")
    cands = read_detections(scored, FRAME, CandidateOptions(min_score=0.99))
    assert not any("no effect" in w for w in cands.report.warnings)


QUPATH_EXPORT = (
    "Image\tName\tClass\tCentroid X px\tCentroid Y px\n"
    "slide.svs\tc1\tMitotic figure\t100\t200\n"
    "other.svs\tc2\tMitotic figure\t300\t400\n"
    "other.svs\tc3\tMitotic figure\t500\t600\n"
)


def test_a_table_of_several_images_gives_this_slides_rows(tmp_path: Path) -> None:
    # a QuPath measurement export of a project put every image's cells on this slide
    path = write(tmp_path / "export.tsv", QUPATH_EXPORT)
    cands = read_detections(path, FRAME)
    assert [(r["x"], r["y"]) for r in rows(cands)] == [(100.0, 200.0)]
    assert cands.report.image == "slide.svs"
    other = read_detections(path, FRAME, CandidateOptions(image="other.svs"))
    assert [r["x"] for r in rows(other)] == [300.0, 500.0]
    elsewhere = SlideFrame("third.svs", width=10_000, height=8_000, mpp=0.25)
    with pytest.raises(DetectionsError) as excinfo:
        read_detections(path, elsewhere)
    assert "no entry for slide 'third.svs'" in one_line_error(excinfo)


def test_a_table_image_column_with_gaps_or_another_name(tmp_path: Path) -> None:
    gap = write(tmp_path / "gap.tsv", QUPATH_EXPORT + "\t\tMitotic figure\t7\t8\n")
    with pytest.raises(DetectionsError, match="names no image"):
        read_detections(gap, FRAME)
    single = write(tmp_path / "single.csv", "slide,x,y\ncase_17,10,20\ncase_17,30,40\n")
    cands = read_detections(single, FRAME)
    assert len(cands) == 2
    assert any("'case_17', not the slide 'slide.svs'" in w for w in cands.report.warnings)
    plain = write(tmp_path / "plain.csv", "x,y\n10,20\n")
    cands = read_detections(plain, FRAME, CandidateOptions(image="slide.svs"))
    assert any("image option ('slide.svs') is ignored" in w for w in cands.report.warnings)


def test_a_per_candidate_filename_column_is_not_an_image_column(tmp_path: Path) -> None:
    # Regression (review): "filename" (each candidate's patch, as detectors write it) was taken
    # for the image column and the table refused
    path = write(tmp_path / "d.csv", "x,y,score,filename\n10,20,0.9,cand_000.png\n"
                                     "30,40,0.8,cand_001.png\n")
    cands = read_detections(path, FRAME)
    assert len(cands) == 2 and not cands.report.warnings


def test_a_blank_id_cannot_equal_another_rows_id(tmp_path: Path) -> None:
    # the blank cell of the second row was given "1", the first row's id
    path = write(tmp_path / "ids.csv", "id,x,y\n1,10,20\n,30,40\n")
    ids = [r["id"] for r in rows(read_detections(path, FRAME))]
    assert len(set(ids)) == 2 and ids[0] == "1"


@pytest.mark.parametrize(("name", "content"), [
    # integers JSON allows and Python cannot hold as a float, or at all
    ("gc.json", '{"type": "Multiple points", "points": [{"point": [1%s, 2, 0]}]}' % ("0" * 400)),
    ("geo.json", '{"type": "Feature", "geometry": {"type": "Point", "coordinates": '
                 '[1%s, 2]}, "properties": {}}' % ("0" * 400)),
    ("huge.json", '{"type": "Multiple points", "points": [{"point": [1%s, 2, 0]}]}'
                  % ("0" * 5000)),
    ("bbox.json", json.dumps(midog_doc([{"bbox": [0, 0, 5, 5]}]))
     .replace("[0, 0, 5, 5]", "[0, 0, 5%s, 5]" % ("0" * 400))),
])
def test_numbers_too_large_for_python_are_input_errors(tmp_path: Path, name: str,
                                                       content: str) -> None:
    with pytest.raises(DetectionsError) as excinfo:
        read_detections(write(tmp_path / name, content), FRAME)
    one_line_error(excinfo)


def test_coordinates_that_overflow_in_conversion_are_refused(tmp_path: Path) -> None:
    # finite millimetres (1e306) became infinite pixels, an empty cell in the output CSV
    path = write(tmp_path / "gc.json", {"type": "Multiple points",
                                        "points": [{"point": [1e306, 0.1, 0]}]})
    with pytest.raises(DetectionsError) as excinfo:
        read_detections(path, FRAME)
    assert "after conversion from mm to px" in one_line_error(excinfo)


def test_an_unusable_declared_image_size_is_unknown_not_a_crash(tmp_path: Path) -> None:
    text = json.dumps(midog_doc([{"bbox": [0, 0, 10, 10]}], width=1, height=2))
    text = text.replace('"width": 1', '"width": 1e400').replace('"height": 2', '"height": "x"')
    cands = read_detections(write(tmp_path / "m.json", text), FRAME)
    assert len(cands) == 1 and not cands.report.warnings
    db = make_sliderunner(tmp_path / "sr.sqlite")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE Slides SET width = 'abc' WHERE uid = 1")
    conn.close()
    frame = SlideFrame("a1b2_slide.svs", width=10_000, height=8_000, mpp=0.25)
    assert len(read_detections(db, frame)) == 3  # the imposter left out


def test_sliderunner_text_coordinates_are_refused_not_averaged_as_zero(tmp_path: Path) -> None:
    db = make_sliderunner(tmp_path / "sr.sqlite")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE Annotations_coordinates SET coordinateX = 'abc' "
                     "WHERE annoId = 2 AND orderIdx = 1")
    conn.close()
    frame = SlideFrame("a1b2_slide.svs", width=10_000, height=8_000, mpp=0.25)
    with pytest.raises(DetectionsError) as excinfo:
        read_detections(db, frame)
    assert "annotation 2 has a coordinate that is not a number" in one_line_error(excinfo)


def test_own_circle_output_reads_back_at_its_centres(tmp_path: Path) -> None:
    # GEOS put a circle's centroid a hair below a half pixel: 1,123 of 2,000 crops moved 1 px
    rng = np.random.default_rng(0)
    centres = np.floor(rng.uniform(100, 7000, (2000, 2))) + 0.5
    features = [{"type": "Feature", "properties": {},
                 "geometry": {"type": "Polygon", "coordinates": [circle_ring(x, y, 20.0)]}}
                for x, y in centres.tolist()]
    path = write(tmp_path / "circles.geojson", {"type": "FeatureCollection",
                                                "features": features})
    cands = read_detections(path, FRAME, CandidateOptions(merge_radius_um=0))
    np.testing.assert_array_equal(cands.x, centres[:, 0])
    np.testing.assert_array_equal(cands.y, centres[:, 1])
    assert np.array_equal(np.floor(cands.x + 0.5), centres[:, 0] + 0.5)


def test_utf16_tables_are_read_and_other_encodings_named(tmp_path: Path) -> None:
    text = "x\ty\tclass\n10\t20\tmitosis\n30\t40\tmitosis\n"
    for bom, codec in ((codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
        path = write(tmp_path / f"{codec}.tsv", bom + text.encode(codec))
        assert [r["x"] for r in rows(read_detections(path, FRAME))] == [10.0, 30.0]
    latin = write(tmp_path / "latin1.tsv", "x\ty\tclass\n10\t20\tmitose é\n".encode("latin-1"))
    with pytest.raises(DetectionsError) as excinfo:
        read_detections(latin, FRAME)
    assert "not UTF-8" in one_line_error(excinfo)


def test_unknown_json_keys_with_newlines_stay_on_one_line(tmp_path: Path) -> None:
    path = write(tmp_path / "odd.json", {"weird\nkey": 1, "type": "x\ny"})
    with pytest.raises(DetectionsError) as excinfo:
        read_detections(path, FRAME)
    assert "unknown detection format" in one_line_error(excinfo)


def test_cr_line_endings_are_read_and_csv_errors_are_input_errors(tmp_path: Path) -> None:
    # Excel for Mac's "CSV (Macintosh)" ends lines with CR alone: csv.Error, exit 1
    path = write(tmp_path / "mac.csv", "id,x,y\ra,10,20\rb,30,40\r")
    cands = read_detections(path, FRAME, CandidateOptions(merge_radius_um=0))
    assert rows(cands) == [
        {"id": "a", "x": 10.0, "y": 20.0, "score": None, "label": "", "status": "ok"},
        {"id": "b", "x": 30.0, "y": 40.0, "score": None, "label": "", "status": "ok"},
    ]
    bad = write(tmp_path / "mac_bad.csv", "x,y\r1,2\r3,four\r")
    with pytest.raises(DetectionsError, match="line 3: y value 'four'"):
        read_detections(bad, FRAME)
    # a cell over csv's field limit (131,072 characters) was an internal error too
    huge = write(tmp_path / "huge.csv", "x,y,label\n1,2," + "a" * 200_000 + "\n")
    with pytest.raises(DetectionsError) as excinfo:
        read_detections(huge, FRAME)
    assert "line 2: unreadable table" in one_line_error(excinfo)


def test_rows_longer_than_the_header_are_refused(tmp_path: Path) -> None:
    # decimal commas in a comma-separated file (Java's String.format in a European locale):
    # "1234,5,567,8" was read as x=1234, y=5, a wrong coordinate without a word
    path = write(tmp_path / "comma.csv", "x,y,score\n1234,5,567,8,0,9\n")
    with pytest.raises(DetectionsError) as excinfo:
        read_detections(path, FRAME)
    message = one_line_error(excinfo)
    assert "line 2 has 6 cells but the header 3" in message and "decimal commas" in message
    # R's write.table: row names under no header cell; x was read as the row name
    r_table = write(tmp_path / "r.tsv", '"x"\t"y"\t"score"\n"1"\t1500.5\t2200.25\t0.9\n')
    with pytest.raises(DetectionsError) as excinfo:
        read_detections(r_table, FRAME)
    message = one_line_error(excinfo)
    assert "line 2 has 4 cells but the header 3 (an unquoted tab" in message
    assert "row names without a header cell" in message and "decimal commas" not in message
    # a label with an unquoted comma shifted nothing the reader uses, but dropped part of it
    label = write(tmp_path / "label.csv", "x,y,label\n10,20,mitotic figure, atypical\n")
    with pytest.raises(DetectionsError, match="an unquoted comma inside a value"):
        read_detections(label, FRAME)
    # empty trailing cells (a spreadsheet's stray delimiters) are no values: still read
    trailing = write(tmp_path / "trailing.csv", "x,y\n1234.5,567.8,,\n")
    assert [(r["x"], r["y"]) for r in rows(read_detections(trailing, FRAME))] == [(1234.5, 567.8)]


def test_a_detectors_ascii_centroid_um_columns_are_in_openslides_frame(tmp_path: Path) -> None:
    # "centroid_x_um" (QuPath writes "Centroid X µm", never "um") was taken for QuPath's
    # export: on a slide with openslide.bounds-x/y every point moved by the offset
    frame = SlideFrame("x.mrxs", 100_000, 200_000, 0.25, bounds_offset=(20_000, 40_000))
    for header in ("centroid_x_um,centroid_y_um", "Centroid_X_um,Centroid_Y_um", "x_um,y_um"):
        cands = read_detections(write(tmp_path / "d.csv", f"{header}\n25,50\n"), frame)
        assert (cands.x.tolist(), cands.y.tolist()) == ([100.0], [200.0]), header
    qupath = write(tmp_path / "q.tsv", "Image\tCentroid X µm\tCentroid Y µm\nx.mrxs\t25\t50\n")
    cands = read_detections(qupath, frame)
    assert (cands.x.tolist(), cands.y.tolist()) == ([20_100.0], [40_200.0])


def test_qupath_derived_classes_keep_their_label(tmp_path: Path) -> None:
    # QuPath 0.4+ writes a derived class as {"names": [...], "color": ...}: the label was ""
    derived = {"names": ["Mitotic figure", "Atypical"], "color": [255, 0, 0]}
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [10, 20]},
         "properties": {"objectType": "annotation", "classification": derived}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [900, 20]},
         "properties": {"classification": {"names": ["Imposter"], "color": [0, 0, 255]}}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1900, 20]},
         "properties": {"classification": {"names": ["Hard negative", "Positive"]}}},
    ]}
    path = write(tmp_path / "derived.geojson", doc)
    cands = read_detections(path, FRAME)
    assert cands.label.tolist() == ["Mitotic figure: Atypical"]
    assert cands.report.excluded_imposters == 2  # a derived class of an imposter is one too


def test_a_quote_left_open_is_refused_not_swallowing_the_rows_after_it(tmp_path: Path) -> None:
    # Regression: the rows after an unclosed quote became that cell's text: 1 candidate of 3
    path = write(tmp_path / "open.csv", 'x,y,label\n1,2,"abc\n3,4,d\n5,6,e\n')
    with pytest.raises(DetectionsError) as excinfo:
        read_detections(path, FRAME)
    assert "line 2: a quote opened in this row is never closed" in one_line_error(excinfo)
    # a quoted cell that legitimately runs over two lines is still read, with the rows after it
    fine = write(tmp_path / "multi.csv", 'x,y,label\n1,2,"two\nlines"\n30,40,d\n')
    cands = read_detections(fine, FRAME, CandidateOptions(merge_radius_um=0))
    assert (cands.x.tolist(), cands.y.tolist()) == ([1.0, 30.0], [2.0, 40.0])


def test_the_open_quote_is_found_in_the_row_that_swallowed_the_rest(tmp_path: Path) -> None:
    # Regression: once any row ran over several lines, the first such row was blamed: a
    # legitimate two-line cell was named as the open quote, and a quote left open on the last
    # line (which swallows nothing) refused the whole file
    multi = 'x,y,label\n1,2,"two\nlines"\n'
    swallowing = write(tmp_path / "late.csv", multi + '3,4,"abc\n5,6,d\n7,8,e\n')
    with pytest.raises(DetectionsError) as excinfo:
        read_detections(swallowing, FRAME)
    assert "line 4: a quote opened in this row is never closed" in one_line_error(excinfo)
    # a closing quote followed by a space earlier (an error only for a strict reader) hid it
    spaced = write(tmp_path / "spaced.csv", 'x,y,label\n1,2,"a" \n3,4,"abc\n5,6,d\n')
    with pytest.raises(DetectionsError) as excinfo:
        read_detections(spaced, FRAME)
    assert "line 3: a quote opened in this row is never closed" in one_line_error(excinfo)
    harmless = write(tmp_path / "last.csv", multi + '3,4,"abc\n')
    cands = read_detections(harmless, FRAME, CandidateOptions(merge_radius_um=0))
    assert cands.x.tolist() == [1.0, 3.0]


def test_an_image_name_matches_in_either_unicode_normal_form(tmp_path: Path) -> None:
    # Regression: a slide copied from a Mac (its name stored decomposed, NFD: "a" + U+0308)
    # found no entry among images named as typed (NFC "ä"): "no entry for slide
    # 'Präparat.svs' among its 2 images (Präparat.svs, other.svs)"
    import unicodedata

    nfc = unicodedata.normalize("NFC", "Präparat.svs")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    frame = SlideFrame(nfd, width=10_000, height=8_000, mpp=0.25)
    table = write(tmp_path / "export.tsv", QUPATH_EXPORT.replace("slide.svs", nfc))
    assert [r["x"] for r in rows(read_detections(table, frame))] == [100.0]
    midog = write(tmp_path / "midog.json", midog_doc([{"bbox": [300, 400, 350, 450]}],
                                                     file_name=nfc.replace(".svs", ".tiff")))
    assert [r["x"] for r in rows(read_detections(midog, frame))] == [325.0]
    asked = read_detections(table, FRAME, CandidateOptions(image=nfd))  # --image typed NFD
    assert [r["x"] for r in rows(asked)] == [100.0]
    from wsi_atm.batch.plan import share_detections  # a batch finds the slide's entry too

    assert [job.detections for job in share_detections([tmp_path / nfd], table)] == [table]


def test_a_region_polygon_in_a_qupath_export_is_not_a_candidate(tmp_path: Path) -> None:
    # Regression: QuPath's export of all annotations holds the tissue outline beside the
    # mitoses; its centroid became a candidate (classified, counted, in the fraction)
    def polygon(x0: float, y0: float, side: float) -> dict[str, object]:
        ring = [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side], [x0, y0]]
        return {"type": "Polygon", "coordinates": [ring]}

    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": polygon(0, 0, 9_000),  # the tissue outline
         "properties": {"objectType": "annotation", "classification": {"name": "Tissue"}}},
        {"type": "Feature", "geometry": {"type": "MultiPoint",
                                         "coordinates": [[100, 200], [300, 400]]},
         "properties": {"objectType": "annotation"}},
        {"type": "Feature", "geometry": polygon(1_000, 1_000, 60),  # a segmented nucleus
         "properties": {"objectType": "detection"}},
        {"type": "Feature", "geometry": polygon(5_000, 5_000, 399),  # 99.75 µm a side: kept
         "properties": {"objectType": "detection"}},
    ]}
    cands = read_detections(write(tmp_path / "all.geojson", doc), FRAME,
                            CandidateOptions(merge_radius_um=0))
    assert (cands.x.tolist(), cands.y.tolist()) == ([100.0, 300.0, 1_030.0, 5_199.5],
                                                     [200.0, 400.0, 1_030.0, 5_199.5])
    assert any("skipped 1 polygon(s) of more than 10,000 µm²" in w
               for w in cands.report.warnings)


def test_a_marked_field_on_a_20x_slide_is_a_region_not_a_candidate(tmp_path: Path) -> None:
    # Regression: the region cut was 1,000,000 px² whatever the pixel size, so on a 0.5 µm/px
    # slide a hand-marked high-power field of 0.2 mm² (800,000 px²) beside the mitoses became
    # a candidate at the field's centre, classified and counted
    radius = math.sqrt(0.2e6 / math.pi) / 0.5  # px
    ring = [[3_000 + radius * math.cos(t), 3_000 + radius * math.sin(t)]
            for t in (2 * math.pi * k / 64 for k in range(65))]
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
         "properties": {"objectType": "annotation", "classification": {"name": "HPF"}}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [2_900, 3_100]},
         "properties": {"objectType": "annotation"}},
    ]}
    frame = SlideFrame("slide.svs", width=10_000, height=8_000, mpp=0.5)
    cands = read_detections(write(tmp_path / "hpf.geojson", doc), frame)
    assert cands.x.tolist() == [2_900.0]
    assert any("skipped 1 polygon(s)" in w for w in cands.report.warnings)


def test_an_empty_multipoint_is_not_reported_as_a_region_polygon(tmp_path: Path) -> None:
    # Regression: a points annotation with no points left ("MultiPoint", coordinates []) was
    # counted as a region polygon, a tissue outline
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [100, 200]},
         "properties": {"objectType": "annotation"}},
        {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": []},
         "properties": {"objectType": "annotation"}},
    ]}
    cands = read_detections(write(tmp_path / "empty.geojson", doc), FRAME)
    assert cands.x.tolist() == [100.0]
    assert not any("µm²" in w for w in cands.report.warnings), cands.report.warnings
    assert any("1 MultiPoint" in w for w in cands.report.warnings), cands.report.warnings


def test_excels_sep_line_is_read_as_the_delimiter_hint(tmp_path: Path) -> None:
    # Regression: "sep=;" (Excel's delimiter hint) as the first line: refused, no x/y header
    path = write(tmp_path / "excel.csv", "sep=;\r\nx;y;score\r\n10;20;0.5\r\n30;40;0.7\r\n")
    cands = read_detections(path, FRAME, CandidateOptions(merge_radius_um=0))
    assert (cands.x.tolist(), cands.y.tolist()) == ([10.0, 30.0], [20.0, 40.0])
    bad = write(tmp_path / "bad.csv", "sep=;\nx;y\n10;twenty\n")
    with pytest.raises(DetectionsError, match="line 3: y value 'twenty'"):  # the file's lines
        read_detections(bad, FRAME)


def test_a_sliderunner_database_without_the_mitosis_class_is_refused(tmp_path: Path) -> None:
    # Regression: a database naming its class "Mitosis" made every annotation an imposter:
    # zero candidates, no warning
    db = make_sliderunner(tmp_path / "sr.sqlite")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE Classes SET name = 'Mitosis' WHERE uid = 1")
    conn.close()
    frame = SlideFrame("a1b2_slide.svs", width=10_000, height=8_000, mpp=0.25)
    with pytest.raises(DetectionsError) as excinfo:
        read_detections(db, frame)
    message = one_line_error(excinfo)
    assert "no class named 'Mitotic figure'" in message and "1: Mitosis" in message
    assert read_detections(db, frame, CandidateOptions(mitosis_class="mitosis")).ids.tolist() \
        == ["1", "2", "3"]


def test_midog_boxes_without_a_category_are_candidates_not_imposters(tmp_path: Path) -> None:
    # Regression: a detector's boxes (bbox and score, no category_id) were all imposters
    doc = midog_doc([{"bbox": [100, 100, 150, 150], "score": 0.9},
                     {"bbox": [500, 500, 550, 550], "score": 0.8}])
    del doc["categories"]
    for ann in doc["annotations"]:  # type: ignore[attr-defined]
        del ann["category_id"]
    cands = read_detections(write(tmp_path / "det.json", doc), FRAME)
    assert cands.x.tolist() == [125.0, 525.0] and cands.report.excluded_imposters == 0
    assert list(cands.label) == ["", ""]
    labelled = midog_doc([{"bbox": [100, 100, 150, 150]}, {"bbox": [5, 5, 9, 9], "category_id": 2}])
    cands = read_detections(write(tmp_path / "labelled.json", labelled), FRAME)
    assert cands.x.tolist() == [125.0] and cands.report.excluded_imposters == 1


def test_midog_categories_that_are_not_a_list_are_an_input_error(tmp_path: Path) -> None:
    doc = midog_doc([{"bbox": [100, 100, 150, 150]}])
    doc["categories"] = 5  # was an internal error (TypeError), exit 1
    with pytest.raises(DetectionsError) as excinfo:
        read_detections(write(tmp_path / "m.json", doc), FRAME)
    assert "'categories' must be a list" in one_line_error(excinfo)


def test_overflowing_coordinates_give_only_the_one_line_error(tmp_path: Path) -> None:
    # numpy's "overflow encountered in multiply" was a second stderr line before the error
    path = write(tmp_path / "gc.json", {"type": "Multiple points",
                                        "points": [{"point": [1e306, 0.1, 0]}]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DetectionsError):
            read_detections(path, FRAME)


@pytest.mark.parametrize("label", ["Mitotic figure lookalike", "Mitotic cell look-alike"])
def test_published_lookalike_classes_are_imposters(tmp_path: Path, label: str) -> None:
    # Regression: the hard-negative class of the canine MITOS_WSI (SlideRunner) and
    # COADEL/ODAEL datasets, in a table or QuPath export, was kept as a mitosis
    path = write(tmp_path / "d.csv", f"x,y,class\n100,200,Mitotic figure\n300,400,{label}\n")
    cands = read_detections(path, FRAME)
    assert cands.x.tolist() == [100.0] and cands.report.excluded_imposters == 1


def test_midog_json_without_categories_and_no_mitosis_id_is_refused(tmp_path: Path) -> None:
    # Regression: no 'categories' list and every annotation of category_id 0 (a detector's one
    # class) made them all imposters: zero candidates without a word
    doc = midog_doc([{"bbox": [100, 100, 150, 150], "category_id": 0},
                     {"bbox": [500, 500, 550, 550], "category_id": 0}])
    del doc["categories"]
    with pytest.raises(DetectionsError) as excinfo:
        read_detections(write(tmp_path / "m.json", doc), FRAME)
    assert "no annotation has category_id 1" in one_line_error(excinfo)
    doc = midog_doc([{"bbox": [100, 100, 150, 150], "category_id": 2}])  # imposters only:
    del doc["categories"]  # fine where the file has a mitosis elsewhere, as MIDOG's images
    doc["annotations"].append({"id": 9, "image_id": 99, "bbox": [1, 1, 5, 5],  # type: ignore
                               "category_id": 1})
    assert len(read_detections(write(tmp_path / "n.json", doc), FRAME).x) == 0


@pytest.mark.parametrize("column", ["slide_id", "image_id"])
def test_a_cohort_tables_slide_id_column_picks_the_slides_rows(tmp_path: Path,
                                                               column: str) -> None:
    # Regression: a "slide_id" (or "image_id") column was not taken as the image column, so
    # each slide of the cohort got every slide's candidates
    path = write(tmp_path / "cohort.csv", f"{column},x,y\nslide,100,200\nother,300,400\n"
                                          "slide,500,600\n")
    cands = read_detections(path, FRAME)
    assert cands.x.tolist() == [100.0, 500.0]
