"""``wsi-atm train`` / ``evaluate`` / ``results``: small real runs through the CLI."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import StratifiedGroupKFold

from tests.cli_helpers import run_cli
from tests.train_helpers import copy_amibr_subset, write_synthetic_crops, write_tiny_card
from wsi_atm.models.card import load_card
from wsi_atm.models.weight_files import load_weights
from wsi_atm.train.config import TrainConfig
from wsi_atm.train.data import load_dataset
from wsi_atm.train.protocol import plan_folds

FAST = ["--folds", "2", "--epochs", "2", "--batch-size", "8", "--threads", "1", "--quiet"]


@pytest.fixture()
def synthetic(tmp_path: Path) -> tuple[Path, Path]:
    return write_synthetic_crops(tmp_path / "data"), write_tiny_card(tmp_path / "cards")


def test_train_writes_a_complete_run_dir_and_usable_card(synthetic, tmp_path):
    data, card = synthetic
    out = tmp_path / "run"
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--out", str(out),
                    *FAST, "--lr", "1e-3"]) == 0
    for name in ("config.json", "folds.csv", "summary.json", "card.toml"):
        assert (out / name).is_file(), name
    for k in (0, 1):
        lines = (out / f"fold_{k}" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(ln)["epoch"] for ln in lines] == [1, 2]
        assert set(load_weights(out / f"fold_{k}" / "best.safetensors"))
    trained = load_card(out / "card.toml")
    assert trained.status == "trained" and len(trained.weights) == 2
    assert all(len(w.sha256) == 64 for w in trained.weights)
    assert 0.0 <= trained.metrics["sensitivity"] <= 1.0
    assert trained.training["lr"] == pytest.approx(1e-3)


def test_evaluate_json_on_the_trained_card(synthetic, tmp_path, capsys):
    data, card = synthetic
    out = tmp_path / "run"
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--out", str(out),
                    *FAST, "--lr", "3e-3"]) == 0
    capsys.readouterr()
    assert run_cli(["evaluate", "--model", str(out / "card.toml"), "--data", str(data),
                    "--json", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 32 and report["n_atypical"] == 12
    assert len(report["folds"]) == 2
    for key in ("balanced_accuracy", "auroc", "ensemble", "folds", "n"):
        assert key in report
    assert 0.0 <= report["balanced_accuracy"] <= 1.0
    mean = np.mean([f["balanced_accuracy"] for f in report["folds"]])
    assert report["fold_balanced_accuracy"]["mean"] == pytest.approx(mean)
    assert run_cli(["results", str(out)]) == 0
    assert "cross-validation" in capsys.readouterr().out


def test_selection_inner_keeps_reported_fold_out_of_choices(synthetic):
    data, _ = synthetic
    ds = load_dataset(data, size=32)
    cfg = TrainConfig(folds=2, selection="inner", threshold="inner", inner_splits=3)
    for plan in plan_folds(ds, cfg):
        assert not set(plan.fit) & set(plan.report)
        assert not set(plan.select) & set(plan.report)
        assert not set(plan.fit) & set(plan.select)
        # Grouped by slide at both levels.
        assert not set(ds.groups[plan.select]) & set(ds.groups[plan.fit])
        assert not set(ds.groups[plan.report]) & set(ds.groups[plan.fit])


def test_fold_assignment_matches_sklearn_on_amibr_csv(amibr_dir):
    with open(amibr_dir / "amibr_train_split.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = np.array([r["final_label"] == "Atypical" for r in rows], dtype=int)
    groups = np.array([r["slide"] for r in rows])
    splitter = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=42)
    expected = list(splitter.split(np.zeros(len(rows)), labels, groups))
    from wsi_atm.train.folds import fold_splits

    got = fold_splits(labels, groups, 5, 42)
    for (tr_e, va_e), (tr_g, va_g) in zip(expected, got, strict=True):
        assert np.array_equal(va_e, va_g) and np.array_equal(tr_e, tr_g)
    assert len(rows) == 2894 and labels.sum() == 648


def test_real_amibr_subset_two_folds(amibr_dir, tmp_path):
    data = copy_amibr_subset(amibr_dir, tmp_path / "data")
    card = write_tiny_card(tmp_path / "cards")
    out = tmp_path / "run"
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--out", str(out),
                    *FAST]) == 0
    folds = list(csv.DictReader((out / "folds.csv").read_text().splitlines()))
    assert len(folds) == 32
    by_fold = {}
    for r in folds:
        by_fold.setdefault(r["fold"], set()).add(r["group"])
    assert not by_fold["0"] & by_fold["1"]  # no slide in both folds


def test_bad_config_and_data_exit_2(synthetic, tmp_path, capsys):
    data, card = synthetic
    assert run_cli(["train", "--data", str(tmp_path / "nope"), "--model", str(card)]) == 2
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--optimizer", "sgd",
                    "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and all(line.startswith("wsi-atm: error:") for line in err)


@pytest.mark.parametrize(("asked", "runs"), [(["--mode", "linear-probe"], "linear-probe"),
                                            ([], "lora")])
def test_an_explicit_mode_wins_over_the_config_file(synthetic, tmp_path, monkeypatch, asked,
                                                    runs):
    # Regression: the config file's mode overrode --mode, so the wrong mode was trained into a
    # folder named for the asked one
    from wsi_atm.train import run

    data, card = synthetic
    config = tmp_path / "cfg.toml"
    config.write_text('mode = "lora"\nepochs = 3\n')
    seen: dict[str, object] = {}

    def record(card: object, data: Path, out: Path, cfg: TrainConfig, quiet: bool) -> None:
        seen.update(mode=cfg.mode, epochs=cfg.epochs, out=out)
        raise SystemExit(0)

    monkeypatch.setattr(run, "train_run", record)
    monkeypatch.chdir(tmp_path)
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--config",
                    str(config), *asked]) == 0
    assert seen["mode"] == runs and seen["epochs"] == 3
    assert str(seen["out"]).endswith(f"-{runs}")


@pytest.mark.parametrize(("option", "value"), [
    ("--lr", "nan"), ("--lr", "-1"), ("--lr", "0"), ("--weight-decay", "nan"),
    ("--batch-size", "0"), ("--batch-size", "-5"), ("--seed", "-1"), ("--epochs", "0"),
    ("--only-folds", "zz"), ("--only-folds", "7"), ("--only-folds", "²"), ("--threads", "-1"),
    ("--input-size", "-1"), ("--plateau-factor", "5"), ("--ema", "2"), ("--ema", "nan"),
    ("--inner-splits", "0"), ("--max-batches", "-1"),
])
def test_a_bad_number_is_refused_before_the_run_folder_is_written(synthetic, tmp_path, capsys,
                                                                   option, value):
    # Regression: internal errors after config.json (a NaN in it) was written, so the
    # corrected command then failed on "a different configuration"; or silently accepted
    data, card = synthetic
    out = tmp_path / "run"
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--out", str(out),
                    option, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"wsi-atm: error: {option} must"), err
    assert not out.exists()


def _train_cmd(data: Path, card: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "wsi_atm", "train", "--data", str(data), "--model", str(card),
            "--out", str(out), "--folds", "2", "--epochs", "4", "--batch-size", "4",
            "--threads", "1", "--quiet", "--only-folds", "0"]


def test_killed_run_resumes_to_the_same_result(synthetic, tmp_path):
    data, card = synthetic
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_train_cmd(data, card, ref), check=True, capture_output=True)
    proc = subprocess.Popen(_train_cmd(data, card, killed), stderr=subprocess.PIPE)
    state = killed / "fold_0" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (state.is_file() and state.read_text().strip()):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(state.read_text().splitlines())
    assert done_before < 4, "the run finished before it could be killed"
    subprocess.run(_train_cmd(data, card, killed), check=True, capture_output=True)
    epochs = [json.loads(ln)["epoch"] for ln in state.read_text().splitlines()]
    assert epochs[-1] == 4 and sorted(set(epochs)) == [1, 2, 3, 4]
    a = load_weights(ref / "fold_0" / "best.safetensors")
    b = load_weights(killed / "fold_0" / "best.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert np.allclose(a[k].float().numpy(), b[k].float().numpy(), atol=1e-5), k


@pytest.mark.parametrize("mode", ["linear-probe", "lora"])
def test_linear_probe_and_lora_runs_with_a_tiny_vit(mode, tmp_path, capsys):
    from tests.train_helpers import TINY_VIT_CARD

    data = write_synthetic_crops(tmp_path / "data")
    card = write_tiny_card(tmp_path / "cards", TINY_VIT_CARD)
    out = tmp_path / "run"
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--mode", mode,
                    "--out", str(out), *FAST, "--lr", "1e-2"]) == 0
    weights = load_weights(out / "fold_0" / "best.safetensors")
    # The card has no pretrained weights: checkpoints hold the run's random backbone too
    trained_keys = {k for k in weights if not k.startswith("backbone.")} \
        if mode == "linear-probe" else {k for k in weights if "lora_" in k or "head" in k}
    assert trained_keys and set(weights) - trained_keys
    if mode == "linear-probe":
        # Features once per run; the trained part is the head.
        assert (out / "features.pt").is_file()
        assert trained_keys == {"head.weight", "head.bias"}
        assert weights["head.weight"].shape == (1, 64)
    else:
        from safetensors import safe_open

        with safe_open(str(out / "fold_0" / "best.safetensors"), "pt") as fh:
            assert fh.metadata()  # base model id/revision recorded
    capsys.readouterr()
    trained = out / "card.toml"
    assert load_card(trained).trained_mode == mode
    assert run_cli(["evaluate", "--model", str(trained), "--data", str(data), "--json",
                    "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["folds"]) == 2 and report["n"] == 32
