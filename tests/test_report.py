"""Batch findings: cohort columns, completion key, and the self-contained ``report.html``."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.batch_helpers import card_128, cohort_rows, make_cohort
from tests.cli_helpers import run_cli


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return card_128(tmp_path_factory.mktemp("card"))


def batch(args: list[str], card: Path) -> int:
    return run_cli(["batch", *args, "--model", str(card), "--device", "cpu", "--quiet"])


@pytest.fixture(scope="module")
def cohort(card: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("cohort")
    slides = root / "slides"
    make_cohort(slides, n=3)
    (slides / "broken.tif").write_bytes(b"not a slide")
    (slides / "broken.csv").write_text("x,y\n10,10\n")
    out = root / "out"
    assert batch([str(slides), "--out-dir", str(out), "--points-json", "--hotspot-area", "0.01"],
                 card) == 1
    return {"slides": slides, "out": out}


class Page(HTMLParser):
    """Rows, images, links and every attribute value of a report."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.values: list[str] = []
        self.headers: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.values += list(a.values())
        if tag == "tr" and "slide" in a.get("class", "").split():
            self.rows.append(a)
        elif tag == "img":
            self.images.append(a["src"])
        elif tag == "a":
            self.links.append(a["href"])
        elif tag == "th":
            self.headers.append(a["data-key"])


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_cohort_csv_has_the_findings(cohort: dict) -> None:
    rows = {Path(r["slide"]).name: r for r in cohort_rows(cohort["out"])}
    for i in range(3):
        r = rows[f"case{i}.tif"]
        summary = json.loads((cohort["out"] / f"case{i}.summary.json").read_text())
        assert float(r["hotspot_area_mm2"]) == pytest.approx(0.01)
        assert int(r["hotspot_mitoses"]) == summary["hotspot"]["mitoses"] >= 1
        assert int(r["hotspot_atypical"]) == summary["hotspot"]["atypical"]
        assert float(r["hotspot_center_x"]) == pytest.approx(summary["hotspot"]["center_px"][0])
        assert float(r["tissue_mm2"]) == pytest.approx(summary["tissue"]["area_mm2"], rel=1e-4)
        assert int(r["review_flagged"]) == summary["counts"]["review"]
        assert (cohort["out"] / f"case{i}.points.json").is_file()
    assert rows["broken.tif"]["status"] == "failed" and rows["broken.tif"]["hotspot_mitoses"] == ""


def test_report_is_self_contained_and_lists_every_slide(cohort: dict) -> None:
    out = cohort["out"]
    text = (out / "report.html").read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text and "//" not in text.replace(
        "<!--", "")
    page = parse(out / "report.html")
    names = [r["data-slide"] for r in page.rows]
    assert sorted(names) == ["broken.tif", "case0.tif", "case1.tif", "case2.tif"]
    by_name = {r["data-slide"]: r for r in page.rows}
    assert by_name["broken.tif"]["data-status"] == "failed" and by_name["broken.tif"]["data-error"]
    for i in range(3):
        summary = json.loads((out / f"case{i}.summary.json").read_text())
        r = by_name[f"case{i}.tif"]
        assert int(r["data-candidates"]) == summary["counts"]["candidates"]
        assert int(r["data-hotspot-mitoses"]) == summary["hotspot"]["mitoses"]
        assert int(r["data-review"]) == summary["counts"]["review"]
        assert float(r["data-fraction"]) == pytest.approx(summary["atypical_fraction"]["value"])
    # Every picture and file it points at lies beside it.
    assert sorted(page.images) == ["case0.png", "case1.png", "case2.png", "cohort.png"]
    assert all((out / ref).is_file() for ref in page.images + page.links)
    assert {"case1.points.json", "case1.csv", "case1.geojson"} <= set(page.links)
    assert "hotspot-mitoses" in page.headers


def test_new_options_are_in_the_completion_key(cohort: dict, card: Path, tmp_path: Path,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    shutil.copytree(cohort["out"], out)
    args = [str(cohort["slides"]), "--out-dir", str(out), "--points-json",
            "--hotspot-area", "0.01"]
    run_cli(["batch", *args, "--model", str(card), "--device", "cpu"])
    capfd.readouterr()
    status = {Path(r["slide"]).name: r["status"] for r in cohort_rows(out)}
    assert status == {"broken.tif": "failed", "case0.tif": "skipped", "case1.tif": "skipped",
                      "case2.tif": "skipped"}
    (out / "case1.points.json").unlink()
    run_cli(["batch", *args, "--model", str(card), "--device", "cpu"])
    assert "re-running case1.tif: output missing: case1.points.json" in capfd.readouterr().err
    args[-1] = "0.02"
    run_cli(["batch", *args, "--review-band", "0.2", "--review-class", "--model", str(card),
             "--device", "cpu"])
    err = capfd.readouterr().err
    assert "hotspot_area_mm2" in err and "review_band" in err and "outputs" in err
    record = json.loads((out / ".wsi-atm" / "case0.done.json").read_text())
    assert record["hotspot_area_mm2"] == 0.02 and record["outputs"]["review_class"] is True
    # Dropping --points-json removes the files it no longer vouches for.
    run_cli(["batch", *args[:-3], "--model", str(card), "--device", "cpu"])
    assert not list(out.glob("*.points.json"))
    with open(out / "cohort.csv", newline="") as fh:
        assert {r["status"] for r in csv.DictReader(fh)} == {"ok", "failed"}


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_renders_in_headless_chromium(cohort: dict, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("Chromium is not installed (Debian package chromium; .ci/run installs it)")
    url = (cohort["out"] / "report.html").resolve().as_uri() + "#sort=-candidates"
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", url],
        capture_output=True, text=True, timeout=120, check=True).stdout
    page = Page()
    page.feed(dom)
    body = dom[dom.index("<body"):dom.index(">", dom.index("<body"))]
    assert 'data-ready="4"' in body and 'data-sorted="-candidates"' in body
    # Sorted by the script, most candidates first; the failed slide (none) last.
    assert [r["data-slide"] for r in page.rows] == ["case2.tif", "case1.tif", "case0.tif",
                                                     "broken.tif"]
    loaded = dom.count('data-loaded="1"')
    assert loaded == 4 and 'data-loaded="0"' not in dom  # three review pictures + histogram


def test_a_flagged_estimate_is_flagged_in_the_report(tmp_path: Path) -> None:
    """Regression: the console, the review picture and cohort.csv flag an estimated true share
    the data contradict; the report showed it, 0.0% [0.0%, 8.5%], as if certain."""
    from tests.test_outputs import make_result
    from wsi_atm.batch.plan import Job, Outcome
    from wsi_atm.batch.report import COLUMNS, render_report
    from wsi_atm.outputs.summary import build_summary

    def outcome(name: str, k: int) -> Outcome:
        rows = [(f"c{i}", 100.0 + i, 200.0, 0.9, "ok", "classified", 0.9 if i < k else 0.1,
                 False) for i in range(100)]
        summary = build_summary(make_result(rows, sensitivity=0.75, specificity=0.74,
                                            resample_factor=2.0 if k < 10 else 1.0))
        return Outcome(job=Job(slide=tmp_path / name, detections=None), status="ok",
                       summary=summary)

    contradicted, plain = outcome("low.tif", 3), outcome("fine.tif", 40)
    warning = contradicted.summary["atypical_fraction_corrected"]["warning"]
    assert warning and "outside" in warning
    assert "warning" not in plain.summary["atypical_fraction_corrected"]

    class Cells(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[list[str]] = []
            self.texts: list[str] = []
            self.cell: list[str] | None = None

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "tr" and "slide" in (dict(attrs).get("class") or "").split():
                self.rows.append([])
            elif tag == "td" and self.rows:
                self.cell = []

        def handle_endtag(self, tag: str) -> None:
            if tag == "td" and self.cell is not None:
                self.rows[-1].append("".join(self.cell))
                self.cell = None

        def handle_data(self, data: str) -> None:
            self.texts.append(data)
            if self.cell is not None:
                self.cell.append(data)

    page = Cells()
    page.feed(render_report([contradicted, plain], tmp_path))
    column = [c.key for c in COLUMNS]
    estimate = [row[column.index("estimate")] for row in page.rows]
    assert estimate[0].startswith("0.0% [0.0%, 8.5%]") and "flagged" in estimate[0]
    assert estimate[1] and "flagged" not in estimate[1]
    assert any(warning in t for t in page.texts)  # the reason, in the slide's detail row
    upsampled = contradicted.summary["warnings"][0]
    assert "upsampled" in upsampled and any(upsampled in t for t in page.texts)


def test_a_stopped_hotspot_search_says_its_ceiling_in_the_report(tmp_path: Path) -> None:
    # Regression: the summary, cohort.csv and the picture said the search stopped early with
    # a ceiling; the report's cell showed the count alone, as if exact
    from wsi_atm.batch.plan import Job, Outcome
    from wsi_atm.batch.report import row_values

    def cell(hot: dict) -> tuple:
        o = Outcome(job=Job(slide=tmp_path / "a.tif", detections=None), status="ok",
                    summary={"hotspot": hot})
        return row_values(o)["hotspot_mitoses"]

    assert cell({"mitoses": 41, "exact": False, "mitoses_upper_bound": 44}) == (
        "41 (search stopped: at most 44)", 41)
    assert cell({"mitoses": 41, "exact": True, "mitoses_upper_bound": 41}) == ("41", 41)
    assert cell({}) == ("", None)
