"""evaluate, results and train's output folder: bad input found first, every run shown, strict
JSON."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from tests.cli_helpers import run_cli
from tests.train_helpers import write_synthetic_crops, write_tiny_card
from wsi_atm.cli.evaluate_cmd import _nan_to_none
from wsi_atm.engines import precision_on
from wsi_atm.errors import OptionError
from wsi_atm.models.card import load_card
from wsi_atm.options import check_out_dir
from wsi_atm.train import evaluate as evaluate_module
from wsi_atm.train.data import load_dataset
from wsi_atm.train.report import results_table


def _run(folder: Path, card_text: str, kind: str, ba: float) -> Path:
    folder.mkdir(parents=True)
    (folder / "card.toml").write_text(card_text)
    stats = {"mean": ba, "std": 0.01}
    (folder / "summary.json").write_text(json.dumps(
        {"balanced_accuracy": stats, "auroc": stats, "cv": {"kind": kind}}))
    return folder


def test_results_keep_every_run_and_name_a_refit(tmp_path: Path) -> None:
    # Regression: two runs of one card shared a cell (the last replaced the other), and a
    # --cv none refit was labelled "cross-validation" with nan
    text = write_tiny_card(tmp_path / "c").read_text()
    a = _run(tmp_path / "k5", text, "kfold", 0.61)
    b = _run(tmp_path / "k5-again", text, "kfold", 0.72)
    refit = _run(tmp_path / "refit", text, "none", float("nan"))
    table = results_table([a, b, refit])
    assert "0.6100" in table and "0.7200" in table
    assert "[k5]" in table and "[k5-again]" in table
    assert "refit, no cross-validation" in table and "nan" not in table


def test_evaluate_refuses_a_set_of_one_class_before_loading_the_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_synthetic_crops(tmp_path / "d", n_atypical=0, n_normal=6)
    card = write_tiny_card(tmp_path / "c")  # untrained: loading it would fail differently
    assert run_cli(["evaluate", "--model", str(card), "--data", str(data), "--json"]) == 2
    assert "every crop is normal" in capsys.readouterr().err


def test_evaluate_json_is_strict() -> None:
    # Regression: a group of one class printed bare NaN, which strict JSON parsers reject
    report = {"by_group": {"g": {"auroc": float("nan"), "n": 3}}, "folds": [float("nan"), 0.5]}
    text = json.dumps(_nan_to_none(report), allow_nan=False)
    assert json.loads(text) == {"by_group": {"g": {"auroc": None, "n": 3}},
                                "folds": [None, 0.5]}


def test_crops_the_split_table_does_not_list_are_named(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    # Regression: evaluate reported n=120 of a folder of 210 crops without a word
    data = write_synthetic_crops(tmp_path / "d", n_atypical=4, n_normal=4)
    (data / "Normal" / "extra.png").write_bytes((data / "Normal" / "N0.png").read_bytes())
    with caplog.at_level(logging.WARNING, logger="wsi_atm.train"):
        assert len(load_dataset(data)) == 8
    assert "1 crops in the class folders are not in" in caplog.text


def test_an_output_folder_through_a_missing_one_is_checked_where_it_lands(
        tmp_path: Path) -> None:
    # Regression: "missing/../x" did not exist as written, so the check went on to x's parent
    # and passed what was really a file (or a read-only folder)
    (tmp_path / "afile").write_text("")
    with pytest.raises(OptionError, match="is a file"):
        check_out_dir(tmp_path / "missing" / ".." / "afile")


def test_train_refuses_a_file_as_out_and_a_huge_input_size(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Regression: --out FILE was an internal error (FileExistsError), --input-size 100000 a
    # silent death after a minute
    data = write_synthetic_crops(tmp_path / "d", n_atypical=2, n_normal=2)
    card = write_tiny_card(tmp_path / "c")
    (tmp_path / "run.csv").write_text("")
    base = ["train", "--data", str(data), "--model", str(card), "--quiet"]
    assert run_cli([*base, "--out", str(tmp_path / "run.csv")]) == 2
    assert "--out" in capsys.readouterr().err
    assert run_cli([*base, "--out", str(tmp_path / "r"), "--input-size", "100000"]) == 2
    assert "--input-size must be" in capsys.readouterr().err


def test_too_few_crops_for_the_folds_is_bad_input(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # Regression: an internal error from scikit-learn's splitter (n_splits > n_samples)
    data = write_synthetic_crops(tmp_path / "d", n_atypical=2, n_normal=2)
    card = write_tiny_card(tmp_path / "c")
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--quiet",
                    "--out", str(tmp_path / "r")]) == 2
    assert "cannot split 4 crops" in capsys.readouterr().err


def test_a_missing_weights_package_is_refused_before_the_run_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Regression: the refusal came after config.json, run_key.json and folds.csv were written,
    # and the retry it suggested (--no-pretrained) was then refused as another configuration
    from tests.train_helpers import TINY_CARD

    data = write_synthetic_crops(tmp_path / "d")
    text = TINY_CARD.replace('pretrained = "none"', 'pretrained = "package:no_such_pkg/w.pth"'
                             '\npretrained_sha256 = "' + "0" * 64 + '"')
    card = write_tiny_card(tmp_path / "c", text)
    out = tmp_path / "run"
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--out", str(out),
                    "--quiet", "--folds", "2", "--epochs", "1", "--max-batches", "1"]) == 2
    assert "no_such_pkg" in capsys.readouterr().err
    assert not out.exists()


def test_timm_failing_to_fetch_pretrained_weights_is_one_line(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Regression: offline, an ImageNet card's training ended in an internal error
    # (LocalEntryNotFoundError from the hub client timm calls)
    import timm

    from wsi_atm.errors import ModelError
    from wsi_atm.models.backbone import create_backbone
    from wsi_atm.models.card import load_card

    def offline(*args: object, **kwargs: object) -> object:
        if kwargs.get("pretrained"):
            raise OSError("We have no connection to the Internet\nand no cached file")
        return None

    monkeypatch.setattr(timm, "create_model", offline)
    card = load_card(write_tiny_card(tmp_path / "c"))
    with pytest.raises(ModelError, match="--no-pretrained") as excinfo:
        create_backbone(card, pretrained=True)
    assert "\n" not in str(excinfo.value)


def test_results_read_evaluate_json_with_a_group_of_one_class(tmp_path: Path) -> None:
    # Regression: evaluate --json --group writes null for a one-class group's balanced
    # accuracy and AUROC (strict JSON); results refused that file as malformed (exit 2)
    defined = {"balanced_accuracy": 0.8, "auroc": 0.9}
    one_class = {"balanced_accuracy": None, "auroc": None}
    report = {"model": "m", "data": "/d/test", "fold_balanced_accuracy": {"mean": 0.8, "std": 0},
              "fold_auroc": {"mean": 0.9, "std": 0}, "by_group": {"a.tiff": defined,
                                                                  "b.tiff": one_class}}
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(report, allow_nan=False))
    table = results_table([path])
    assert "0.8000±0.0000 / 0.9000±0.0000" in table
    assert "0.8000 / 0.9000" in table and "n/a / n/a" in table


def test_results_keep_runs_in_folders_of_one_name(tmp_path: Path) -> None:
    # Regression: exp1/run and exp2/run of one card were both labelled "[run]" and the last
    # silently replaced the other in the table
    text = write_tiny_card(tmp_path / "c").read_text()
    a = _run(tmp_path / "exp1" / "run", text, "kfold", 0.61)
    b = _run(tmp_path / "exp2" / "run", text, "kfold", 0.72)
    table = results_table([a, b])
    assert "0.6100" in table and "0.7200" in table
    assert f"[{a}]" in table and f"[{b}]" in table


def test_evaluate_scores_the_folds_in_float32(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: on a GPU, ViT and foundation cards were evaluated in bf16 autocast (the
    # classifier's "auto"), not in the float32 their folds were validated and benchmarked in
    asked: dict[str, object] = {}

    class FakeClassifier:
        batch_size = 8

        def __init__(self, card: object, **kwargs: object) -> None:
            asked.update(kwargs)
            self.precision = precision_on("cuda", "vit", str(kwargs.get("precision", "auto")))

        def predict_folds(self, crops: np.ndarray) -> np.ndarray:
            return np.full((2, len(crops)), 0.5)

    monkeypatch.setattr(evaluate_module, "Classifier", FakeClassifier)
    data = write_synthetic_crops(tmp_path / "d", n_atypical=3, n_normal=3)
    report = evaluate_module.evaluate(load_card(write_tiny_card(tmp_path / "c")), data,
                                      quiet=True)
    assert asked["precision"] == "float32"
    assert report["precision"] == "float32"
