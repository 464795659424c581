"""Which folds a run trains and how each chooses its epoch: linear probes follow the planned
folds, learn soft labels when asked, and a one-class selection set takes the last epoch."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.cli_helpers import run_cli
from tests.train_helpers import TINY_VIT_CARD, write_synthetic_crops, write_tiny_card
from wsi_atm.models.card import load_card
from wsi_atm.train.metrics import best_threshold

QUICK = ["--epochs", "1", "--max-batches", "1", "--batch-size", "8", "--threads", "1",
         "--quiet"]


@pytest.mark.parametrize(("slides", "cv", "expected"), [
    (3, ["--cv", "leave-group-out", "--group", "slide"], 3),  # was IndexError after work
    (8, ["--cv", "leave-group-out", "--group", "slide"], 8),  # trained only 5
    (8, ["--cv", "none"], 1),  # was IndexError
])
def test_a_linear_probe_trains_the_planned_folds(tmp_path, slides, cv, expected):
    data = write_synthetic_crops(tmp_path / "data", slides=slides)
    card = write_tiny_card(tmp_path / "cards", TINY_VIT_CARD)
    out = tmp_path / "run"
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--mode",
                    "linear-probe", "--out", str(out), *cv, *QUICK]) == 0
    assert len(load_card(out / "card.toml").weights) == expected


def _with_votes(root: Path) -> Path:
    path = root / "amibr_train_split.csv"
    rows = list(csv.DictReader(path.read_text().splitlines()))
    votes = ("expert1_atypical", "expert2_atypical", "expert3_atypical")
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[*rows[0], *votes])
        w.writeheader()
        for r in rows:  # atypical by two votes of three
            w.writerow(r | dict(zip(votes, ["True", "True", "False"] if r["final_label"]
                                    == "Atypical" else ["False"] * 3, strict=True)))
    return root


def test_a_linear_probe_learns_soft_labels(tmp_path, monkeypatch):
    # Regression: --soft-labels was silently ignored in linear-probe mode
    from wsi_atm.train import protocol

    data = _with_votes(write_synthetic_crops(tmp_path / "data"))
    card = write_tiny_card(tmp_path / "cards", TINY_VIT_CARD)
    seen: set[float] = set()
    target = protocol.FoldTrainer.target

    def spy(self: protocol.FoldTrainer, idx: np.ndarray) -> object:
        y = target(self, idx)
        seen.update(round(float(v), 4) for v in y)
        return y

    monkeypatch.setattr(protocol.FoldTrainer, "target", spy)
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--mode",
                    "linear-probe", "--out", str(tmp_path / "run"), "--soft-labels",
                    "--folds", "2", "--only-folds", "0", *QUICK, "--batch-size", "32"]) == 0
    assert round(2 / 3, 4) in seen and 1.0 not in seen


def test_a_one_class_selection_set_takes_the_last_epoch(tmp_path, synthetic_card):
    # Regression: balanced accuracy was NaN every epoch, no checkpoint was kept, and the run
    # crashed at its end ("weight file not found")
    data = write_synthetic_crops(tmp_path / "data", n_atypical=4, n_normal=12, slides=6)
    out = tmp_path / "run"
    # slide s4.tiff holds only normal mitoses: fold 4 of leave-one-slide-out
    assert run_cli(["train", "--data", str(data), "--model", str(synthetic_card), "--out",
                    str(out), "--cv", "leave-group-out", "--group", "slide", "--only-folds",
                    "4", *QUICK, "--epochs", "2"]) == 0
    result = json.loads((out / "fold_4" / "result.json").read_text())
    assert result["best_epoch"] == 2 and result["threshold"] == 0.5
    assert "only normal mitoses" in result["note"] and "last epoch" in result["note"]
    assert load_card(out / "card.toml").weights


def test_the_best_threshold_of_one_class_is_the_default():
    # Regression: IndexError
    p = np.array([0.1, 0.4, 0.7])
    assert best_threshold(np.zeros(3, dtype=int), p) == 0.5
    assert best_threshold(np.ones(3, dtype=int), p, default=0.3) == 0.3


@pytest.fixture()
def synthetic_card(tmp_path: Path) -> Path:
    return write_tiny_card(tmp_path / "cards")


def test_a_held_out_group_of_one_class_leaves_the_run_means_defined() -> None:
    # Regression: one leave-group-out fold holding out only normal mitoses (sensitivity,
    # balanced accuracy and AUROC undefined) made every fold mean NaN ("balanced accuracy
    # nan ± nan") and summary.json carried bare NaN tokens, which strict JSON readers refuse
    from wsi_atm.train.results import fold_result, summarise

    both = fold_result(0, "A", 1, 1, 0.5, ["a", "b", "c", "d"], np.array([1, 1, 0, 0]),
                       np.array([0.9, 0.2, 0.1, 0.3]))
    normal_only = fold_result(1, "C", 1, 1, 0.5, ["e", "f"], np.array([0, 0]),
                              np.array([0.1, 0.7]))
    summary = summarise([both, normal_only], "leave-group-out", "site")
    assert summary.fold_stats["balanced_accuracy"].mean == pytest.approx(0.75)
    assert summary.fold_stats["specificity"].mean == pytest.approx(0.75)  # (1.0 + 0.5) / 2
    assert summary.fold_stats["auroc"].mean == pytest.approx(0.75)  # fold A only
    text = json.dumps(summary.to_json(), allow_nan=False)
    assert json.loads(text)["held_out"]["C"]["balanced_accuracy"] is None


def test_folds_trained_by_separate_only_folds_runs_are_summarised_together(
        tmp_path: Path, synthetic_card: Path) -> None:
    # Regression: each --only-folds process wrote summary.json and card.toml of its own folds
    # alone: the last one to finish left a run that looked complete (results' "cross-validation"
    # cell, a card of one fold model) but held half the folds
    from wsi_atm.train.report import results_table

    data = write_synthetic_crops(tmp_path / "data")
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--model", str(synthetic_card), "--out", str(out),
            "--folds", "2", *QUICK]
    assert run_cli([*args, "--only-folds", "0"]) == 0
    assert json.loads((out / "summary.json").read_text())["folds_planned"] == 2
    assert "(1 of 2 folds)" in results_table([out])
    assert run_cli([*args, "--only-folds", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["folds"]) == 2 and summary["out_of_fold"]["n"] == 32
    assert [w.fold for w in load_card(out / "card.toml").weights] == [0, 1]
    assert "of 2 folds" not in results_table([out])


def test_a_last_batch_of_one_crop_joins_the_one_before(tmp_path: Path,
                                                     synthetic_card: Path) -> None:
    # Regression: 32-px crops reach a 1×1 feature map, where batch norm cannot train on one
    # crop: a fit set one more than a multiple of the batch size was an internal error
    from wsi_atm.train.protocol import batch_bounds

    assert batch_bounds(16, 5) == [(0, 5), (5, 10), (10, 16)]
    assert batch_bounds(15, 5) == [(0, 5), (5, 10), (10, 15)]
    assert batch_bounds(1, 5) == [(0, 1)]
    data = write_synthetic_crops(tmp_path / "data")
    assert run_cli(["train", "--data", str(data), "--model", str(synthetic_card), "--out",
                    str(tmp_path / "run"), "--folds", "2", "--only-folds", "0", "--epochs", "1",
                    "--batch-size", "5", "--threads", "1", "--quiet", "--no-pretrained"]) == 0


def test_folds_of_crops_without_slides_are_not_recorded_as_grouped_by_slide(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    # Regression: class folders without the split CSV were split crop by crop (crops of one
    # slide in training and validation) without a word, and the run's summary and card said
    # its folds were grouped by slide, as the paper's
    card = write_tiny_card(tmp_path / "cards")
    runs = {}
    for layout in ("amibr", "folders"):
        data = write_synthetic_crops(tmp_path / layout)
        if layout == "folders":
            (data / "amibr_train_split.csv").unlink()
        runs[layout] = tmp_path / f"run-{layout}"
        caplog.clear()
        assert run_cli(["train", "--data", str(data), "--model", str(card), "--out",
                        str(runs[layout]), "--folds", "2", *QUICK]) == 0
        warned = "folds split crops, not slides" in caplog.text
        assert warned == (layout == "folders")
    for layout, group in (("amibr", "slide"), ("folders", "crop")):
        assert json.loads((runs[layout] / "summary.json").read_text())["cv"]["group"] == group
        assert load_card(runs[layout] / "card.toml").metrics["cv_group"] == group
    capsys.readouterr()
    assert run_cli(["results", str(runs["amibr"]), str(runs["folders"])]) == 0
    table = capsys.readouterr().out
    assert "cross-validation by crop, not slide" in table
    assert "| cross-validation (BA / AUROC) |" in table
