"""Shared fixtures: where the read-only development data lives, and skips when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Networks trained inside tests are new every run: exporting each one's ONNX Runtime graph
# would cost seconds a test. The suite runs PyTorch unless a test asks for an engine
# (tests/test_engines.py); subprocesses inherit this.
os.environ.setdefault("WSI_ATM_ENGINE", "torch")


def shared_data_dir() -> Path:
    """``../shared/data`` beside the checkout, or ``$WSI_ATM_SHARED_DATA``."""
    override = os.environ.get("WSI_ATM_SHARED_DATA")
    return Path(override) if override else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared development data not found at {path}")
    return path


@pytest.fixture(scope="session")
def midogpp_json(shared_data: Path) -> Path:
    path = shared_data / "midogpp" / "MIDOG++.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="session")
def amibr_dir(shared_data: Path) -> Path:
    path = shared_data / "amibr-train"
    if not (path / "amibr_train_split.csv").is_file():
        pytest.skip(f"AMi-Br training split not found at {path}")
    return path


@pytest.fixture(scope="session")
def cmu_svs() -> Path:
    """The real Aperio SVS bundled in sample_slides/ (committed, CC0)."""
    path = REPO / "sample_slides" / "cmu_small_region.svs"
    if not path.is_file():
        fallback = shared_data_dir() / "slides" / "cmu_small_region.svs"
        if not fallback.is_file():
            pytest.skip("cmu_small_region.svs not found")
        return fallback
    return path
