"""Training requests refused in one line (exit 2) before the run folder is written: config
files of the wrong types, --only-folds beyond the planned folds, resuming on other data."""

from __future__ import annotations

import json

import pytest

from tests.cli_helpers import run_cli
from tests.train_helpers import TINY_CARD, write_synthetic_crops, write_tiny_card
from wsi_atm.errors import OptionError
from wsi_atm.train.config import TrainConfig

QUICK = ["--epochs", "1", "--max-batches", "1", "--batch-size", "8", "--threads", "1",
         "--quiet"]


def _one_error(capsys: pytest.CaptureFixture[str], *words: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wsi-atm: error:"), err
    assert all(w in err[0] for w in words), err


@pytest.mark.parametrize(("name", "text", "words"), [
    # Regression: accepted as true; a TypeError; a ValueError after config.json was written;
    # an AttributeError
    ("c.toml", 'pretrained = "false"', ("pretrained must be true or false", "'false'")),
    ("c.json", '{"epochs": "5"}', ("epochs must be a whole number", "'5'")),
    ("c.json", '{"folds": 2.5}', ("folds must be a whole number", "2.5")),
    ("c.json", '{"epochs": true}', ("epochs must be a whole number",)),
    ("c.json", '{"lr": "fast"}', ("lr must be a number",)),
    ("c.json", '{"optimizer": 3}', ("optimizer must be a string",)),
    ("c.json", '["epochs", 5]', ("must be a table", "list")),
])
def test_a_config_file_value_of_the_wrong_type_is_refused(tmp_path, capsys, name, text, words):
    data, card = write_synthetic_crops(tmp_path / "data"), write_tiny_card(tmp_path / "cards")
    config, out = tmp_path / name, tmp_path / "run"
    config.write_text(text)
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--config",
                    str(config), "--out", str(out)]) == 2
    _one_error(capsys, *words)
    assert not out.exists()


def test_numbers_of_a_config_file_are_kept_as_their_fields_types():
    cfg = TrainConfig.from_mapping({"lr": 1, "pretrained": False})
    assert isinstance(cfg.lr, float) and cfg.pretrained is False


@pytest.mark.parametrize(("slides", "only", "cv"), [
    (3, "4", ["--cv", "leave-group-out", "--group", "slide"]),  # was an internal ValueError
    (8, "1", ["--cv", "none"]),
])
def test_only_folds_beyond_the_planned_folds_is_refused_before_writing(tmp_path, capsys,
                                                                       slides, only, cv):
    data = write_synthetic_crops(tmp_path / "data", slides=slides)
    card, out = write_tiny_card(tmp_path / "cards"), tmp_path / "run"
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--out", str(out),
                    *cv, "--only-folds", only, *QUICK]) == 2
    _one_error(capsys, f"--only-folds {only}")
    assert not out.exists()


def test_only_folds_under_leave_group_out_is_not_bounded_by_folds():
    # Regression: with 8 groups --only-folds 6 was refused as not below --folds (5)
    assert TrainConfig(cv="leave-group-out", only_folds="6").fold_list == [6]
    with pytest.raises(OptionError, match="below --folds"):
        TrainConfig(only_folds="6")


def test_resuming_on_other_data_or_another_card_is_refused(tmp_path, capsys):
    # Regression: the old fold models were reused (or a multi-line internal error)
    data = write_synthetic_crops(tmp_path / "data")
    card = write_tiny_card(tmp_path / "cards")
    out = tmp_path / "run"
    args = ["--out", str(out), "--folds", "2", "--only-folds", "0", *QUICK]
    assert run_cli(["train", "--data", str(data), "--model", str(card), *args]) == 0
    key = json.loads((out / "run_key.json").read_text())
    other = write_synthetic_crops(tmp_path / "other", seed=1)
    capsys.readouterr()
    assert run_cli(["train", "--data", str(other), "--model", str(card), *args]) == 2
    _one_error(capsys, str(out), "other data")
    changed = write_tiny_card(tmp_path / "cards2", TINY_CARD.replace(
        '{ op = "rot90" }', '{ op = "vflip" }'))
    assert run_cli(["train", "--data", str(data), "--model", str(changed), *args]) == 2
    _one_error(capsys, "other card")
    assert json.loads((out / "run_key.json").read_text()) == key
    # the same data and card resume (here: the finished fold is kept)
    assert run_cli(["train", "--data", str(data), "--model", str(card), *args]) == 0


class _Evil:
    def __reduce__(self) -> tuple[object, ...]:
        return (print, ("unpickled",))


def test_a_damaged_or_foreign_resume_file_is_refused_in_one_line(tmp_path, capsys):
    # Regression: internal errors (exit 1), for state.pt several lines that advised
    # `weights_only=False`, i.e. unpickling the file
    import pickle
    import shutil

    import torch

    data, card = write_synthetic_crops(tmp_path / "data"), write_tiny_card(tmp_path / "cards")
    done = tmp_path / "done"
    args = ["train", "--data", str(data), "--model", str(card), "--folds", "2", *QUICK]
    assert run_cli([*args, "--out", str(done), "--only-folds", "0"]) == 0

    def garbage(path):
        path.write_text("not json")

    damages = [
        ("run_key.json", garbage, "unreadable"),
        ("run_key.json", lambda p: p.write_text("[1]"), "not a run key"),
        ("fold_0/state.pt", garbage, "not a plain tensor checkpoint"),
        ("fold_0/state.pt", lambda p: p.write_bytes(pickle.dumps(_Evil())),
         "not a plain tensor checkpoint"),
        ("fold_0/state.pt", lambda p: torch.save({"net": {}}, p), "cannot resume"),
        ("fold_0/result.json", garbage, "not a fold result"),
    ]
    for i, (name, damage, words) in enumerate(damages):
        out = tmp_path / f"run{i}"
        shutil.copytree(done, out)
        damage(out / name)
        capsys.readouterr()
        only = "1" if name.endswith("result.json") else "0"  # fold 0 then read as finished
        assert run_cli([*args, "--out", str(out), "--only-folds", only]) == 2, name
        _one_error(capsys, str(out / name), words)


@pytest.mark.parametrize("mode", ["lora", "linear-probe"])
def test_a_mode_the_card_has_no_preprocessing_for_is_refused_before_writing(tmp_path, capsys,
                                                                            mode):
    # Regression: refused by the first fold after config.json was written, and the folder
    # then refused the corrected command as a run with a different configuration
    data, card = write_synthetic_crops(tmp_path / "data"), write_tiny_card(tmp_path / "cards")
    out = tmp_path / "run"
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--out", str(out),
                    "--mode", mode, *QUICK]) == 2
    _one_error(capsys, f"no preprocessing for mode '{mode}'")
    assert not out.exists()


def test_more_threads_than_usable_cpus_are_cut_to_them(monkeypatch, caplog):
    # Regression: --threads 100000 was accepted; OpenMP then killed the run ("libgomp: Out of
    # memory", exit 1) after the run folder was written
    import logging

    import wsi_atm.train.run as run
    from wsi_atm.train.config import TrainConfig

    monkeypatch.setattr(run, "usable_cpus", lambda: 2)
    with caplog.at_level(logging.WARNING):
        assert run.fit_threads(TrainConfig(threads=100_000)).threads == 2
    assert "--threads 100000: this process may use 2 CPUs; using 2" in caplog.text
    for asked in (0, 1, 2):  # 0 = all of them
        assert run.fit_threads(TrainConfig(threads=asked)).threads == asked


def test_the_largest_seed_plans_inner_splits(tmp_path):
    # Regression: --seed 4294967295 (the top of its range) with --selection inner was refused
    # as "cannot split 26 crops, 6 slides into 5 folds: Seed must be between 0 and 2**32 - 1"
    from wsi_atm.train.data import load_dataset
    from wsi_atm.train.protocol import plan_folds

    data = load_dataset(write_synthetic_crops(tmp_path / "data"), size=32)
    plans = plan_folds(data, TrainConfig(seed=2**32 - 1, selection="inner"))
    assert len(plans) == 5 and all(len(p.fit) and len(p.select) for p in plans)


def test_a_batch_of_one_crop_that_batch_norm_cannot_train_is_refused_before_writing(
        tmp_path, capsys):
    # Regression: --batch-size 1 on 32-px crops (a 1×1 feature map) was an internal error
    # (batch norm: "Expected more than 1 value per channel") after the run folder was written
    data, card = write_synthetic_crops(tmp_path / "data"), write_tiny_card(tmp_path / "cards")
    out = tmp_path / "run"
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--out", str(out),
                    *QUICK, "--batch-size", "1"]) == 2
    _one_error(capsys, "--batch-size 1", "--batch-size 2 or more")
    assert not out.exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_asked_for_where_there_is_none_is_refused_before_writing(tmp_path, capsys):
    # `train` had no --device: a foundation model's LoRA run could only ever train on the CPU
    data, card = write_synthetic_crops(tmp_path / "data"), write_tiny_card(tmp_path / "cards")
    out = tmp_path / "run"
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--out", str(out),
                    "--device", "cuda", *QUICK]) == 2
    _one_error(capsys, "--device cuda", "no CUDA device")
    assert not out.exists()
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--out", str(out),
                    "--device", "gpu", *QUICK]) == 2
    _one_error(capsys, "--device must be auto, cpu, cuda or cuda:N", "'gpu'")
    assert not out.exists()


def test_a_run_resumes_on_another_device(tmp_path):
    # where a run trains is not part of what it is (like --threads): a run begun on the CPU
    # resumes under --device auto, and its config.json keeps the protocol unchanged
    data, card = write_synthetic_crops(tmp_path / "data"), write_tiny_card(tmp_path / "cards")
    out = tmp_path / "run"
    base = ["train", "--data", str(data), "--model", str(card), "--out", str(out), *QUICK]
    assert run_cli([*base, "--device", "cpu", "--only-folds", "0"]) == 0
    assert json.loads((out / "config.json").read_text())["device"] == "cpu"
    assert run_cli([*base, "--device", "auto"]) == 0
    assert len(list(out.glob("fold_*/result.json"))) == TrainConfig().folds


def test_a_groups_table_without_its_grouping_is_refused(tmp_path, capsys):
    # Regression: `evaluate --groups T` without --group, and `train --groups T` under k-fold,
    # ignored the table without a word
    data = write_synthetic_crops(tmp_path / "data")
    card = write_tiny_card(tmp_path / "cards")
    table = tmp_path / "g.csv"
    table.write_text("slide,lab\ns0,A\n")
    assert run_cli(["evaluate", "--data", str(data), "--model", str(card), "--groups",
                    str(table), "--quiet"]) == 2
    _one_error(capsys, "--groups", "--group")
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--out",
                    str(tmp_path / "run"), "--groups", str(table), "--epochs", "1",
                    "--quiet"]) == 2
    _one_error(capsys, "--groups", "leave-group-out")
    assert not (tmp_path / "run").exists()
