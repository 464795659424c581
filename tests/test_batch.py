"""``wsi-atm batch``: pairing, manifests, resume, failure isolation, cohort outputs, Dockerfile."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.batch_helpers import card_128, make_cohort
from tests.cli_helpers import run_cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return card_128(tmp_path_factory.mktemp("card"))


def batch(args: list[str], card: Path) -> int:
    return run_cli(["batch", *args, "--model", str(card), "--device", "cpu", "--quiet"])


def cohort(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "cohort.csv").read_text().splitlines()))


def test_batch_pairs_by_stem_and_resumes(tmp_path, card, capsys):
    slides = tmp_path / "slides"
    make_cohort(slides)
    out = tmp_path / "out"
    assert batch([str(slides), "--out-dir", str(out)], card) == 0
    rows = cohort(out)
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert [int(r["candidates"]) for r in rows] == [4, 5, 6]
    for i in range(3):
        for ext in (".geojson", ".csv", ".summary.json", ".png"):
            assert (out / f"case{i}{ext}").is_file()
    assert (out / "cohort.png").stat().st_size > 1000
    assert "3 succeeded" in capsys.readouterr().out
    # A rerun with the same inputs skips everything.
    stamp = (out / "case0.geojson").stat().st_mtime_ns
    assert batch([str(slides), "--out-dir", str(out)], card) == 0
    assert [r["status"] for r in cohort(out)] == ["skipped"] * 3
    assert cohort(out)[0]["atypical_fraction"] == rows[0]["atypical_fraction"]
    assert (out / "case0.geojson").stat().st_mtime_ns == stamp
    # A missing output redoes that slide only; another threshold redoes all.
    (out / "case1.png").unlink()
    assert batch([str(slides), "--out-dir", str(out)], card) == 0
    assert [r["status"] for r in cohort(out)] == ["skipped", "ok", "skipped"]
    assert batch([str(slides), "--out-dir", str(out), "--threshold", "0.3"], card) == 0
    assert [r["status"] for r in cohort(out)] == ["ok"] * 3


def test_killed_run_leaves_no_partial_outputs_and_resumes(tmp_path, card):
    slides = tmp_path / "slides"
    make_cohort(slides, n=2)
    out = tmp_path / "out"
    assert batch([str(slides), "--out-dir", str(out)], card) == 0
    # As if killed while writing case1: a stale temp file, no completion record.
    (out / ".wsi-atm" / "case1.done.json").unlink()
    (out / ".case1.geojson.deadbeef.tmp").write_text("{")
    assert batch([str(slides), "--out-dir", str(out)], card) == 0
    assert [r["status"] for r in cohort(out)] == ["skipped", "ok"]


def test_bad_slide_is_isolated_and_exit_is_1(tmp_path, card, capsys):
    slides = tmp_path / "slides"
    make_cohort(slides, n=2)
    (slides / "broken.svs").write_bytes(b"not a slide at all")
    (slides / "broken.csv").write_text("x,y\n1,1\n")
    (slides / "lonely.tif").write_bytes((slides / "case0.tif").read_bytes())
    out = tmp_path / "out"
    assert batch([str(slides), "--out-dir", str(out)], card) == 1
    rows = {Path(r["slide"]).name: r for r in cohort(out)}
    assert rows["broken.svs"]["status"] == "failed" and rows["broken.svs"]["error"]
    assert rows["lonely.tif"]["status"] == "no_detections"
    assert rows["case0.tif"]["status"] == rows["case1.tif"]["status"] == "ok"
    assert "1 failed" in capsys.readouterr().out


def test_manifest_rejects_every_bad_row_before_work(tmp_path, card, capsys):
    slides = tmp_path / "slides"
    make_cohort(slides, n=2)
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide,detections,mpp\n"
                        "slides/case0.tif,slides/case0.csv,\n"
                        "slides/missing.tif,slides/case1.csv,0.25\n"
                        "slides/case1.tif,slides/nope.csv,abc\n")
    out = tmp_path / "out"
    assert batch(["--manifest", str(manifest), "--out-dir", str(out)], card) == 2
    err = capsys.readouterr().err
    assert "line 3" in err and "line 4" in err and "missing.tif" in err and "abc" in err
    assert not out.exists()
    manifest.write_text("slide,detections,mpp\nslides/case0.tif,slides/case0.csv,0.25\n")
    assert batch(["--manifest", str(manifest), "--out-dir", str(out)], card) == 0
    assert [r["status"] for r in cohort(out)] == ["ok"]


def test_one_multi_slide_file_serves_every_slide(tmp_path, card):
    slides = tmp_path / "slides"
    make_cohort(slides, n=2)
    shared = tmp_path / "all.csv"
    shared.write_text("x,y\n200,200\n400,300\n")
    out = tmp_path / "out"
    assert batch([str(slides), "--detections", str(shared), "--out-dir", str(out)], card) == 0
    assert [int(r["candidates"]) for r in cohort(out)] == [2, 2]


def test_ambiguous_pairing_is_reported(tmp_path, card):
    slides = tmp_path / "slides"
    make_cohort(slides, n=1)
    shutil.copy(slides / "case0.csv", slides / "case0.geojson.csv")
    out = tmp_path / "out"
    assert batch([str(slides), "--out-dir", str(out)], card) == 1
    assert "several detection files" in cohort(out)[0]["error"]


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(REPO / ".venv" / "bin" / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed")
    proc = subprocess.run([hadolint, "--failure-threshold", "warning", str(REPO / "Dockerfile")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
