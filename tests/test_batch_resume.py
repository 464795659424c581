"""``wsi-atm batch``: what resume trusts, manifests and names it refuses, and honest timings."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.batch_helpers import card_128, cohort_rows, make_cohort, midog_json, write_candidates
from tests.cli_helpers import run_cli
from wsi_atm.batch import BatchSettings, Job, plan_jobs, resume
from wsi_atm.detections import CandidateOptions
from wsi_atm.errors import BadInputError
from wsi_atm.models.card import load_card


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return card_128(tmp_path_factory.mktemp("card"))


def batch(args: list[str], card: Path) -> int:
    return run_cli(["batch", *args, "--model", str(card), "--device", "cpu", "--quiet"])


def test_a_slide_named_cohort_is_refused(tmp_path: Path) -> None:
    # Regression: cohort.svs wrote cohort.csv and cohort.png, and the batch's own cohort files
    # then overwrote them (a rerun skipped the slide as up to date)
    slides = tmp_path / "slides"
    make_cohort(slides, n=1)
    (slides / "case0.tif").rename(slides / "cohort.tif")
    (slides / "case0.csv").rename(slides / "cohort.det.csv")
    (slides / "extra.tif").write_bytes(b"")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide,detections\n{slides / 'cohort.tif'},{slides / 'cohort.det.csv'}\n")
    with pytest.raises(BadInputError, match=r"cohort\.csv, cohort\.png would overwrite"):
        plan_jobs(None, manifest, None, None, tmp_path / "out")
    (slides / "report.tif").write_bytes(b"")  # writes report.csv etc.: no clash with report.html
    manifest.write_text(f"slide,detections\n{slides / 'report.tif'},{slides / 'cohort.det.csv'}\n")
    assert len(plan_jobs(None, manifest, None, None, tmp_path / "out")) == 1


@pytest.mark.parametrize(("text", "said"), [
    # Regression: the extra cell (an mpp) was dropped, and of two "slide" columns the last won
    ("slide,detections\ncase0.tif,case0.csv,0.5\n", "line 2 has 3 cells but the header names 2"),
    ("slide,detections,slide\ncase0.tif,case0.csv,case1.tif\n", "names slide more than once"),
])
def test_manifest_cells_beyond_the_header_or_repeated_columns_are_refused(
        tmp_path: Path, text: str, said: str) -> None:
    make_cohort(tmp_path, n=2)
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    with pytest.raises(BadInputError, match=said):
        plan_jobs(None, manifest, None, None, tmp_path / "out")


def test_outputs_rewritten_by_another_run_are_not_taken_for_the_batchs(
        tmp_path: Path, card: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Regression: classify into the batch's folder replaced case0's outputs (another threshold)
    # and the batch's next run skipped it, reporting that run's calls as its own
    slides, out = tmp_path / "slides", tmp_path / "out"
    make_cohort(slides, n=2)
    assert batch([str(slides), "--out-dir", str(out)], card) == 0
    assert run_cli(["classify", str(slides / "case0.tif"), "--detections",
                    str(slides / "case0.csv"), "--out-dir", str(out), "--model", str(card),
                    "--device", "cpu", "--quiet", "--threshold", "0.01"]) == 0
    capsys.readouterr()
    assert batch([str(slides), "--out-dir", str(out)], card) == 0
    assert [r["status"] for r in cohort_rows(out)] == ["ok", "skipped"]
    assert "re-running case0.tif: its outputs were rewritten" in capsys.readouterr().err
    summary = json.loads((out / "case0.summary.json").read_text())
    assert summary["model"]["threshold"] != 0.01
    record = json.loads((out / ".wsi-atm" / "case0.done.json").read_text())
    assert record[resume.OUTPUTS_SHA]["summary"] == resume.file_sha256(
        out / "case0.summary.json")


@pytest.mark.parametrize("edited", ["case0.geojson", "case0.csv", "case0.png"])
def test_an_output_edited_by_hand_is_not_taken_for_the_batchs(
        tmp_path: Path, card: Path, capsys: pytest.CaptureFixture[str], edited: str) -> None:
    # Regression: only the summary's sha256 was recorded, so a GeoJSON cut down (or a CSV
    # relabelled) by hand was skipped as up to date and listed as the batch's result
    slides, out = tmp_path / "slides", tmp_path / "out"
    make_cohort(slides, n=2)
    assert batch([str(slides), "--out-dir", str(out)], card) == 0
    with open(out / edited, "ab") as fh:
        fh.write(b"\n")
    capsys.readouterr()
    assert batch([str(slides), "--out-dir", str(out)], card) == 0
    assert [r["status"] for r in cohort_rows(out)] == ["ok", "skipped"]
    assert "re-running case0.tif: its outputs were rewritten since (by hand or another run " \
           f"into this folder): {edited}" in capsys.readouterr().err
    assert batch([str(slides), "--out-dir", str(out)], card) == 0
    assert [r["status"] for r in cohort_rows(out)] == ["skipped", "skipped"]


def test_another_slide_copied_over_one_done_with_its_size_and_time_runs_again(
        tmp_path: Path, card: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Regression: a slide was known by path, size and time only: another slide of the same
    # size copied over it with its time kept (cp -p, rsync -t) was skipped as up to date and
    # the first slide's outputs were reported as this one's
    slides, out = tmp_path / "slides", tmp_path / "out"
    first, second = make_cohort(slides, n=2)
    for slide in (first, second):  # the same size, large enough to be sampled, not read whole
        with open(slide, "ab") as fh:
            fh.truncate(4 << 20)
    assert batch([str(slides), "--out-dir", str(out)], card) == 0
    before = (out / "case0.csv").read_text()
    kept = first.stat()
    shutil.copyfile(second, first)
    os.utime(first, ns=(kept.st_atime_ns, kept.st_mtime_ns))
    assert (first.stat().st_size, first.stat().st_mtime_ns) == (kept.st_size, kept.st_mtime_ns)
    capsys.readouterr()
    assert batch([str(slides), "--out-dir", str(out)], card) == 0
    assert [r["status"] for r in cohort_rows(out)] == ["ok", "skipped"]
    assert "re-running case0.tif: changed since its last run: slide_sample_sha256" \
        in capsys.readouterr().err
    assert (out / "case0.csv").read_text() != before  # case0's detections on case1's pixels


WHOLE = 2 * resume.EDGE_BYTES + resume.SAMPLES * resume.SAMPLE_BYTES  # read whole up to this


@pytest.mark.parametrize("size", [0, 10, WHOLE, WHOLE + 1, 1 << 30])
def test_a_slides_samples_cover_head_and_tail_and_stay_inside_it(size: int) -> None:
    parts = resume._samples(size)
    assert parts[0][0] == 0 and sum(parts[-1]) == size
    assert all(a + n <= b for (a, n), (b, _) in itertools.pairwise(parts))
    assert sum(n for _, n in parts) <= min(size, WHOLE)


def test_a_slide_kept_in_a_folder_beside_its_index_is_known_by_that_folder(
        tmp_path: Path) -> None:
    # MRXS: the .mrxs file is small and stays the same; the pixels are the folder's .dat files
    index, data = tmp_path / "case.mrxs", tmp_path / "case"
    index.write_text("[GENERAL]\n")
    data.mkdir()
    (data / "Data0000.dat").write_bytes(b"x" * 100)
    before = resume.slide_sample_sha256(index)
    assert resume.slide_sample_sha256(index) == before
    (data / "Data0000.dat").write_bytes(b"y" * 101)
    assert resume.slide_sample_sha256(index) != before


def test_a_hub_cards_key_names_its_base_model_snapshot(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: a LoRA card's weights hold only the adapters; a new cached snapshot of the
    # base model changed the results without changing the key
    folder = tmp_path / "card"
    shutil.copytree(Path(resume.__file__).parents[1] / "models" / "cards", folder)
    path = folder / "uni.toml"
    card = load_card(path)
    for w in card.weights:
        target = card.resolve(w.file)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"x")
    monkeypatch.setattr(resume, "cached_revision", lambda model_id, revision="": "abc123")
    key = resume.model_fingerprint(card)
    assert (key["base_model"], key["base_revision"]) == (card.architecture, "abc123")
    monkeypatch.setattr(resume, "cached_revision", lambda model_id, revision="": "def456")
    assert resume.model_fingerprint(card)["base_revision"] == "def456"


def test_the_code_itself_is_in_the_key(tmp_path: Path, card: Path) -> None:
    # Regression: the key held only the version number, never bumped: upgrading a checkout
    # re-ran nothing whatever the new code computes
    tree = tmp_path / "pkg"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.py").write_text("x = 1\n")
    (tree / "sub" / "b.py").write_text("y = 2\n")
    before = resume.tree_sha256(tree)
    (tree / "sub" / "b.py").write_text("y = 3\n")
    assert resume.tree_sha256(tree) != before
    (tree / "sub" / "b.py").write_text("y = 2\n")
    assert resume.tree_sha256(tree) == before
    settings = BatchSettings(model=load_card(card), candidate_options=CandidateOptions())
    assert resume.engine_key(settings, False)["code_sha256"] == resume.code_sha256()


def test_a_hub_base_model_fetched_by_the_run_is_recorded_by_its_snapshot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression (review): a base model not yet cached keyed every record with "", and the
    # next batch, finding it cached, ran every slide again
    out, job = tmp_path / "out", Job(tmp_path / "s.tif", tmp_path / "s.csv")
    out.mkdir()
    for name in ("s.summary.json", "s.geojson", "s.csv", "s.png"):  # as a run wrote them
        (out / name).write_text("{}")
    monkeypatch.setattr(resume, "cached_revision", lambda model_id, revision="": "abc123")
    key = {"base_model": "hf-hub:org/name", "base_revision": ""}
    assert json.loads(resume.record_text(out, job, key))["base_revision"] == "abc123"
    pinned = {"base_model": "hf-hub:org/name", "base_revision": "fixed"}
    assert json.loads(resume.record_text(out, job, pinned))["base_revision"] == "fixed"


def test_a_slides_time_is_its_own_not_the_wait_for_the_one_before(
        tmp_path: Path, card: Path) -> None:
    # Regression: a local batch counted a slide's time from when its background preparation
    # began, so a small slide after a large one reported the large one's classification
    slides, out = tmp_path / "slides", tmp_path / "out"
    make_cohort(slides, n=2)
    write_candidates(slides / "case0.csv", 1500)
    assert batch([str(slides), "--out-dir", str(out), "--merge-radius", "0"], card) == 0
    rows = {r["slide"].rsplit("/", 1)[-1]: float(r["elapsed_s"]) for r in cohort_rows(out)}
    summary = json.loads((out / "case1.summary.json").read_text())
    assert summary["elapsed_s"] <= rows["case1.tif"] < summary["elapsed_s"] + 0.5  # + writing
    assert rows["case1.tif"] < rows["case0.tif"] / 3
    own = sum(v for k, v in summary["timings_s"].items())
    assert summary["elapsed_s"] < own + 1.0


def test_a_manifests_image_column_picks_the_entry_of_a_multi_slide_file(
        tmp_path: Path, card: Path) -> None:
    # Regression: a slide matching two entries failed, told to use --image, which batch lacks
    slides, out = tmp_path / "slides", tmp_path / "out"
    make_cohort(slides, n=1)
    shared = midog_json(tmp_path / "shared.json", {"case0.svs": [(200.0, 200.0)],
                                                   "case0.tiff": [(300.0, 300.0), (400, 400)]})
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide,detections\n{slides / 'case0.tif'},{shared}\n")
    assert batch(["--manifest", str(manifest), "--out-dir", str(out)], card) == 1
    assert "a manifest's image column" in cohort_rows(out)[0]["error"]
    manifest.write_text(f"slide,detections,image\n{slides / 'case0.tif'},{shared},case0.tiff\n")
    assert batch(["--manifest", str(manifest), "--out-dir", str(out)], card) == 0
    row = cohort_rows(out)[0]
    assert (row["status"], row["candidates"]) == ("ok", "2")
    summary = json.loads((out / "case0.summary.json").read_text())
    assert summary["detections"]["report"]["image"] == "case0.tiff"


def test_one_table_of_several_images_serves_a_batch(tmp_path: Path, card: Path) -> None:
    # Regression (docs audit): batch refused a QuPath export of a project as "one slide's
    # detections", though classify picks a slide's rows from it
    slides, out = tmp_path / "slides", tmp_path / "out"
    make_cohort(slides, n=2)
    for i in range(2):
        (slides / f"case{i}.csv").unlink()
    table = tmp_path / "export.tsv"
    table.write_text("Image\tCentroid X px\tCentroid Y px\ncase0.tif\t300\t300\n"
                     "case1.tif\t200\t200\ncase1.tif\t400\t400\n")
    assert batch([str(slides), "--detections", str(table), "--out-dir", str(out)], card) == 0
    assert [r["candidates"] for r in cohort_rows(out)] == ["1", "2"]


def test_a_folder_named_as_another_slide_beside_it_is_not_part_of_that_slide(
        tmp_path: Path) -> None:
    # Regression: any slide's same-named folder was taken for MRXS data: a detector's per-slide
    # folder beside case.svs changed case.svs's key (it ran again) whenever that folder changed
    slide, folder = tmp_path / "case.svs", tmp_path / "case"
    slide.write_bytes(b"II*\x00" + bytes(100))
    folder.mkdir()
    (folder / "detections.json").write_text("[]")
    before = resume.slide_sample_sha256(slide)
    (folder / "detector.log").write_text("run again\n")
    assert resume.slide_sample_sha256(slide) == before
