"""The run card predicts what training predicted: LoRA and linear probes without pretrained
weights, --input-size, and nothing of the source card's calibration carried over."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.cli_helpers import run_cli
from tests.train_helpers import TINY_CARD, TINY_VIT_CARD, write_synthetic_crops, write_tiny_card
from wsi_atm.infer import Classifier
from wsi_atm.models.card import load_card, read_card
from wsi_atm.train.data import load_dataset

ONE_FOLD = ["--folds", "2", "--epochs", "1", "--max-batches", "1", "--batch-size", "8",
            "--threads", "1", "--quiet", "--only-folds", "0"]


def max_dp(run: Path, data: Path) -> float:
    """The largest |P(atypical)| difference between fold 0's own predictions in training and
    its run card's, loaded as classify/evaluate load it, on the same crops."""
    card = load_card(run / "card.toml")
    crops = load_dataset(data, size=card.crop_size)
    result = json.loads((run / "fold_0" / "result.json").read_text())
    idx = [crops.names.index(n) for n in result["predictions"]["names"]]
    images = crops.images[idx].permute(0, 2, 3, 1).numpy()
    p = Classifier(card, device="cpu", engine="torch").predict_folds(images)[0]
    return float(np.abs(p - np.array(result["predictions"]["p_atypical"])).max())


@pytest.mark.parametrize("mode", ["lora", "linear-probe"])
def test_a_backbone_without_pretrained_weights_is_kept_with_the_adapters(tmp_path, mode):
    # Regression: only adapters / the head were saved and a fresh random backbone built at
    # load, so the card predicted differently from training (max |dp| 0.02-0.12)
    data = write_synthetic_crops(tmp_path / "data")
    card = write_tiny_card(tmp_path / "cards", TINY_VIT_CARD)
    out = tmp_path / "run"
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--mode", mode,
                    "--out", str(out), *ONE_FOLD, "--lr", "1e-2"]) == 0
    assert max_dp(out, data) < 1e-5


def test_input_size_is_the_run_cards_crop_size_and_calibration_is_not_copied(tmp_path):
    # Regression: --input-size trained on resized crops but the card kept the original size
    # (|dp| 0.026 in evaluate/classify); the source card's [fraction] was copied
    data = write_synthetic_crops(tmp_path / "data")
    card = write_tiny_card(tmp_path / "cards", TINY_CARD + '\n[fraction]\nmethod = "raw"\n')
    out = tmp_path / "run"
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--out", str(out),
                    *ONE_FOLD, "--input-size", "48"]) == 0
    trained = load_card(out / "card.toml")
    assert (trained.crop_size, trained.input_size) == (48, 48)
    assert trained.mpp == pytest.approx(0.25 * 32 / 48, abs=1e-6)  # the same field of view
    assert "fraction" not in read_card(out / "card.toml")
    assert max_dp(out, data) < 1e-5


def test_input_size_is_refused_for_a_card_that_sizes_its_crops(tmp_path, capsys):
    # Regression: the eval centre crop (96 of a 128-px card) padded 64-px crops with black,
    # while training's random crops saw no border
    data = write_synthetic_crops(tmp_path / "data")
    sized = TINY_CARD.replace("eval = []", 'eval = [{ op = "center_crop", size = 28 }]')
    card = write_tiny_card(tmp_path / "cards", sized)
    out = tmp_path / "run"
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--out", str(out),
                    *ONE_FOLD, "--input-size", "48"]) == 2
    assert "sizes its crops itself (center_crop" in capsys.readouterr().err
    assert not out.exists()
