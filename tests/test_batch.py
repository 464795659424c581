"""``wsi-atm batch``: pairing, manifests, resume, failure isolation, cohort outputs, Dockerfile."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import threading
import time
import tomllib
from pathlib import Path

import pytest
from PIL import Image

from tests.batch_helpers import (
    card_128,
    cohort_rows,
    features,
    make_cohort,
    midog_json,
    write_candidates,
)
from tests.cli_helpers import run_cli
from wsi_atm.batch import Job, plan, plan_jobs, resume, run
from wsi_atm.errors import BadInputError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return card_128(tmp_path_factory.mktemp("card"))


def batch(args: list[str], card: Path) -> int:
    return run_cli(["batch", *args, "--model", str(card), "--device", "cpu", "--quiet"])


def statuses(out: Path) -> list[str]:
    return [r["status"] for r in cohort_rows(out)]


def by_name(jobs: list[Job]) -> dict[str, Job]:
    return {j.slide.name: j for j in jobs}


# ------------------------------------------------------------------------------ planning
def test_folder_pairing_rules(tmp_path):
    d = tmp_path / "slides"
    d.mkdir()
    for name in ("a.tif", "a.2.tif", "b.tif", "c.tif", "lonely.tif", "UPPER.SVS", "x.ome.tif",
                 "notes.txt"):
        (d / name).write_bytes(b"II*\x00")
    write_candidates(d / "a.csv", 3)
    write_candidates(d / "a.2.csv", 3)  # slide a.2.tif's, not a second match for a.tif
    write_candidates(d / "b.candidates.csv", 3)
    (d / "b.notes.txt").write_text("reviewed by A.B.\n")  # not a detection format: ignored
    write_candidates(d / "c.csv", 3)
    midog_json(d / "c.midog.json", {"c.tif": [(100, 100)]})  # second match: ambiguous
    write_candidates(d / "UPPER.csv", 2)
    write_candidates(d / "x.csv", 2)  # NAME of x.ome.tif is x
    jobs = by_name(plan_jobs(d, None, None, None, tmp_path / "out"))
    assert sorted(jobs) == ["UPPER.SVS", "a.2.tif", "a.tif", "b.tif", "c.tif", "lonely.tif",
                            "x.ome.tif"]
    assert jobs["a.tif"].detections == d / "a.csv"
    assert jobs["a.2.tif"].detections == d / "a.2.csv"
    assert jobs["b.tif"].detections == d / "b.candidates.csv"
    assert jobs["UPPER.SVS"].detections == d / "UPPER.csv"
    assert jobs["x.ome.tif"].detections == d / "x.csv"
    assert jobs["c.tif"].status == "failed"
    assert "c.csv" in jobs["c.tif"].note and "c.midog.json" in jobs["c.tif"].note
    assert jobs["lonely.tif"].status == "no_detections" and jobs["lonely.tif"].detections is None
    # A --pattern restricts the slides; a separate --detections-dir is searched instead.
    dets = tmp_path / "dets"
    dets.mkdir()
    write_candidates(dets / "lonely.json.csv", 1)
    jobs = plan_jobs(d, None, None, dets, tmp_path / "out", patterns=("lonely.*",))
    assert [(j.slide.name, j.detections) for j in jobs] == [("lonely.tif",
                                                             dets / "lonely.json.csv")]


@pytest.mark.parametrize("pattern", ["", "/abs/*.svs"])
def test_a_pattern_pathlib_refuses_is_bad_input(tmp_path, capsys, pattern):
    # Regression: an empty or absolute --pattern was an internal error (exit 1)
    d = tmp_path / "slides"
    d.mkdir()
    (d / "a.svs").write_bytes(b"II*\x00")
    code = run_cli(["batch", str(d), "--out-dir", str(tmp_path / "out"), "--pattern", pattern])
    err = capsys.readouterr().err
    assert code == 2 and "internal error" not in err
    assert err.strip().splitlines() == [err.strip()] and "--pattern" in err


def test_outputs_may_not_go_where_they_would_clash_with_inputs(tmp_path):
    d = tmp_path / "slides"
    d.mkdir()
    (d / "a.tif").write_bytes(b"II*\x00")
    write_candidates(d / "a.json.csv", 2)
    with pytest.raises(BadInputError, match="is where detections are read from"):
        plan_jobs(d, None, None, None, out_dir=d)
    manifest = tmp_path / "m.csv"
    (d / "b").mkdir()
    (d / "b" / "a.svs").write_bytes(b"II*\x00")
    write_candidates(d / "a.csv", 2)
    manifest.write_text("slide,detections\nslides/a.tif,slides/a.json.csv\n"
                        "slides/b/a.svs,slides/a.csv\n")
    with pytest.raises(BadInputError, match="2 output clash") as err:
        plan_jobs(None, manifest, None, None, out_dir=d)
    assert "both write a.*" in str(err.value) and "overwrite an input file" in str(err.value)


def test_one_multi_slide_file_serves_every_slide(tmp_path):
    d = tmp_path / "slides"
    d.mkdir()
    for name in ("case0.tif", "case1.svs", "case2.tif"):
        (d / name).write_bytes(b"II*\x00")
    shared = midog_json(tmp_path / "midog.json", {"case0.tif": [(1, 1)], "case1.tiff": []})
    jobs = by_name(plan_jobs(d, None, shared, None, tmp_path / "out"))
    assert jobs["case0.tif"].detections == jobs["case1.svs"].detections == shared
    assert jobs["case2.tif"].status == "no_detections"
    assert "no entry in midog.json" in jobs["case2.tif"].note
    one_slide = write_candidates(tmp_path / "one.csv", 2)
    with pytest.raises(BadInputError, match="one slide's detections"):
        plan_jobs(d, None, one_slide, None, tmp_path / "out")


def test_manifest_lists_every_bad_row_and_starts_nothing(tmp_path, card, capsys):
    make_cohort(tmp_path / "slides", n=2)
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide,detections,mpp\n"
                        "slides/case0.tif,slides/case0.csv,\n"
                        "slides/missing.tif,slides/case1.csv,0.25\n"
                        "slides/case1.tif,slides/nope.csv,abc\n"
                        "slides/case0.tif,slides/case0.csv,-1\n")
    out = tmp_path / "out"
    assert batch(["--manifest", str(manifest), "--out-dir", str(out)], card) == 2
    err = capsys.readouterr().err
    assert "3 bad row(s), nothing was started" in err
    for text in ("line 3", "missing.tif", "line 4", "nope.csv", "'abc'", "line 5",
                 "already listed on line 2"):
        assert text in err
    assert "line 2:" not in err
    assert not out.exists()
    manifest.write_text("slide,detection\nslides/case0.tif,slides/case0.csv\n")
    assert batch(["--manifest", str(manifest), "--out-dir", str(out)], card) == 2
    assert "columns slide,detections" in capsys.readouterr().err
    for extra in (["--image", "case0.tif"], ["--workers", "2", "--scheduler", "tcp://x:1"]):
        assert batch([str(tmp_path / "slides"), "--out-dir", str(out), *extra], card) == 2
    assert not out.exists()


def test_manifest_paths_are_relative_to_it_and_mpp_is_used(tmp_path, card, monkeypatch):
    make_cohort(tmp_path / "slides", n=2)
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide,detections,mpp\nslides/case0.tif,slides/../slides/case0.csv,0.5"
                        "\nslides/case1.tif,,\n")
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    assert batch(["--manifest", "m.csv", "--out-dir", "out"], card) == 0
    assert statuses(out) == ["ok", "no_detections"]
    summary = json.loads((out / "case0.summary.json").read_text())
    assert summary["slide"]["mpp"] == 0.5
    # Regression: cohort.csv kept the paths as given (relative to where the batch ran, with
    # the manifest's folder and any "../" in them): read from elsewhere they named nothing
    rows = [(r["slide"], r["detections"]) for r in cohort_rows(out)]
    slides = tmp_path / "slides"
    assert rows == [(str(slides / "case0.tif"), str(slides / "case0.csv")),
                    (str(slides / "case1.tif"), "")]
    # Regression: a manifest's mpp was recorded and warned about as "--mpp", never given
    assert summary["slide"]["mpp_source"] == "the manifest's mpp override"
    assert ("the manifest's mpp 0.5 overrides the 0.25 µm/px the slide declares (2.00×): if "
            "the slide's value is right, each crop holds 0.50× the width of tissue the model "
            "expects") in summary["warnings"]
    cli = tmp_path / "cli"
    assert batch([str(tmp_path / "slides"), "--out-dir", str(cli), "--mpp", "0.5"], card) == 0
    summary = json.loads((cli / "case0.summary.json").read_text())
    assert summary["slide"]["mpp_source"] == "--mpp override"
    assert any(w.startswith("--mpp 0.5 overrides the 0.25 µm/px") for w in summary["warnings"])


# -------------------------------------------------------------------------- running slides
def test_batch_matches_classify_and_resumes(tmp_path, card, capsys):
    slides = tmp_path / "slides"
    make_cohort(slides, n=3)
    out = tmp_path / "out"
    assert batch([str(slides), "--out-dir", str(out)], card) == 0
    assert "3 slides: 3 succeeded, 0 skipped (up to date), 0 failed" in capsys.readouterr().out
    rows = cohort_rows(out)
    assert statuses(out) == ["ok"] * 3
    assert [int(r["candidates"]) for r in rows] == [4, 5, 6]
    for r in rows:
        assert int(r["atypical"]) + int(r["normal"]) == int(r["classified"]) == int(
            r["candidates"])
        assert float(r["fraction_ci95_low"]) <= float(r["atypical_fraction"]) <= float(
            r["fraction_ci95_high"])
    for i in range(3):
        for ext in (".geojson", ".csv", ".summary.json", ".png"):
            assert (out / f"case{i}{ext}").is_file()
    with Image.open(out / "cohort.png") as im:
        assert im.size[0] > 300 and im.size[1] > 200
    # The same slide through `wsi-atm classify` gives the same calls.
    single = tmp_path / "single"
    assert run_cli(["classify", str(slides / "case1.tif"), "--detections",
                    str(slides / "case1.csv"), "--out-dir", str(single), "--model", str(card),
                    "--device", "cpu", "--quiet"]) == 0
    assert features(single / "case1.geojson") == features(out / "case1.geojson")
    # A rerun with the same inputs skips everything, filling rows from the summaries.
    stamp = (out / "case0.geojson").stat().st_mtime_ns
    assert batch([str(slides), "--out-dir", str(out)], card) == 0
    assert statuses(out) == ["skipped"] * 3
    assert [r["atypical_fraction"] for r in cohort_rows(out)] == [
        r["atypical_fraction"] for r in rows]
    assert (out / "case0.geojson").stat().st_mtime_ns == stamp
    # A deleted output redoes that slide only.
    (out / "case1.png").unlink()
    assert batch([str(slides), "--out-dir", str(out)], card) == 0
    assert statuses(out) == ["skipped", "ok", "skipped"]
    # As if killed while rewriting case2: a stale temp file and no completion record.
    (out / ".wsi-atm" / "case2.done.json").unlink()
    (out / ".case2.geojson.0123456789ab.tmp").write_text("{")
    assert batch([str(slides), "--out-dir", str(out)], card) == 0
    assert statuses(out) == ["skipped", "skipped", "ok"]
    assert not list(out.glob(".*.tmp"))
    # Another threshold redoes every slide, and the records say so.
    assert batch([str(slides), "--out-dir", str(out), "--threshold", "0.3"], card) == 0
    assert statuses(out) == ["ok"] * 3
    assert json.loads((out / ".wsi-atm" / "case0.done.json").read_text())["threshold"] == 0.3


def test_other_version_or_device_reruns_and_says_why(tmp_path, card, capsys, monkeypatch):
    # Regression: the completion key left out the package version and the device/precision, so
    # an older version's (or a GPU's bf16) results were skipped as up to date.
    slides = tmp_path / "slides"
    make_cohort(slides, n=2)
    out = tmp_path / "out"
    args = ["batch", str(slides), "--out-dir", str(out), "--model", str(card), "--device"]
    monkeypatch.setattr(resume, "__version__", "0.0.1")
    monkeypatch.setattr(resume, "device_type", lambda name, distributed: "cuda")
    asked: list[str] = []
    real_load = run._load

    def load_on_a_pretend_gpu(*args: object, **kwargs: object) -> object:
        asked.append(str(kwargs["device"]))
        return real_load(*args, **{**kwargs, "device": "cpu"})

    monkeypatch.setattr(run, "_load", load_on_a_pretend_gpu)
    assert run_cli([*args, "auto", "--precision", "bf16", "--quiet"]) == 0
    record = json.loads((out / ".wsi-atm" / "case0.done.json").read_text())
    assert (record["wsi_atm_version"], record["device"], record["precision"]) == (
        "0.0.1", "cuda", "bf16-autocast")
    # Regression: the classifier got "auto" and resolved it again, so it could run on another
    # device than the record names (the record's check skips torch; the classifier's asks it)
    assert asked == ["cuda"]
    monkeypatch.undo()
    capsys.readouterr()
    assert run_cli([*args, "cpu"]) == 0
    assert statuses(out) == ["ok", "ok"]
    err = capsys.readouterr().err
    assert ("re-running case0.tif: changed since its last run: device, precision, "
            "wsi_atm_version") in err
    record = json.loads((out / ".wsi-atm" / "case1.done.json").read_text())
    assert (record["device"], record["precision"]) == ("cpu", "float32")
    # Up to date now: skipped without a word; a missing output is named.
    assert run_cli([*args, "cpu"]) == 0
    assert statuses(out) == ["skipped", "skipped"]
    assert "re-running" not in capsys.readouterr().err
    (out / "case1.csv").unlink()
    assert run_cli([*args, "cpu"]) == 0
    assert "re-running case1.tif: output missing: case1.csv" in capsys.readouterr().err


def test_a_rerun_with_local_workers_or_without_reuses_the_finished_slides(tmp_path, card,
                                                                          capsys):
    # Regression: local dask workers recorded device "auto", one process the device it
    # resolved ("cpu"), so switching between them re-ran every slide on the same machine
    slides = tmp_path / "slides"
    make_cohort(slides, n=2)
    out = tmp_path / "out"
    args = ["batch", str(slides), "--out-dir", str(out), "--model", str(card), "--quiet"]
    assert run_cli(args) == 0
    capsys.readouterr()
    assert run_cli([*args, "--workers", "2"]) == 0
    assert statuses(out) == ["skipped", "skipped"]
    assert "re-running" not in capsys.readouterr().err
    (out / ".wsi-atm" / "case1.done.json").unlink()  # one slide left for the workers
    pytest.importorskip("dask.distributed")
    assert run_cli([*args, "--workers", "1"]) == 0
    assert statuses(out) == ["skipped", "ok"]
    assert run_cli(args) == 0
    assert statuses(out) == ["skipped", "skipped"]
    assert "re-running" not in capsys.readouterr().err


def test_bad_slide_is_isolated_and_exit_is_1(tmp_path, card, capsys):
    slides = tmp_path / "slides"
    make_cohort(slides, n=1)
    (slides / "broken.svs").write_bytes(b"not a slide at all")
    write_candidates(slides / "broken.csv", 2)
    shutil.copy(slides / "case0.tif", slides / "lonely.tif")
    out = tmp_path / "out"
    assert batch([str(slides), "--out-dir", str(out)], card) == 1
    rows = {Path(r["slide"]).name: r for r in cohort_rows(out)}
    assert rows["broken.svs"]["status"] == "failed" and "broken.svs" in rows["broken.svs"]["error"]
    assert "\n" not in rows["broken.svs"]["error"]
    assert rows["lonely.tif"]["status"] == "no_detections"
    assert rows["lonely.tif"]["error"].startswith("no detection file lonely.*")
    assert rows["case0.tif"]["status"] == "ok" and (out / "case0.summary.json").is_file()
    assert not (out / "broken.geojson").exists()
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1].startswith(
        "3 slides: 1 succeeded, 0 skipped (up to date), 1 failed, 1 without detections")
    assert "failed: " in captured.err and "broken.svs" in captured.err


def test_a_slide_that_no_longer_opens_keeps_no_earlier_result(tmp_path, card):
    # Regression: locally, a slide damaged since its last run failed to open and kept that
    # run's summary, outputs and completion record beside its 'failed' row (on dask they went)
    slides, out = tmp_path / "slides", tmp_path / "out"
    make_cohort(slides, n=2)
    assert batch([str(slides), "--out-dir", str(out)], card) == 0
    with open(slides / "case0.tif", "r+b") as fh:
        fh.truncate(100)
    assert batch([str(slides), "--out-dir", str(out)], card) == 1
    assert statuses(out) == ["failed", "skipped"]
    assert not list(out.glob("case0.*")) and (out / "case1.summary.json").is_file()
    assert not (out / ".wsi-atm" / "case0.done.json").exists()


def test_next_slide_is_prepared_while_the_current_one_is_classified(tmp_path, monkeypatch):
    events: list[tuple[str, str, float]] = []

    class Fake:
        def __init__(self, job: Job) -> None:
            self.job, self.started, self.slide, self.plan = job, time.perf_counter(), None, None

        def close(self) -> None:
            events.append(("close", self.job.slide.name, time.perf_counter()))

        def start_now(self) -> None:
            events.append(("turn", self.job.slide.name, time.perf_counter()))

    def prepare(job, settings):
        events.append(("prepare", job.slide.name, time.perf_counter()))
        assert threading.current_thread() is not threading.main_thread()
        return Fake(job)

    def classify(prep, classifier, settings):
        events.append(("classify", prep.job.slide.name, time.perf_counter()))
        time.sleep(0.2)
        events.append(("classified", prep.job.slide.name, time.perf_counter()))
        return "result"

    monkeypatch.setattr(run, "prepare", prepare)
    monkeypatch.setattr(run, "classify_job", classify)
    monkeypatch.setattr(run, "load_classifier", lambda settings: object())
    jobs = [Job(tmp_path / f"s{i}.tif", tmp_path / f"s{i}.csv") for i in range(3)]
    written = []
    outcomes = list(run.run_local(jobs, None, lambda r, job: written.append(job)))
    assert [o.status for o in outcomes] == ["ok"] * 3 and written == jobs
    at = {(kind, name): t for kind, name, t in events}
    for i in (1, 2):  # slide i was opened before slide i-1 finished classifying
        assert at[("prepare", f"s{i}.tif")] < at[("classified", f"s{i - 1}.tif")]
    assert sum(kind == "close" for kind, _, _ in events) == 3
    assert sum(kind == "turn" for kind, _, _ in events) == 3  # each slide's clock restarted


def test_an_out_dir_that_cannot_be_locked_is_written_with_a_warning(tmp_path, monkeypatch):
    # Regression: on a file system without locks (Lustre without -o flock: ENOSYS) every
    # batch was refused as "another wsi-atm batch is writing"
    def no_locks(fd: object, op: int) -> None:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(resume.fcntl, "flock", no_locks)
    warned = pytest.warns(UserWarning, match="cannot be locked .Function not implemented.: "
                                             "make sure no other wsi-atm batch writes to it")
    with warned, resume.exclusive(tmp_path / "out"):
        pass


def test_an_out_dir_whose_lock_cannot_be_made_is_bad_input(tmp_path, capsys):
    # Regression: a file named .wsi-atm in --out-dir (or a folder the permission check could
    # not foresee) was an internal error (FileExistsError in mkdir), exit 1
    d = tmp_path / "slides"
    d.mkdir()
    (d / "a.tif").write_bytes(b"II*\x00")
    write_candidates(d / "a.csv", 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / resume.STATE_DIR).write_text("")
    code = run_cli(["batch", str(d), "--out-dir", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.splitlines() == [err]
    assert "internal error" not in err and ".wsi-atm/lock (File exists)" in err


def test_slides_whose_names_differ_only_in_case_clash(tmp_path, monkeypatch):
    # Regression: Case.svs and case.svs (or "ä" composed and decomposed) were planned as two
    # slides with their own outputs; on a file system that ignores case (macOS, Windows and
    # SMB/exFAT shares) one's outputs replaced the other's
    d = tmp_path / "slides"
    (d / "x").mkdir(parents=True)
    for name in ("Case.tif", "x/case.tif"):
        (d / name).write_bytes(b"II*\x00")
        write_candidates(d / name.replace(".tif", ".csv"), 2)
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide,detections\nslides/Case.tif,slides/Case.csv\n"
                        "slides/x/case.tif,slides/x/case.csv\n")
    monkeypatch.setattr("wsi_atm.batch.plan.names_fold", lambda out_dir: True)
    with pytest.raises(BadInputError, match="1 output clash") as err:
        plan_jobs(None, manifest, None, None, out_dir=tmp_path / "out")
    assert "both write case.* on a file system that ignores case" in str(err.value)


def test_slides_differing_in_case_are_planned_where_the_out_dir_tells_them_apart(tmp_path):
    # Regression: Case.tif and case.tif were refused as an output clash on every file system,
    # although on Linux's (ext4, XFS, Lustre) each writes its own files; the same name twice
    # still clashes there
    d = tmp_path / "slides"
    (d / "x").mkdir(parents=True)
    (d / "y").mkdir()
    for name in ("Case.tif", "x/case.tif", "y/case.tif"):
        (d / name).write_bytes(b"II*\x00")
        write_candidates(d / name.replace(".tif", ".csv"), 2)
    out = tmp_path / "out"
    if plan.names_fold(out):
        pytest.skip("this file system ignores case")
    manifest = tmp_path / "m.csv"
    manifest.write_text("slide,detections\nslides/Case.tif,slides/Case.csv\n"
                        "slides/x/case.tif,slides/x/case.csv\n")
    assert len(plan_jobs(None, manifest, None, None, out_dir=out)) == 2
    manifest.write_text(manifest.read_text() + "slides/y/case.tif,slides/y/case.csv\n")
    with pytest.raises(BadInputError, match="1 output clash") as err:
        plan_jobs(None, manifest, None, None, out_dir=out)
    assert "x/case.tif and " in str(err.value) and "ignores case" not in str(err.value)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".wsi-atm-case")]


def test_one_batch_per_out_dir_and_leftovers_are_cleared(tmp_path):
    out = tmp_path / "out"
    job = Job(tmp_path / "s.svs", tmp_path / "s.csv")
    busy = pytest.raises(BadInputError, match="another wsi-atm batch")
    with resume.exclusive(out), busy, resume.exclusive(out):
        pass
    with resume.exclusive(out):  # released
        pass
    record = resume.record_path(out, job)
    record.write_text("{}")
    (out / ".s.png.abcdef012345.tmp").write_bytes(b"x")
    (out / ".other.png.abcdef012345.tmp").write_bytes(b"x")
    resume.remove_leftovers(out, job)
    assert not record.exists() and [p.name for p in out.glob(".*.tmp")] == [
        ".other.png.abcdef012345.tmp"]


# ------------------------------------------------------------------------------ packaging
def test_batch_package_is_in_the_wheel():
    from setuptools import find_packages

    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]
    packages = find_packages(str(REPO), include=find["include"])
    assert "wsi_atm.batch" in packages and "wsi_atm.models" in packages


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(REPO / ".venv" / "bin" / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed")
    proc = subprocess.run([hadolint, "--failure-threshold", "warning", str(REPO / "Dockerfile")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_device_names_resolve_without_torch_where_no_gpu_can_be(monkeypatch):
    import torch

    from wsi_atm import infer
    from wsi_atm.errors import OptionError

    def no_torch(name: str) -> torch.device:
        raise AssertionError(f"asked torch about {name!r}")

    monkeypatch.setattr(infer, "pick_device", no_torch)
    monkeypatch.setattr(resume, "cuda_possible", lambda: False)
    assert resume.device_type("cpu", distributed=False) == "cpu"
    assert resume.device_type("auto", distributed=False) == "cpu"
    # on a cluster an explicit device is resolved by the workers: here only its type
    assert resume.device_type("cuda:1", distributed=True) == "cuda"
    # a GPU could be there (WSL2, ROCm, a driver): torch decides; bad names are bad input
    monkeypatch.setattr(resume, "cuda_possible", lambda: True)
    monkeypatch.setattr(infer, "pick_device", lambda name: torch.device("cuda"))
    assert resume.device_type("auto", distributed=False) == "cuda"
    monkeypatch.undo()
    for name, distributed in (("bogus", False), ("bogus", True), ("cuda:x", True)):
        with pytest.raises(OptionError):
            resume.device_type(name, distributed)


def test_a_cluster_key_names_the_precision_each_worker_will_run(card):
    from dataclasses import replace

    from wsi_atm.batch import BatchSettings
    from wsi_atm.detections import CandidateOptions
    from wsi_atm.models.card import load_card

    cnn = BatchSettings(model=load_card(card), candidate_options=CandidateOptions())
    vit = replace(cnn, model=replace(cnn.model, kind="vit"))
    # workers resolve --device auto themselves: a CNN card runs float32 on any of them, a ViT
    # card's result depends on whether the worker has a GPU, and the key says so
    assert resume.engine_key(cnn, distributed=True)["precision"] == "float32"
    assert resume.engine_key(vit, distributed=True)["precision"] == (
        "bf16-autocast on cuda, float32 on cpu")
    assert resume.engine_key(replace(vit, precision="float32"),
                             distributed=True)["precision"] == "float32"


def test_a_local_workers_share_of_the_cpus_bounds_its_crop_threads(card, monkeypatch):
    # Regression: with --workers N each local dask worker split the model's threads but still
    # ran min(8, CPUs) crop threads, N times over
    from wsi_atm import cpus
    from wsi_atm.batch import BatchSettings
    from wsi_atm.crops import default_workers
    from wsi_atm.detections import CandidateOptions
    from wsi_atm.models.card import load_card

    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setenv(cpus.CPUS_ENV, "")  # unset, and put back as it was after the test
    assert default_workers() == 8 or cpus.cgroup_quota(cpus.CGROUP) is not None
    settings = BatchSettings(model=load_card(card), candidate_options=CandidateOptions(),
                             device="cpu", engine="torch", threads=2)
    run.load_classifier(settings)
    assert default_workers() == 2


def test_a_full_disk_while_writing_the_cohort_files_reports_the_slides_then_fails(
        tmp_path: Path, card: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # Regression: an internal error (exit 1, a traceback's last line), the slides' outcomes
    # never printed, and cohort.csv left without its report.html
    import errno

    from wsi_atm.batch import cohort

    slides = tmp_path / "slides"
    make_cohort(slides, n=2)
    out = tmp_path / "out"

    def full_disk(outcomes: object, out_dir: Path) -> None:
        (out_dir / "cohort.csv").write_text("slide,status\n")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cohort, "write_cohort", full_disk)
    assert batch([str(slides), "--out-dir", str(out)], card) == 1
    captured = capsys.readouterr()
    assert "2 slides: 2 succeeded" in captured.out
    assert captured.err.strip().splitlines() == [
        f"wsi-atm: error: {out}: cannot write the cohort files (No space left on device); "
        "every slide listed as succeeded has its own outputs complete"]
    assert not (out / "cohort.csv").exists()
    assert len(list(out.glob("*.summary.json"))) == 2
