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


def test_input_size_with_another_mode_that_sizes_its_crops_gives_a_card(tmp_path, capsys):
    # Regression: the run card kept the linear probe's centre crop to 32 px beside a model
    # size of 48, which the card schema refuses: the finished run ended in an internal error
    # (exit 1) and wrote no card
    data = write_synthetic_crops(tmp_path / "data")
    card = write_tiny_card(tmp_path / "cards", TINY_CARD + """
[preprocess.linear-probe]
eval = [{ op = "center_crop", size = 32 }]
""")
    out = tmp_path / "run"
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--out", str(out),
                    *ONE_FOLD, "--input-size", "48"]) == 0, capsys.readouterr().err
    trained = load_card(out / "card.toml")
    assert (trained.crop_size, trained.input_size) == (48, 48)
    assert set(trained.preprocess) == {"end-to-end"}
    assert max_dp(out, data) < 1e-5


def test_input_size_is_refused_for_a_card_that_sizes_its_crops(tmp_path, capsys):
    # Regression: the eval centre crop (96 of a 128-px card) padded 64-px crops with black,
    # while training's random crops saw no border
    data = write_synthetic_crops(tmp_path / "data")
    sized = TINY_CARD.replace("eval = []", 'eval = [{ op = "center_crop", size = 28 }]') \
        .replace("model_size = 32", "model_size = 28")
    card = write_tiny_card(tmp_path / "cards", sized)
    out = tmp_path / "run"
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--out", str(out),
                    *ONE_FOLD, "--input-size", "48"]) == 2
    assert "sizes its crops itself (center_crop" in capsys.readouterr().err
    assert not out.exists()


def test_a_cards_recipe_sets_its_modes_defaults_under_the_config_and_command_line(tmp_path):
    # Regression: Prov-GigaPath's linear probe, which the benchmark trained with Adam lr 1e-3
    # and weight decay 1e-4, was trained with the shared 5e-5 / 1e-5
    from wsi_atm.models.registry import find_card
    from wsi_atm.train.config import card_recipe

    gigapath = find_card("prov-gigapath")
    assert card_recipe(gigapath, "linear-probe") == {"lr": 1e-3, "weight_decay": 1e-4}
    assert card_recipe(gigapath, "lora") == {}
    assert card_recipe(find_card("uni"), "linear-probe") == {}
    data = write_synthetic_crops(tmp_path / "data")
    card = write_tiny_card(tmp_path / "cards", TINY_CARD + "\n[recipe.end-to-end]\n"
                           "lr = 0.002\nweight_decay = 0.0001\n")
    runs = {"recipe": [], "command line": ["--lr", "0.0003"]}
    for name, extra in runs.items():
        assert run_cli(["train", "--data", str(data), "--model", str(card), "--out",
                        str(tmp_path / name), *ONE_FOLD, *extra]) == 0
    recipe = json.loads((tmp_path / "recipe" / "config.json").read_text())
    assert (recipe["lr"], recipe["weight_decay"]) == (0.002, 0.0001)
    assert read_card(tmp_path / "recipe" / "card.toml")["training"]["lr"] == 0.002
    told = json.loads((tmp_path / "command line" / "config.json").read_text())
    assert (told["lr"], told["weight_decay"]) == (0.0003, 0.0001)


def test_a_recipe_of_the_wrong_type_is_refused(tmp_path, capsys):
    data = write_synthetic_crops(tmp_path / "data")
    card = write_tiny_card(tmp_path / "cards", TINY_CARD + '\n[recipe.end-to-end]\nlr = "fast"\n')
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--out",
                    str(tmp_path / "run"), *ONE_FOLD]) == 2
    assert "[recipe.end-to-end]" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_closing_line_counts_only_the_folds_its_means_are_over(tmp_path, capsys):
    # Regression: "balanced accuracy ... over 6 folds" where 2 left-out slides held only
    # normal mitoses and the means were those of the other 4
    data = write_synthetic_crops(tmp_path / "data", n_atypical=4, n_normal=12, slides=6)
    card = write_tiny_card(tmp_path / "cards")
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--out",
                    str(tmp_path / "run"), "--cv", "leave-group-out", "--group", "slide",
                    *ONE_FOLD[2:-2]]) == 0
    line = capsys.readouterr().out
    assert "over the 4 of 6 folds that hold out both classes;" in line
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    defined = [f["balanced_accuracy"] for f in summary["folds"] if f["balanced_accuracy"]
               is not None]
    assert len(defined) == 4
    assert f"balanced accuracy {np.mean(defined):.4f} ± {np.std(defined):.4f}," in line
