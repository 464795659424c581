"""The ONNX Runtime engine: the default model's probabilities unchanged on real crops, its
graph a cache built once from the safetensors weights, and a fall-back to PyTorch whenever
the two disagree."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsi_atm.engines import MAX_DELTA_P, graph_path
from wsi_atm.errors import OptionError
from wsi_atm.infer import Classifier
from wsi_atm.models.registry import find_card


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WSI_ATM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def real_crops(amibr_dir: Path) -> np.ndarray:
    """128 real AMi-Br crops, atypical and normal."""
    files = sorted((amibr_dir / "Atypical").glob("*.png"))[:64]
    files += sorted((amibr_dir / "Normal").glob("*.png"))[:64]
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


def test_onnx_gives_pytorchs_probabilities_on_real_crops(real_crops: np.ndarray,
                                                         cache: Path) -> None:
    card = find_card("wsi-atm-default")
    torch_p = Classifier(card, device="cpu", engine="torch").predict(real_crops)
    fast = Classifier(card, device="cpu", engine="onnx")
    assert fast.engine == "onnx"
    graph = graph_path(fast.weight_sha256[0], 96, fast._network_key())
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


def test_a_graph_that_disagrees_falls_back_to_pytorch(real_crops: np.ndarray,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    card = find_card("wsi-atm-default")
    torch_p = Classifier(card, device="cpu", engine="torch").predict(real_crops)
    bad = Classifier(card, device="cpu", engine="onnx")
    good = bad.runners[0]
    bad.runners = [lambda x: good(x) + 0.5]  # a broken graph: logits shifted
    with caplog.at_level(logging.WARNING):
        got = bad.predict(real_crops)
    assert bad.engine == "torch" and "differs from PyTorch" in caplog.text
    assert np.allclose(got, torch_p, atol=1e-6)


@pytest.mark.parametrize("fault", ["nan", "error"])
def test_a_graph_that_fails_falls_back_and_is_dropped(real_crops: np.ndarray, fault: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    # Regression: NaN passed the |dp| check (nan > 1e-3 is False), and a runtime error of
    # ONNX Runtime ended the run instead of falling back.
    card = find_card("wsi-atm-default")
    torch_p = Classifier(card, device="cpu", engine="torch").predict(real_crops[:40])
    bad = Classifier(card, device="cpu", engine="onnx")
    graph = graph_path(bad.weight_sha256[0], 96, bad._network_key())
    assert graph.is_file()

    def broken(x: torch.Tensor) -> torch.Tensor:
        if fault == "error":
            raise RuntimeError("ORT kernel failed")
        return torch.full((x.shape[0],), float("nan"))

    bad.runners = [broken]
    with caplog.at_level(logging.WARNING):
        got = bad.predict(real_crops[:40])
    assert bad.engine == "torch" and np.allclose(got, torch_p, atol=1e-6)
    assert not graph.exists()  # rebuilt next time rather than trusted


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
