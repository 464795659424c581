"""Fault tolerance: a failure at any stage ends with an exit status, never a signal death, and
leaves nothing that looks complete. Each case runs the real CLI in a subprocess (an OpenSlide
abort would kill pytest itself) with a fault injected through ``WSI_ATM_FAULT``.

Regression: when inference raised in the first batches, the slide was closed while crop
threads still read it and OpenSlide aborted the process (exit 134, once 139).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_slides"
SVS = SAMPLES / "cmu_small_region.svs"
SVS_CANDIDATES = SAMPLES / "cmu_small_region.candidates.csv"
TIF = SAMPLES / "synthetic_025mpp.tif"
TIF_CANDIDATES = SAMPLES / "synthetic_025mpp.candidates.csv"
STAGES = ("open", "detections", "crop", "inference", "write")


def wsi_atm(args: list[str], fault: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "WSI_ATM_FAULT": fault}
    env.pop("WSI_ATM_DEBUG", None)
    # SIGINT and SIGHUP handled as in a terminal even when this test run was started in the
    # background or under nohup (a shell starts background jobs with SIGINT ignored, nohup
    # ignores SIGHUP, and Python keeps what it inherits ignored)
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "signal.signal(signal.SIGHUP, signal.SIG_DFL); "
            "from wsi_atm.cli import main; main(sys.argv[1:])")
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def assert_no_signal_death(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode >= 0, (
        f"killed by {signal.Signals(-proc.returncode).name}: {proc.stderr[-2000:]}")
    assert proc.returncode not in (134, 139), proc.stderr[-2000:]


def stderr_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in proc.stderr.splitlines()
            if ln.strip() and not ln.startswith("wsi-atm: warning:")]


def many_candidates(tmp_path: Path, n: int = 3000) -> Path:
    """Enough candidates (read in small batches) that crop reads are in flight when a fault hits."""
    rng = np.random.default_rng(0)
    path = tmp_path / "many.csv"
    xy = rng.uniform([100, 100], [2100, 2850], size=(n, 2))
    path.write_text("x,y\n" + "".join(f"{x:.1f},{y:.1f}\n" for x, y in xy))
    return path


def classify(slide: Path, dets: Path, out: Path, fault: str, *extra: str):
    return wsi_atm(["classify", str(slide), "--detections", str(dets), "--out-dir", str(out),
                    "--quiet", *extra], fault)


def looks_complete(out: Path) -> list[str]:
    """Files that a reader would take for a finished slide: summaries and hidden temp files."""
    return sorted(p.name for p in out.glob("*.summary.json")) + sorted(
        p.name for p in out.glob(".*.tmp"))


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("kind", ["error", "interrupt", "terminate"])
def test_classify_openslide_fails_cleanly_at_every_stage(stage, kind, tmp_path):
    # Regression (terminate): SIGTERM killed the process by signal, leaving a lone GeoJSON
    out = tmp_path / "out"
    proc = classify(SVS, many_candidates(tmp_path), out, f"{stage}:{kind}", "--backend",
                    "openslide")
    assert_no_signal_death(proc)
    if kind == "interrupt":
        assert proc.returncode == 130, proc.stderr
        assert stderr_lines(proc) == ["wsi-atm: interrupted"]
    elif kind == "terminate":
        assert proc.returncode == 143, proc.stderr
        assert stderr_lines(proc) == ["wsi-atm: terminated"]
    else:
        assert proc.returncode == 1, proc.stderr
        lines = stderr_lines(proc)
        assert len(lines) == 1 and "injected fault at stage" in lines[0], lines
    assert not out.exists() or looks_complete(out) == []


def test_inference_error_with_reads_in_flight_never_aborts(tmp_path):
    # The abort is a race (reads still in flight when the slide closes): on the unfixed code
    # about one run in three died with SIGABRT here, so five runs catch it almost surely.
    dets = many_candidates(tmp_path)
    for attempt in range(5):
        proc = classify(SVS, dets, tmp_path / f"out{attempt}", "inference:error",
                        "--backend", "openslide")
        assert_no_signal_death(proc)
        assert "Bail out" not in proc.stderr and proc.returncode == 1, proc.stderr


@pytest.mark.parametrize("stage", ["crop", "inference"])
@pytest.mark.parametrize("kind", ["error", "interrupt"])
def test_classify_tiffslide_fails_cleanly(stage, kind, tmp_path):
    out = tmp_path / "out"
    proc = classify(TIF, TIF_CANDIDATES, out, f"{stage}:{kind}", "--backend", "tiffslide")
    assert_no_signal_death(proc)
    assert proc.returncode == (130 if kind == "interrupt" else 1), proc.stderr
    assert not out.exists() or looks_complete(out) == []


@pytest.mark.parametrize("stage", ["crop", "inference", "write"])
def test_failed_rerun_leaves_no_summary_describing_other_files(stage, tmp_path):
    # Regression: a rerun that failed reading crops or in inference left the previous run's
    # summary (and its files) in place, as if this run had produced them
    out = tmp_path / "out"
    ok = classify(SVS, SVS_CANDIDATES, out, "")
    assert ok.returncode == 0, ok.stderr
    assert (out / "cmu_small_region.summary.json").is_file()
    (out / ".cmu_small_region.csv.0123456789ab.tmp").write_text("left by a killed run")
    proc = classify(SVS, SVS_CANDIDATES, out, f"{stage}:error")
    assert proc.returncode == 1
    # The old CSV/PNG (and with "write" the new GeoJSON) are there: no summary may vouch for them.
    assert looks_complete(out) == []


@pytest.mark.parametrize("kind", ["interrupt", "error"])
def test_a_rerun_stopped_while_writing_leaves_no_mix_of_old_and_new_files(kind, tmp_path):
    # Regression: the new GeoJSON (400 candidates) was left beside the old run's CSV and PNG
    # (60), with no summary; now the files are staged and renamed together, summary last
    out = tmp_path / "out"
    ok = classify(SVS, SVS_CANDIDATES, out, "")
    assert ok.returncode == 0, ok.stderr
    proc = classify(SVS, many_candidates(tmp_path, 400), out, f"write:{kind}")
    assert_no_signal_death(proc)
    assert proc.returncode == (130 if kind == "interrupt" else 1), proc.stderr
    assert sorted(p.name for p in out.iterdir()) == []


def test_failed_batch_rerun_leaves_no_summary_of_the_earlier_run(tmp_path):
    out = tmp_path / "out"
    manifest = _manifest(tmp_path, n=1)
    ok = wsi_atm(["batch", "--manifest", str(manifest), "--out-dir", str(out), "--quiet"], "")
    assert ok.returncode == 0, ok.stderr
    proc = wsi_atm(["batch", "--manifest", str(manifest), "--out-dir", str(out), "--quiet",
                    "--threshold", "0.3"], "inference:error")
    assert proc.returncode == 1, proc.stderr
    # --quiet hides the progress bar, not why a slide ran again
    assert "re-running slide0.svs: changed since its last run: threshold" in proc.stderr
    assert _cohort_status(out) == {"slide0": "failed"}
    assert looks_complete(out) == []


def test_the_report_shows_no_earlier_files_beside_a_failed_slide(tmp_path):
    # Regression: a rerun whose slide failed to read its detections kept the earlier run's
    # outputs (as classify does on bad input) and report.html showed their review picture
    # beside the status "failed"
    out = tmp_path / "out"
    manifest = _manifest(tmp_path, n=1)
    ok = wsi_atm(["batch", "--manifest", str(manifest), "--out-dir", str(out), "--quiet"], "")
    assert ok.returncode == 0, ok.stderr
    assert "review picture of slide0" in (out / "report.html").read_text()
    bad = wsi_atm(["batch", "--manifest", str(manifest), "--out-dir", str(out), "--quiet",
                   "--threshold", "0.3"], "detections:error")
    assert bad.returncode == 1, bad.stderr
    assert _cohort_status(out) == {"slide0": "failed"}
    report = (out / "report.html").read_text()
    assert "review picture of slide0" not in report and "slide0.csv" not in report


def test_a_batch_stopped_before_a_slide_starts_leaves_its_outputs_alone(tmp_path):
    # Regression: every slide to rerun lost its summary when the batch began, so a batch that
    # then stopped on bad input (exit 2) or was interrupted on its first slide lost them all
    out = tmp_path / "out"
    manifest = _manifest(tmp_path)
    ok = wsi_atm(["batch", "--manifest", str(manifest), "--out-dir", str(out), "--quiet"], "")
    assert ok.returncode == 0, ok.stderr
    done = looks_complete(out)
    assert done == ["slide0.summary.json", "slide1.summary.json"]
    bad = wsi_atm(["batch", "--manifest", str(manifest), "--out-dir", str(out), "--quiet",
                   "--threshold", "0.3", "--scheduler", "tcp://127.0.0.1:1"], "")
    assert bad.returncode == 2, bad.stderr
    assert looks_complete(out) == done
    assert (out / "cohort.csv").is_file()
    stopped = wsi_atm(["batch", "--manifest", str(manifest), "--out-dir", str(out), "--quiet",
                       "--threshold", "0.3"], "crop:interrupt")
    assert stopped.returncode == 130, stopped.stderr
    assert looks_complete(out) == ["slide1.summary.json"]  # slide0 had started, slide1 not
    # Regression: the last run's cohort files stayed, showing slide0 as it no longer is
    assert not [p.name for p in out.iterdir() if p.name in ("cohort.csv", "cohort.png",
                                                              "report.html")]


def _manifest(tmp_path: Path, n: int = 2) -> Path:
    rows = []
    for i in range(n):
        slide = tmp_path / f"slide{i}.svs"
        shutil.copyfile(SVS, slide)
        rows.append({"slide": str(slide), "detections": str(SVS_CANDIDATES)})
    path = tmp_path / "manifest.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["slide", "detections"])
        w.writeheader()
        w.writerows(rows)
    return path


def _cohort_status(out: Path) -> dict[str, str]:
    with open(out / "cohort.csv", newline="") as fh:
        return {Path(r["slide"]).stem: r["status"] for r in csv.DictReader(fh)}


@pytest.mark.parametrize("stage", ["open", "detections", "crop", "inference", "write"])
def test_local_batch_records_the_failed_slide_and_goes_on(stage, tmp_path):
    out = tmp_path / "out"
    proc = wsi_atm(["batch", "--manifest", str(_manifest(tmp_path)), "--out-dir", str(out),
                    "--quiet"], f"{stage}:error")
    assert_no_signal_death(proc)
    assert proc.returncode == 1, proc.stderr
    status = _cohort_status(out)
    assert sorted(status.values()) == ["failed", "ok"], status
    failed = next(s for s, v in status.items() if v == "failed")
    assert not (out / f"{failed}.summary.json").exists()
    assert list(out.glob(".*.tmp")) == []


def test_local_batch_terminated_stops_cleanly(tmp_path):
    # Regression: SIGTERM (a scheduler's or docker stop's) killed batch by signal
    out = tmp_path / "out"
    proc = wsi_atm(["batch", "--manifest", str(_manifest(tmp_path)), "--out-dir", str(out),
                    "--quiet"], "inference:terminate")
    assert_no_signal_death(proc)
    assert proc.returncode == 143, proc.stderr
    assert "wsi-atm: terminated" in stderr_lines(proc)
    assert looks_complete(out) == []


def test_the_entry_point_ends_with_a_status_when_stopped_during_start_up(monkeypatch, capsys):
    # Regression: Ctrl-C while the CLI was being imported printed a traceback and the process
    # died by SIGINT; once it ends, a late signal exits at once with its status
    import types

    from wsi_atm import entry
    from wsi_atm.errors import Terminated
    from wsi_atm.signals import exit_now

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        for raised, code, word in ((KeyboardInterrupt(), 130, "interrupted"),
                                   (Terminated(), 143, "terminated")):
            def stopped(raised: BaseException = raised) -> None:
                raise raised

            monkeypatch.setitem(sys.modules, "wsi_atm.cli", types.SimpleNamespace(main=stopped))
            with pytest.raises(SystemExit) as exit_info:
                entry.run()
            assert exit_info.value.code == code
            assert capsys.readouterr().err == f"wsi-atm: {word}\n"
            assert signal.getsignal(signal.SIGINT) == exit_now
            assert signal.getsignal(signal.SIGTERM) == exit_now
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


LATE_SIGNAL = """
import os, signal, sys, time, types
from wsi_atm import entry

class Late:  # freed in the interpreter's teardown, after the exit handlers have run
    def __init__(self, sig):
        self.sig, self.kill, self.pid, self.sleep = sig, os.kill, os.getpid(), time.sleep

    def __del__(self):
        self.kill(self.pid, self.sig)
        self.sleep(0.2)

late = Late(getattr(signal, sys.argv[1]))
sys.modules["wsi_atm.cli"] = types.SimpleNamespace(main=lambda: sys.exit(3))
entry.run()
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_signal_during_the_interpreters_teardown_keeps_the_exit_status(
        sig: str, tmp_path: Path) -> None:
    # Regression: Python puts its handled signals back to the default before it frees the
    # modules and libraries; a Ctrl-C or SIGTERM in that last ~0.1 s killed the process
    script = tmp_path / "late.py"
    script.write_text(LATE_SIGNAL)
    proc = subprocess.run([sys.executable, str(script), sig], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert_no_signal_death(proc)
    assert proc.returncode == 3, proc.stderr


@pytest.mark.parametrize("stage", STAGES)
def test_local_batch_interrupted_stops_cleanly_and_resumes(stage, tmp_path):
    out = tmp_path / "out"
    manifest = _manifest(tmp_path)
    proc = wsi_atm(["batch", "--manifest", str(manifest), "--out-dir", str(out), "--quiet"],
                   f"{stage}:interrupt")
    assert_no_signal_death(proc)
    assert proc.returncode == 130, proc.stderr
    assert list(out.glob(".*.tmp")) == []
    again = wsi_atm(["batch", "--manifest", str(manifest), "--out-dir", str(out), "--quiet"], "")
    assert again.returncode == 0, again.stderr
    assert sorted(_cohort_status(out).values()) == ["ok", "ok"]
    for i in range(2):
        summary = json.loads((out / f"slide{i}.summary.json").read_text())
        assert summary["counts"]["classified"] > 0


@pytest.mark.parametrize("stage", ["crop", "inference"])
def test_dask_batch_worker_error_fails_the_slide_not_the_worker(stage, tmp_path):
    pytest.importorskip("dask.distributed")
    out = tmp_path / "out"
    proc = wsi_atm(["batch", "--manifest", str(_manifest(tmp_path)), "--out-dir", str(out),
                    "--workers", "1", "--quiet"], f"{stage}:error")
    assert_no_signal_death(proc)
    assert proc.returncode == 1, proc.stderr
    # One worker process: the first slide's fault must not kill it, so the second completes.
    assert sorted(_cohort_status(out).values()) == ["failed", "ok"]
    assert "KilledWorker" not in proc.stderr
    # Regression: a local cluster printed two dozen 'info' lines, its worker raw warnings
    lines = proc.stderr.splitlines()
    assert all(ln.startswith("wsi-atm: ") for ln in lines if ln.strip()), lines
    assert not [ln for ln in lines if ln.startswith("wsi-atm: info:")], lines


@pytest.mark.parametrize("stage", ["open", "detections", "write"])
def test_dask_batch_error_at_other_stages_fails_slides_cleanly(stage, tmp_path):
    # The fault fires once per process (client and worker each count their own calls), so one
    # or both slides fail; what matters is how: recorded, nothing half-written, a rerun heals.
    pytest.importorskip("dask.distributed")
    out = tmp_path / "out"
    manifest = _manifest(tmp_path)
    args = ["batch", "--manifest", str(manifest), "--out-dir", str(out), "--workers", "1",
            "--quiet"]
    proc = wsi_atm(args, f"{stage}:error")
    assert_no_signal_death(proc)
    assert proc.returncode == 1, proc.stderr
    status = _cohort_status(out)
    assert "failed" in status.values() and set(status.values()) <= {"failed", "ok"}, status
    for slide, value in status.items():
        assert (out / f"{slide}.summary.json").exists() == (value == "ok")
    assert list(out.glob(".*.tmp")) == [] and "KilledWorker" not in proc.stderr
    again = wsi_atm(args, "")
    assert again.returncode == 0, again.stderr
    assert set(_cohort_status(out).values()) <= {"ok", "skipped"}  # the failed one redone


def test_dask_batch_interrupted_in_the_client_stops_cleanly_and_resumes(tmp_path):
    pytest.importorskip("dask.distributed")
    out = tmp_path / "out"
    manifest = _manifest(tmp_path)
    args = ["batch", "--manifest", str(manifest), "--out-dir", str(out), "--workers", "1",
            "--quiet"]
    proc = wsi_atm(args, "write:interrupt")  # outputs are written by the client
    assert_no_signal_death(proc)
    assert proc.returncode == 130, proc.stderr
    assert list(out.glob(".*.tmp")) == []
    again = wsi_atm(args, "")
    assert again.returncode == 0, again.stderr
    assert set(_cohort_status(out).values()) <= {"ok", "skipped"}  # the failed one redone


def _run_with_stderr(args: list[str], stderr: str, fault: str = "") -> subprocess.CompletedProcess:
    """The CLI with its stderr on ``/dev/full`` (every write fails: a log on a full disk) or
    closed (``2>&-``)."""
    code = "import sys; from wsi_atm.cli import main; main(sys.argv[1:])"
    cmd = [sys.executable, "-c", code, *args]
    env = {**os.environ, "WSI_ATM_FAULT": fault}
    if stderr == "closed":
        return subprocess.run(["sh", "-c", 'exec "$@" 2>&-', "sh", *cmd], capture_output=True,
                              text=True, timeout=240, cwd=REPO, env=env)
    with open("/dev/full", "w") as full:
        return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=full, text=True, timeout=240,
                              cwd=REPO, env=env)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("stderr", ["full", "closed"])
def test_a_stderr_that_cannot_be_written_never_fails_the_work(stderr, tmp_path):
    # Regression: a warning that could not be printed (stderr on a full device, or a pipe whose
    # reader was gone) failed the slide, every slide of a batch; with stderr closed the
    # progress bar's set-up was an internal error; and bad input ended with status 1, not 2
    upsampled = ["--mpp", "0.5"]  # a warning: the crops are upsampled
    out = tmp_path / "out"
    proc = _run_with_stderr(["classify", str(TIF), "--detections", str(TIF_CANDIDATES),
                             "--out-dir", str(out), *upsampled], stderr)
    assert proc.returncode == 0, proc.stdout
    assert (out / "synthetic_025mpp.summary.json").is_file()
    assert "warning" not in proc.stdout  # never moved to stdout
    (tmp_path / "cohort").mkdir()
    for name in ("a", "b"):
        shutil.copyfile(TIF, tmp_path / "cohort" / f"{name}.tif")
        shutil.copyfile(TIF_CANDIDATES, tmp_path / "cohort" / f"{name}.csv")
    proc = _run_with_stderr(["batch", str(tmp_path / "cohort"), "--out-dir",
                             str(tmp_path / "batch"), *upsampled], stderr)
    assert proc.returncode == 0, proc.stdout
    assert set(_cohort_status(tmp_path / "batch").values()) == {"ok"}
    proc = _run_with_stderr(["classify", str(tmp_path / "missing.tif"), "--detections",
                             str(TIF_CANDIDATES), "--out-dir", str(tmp_path / "bad")], stderr)
    assert proc.returncode == 2, proc.stdout
    # stopped: the status says so (click's line for the stop could not be written either)
    proc = _run_with_stderr(["classify", str(TIF), "--detections", str(TIF_CANDIDATES),
                             "--out-dir", str(tmp_path / "stopped"), "--quiet"], stderr,
                            "inference:terminate")
    assert proc.returncode == 143, proc.stdout


@pytest.mark.parametrize("stage", ["crop", "inference", "write"])
def test_a_hangup_stops_cleanly_unless_ignored(stage, tmp_path):
    # Regression: SIGHUP (the terminal closed, an ssh session dropped) killed the process by
    # signal, mid-slide, as only SIGKILL still did
    out = tmp_path / "out"
    proc = classify(TIF, TIF_CANDIDATES, out, f"{stage}:hangup")
    assert_no_signal_death(proc)
    assert proc.returncode == 129, proc.stderr
    assert stderr_lines(proc) == ["wsi-atm: hung up"]
    assert not out.exists() or looks_complete(out) == []
    # under nohup (SIGHUP ignored) the run goes on to the end
    code = ("import signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
            "from wsi_atm.cli import main; main(sys.argv[1:])")
    args = ["classify", str(TIF), "--detections", str(TIF_CANDIDATES), "--out-dir", str(out),
            "--quiet"]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=240, cwd=REPO, env={**os.environ,
                                                      "WSI_ATM_FAULT": f"{stage}:hangup"})
    assert proc.returncode == 0, proc.stderr
    assert looks_complete(out) == ["synthetic_025mpp.summary.json"]


def test_local_batch_hung_up_stops_cleanly_and_resumes(tmp_path):
    out = tmp_path / "out"
    args = ["batch", "--manifest", str(_manifest(tmp_path)), "--out-dir", str(out), "--quiet"]
    proc = wsi_atm(args, "inference:hangup:2")
    assert_no_signal_death(proc)
    assert proc.returncode == 129, proc.stderr
    assert "wsi-atm: hung up" in stderr_lines(proc)
    assert list(out.glob(".*.tmp")) == [] and not (out / "cohort.csv").exists()
    again = wsi_atm(args, "")
    assert again.returncode == 0, again.stderr
    assert sorted(_cohort_status(out).values()) == ["ok", "skipped"]



def _in_own_group(args: list[str]) -> subprocess.Popen:
    """wsi-atm started in its own process group, as under a terminal, with SIGINT and SIGHUP
    handled as a terminal's shell leaves them."""
    code = ("import signal, sys; signal.signal(signal.SIGHUP, signal.SIG_DFL); "
            "signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from wsi_atm.cli import main; main(sys.argv[1:])")
    env = {k: v for k, v in os.environ.items() if k not in ("WSI_ATM_FAULT", "WSI_ATM_DEBUG")}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)

@pytest.mark.parametrize(("sig", "status", "word"), [("SIGHUP", 129, "hung up"),
                                                  ("SIGINT", 130, "interrupted")])
def test_dask_batch_stopped_by_its_terminal_stops_cleanly(tmp_path, sig, status, word):
    # A closing terminal sends SIGHUP, and Ctrl-C in it SIGINT, to its whole process group.
    # Regression: the local dask workers and multiprocessing's resource tracker died of SIGHUP;
    # the tracker, relaunched, printed "Some resources might leak" and a KeyError traceback per
    # semaphore. Each worker took SIGINT and printed a KeyboardInterrupt traceback
    pytest.importorskip("dask.distributed")
    import time

    out, n = tmp_path / "out", 8
    args = ["batch", "--manifest", str(_manifest(tmp_path, n)), "--out-dir", str(out),
            "--workers", "1", "--quiet"]
    proc = _in_own_group(args)
    done = out / ".wsi-atm"
    deadline = time.time() + 180
    while time.time() < deadline and not list(done.glob("*.done.json")):
        time.sleep(0.05)
    os.killpg(proc.pid, getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    assert len(list(done.glob("*.done.json"))) < n, "the batch ended before the signal"
    assert proc.returncode == status, err
    assert f"wsi-atm: {word}" in err
    assert "Traceback" not in err and "resource_tracker" not in err, err
    assert "CancelledError" not in err, err
    assert list(out.glob(".*.tmp")) == [] and not (out / "cohort.csv").exists()


def _group_members(group: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes in process group ``group``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != group:
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # exited, not yet reaped
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ProcessLookupError):
            continue
        found.append((int(entry.name), cmdline))
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_ctrl_c_while_the_dask_workers_start_stops_cleanly(tmp_path):
    # Regression: a Ctrl-C in the first seconds of a --workers batch reached a worker process
    # that was still starting (before its preload ignores SIGINT), and it printed a
    # KeyboardInterrupt traceback; the batch's own process took it inside LocalCluster's start
    pytest.importorskip("dask.distributed")
    import time

    out = tmp_path / "out"
    args = ["batch", "--manifest", str(_manifest(tmp_path, 2)), "--out-dir", str(out),
            "--workers", "2", "--quiet"]
    proc = _in_own_group(args)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if any("spawn_main" in cmd for _, cmd in _group_members(proc.pid)):
            time.sleep(0.2)  # a worker process has been started: it is still importing
            break
        time.sleep(0.005)
    else:
        proc.kill()
        pytest.fail("no worker process started")
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "wsi-atm: interrupted" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert not (out / "cohort.csv").exists()
    time.sleep(1)
    assert [cmd for _, cmd in _group_members(proc.pid)] == []  # no worker left behind


def test_resource_tracker_says_nothing_of_a_killed_workers_semaphores():
    # Regression: batch --workers N stopped mid-slide (`docker stop`, `kill`: the busy workers
    # are killed after 4 s) or losing a worker (the OOM killer) ended its stderr with the
    # tracker's raw "UserWarning: resource_tracker: There appear to be 2 leaked semaphore
    # objects" and its source line. Here a process that registered a semaphore dies without
    # unregistering it, as a killed worker does.
    code = ("import multiprocessing as mp, os; from wsi_atm.signals import group_signals_spared\n"
            "with group_signals_spared(): pass\n"
            "print(os.environ.get('PYTHONWARNINGS'), flush=True)\n"
            "lock = mp.get_context('spawn').Lock(); os._exit(0)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env=env)
    assert proc.returncode == 0 and proc.stdout == "None\n", proc.stderr  # workers unaffected
    assert "resource_tracker" not in proc.stderr and "leaked" not in proc.stderr, proc.stderr
