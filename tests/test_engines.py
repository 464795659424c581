"""The ONNX Runtime engine: the default model's probabilities unchanged on real crops, its
graph a cache built once from the safetensors weights, and a fall-back to PyTorch whenever
the two disagree."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import REPO
from wsi_atm.classifiers import OnnxClassifier, load_classifier, onnx_only
from wsi_atm.crops import plan_crops, read_crop
from wsi_atm.engines import (
    MAX_DELTA_P,
    cuda_possible,
    graph_path,
    machine_key,
    network_key,
    read_record,
    record_path,
    write_record,
)
from wsi_atm.errors import ModelError, OptionError
from wsi_atm.infer import Classifier
from wsi_atm.models.card import load_card
from wsi_atm.models.registry import find_card
from wsi_atm.slides import open_slide


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WSI_ATM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def real_crops(request: pytest.FixtureRequest) -> np.ndarray:
    """128 real crops: AMi-Br's, atypical and normal, where the development data is beside
    the checkout; else cut from the bundled CMU SVS as classify cuts them, so the engine
    checks never skip."""
    try:
        amibr_dir: Path = request.getfixturevalue("amibr_dir")
    except pytest.skip.Exception:
        return svs_crops(request.getfixturevalue("cmu_svs"))
    files = sorted((amibr_dir / "Atypical").glob("*.png"))[:64]
    files += sorted((amibr_dir / "Normal").glob("*.png"))[:64]
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


def svs_crops(svs: Path, n: int = 128) -> np.ndarray:
    """The sample's demo candidates and random places in its tissue, cut at 0.25 µm/px."""
    table = np.loadtxt(REPO / "sample_slides" / "cmu_small_region.candidates.csv",
                       delimiter=",", skiprows=1, ndmin=2)
    rng = np.random.default_rng(0)
    with open_slide(svs) as slide:
        w, h = slide.dimensions
        xs = np.concatenate([table[:, 0], rng.uniform(0.2 * w, 0.8 * w, n - len(table))])
        ys = np.concatenate([table[:, 1], rng.uniform(0.2 * h, 0.8 * h, n - len(table))])
        plan = plan_crops(slide)
        return np.stack([read_crop(slide, x, y, plan)[0] for x, y in zip(xs, ys, strict=True)])


def test_real_crops_come_from_the_sample_slide_without_the_development_data() -> None:
    crops = svs_crops(REPO / "sample_slides" / "cmu_small_region.svs")
    assert crops.shape == (128, 128, 128, 3)
    spread = crops.std(axis=(1, 2, 3))
    assert spread[:60].min() > 5 and np.median(spread) > 20  # tissue, mostly; not blank


def test_onnx_gives_pytorchs_probabilities_on_real_crops(real_crops: np.ndarray,
                                                         cache: Path) -> None:
    card = find_card("wsi-atm-default")
    torch_p = Classifier(card, device="cpu", engine="torch").predict(real_crops)
    fast = Classifier(card, device="cpu", engine="onnx")
    assert fast.engine == "onnx"
    graph = graph_path(fast.weight_sha256[0], network_key(card))
    assert graph.is_file() and graph.parent.parent == cache
    onnx_p = fast.predict(real_crops)
    assert fast.engine == "onnx" and fast.max_delta_p is not None
    assert np.abs(onnx_p - torch_p).max() <= MAX_DELTA_P
    assert np.array_equal(onnx_p >= card.threshold, torch_p >= card.threshold)
    # the graph is a cache: a second classifier reuses it
    before = graph.stat().st_mtime_ns
    again = Classifier(card, device="cpu", engine="onnx")
    assert graph.stat().st_mtime_ns == before
    assert np.array_equal(again.predict(real_crops), onnx_p)
    # auto picks one of the two by speed; either way the probabilities hold
    auto = Classifier(card, device="cpu", engine="auto")
    assert auto.engine in ("torch", "onnx")
    assert np.abs(auto.predict(real_crops) - torch_p).max() <= MAX_DELTA_P


def test_flat_crops_give_the_same_probabilities_on_both_engines(cache: Path) -> None:
    # Regression: Reinhard amplified a flat crop's float rounding into noise that differed
    # between the engines (a black crop: |dp| 0.25), so one blank crop in the first batch
    # dropped the graph for good and every later run loaded torch
    card = find_card("wsi-atm-default")
    crops = np.zeros((6, 128, 128, 3), np.uint8)
    crops[1], crops[2], crops[3], crops[4] = 255, 128, (200, 120, 180), 30
    crops[5] = 200
    crops[5, 60, 60] = 201
    torch_p = Classifier(card, device="cpu", engine="torch").predict(crops)
    fast = Classifier(card, device="cpu", engine="onnx")
    assert np.abs(fast.predict(crops) - torch_p).max() <= MAX_DELTA_P
    assert fast.engine == "onnx"


def test_a_graph_that_disagrees_falls_back_to_pytorch(real_crops: np.ndarray,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    card = find_card("wsi-atm-default")
    torch_p = Classifier(card, device="cpu", engine="torch").predict(real_crops)
    bad = Classifier(card, device="cpu", engine="onnx")
    good = bad.graph_runners[0]
    bad.graph_runners = [lambda x: good(x) + 0.5]  # type: ignore[list-item]  # logits shifted
    with caplog.at_level(logging.WARNING):
        got = bad.predict(real_crops)
    assert bad.engine == "torch" and "differs from PyTorch" in caplog.text
    assert np.allclose(got, torch_p, atol=1e-6)
    # the failure is remembered: auto does not export and fail again on the next run
    graph = graph_path(bad.weight_sha256[0], network_key(card))
    record = read_record(graph)
    assert not graph.exists() and record is not None and record.failed
    assert Classifier(card, device="cpu", engine="auto").engine == "torch" and not graph.exists()
    # asked for explicitly, the graph is rebuilt and checked afresh
    again = Classifier(card, device="cpu", engine="onnx")
    assert again.engine == "onnx" and graph.exists() and read_record(graph) is None


@pytest.mark.parametrize("fault", ["nan", "error"])
def test_a_graph_that_fails_falls_back_and_is_dropped(real_crops: np.ndarray, fault: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    # Regression: NaN passed the |dp| check (nan > 1e-3 is False), and a runtime error of
    # ONNX Runtime ended the run instead of falling back.
    card = find_card("wsi-atm-default")
    torch_p = Classifier(card, device="cpu", engine="torch").predict(real_crops[:40])
    bad = Classifier(card, device="cpu", engine="onnx")
    graph = graph_path(bad.weight_sha256[0], network_key(card))
    assert graph.is_file()

    def broken(x: np.ndarray) -> np.ndarray:
        if fault == "error":
            raise RuntimeError("ORT kernel failed")
        return np.full(len(x), np.nan, dtype=np.float32)

    bad.graph_runners = [broken]  # type: ignore[list-item]
    with caplog.at_level(logging.WARNING):
        got = bad.predict(real_crops[:40])
    assert bad.engine == "torch" and np.allclose(got, torch_p, atol=1e-6)
    record = read_record(graph)  # dropped; its record remembers the failure
    assert not graph.exists() and record is not None and record.failed


def test_engine_choice_is_checked() -> None:
    card = find_card("wsi-atm-default")
    with pytest.raises(OptionError, match="--engine"):
        Classifier(card, device="cpu", engine="tensorrt")
    with pytest.raises(OptionError, match="--compile"):
        Classifier(card, device="cpu", engine="onnx", compile=True)
    if not torch.cuda.is_available():
        return
    with pytest.raises(OptionError, match="CPU"):
        Classifier(card, device="cuda", engine="onnx")


# ------------------------------------------------------------------ the torch-free fast path
def _checked(card, crops: np.ndarray) -> Path:
    """Build the default's graph and check it on real crops, as a first run does."""
    first = Classifier(card, device="cpu", engine="onnx")
    first.predict(crops[:64])
    assert first.engine == "onnx"
    return graph_path(first.weight_sha256[0], network_key(card))


def test_a_checked_graph_runs_without_torch(real_crops: np.ndarray, cache: Path) -> None:
    card = find_card("wsi-atm-default")
    assert isinstance(load_classifier(card, device="cpu", engine="onnx"), Classifier)  # unchecked
    graph = _checked(card, real_crops)
    record = read_record(graph)
    assert record is not None and record.trusted(tta=False) and record.checked_crops == 64
    assert not record.trusted(tta=True)  # TTA flips before the transform: checked apart
    fast = load_classifier(card, device="cpu", engine="onnx")
    assert isinstance(fast, OnnxClassifier) and fast.engine == "onnx"
    torch_clf = Classifier(card, device="cpu", engine="torch")
    assert np.abs(fast.predict(real_crops) - torch_clf.predict(real_crops)).max() <= MAX_DELTA_P
    # test-time augmentation: the same 8 views as PyTorch's, on the uint8 crops; trusted only
    # after a TTA run was checked
    assert isinstance(load_classifier(card, device="cpu", engine="onnx", tta=True), Classifier)
    Classifier(card, device="cpu", engine="onnx", tta=True).predict(real_crops[:32])
    tta_fast = load_classifier(card, device="cpu", engine="onnx", tta=True)
    tta_torch = Classifier(card, device="cpu", engine="torch", tta=True)
    assert isinstance(tta_fast, OnnxClassifier)
    assert np.abs(tta_fast.predict(real_crops[:32]) - tta_torch.predict(real_crops[:32])).max() \
        <= MAX_DELTA_P


def test_a_cache_written_under_umask_000_is_still_trusted(real_crops: np.ndarray,
                                                         cache: Path) -> None:
    # Regression: under a umask of 000 the graph and record were written writable by all, so
    # the torch-free path never trusted wsi-atm's own cache again (every run imported torch)
    card = find_card("wsi-atm-default")
    old = os.umask(0)
    try:
        graph = _checked(card, real_crops)
        record = read_record(graph)
        assert record is not None
        write_record(graph, record)
    finally:
        os.umask(old)
    for path in (graph, record_path(graph)):
        assert not path.stat().st_mode & 0o002, path
    assert onnx_only(card, device="cpu", batch_size=None, tta=False, compile=False,
                     engine="onnx", threads=2) is not None


def test_auto_takes_the_graph_only_where_it_was_the_faster(real_crops: np.ndarray,
                                                           cache: Path) -> None:
    card = find_card("wsi-atm-default")
    graph = _checked(card, real_crops)
    # checked, but never timed on this machine: PyTorch's classifier probes and records
    assert isinstance(load_classifier(card, device="cpu", engine="auto", threads=2), Classifier)
    machine = machine_key(2, card.batch_size)
    record = read_record(graph)
    assert record is not None and machine in record.probes
    for onnx_s, fast in ((0.5, True), (0.99, False)):
        record.probes[machine] = {"torch_s": 1.0, "onnx_s": onnx_s}
        write_record(graph, record)
        got = load_classifier(card, device="cpu", engine="auto", threads=2)
        assert isinstance(got, OnnxClassifier) is fast
        # a different thread count is a different machine as far as speed goes
        assert isinstance(load_classifier(card, device="cpu", engine="auto", threads=1),
                          Classifier)
    # --engine torch and --compile never take it
    assert isinstance(load_classifier(card, device="cpu", engine="torch"), Classifier)


def test_only_a_trustworthy_record_skips_pytorch(real_crops: np.ndarray, cache: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    card = find_card("wsi-atm-default")
    graph = _checked(card, real_crops)
    good = read_record(graph)
    assert good is not None
    args = dict(device="cpu", batch_size=None, tta=False, compile=False, engine="onnx",
                threads=2)
    assert onnx_only(card, **args) is not None
    for change in ({"onnxruntime": "0.0.1"}, {"max_delta_p": 0.01}, {"max_delta_p": None},
                   {"checked_crops": 8}):
        write_record(graph, dataclasses.replace(good, **change))
        assert onnx_only(card, **args) is None, change
    for junk in ("{not json", "[1, 2]", '{"version": 2, "onnxruntime": "x", "probes": [1]}'):
        record_path(graph).write_text(junk)
        assert onnx_only(card, **args) is None, junk
    write_record(graph, good)
    assert onnx_only(card, **args) is not None
    # Regression: a graph and record another user could have written (a shared cache) were
    # trusted without torch; now such a graph is checked against PyTorch again
    for path in (graph, record_path(graph)):
        mode = path.stat().st_mode
        path.chmod(mode | 0o002)
        assert onnx_only(card, **args) is None, path
        path.chmod(mode)
    if os.geteuid() == 0:  # root's files are trusted by all: give the graph another owner
        os.chown(graph, 12345, -1)
        assert onnx_only(card, **args) is None
        os.chown(graph, 0, -1)
    else:  # or be someone else
        with monkeypatch.context() as other_user:
            other_user.setattr("os.geteuid", lambda: os.getuid() + 1)
            assert onnx_only(card, **args) is None
    assert onnx_only(card, **args) is not None
    # --device auto is the CPU only where no NVIDIA driver can be present
    monkeypatch.setattr("wsi_atm.classifiers.cuda_possible", lambda: True)
    assert onnx_only(card, **{**args, "device": "auto"}) is None
    assert onnx_only(card, **{**args, "device": "cuda"}) is None




def test_a_record_with_fields_of_the_wrong_type_is_checked_again(real_crops: np.ndarray,
                                                                 cache: Path) -> None:
    # Regression: a record that is JSON but holds a field of the wrong type ("checked_crops":
    # null) was an internal error (TypeError in GraphRecord.trusted) on every run
    card = find_card("wsi-atm-default")
    graph = _checked(card, real_crops)
    data = json.loads(record_path(graph).read_text())
    for change in ({"checked_crops": None}, {"max_delta_p": "0.0"}, {"max_delta_p_tta": "x"},
                   {"checked_crops_tta": 40.5}, {"graph_sha256": 5}, {"checked_crops": True}):
        record_path(graph).write_text(json.dumps({**data, **change}))
        assert read_record(graph) is None, change
    record_path(graph).write_text(json.dumps({**data, "checked_crops": None}))
    assert isinstance(load_classifier(card, device="cpu", engine="auto"), Classifier)
    clf = load_classifier(card, device="cpu", engine="onnx")
    assert isinstance(clf, Classifier)  # checked against PyTorch again, not trusted
    torch_p = Classifier(card, device="cpu", engine="torch").predict(real_crops[:32])
    assert np.abs(clf.predict(real_crops[:32]) - torch_p).max() <= MAX_DELTA_P
    assert read_record(graph) is not None  # the check wrote a sound record again


@pytest.fixture
def read_only_cache(cache: Path) -> Iterator[Path]:
    """The cache with an ``onnx`` folder that cannot be written (read-only mount for root)."""
    (cache / "onnx").mkdir(parents=True)
    if os.geteuid() != 0:
        (cache / "onnx").chmod(0o555)
        yield cache
        (cache / "onnx").chmod(0o755)
        return
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(cache / "onnx")],
                           capture_output=True, check=False)
    if mount.returncode:
        pytest.skip("root cannot mount a read-only folder here")
    yield cache
    subprocess.run(["umount", str(cache / "onnx")], check=True)


def test_a_read_only_cache_does_not_export_in_vain(read_only_cache: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: auto on a read-only cache exported the graph (~7 s) on every run, then fell
    # back to PyTorch when it could not save it; --engine onnx paid the same before its error
    exports: list[object] = []
    real_export = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: exports.append(1)
                        or real_export(*a, **k))
    card = find_card("wsi-atm-default")
    assert Classifier(card, device="cpu", engine="auto").engine == "torch"
    with pytest.raises(ModelError, match="no ONNX Runtime graph"):
        Classifier(card, device="cpu", engine="onnx")
    assert exports == [] and not any((read_only_cache / "onnx").iterdir())


CHECK_CLASSIFY = """
import sys
from wsi_atm.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    assert not exc.code, exc.code
print("torch" in sys.modules, "timm" in sys.modules, "scipy.signal" in sys.modules,
      "tiffslide" in sys.modules, file=sys.stderr)
"""


def test_classify_with_checked_graphs_imports_no_torch(real_crops: np.ndarray, cache: Path,
                                                       cmu_svs: Path, tmp_path: Path) -> None:
    """Start-up is part of every run: with checked graphs, classify imports neither torch nor
    timm, nor scipy.signal (~0.7 s) nor tiffslide (~0.2 s) for a slide OpenSlide reads whole."""
    card = find_card("wsi-atm-default")
    _checked(card, real_crops)
    det = tmp_path / "d.csv"
    det.write_text("x,y\n500,400\n900,700\n1500,1200\n")
    env = {**os.environ, "WSI_ATM_CACHE": str(cache), "WSI_ATM_ENGINE": "onnx"}
    proc = subprocess.run(
        [sys.executable, "-c", CHECK_CLASSIFY, "classify", str(cmu_svs), "--detections",
         str(det), "--out-dir", str(tmp_path / "out"), "--device", "cpu", "--quiet"],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.stderr.strip().splitlines()[-1] == "False False False False", proc.stderr
    summary = json.loads(next((tmp_path / "out").glob("*.summary.json")).read_text())
    assert summary["model"]["engine"] == "onnx"
    assert summary["counts"]["classified"] == 3


def test_batch_with_checked_graphs_imports_no_torch(real_crops: np.ndarray, cache: Path,
                                                    cmu_svs: Path, tmp_path: Path) -> None:
    # Regression: batch resolved --device (auto or cpu) through torch for its completion
    # records, importing torch, timm and torchvision (3-6 s, ~0.7 GB) even where every network
    # then ran in ONNX Runtime.
    card = find_card("wsi-atm-default")
    _checked(card, real_crops)
    slides = tmp_path / "slides"
    slides.mkdir()
    (slides / "a.svs").symlink_to(cmu_svs)
    (slides / "a.csv").write_text("x,y\n500,400\n900,700\n1500,1200\n")
    env = {**os.environ, "WSI_ATM_CACHE": str(cache), "WSI_ATM_ENGINE": "onnx"}
    for device in ("cpu", "auto") if not cuda_possible() else ("cpu",):
        out = tmp_path / f"out-{device}"
        proc = subprocess.run(
            [sys.executable, "-c", CHECK_CLASSIFY, "batch", str(slides), "--out-dir", str(out),
             "--device", device, "--quiet"],
            capture_output=True, text=True, timeout=300, env=env)
        assert proc.stderr.strip().splitlines()[-1].startswith("False False"), proc.stderr
        record = json.loads((out / ".wsi-atm" / "a.done.json").read_text())
        assert (record["device"], record["precision"]) == ("cpu", "float32")
        summary = json.loads((out / "a.summary.json").read_text())
        assert (summary["model"]["engine"], summary["model"]["precision"]) == ("onnx", "float32")
        assert summary["counts"]["classified"] == 3


def test_a_cache_that_cannot_be_written_never_fails_the_run(real_crops: np.ndarray, cache: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    # The graph is cached, but its record cannot be written (read-only or full cache shared by
    # a cluster's workers): the check and the probe still run, the run goes on.
    card = find_card("wsi-atm-default")
    Classifier(card, device="cpu", engine="onnx")  # builds the graph

    def refuse(path: object) -> None:
        raise PermissionError(13, "read-only file system")

    monkeypatch.setattr("wsi_atm.engines.atomic_path", refuse)
    torch_p = Classifier(card, device="cpu", engine="torch").predict(real_crops[:32])
    with caplog.at_level(logging.WARNING):
        auto = load_classifier(card, device="cpu", engine="auto")
        got = auto.predict(real_crops[:32]) if isinstance(auto, Classifier) else None
        fast = Classifier(card, device="cpu", engine="onnx")
        assert np.abs(fast.predict(real_crops[:32]) - torch_p).max() <= MAX_DELTA_P
    assert got is not None and np.abs(got - torch_p).max() <= MAX_DELTA_P
    assert "cannot write" in caplog.text


def test_a_damaged_cached_graph_is_rebuilt(real_crops: np.ndarray, cache: Path) -> None:
    card = find_card("wsi-atm-default")
    graph = _checked(card, real_crops)
    graph.write_bytes(b"not an onnx graph")  # a damaged cache (its record still says checked)
    clf = load_classifier(card, device="cpu", engine="onnx")
    assert isinstance(clf, Classifier) and clf.engine == "onnx"  # rebuilt by the torch path
    torch_p = Classifier(card, device="cpu", engine="torch").predict(real_crops[:32])
    assert np.abs(clf.predict(real_crops[:32]) - torch_p).max() <= MAX_DELTA_P
    assert isinstance(load_classifier(card, device="cpu", engine="onnx"), OnnxClassifier)


@pytest.mark.parametrize("engine", ["onnx", "auto"])
def test_a_damaged_graph_not_yet_trusted_is_rebuilt(real_crops: np.ndarray, cache: Path,
                                                    engine: str) -> None:
    # Regression: a damaged graph without a trusted record (none yet, or checked on fewer
    # than 32 crops) was loaded as it was on every run: --engine onnx failed with exit 2 and
    # auto fell back to PyTorch, run after run, until the user found and deleted the file
    card = find_card("wsi-atm-default")
    graph = _checked(card, real_crops)
    graph.write_bytes(graph.read_bytes()[: 1 << 20])  # cut short
    record_path(graph).unlink()
    clf = Classifier(card, device="cpu", engine=engine)
    assert clf.engine == "onnx" or engine == "auto"
    assert graph.stat().st_size > 1 << 20  # rebuilt in full
    torch_p = Classifier(card, device="cpu", engine="torch").predict(real_crops[:32])
    assert np.abs(Classifier(card, device="cpu", engine="onnx").predict(real_crops[:32])
                  - torch_p).max() <= MAX_DELTA_P


def test_a_well_formed_graph_other_than_the_checked_one_is_not_trusted(
        real_crops: np.ndarray, cache: Path) -> None:
    # Regression: the record held nothing tied to the graph's contents, so a graph with one
    # weight negated (its record untouched) ran torch-free and flipped 54 of 90 calls
    import onnx
    from onnx import numpy_helper

    card = find_card("wsi-atm-default")
    graph = _checked(card, real_crops)
    record = read_record(graph)
    assert record is not None and len(record.graph_sha256) == 64
    model = onnx.load(str(graph))
    largest = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    largest.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(largest), largest.name))
    onnx.save(model, str(graph))
    args = dict(device="cpu", batch_size=None, tta=False, compile=False, engine="onnx",
                threads=2)
    assert onnx_only(card, **args) is None  # dropped: the torch path rebuilds and checks it
    assert not graph.exists()
    clf = load_classifier(card, device="cpu", engine="onnx")
    torch_p = Classifier(card, device="cpu", engine="torch").predict(real_crops[:32])
    assert np.abs(clf.predict(real_crops[:32]) - torch_p).max() <= MAX_DELTA_P


@pytest.mark.parametrize(("env", "argv", "expected"), [
    ("onnx", [], None),  # the environment's: the classifier applies it to CPUs only
    ("onnx", ["--engine", "onnx"], "onnx"),
    (None, ["--engine", "torch"], "torch"),
    (None, [], None),
])
def test_the_environments_engine_is_left_to_the_classifier(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str | None, argv: list[str],
        expected: str | None) -> None:
    # Regression: click turned WSI_ATM_ENGINE=onnx into an explicit --engine onnx, so a GPU
    # machine sharing a cluster's environment refused to classify ("runs on the CPU")
    from tests.cli_helpers import run_cli

    if env:
        monkeypatch.setenv("WSI_ATM_ENGINE", env)
    else:
        monkeypatch.delenv("WSI_ATM_ENGINE", raising=False)
    asked: list[str | None] = []

    def capture(card: object, **kwargs: object) -> object:
        asked.append(kwargs["engine"])  # type: ignore[arg-type]
        raise KeyboardInterrupt

    monkeypatch.setattr("wsi_atm.classifiers.load_classifier", capture)
    repo = Path(__file__).resolve().parents[1] / "sample_slides"
    code = run_cli(["classify", str(repo / "cmu_small_region.svs"), "--detections",
                    str(repo / "cmu_small_region.candidates.csv"), "--out-dir",
                    str(tmp_path / "out"), "--quiet", *argv])
    assert code == 130 and asked == [expected]


def test_ctrl_c_while_onnxruntime_initialises_is_not_taken_for_a_damaged_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: onnxruntime's module init turned the KeyboardInterrupt raised inside it into
    # ImportError('initialization failed'); the cached graph was dropped and the run went on
    import builtins
    import signal

    from wsi_atm.engines import OnnxNet

    real_import = builtins.__import__

    def ort_like_import(name: str, *args: object, **kwargs: object) -> object:
        if name == "onnxruntime":  # what its C++ init does with a pending Ctrl-C
            try:
                signal.raise_signal(signal.SIGINT)
                sum(range(1000))
            except KeyboardInterrupt:
                raise ImportError("initialization failed") from None
        return real_import(name, *args, **kwargs)

    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        monkeypatch.setattr(builtins, "__import__", ort_like_import)
        with pytest.raises(KeyboardInterrupt):
            OnnxNet(tmp_path / "graph.onnx", 1)
    finally:
        signal.signal(signal.SIGINT, saved)


def test_onnx_runtime_failing_to_import_keeps_the_cached_graph(
        real_crops: np.ndarray, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression (review): the rebuild of a damaged graph caught ONNX Runtime's own import
    # failure too, deleted a good graph and re-exported it on every run before falling back
    from wsi_atm import graph_export, infer

    card = find_card("wsi-atm-default")
    graph = _checked(card, real_crops)
    before = graph.stat().st_ino, graph.stat().st_mtime_ns
    exported: list[Path] = []

    def broken(path: Path, threads: int) -> None:
        raise ImportError("libonnxruntime.so: cannot open shared object file")

    monkeypatch.setattr(infer, "OnnxNet", broken)
    monkeypatch.setattr(graph_export, "export_graph", lambda *a: exported.append(a[-1]))
    assert Classifier(card, device="cpu", engine="auto").engine == "torch"
    assert exported == [] and (graph.stat().st_ino, graph.stat().st_mtime_ns) == before


def test_building_a_cards_graphs_is_said_once(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    # Regression: a card of two fold models said "building its ONNX Runtime graph once" twice
    from tests.test_infer import make_trained_card

    card = load_card(make_trained_card(tmp_path / "card", folds=2))
    with caplog.at_level(logging.WARNING, logger="wsi_atm"):
        Classifier(card, device="cpu", engine="onnx")
    said = [r.getMessage() for r in caplog.records if "building its" in r.getMessage()]
    assert said == [f"tiny-test: building its 2 ONNX Runtime graphs (one per fold model) once "
                    f"(cached in {tmp_path / 'cache' / 'onnx'})"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="wsi_atm"):
        Classifier(card, device="cpu", engine="onnx")  # cached now: nothing to say
    assert not [r for r in caplog.records if "building its" in r.getMessage()]
