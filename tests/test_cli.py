"""The command-line layer: slide-info, models, exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_helpers import run_cli
from wsi_atm.synthetic import tissue_image, write_pyramid_tiff

REPO = Path(__file__).resolve().parents[1]
SVS = REPO / "sample_slides" / "cmu_small_region.svs"


def test_slide_info_reports_mpp_and_its_source(capsys):
    assert run_cli(["slide-info", str(SVS), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["mpp"] == 0.499 and info["mpp_source"] == "aperio.MPP"
    assert info["dimensions"] == [2220, 2967]
    assert info["crop_plan"]["upsampled"] is True


def test_slide_info_override_and_unknown_mpp(tmp_path, capsys):
    slide = write_pyramid_tiff(tmp_path / "n.tif", tissue_image(512, 512), None, levels=(1,),
                               resolution_unit=None)
    assert run_cli(["slide-info", str(slide), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["mpp"] is None and "--mpp" in info["crop_plan"]
    assert run_cli(["slide-info", str(slide), "--json", "--mpp", "0.25"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["mpp"] == 0.25 and "override" in info["mpp_source"]
    assert info["crop_plan"]["native"] is True


def test_slide_info_bad_slide_exits_2(tmp_path, capsys):
    bad = tmp_path / "x.svs"
    bad.write_bytes(b"\x00" * 100)
    assert run_cli(["slide-info", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wsi-atm: error:")


def test_models_lists_every_card(capsys):
    assert run_cli(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = {r["name"].split()[0] for r in rows}
    assert {p.stem for p in (REPO / "wsi_atm" / "models" / "cards").glob("*.toml")} == names
    virchow2 = next(r for r in rows if r["name"] == "virchow2")
    assert virchow2["parameters"] > 600e6 and "unverified" in virchow2["weights"]


def test_models_table_keeps_its_columns_in_line(capsys):
    # Regression: names of 20 characters or more (the default's "(default)" mark) pushed their
    # row's columns out of line
    assert run_cli(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    column = lines[0].index("kind")
    assert len(lines) > 10
    assert all(line[column - 1] == " " and line[column] != " " for line in lines), lines


def test_python_m_and_version():
    out = subprocess.run([sys.executable, "-m", "wsi_atm", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith("wsi-atm, version")


def test_bare_command_shows_the_help(capsys):
    # Regression: it printed the help as an error ("wsi-atm: error: Usage: …"), exit 2
    assert run_cli([]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("Usage: wsi-atm") and "classify" in out.out and out.err == ""


def test_unknown_option_is_exit_2(capsys):
    assert run_cli(["classify", str(SVS), "--no-such-option"]) == 2
    assert capsys.readouterr().err.startswith("wsi-atm: error:")


CHECK_IMPORTS = """
import sys
from wsi_atm.cli import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code or 0
print("torch" in sys.modules, code, file=sys.stderr)
"""


@pytest.mark.parametrize("args, code", [
    (["--help"], 0),
    (["slide-info", "SVS"], 0),
    (["classify", "/nonexistent.svs", "--detections", "DET"], 2),
    (["classify", "SVS", "--detections", "/nonexistent.csv"], 2),
    (["classify", "SVS", "--detections", "README"], 2),
    (["batch", "/nonexistent"], 2),
    (["batch", "EMPTY"], 2),
    (["batch", "SVSDIR", "--model", "nosuch"], 2),
    (["classify", "SVS", "--detections", "DET", "--engine", "onnx", "--precision", "bf16"], 2),
    (["batch", "SVSDIR", "--engine", "onnx", "--precision", "bf16"], 2),
    # Regressions: a misspelt --device was found by torch, seconds in; batch took --mpp -1,
    # failed every slide and wrote a cohort
    (["classify", "SVS", "--detections", "DET", "--device", "gpu"], 2),
    (["batch", "SVSDIR", "--device", "gpu"], 2),
    (["batch", "SVSDIR", "--mpp", "-1"], 2),
    (["batch", "SVSDIR", "--mpp", "nan"], 2),
    # Regression: --threshold nan called every mitosis normal, exit 0
    (["classify", "SVS", "--detections", "DET", "--threshold", "nan"], 2),
    (["batch", "SVSDIR", "--threshold", "nan"], 2),
    # Regressions (an audit): a FIFO for a slide hung for ever; --mpp 1e-4 asked for a 286 GiB
    # window and --batch-size 99999999999 for an impossible batch (internal errors, exit 1);
    # `results` of a JSON file of the wrong shape was a KeyError
    (["classify", "FIFO", "--detections", "DET"], 2),
    (["classify", "SVS", "--detections", "DET", "--mpp", "1e-4"], 2),
    (["batch", "SVSDIR", "--mpp", "1e-9"], 2),
    (["classify", "SVS", "--detections", "DET", "--batch-size", "99999999999"], 2),
    (["results", "EJSON"], 2),
    (["batch", "SVSDIR", "--scheduler", "bogus"], 2),
])
def test_start_up_and_bad_input_do_not_import_torch(args, code, cmu_svs, tmp_path):
    # Regressions: classify built the network (importing torch, seconds) before reading its
    # inputs, so a misspelt path took seconds to report; batch imported torch with its
    # completion records, before looking at the slide folder.
    det = tmp_path / "d.csv"
    det.write_text("x,y\n10,10\n")
    readme = Path(__file__).parents[1] / "README.md"
    (tmp_path / "empty").mkdir()
    os.mkfifo(tmp_path / "slide.svs")
    (tmp_path / "e.json").write_text("{}")
    names = {"SVS": str(cmu_svs), "DET": str(det), "README": str(readme),
             "EMPTY": str(tmp_path / "empty"), "SVSDIR": str(cmu_svs.parent),
             "FIFO": str(tmp_path / "slide.svs"), "EJSON": str(tmp_path / "e.json")}
    args = [names.get(a, a) for a in args]
    if args[0] in ("classify", "batch"):
        args += ["--out-dir", str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, "-c", CHECK_IMPORTS, *args],
                          capture_output=True, text=True, timeout=120)
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"False {code}", proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("device, message", [
    ("cuda:x", "--device must be auto, cpu, cuda or cuda:N, not 'cuda:x'"),
    ("gpu", "--device must be auto, cpu, cuda or cuda:N, not 'gpu'"),
    ("cuda:3", "--device cuda:3"),
    ("cuda", "--device cuda was asked for but no CUDA device is available"),
])
def test_a_bad_device_is_one_line_and_exit_2(device, message, tmp_path, capsys):
    # Regression: "cuda:x" reached torch.device and came back as an internal error; a GPU
    # named where there is none was said only after the slide's upsampling warning (two lines)
    import torch

    if device == "cuda:3" and torch.cuda.device_count() > 3:
        pytest.skip("this machine has a cuda:3")
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "out"
    code = run_cli(["classify", str(SVS), "--detections",
                    str(REPO / "sample_slides" / "cmu_small_region.candidates.csv"),
                    "--out-dir", str(out), "--device", device, "--engine", "torch", "--quiet"])
    errors = capsys.readouterr().err.splitlines()
    assert code == 2 and len(errors) == 1 and errors[0].startswith("wsi-atm: error:"), errors
    assert message in errors[0]
    assert not out.exists()


@pytest.mark.parametrize("command", ["classify", "batch"])
def test_an_out_dir_that_is_a_file_is_bad_input(command, tmp_path, capsys):
    # Regression: an internal error (FileExistsError), for classify only once the whole slide
    # had been classified
    in_the_way = tmp_path / "results"
    in_the_way.write_text("not a folder\n")
    detections = REPO / "sample_slides" / "cmu_small_region.candidates.csv"
    args = ([str(SVS), "--detections", str(detections)] if command == "classify"
            else [str(SVS.parent), "--detections", str(detections)])
    for out in (in_the_way, in_the_way / "deeper"):
        assert run_cli([command, *args, "--out-dir", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"wsi-atm: error: --out-dir {out}: {in_the_way} is a file, not a folder"]
    assert in_the_way.read_text() == "not a folder\n"


@pytest.mark.parametrize("command", ["classify", "batch"])
def test_an_out_dir_that_is_a_link_to_nothing_is_bad_input(command, tmp_path, capsys):
    # Regression: a link to a folder not yet made passed the check; mkdir then failed on it
    # (FileExistsError), an internal error, for classify once the slide had been classified;
    # a link to itself was an internal error (RuntimeError: symlink loop)
    link, loop = tmp_path / "results", tmp_path / "loop"
    link.symlink_to(tmp_path / "scratch" / "results")
    loop.symlink_to("loop")
    detections = REPO / "sample_slides" / "cmu_small_region.candidates.csv"
    args = ([str(SVS), "--detections", str(detections)] if command == "classify"
            else [str(SVS.parent), "--detections", str(detections)])
    for bad, out in ((link, link), (link, link / "deeper"), (loop, loop)):
        assert run_cli([command, *args, "--out-dir", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"wsi-atm: error: --out-dir {out}: {bad} "
                                                   "is a link to"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop", "results"]


@pytest.mark.parametrize(("slide_name", "det_name"), [("s.png", "d.csv"),
                                                      ("slide.svs", "slide.csv")])
def test_classify_never_writes_over_its_inputs(slide_name, det_name, tmp_path, capsys):
    # Regression: the review PNG replaced a slide named s.png, the CSV a detections file
    # slide.csv beside slide.svs, when --out-dir was their folder (batch refused; classify
    # did not)
    import shutil

    shutil.copyfile(SVS, tmp_path / slide_name)
    shutil.copyfile(REPO / "sample_slides" / "cmu_small_region.candidates.csv",
                    tmp_path / det_name)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert run_cli(["classify", str(tmp_path / slide_name), "--detections",
                    str(tmp_path / det_name), "--out-dir", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "would overwrite an input file" in err[0]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_classify_never_writes_over_its_inputs_through_a_link(tmp_path, capsys):
    # the same file under another name (a hard link) is the same input
    import shutil

    shutil.copyfile(REPO / "sample_slides" / "cmu_small_region.candidates.csv",
                    tmp_path / "det.csv")
    out = tmp_path / "out"
    out.mkdir()
    os.link(tmp_path / "det.csv", out / "cmu_small_region.csv")
    before = (tmp_path / "det.csv").read_bytes()
    assert run_cli(["classify", str(SVS), "--detections", str(tmp_path / "det.csv"),
                    "--out-dir", str(out), "--quiet"]) == 2
    assert "would overwrite an input file" in capsys.readouterr().err
    assert (tmp_path / "det.csv").read_bytes() == before


def test_an_out_dir_that_cannot_be_written_is_bad_input(tmp_path, monkeypatch, capsys):
    # Regression: a read-only mount gave an internal error once the slide was classified
    # (root ignores permission bits, so the read-only mount is simulated)
    from wsi_atm import options

    real = options.tempfile.mkdtemp

    def read_only(prefix: str, dir: Path) -> str:
        if Path(dir) == tmp_path:
            raise OSError(30, "Read-only file system")
        return real(prefix=prefix, dir=dir)

    monkeypatch.setattr(options.tempfile, "mkdtemp", read_only)
    out = tmp_path / "out"
    assert run_cli(["classify", str(SVS), "--detections",
                    str(REPO / "sample_slides" / "cmu_small_region.candidates.csv"),
                    "--out-dir", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"wsi-atm: error: --out-dir {out}: {tmp_path} cannot be written to"]
    assert not out.exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_an_out_dir_under_proc_is_bad_input_even_for_root(capsys):
    # Regression: as root, access() says /proc is writable; the run classified the slide and
    # failed making the folder at its end (exit 1)
    assert run_cli(["classify", str(SVS), "--detections",
                    str(REPO / "sample_slides" / "cmu_small_region.candidates.csv"),
                    "--out-dir", "/proc/wsi-atm-out", "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "wsi-atm: error: --out-dir /proc/wsi-atm-out: /proc cannot be written to"]


def test_another_users_outputs_in_a_sticky_folder_are_bad_input(tmp_path, monkeypatch, capsys):
    # Regression: in a shared folder with the sticky bit (/tmp, a results folder with +t) a
    # colleague's outputs of the same slide cannot be removed by anyone else: an internal
    # error (PermissionError, exit 1) once the model had loaded. This process is made to look
    # like another user (root may remove them, so the refusal is simulated)
    out = tmp_path / "shared"
    out.mkdir()
    out.chmod(0o1777)
    (out / "cmu_small_region.summary.json").write_text("{}")
    someone_else = out.stat().st_uid + 1
    monkeypatch.setattr(os, "geteuid", lambda: someone_else)
    assert run_cli(["classify", str(SVS), "--detections",
                    str(REPO / "sample_slides" / "cmu_small_region.candidates.csv"),
                    "--out-dir", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"wsi-atm: error: {out / 'cmu_small_region.summary.json'} belongs to another "
                   "user and this folder lets only its owner replace it (sticky bit): choose "
                   "another --out-dir"]
    assert (out / "cmu_small_region.summary.json").read_text() == "{}"


def test_a_name_that_is_not_utf8_is_bad_input_for_classify_and_one_slide_in_batch(
        tmp_path, capsys):
    # Regression: a slide named b"n\xffame.svs" crashed classify (UnicodeEncodeError in the
    # GeoJSON ids) after writing outputs, and crashed a whole batch at cohort.csv, every rerun
    import shutil

    detections = REPO / "sample_slides" / "cmu_small_region.candidates.csv"
    slides = tmp_path / "slides"
    slides.mkdir()
    odd = slides / os.fsdecode(b"n\xffame.svs")
    shutil.copyfile(SVS, odd)
    shutil.copyfile(detections, slides / os.fsdecode(b"n\xffame.csv"))
    shutil.copyfile(SVS, slides / "good.svs")
    shutil.copyfile(detections, slides / "good.csv")
    out = tmp_path / "out"
    assert run_cli(["classify", str(odd), "--detections", str(detections), "--out-dir",
                    str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "n\\xffame.svs: the name is not valid UTF-8" in err[0], err
    assert not out.exists()
    assert run_cli(["batch", str(slides), "--out-dir", str(out), "--quiet"]) == 1
    rows = (out / "cohort.csv").read_text(encoding="utf-8")
    assert "n\\xffame.svs" in rows and "good.svs" in rows
    assert (out / "good.summary.json").is_file() and (out / "report.html").is_file()


def test_a_bad_cpu_limit_is_reported_before_any_work(tmp_path, monkeypatch, capsys):
    # Regression: batch created its state folder, then failed on the first slide
    monkeypatch.setenv("WSI_ATM_CPUS", "two")
    slides = tmp_path / "slides"
    slides.mkdir()
    (slides / "a.svs").symlink_to(SVS)
    (slides / "a.csv").write_text("x,y\n500,400\n")
    assert run_cli(["batch", str(slides), "--out-dir", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["wsi-atm: error: $WSI_ATM_CPUS must be a whole number of CPUs, at least 1, "
                   "not 'two'"]
    assert not (tmp_path / "out").exists()
