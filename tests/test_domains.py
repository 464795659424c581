"""Leave-one-group-out validation: the AMi-Br domain table, groups, fold plans, small real runs."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts.make_domain_table import domain_rows
from tests.cli_helpers import run_cli
from tests.train_helpers import write_synthetic_crops, write_tiny_card
from wsi_atm.errors import BadInputError, OptionError
from wsi_atm.models.card import load_card
from wsi_atm.train.config import TrainConfig
from wsi_atm.train.data import load_dataset
from wsi_atm.train.domains import bundled_table, crop_groups
from wsi_atm.train.protocol import plan_folds


def _split_rows(amibr: Path) -> list[dict[str, str]]:
    with open(amibr / "amibr_train_split.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_bundled_table_gives_the_four_domains_with_their_crop_counts(amibr_dir):
    with open(bundled_table(), newline="") as fh:
        scanner = {r["slide"]: r["scanner"] for r in csv.DictReader(fh)}
    counts = Counter(scanner[r["slide"]] for r in _split_rows(amibr_dir))
    assert counts == {"Aperio CS2": 509, "Hamamatsu S360": 425, "Hamamatsu XR": 358,
                      "TUPAC16": 1602}


def test_bundled_table_is_what_the_script_derives_from_midog_metadata(amibr_dir, shared_data):
    xval = shared_data / "midogpp" / "datasets_xvalidation.csv"
    derived = domain_rows(amibr_dir / "amibr_train_split.csv", xval)
    with open(bundled_table(), newline="") as fh:
        committed = [tuple(r.values()) for r in csv.DictReader(fh)]
    assert committed == [tuple(r) for r in derived]
    # TUPAC16 names are not MIDOG numbers: "01_stitched1.tif" must not become MIDOG slide 1.
    assert all(s == "TUPAC16" for name, _, s in derived if "stitched" in name)


def _subset(amibr: Path, dest: Path, per_cell: int = 6, size: int = 32) -> Path:
    """Real crops from each (scanner, class) cell, with their CSV rows."""
    with open(bundled_table(), newline="") as fh:
        scanner = {r["slide"]: r["scanner"] for r in csv.DictReader(fh)}
    rows, chosen, seen = _split_rows(amibr), [], Counter()
    for r in rows:
        cell = (scanner[r["slide"]], r["final_label"])
        if seen[cell] < per_cell:
            seen[cell] += 1
            chosen.append(r)
    for r in chosen:
        (dest / r["final_label"]).mkdir(parents=True, exist_ok=True)
        with Image.open(amibr / r["final_label"] / r["dataset_uid"]) as im:
            im.convert("RGB").resize((size, size)).save(dest / r["final_label"] / r["dataset_uid"])
    with open(dest / "amibr_train_split.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(chosen)
    return dest


def test_leave_scanner_out_plan_holds_out_each_scanner_once(amibr_dir, tmp_path):
    data = load_dataset(_subset(amibr_dir, tmp_path / "d"), size=32)
    cfg = TrainConfig(cv="leave-group-out", group="scanner", selection="inner", inner_splits=3)
    plans = plan_folds(data, cfg)
    scanners = crop_groups(data, "scanner")
    assert [p.held_out for p in plans] == sorted(set(scanners.tolist()))
    covered = np.concatenate([p.report for p in plans])
    assert sorted(covered.tolist()) == list(range(len(data)))  # every crop held out exactly once
    for p in plans:
        assert set(scanners[p.report]) == {p.held_out}
        assert p.held_out not in set(scanners[p.fit]) | set(scanners[p.select])
        # The inner split (epoch and threshold choice) never splits a slide either.
        assert not set(data.groups[p.fit]) & set(data.groups[p.select])


def test_groups_file_and_its_errors(tmp_path):
    data_dir = write_synthetic_crops(tmp_path / "data", slides=4)
    data = load_dataset(data_dir, size=32)
    table = tmp_path / "groups.csv"
    table.write_text("slide,lab\ns0.tiff,A\ns1.tiff,A\ns2.tiff,B\ns3.tiff,C\n")
    groups = crop_groups(data, "lab", table)
    lab = {"s0.tiff": "A", "s1.tiff": "A", "s2.tiff": "B", "s3.tiff": "C"}
    assert groups.tolist() == [lab[s] for s in data.groups]
    with pytest.raises(OptionError, match="no such column"):
        crop_groups(data, "hospital", table)
    table.write_text("slide,lab\ns0.tiff,A\n")
    with pytest.raises(BadInputError, match="3 slides of the dataset have no lab"):
        crop_groups(data, "lab", table)


def test_unknown_group_exits_2_naming_the_column(tmp_path, capsys):
    data = write_synthetic_crops(tmp_path / "data")
    card = write_tiny_card(tmp_path / "cards")
    code = run_cli(["train", "--data", str(data), "--model", str(card), "--out",
                    str(tmp_path / "run"), "--cv", "leave-group-out", "--group", "hospital",
                    "--epochs", "1", "--quiet"])
    assert code == 2
    assert "hospital" in capsys.readouterr().err


def test_leave_dataset_out_run_reports_each_held_out_dataset(amibr_dir, tmp_path, capsys):
    data = _subset(amibr_dir, tmp_path / "d", per_cell=5)
    card = write_tiny_card(tmp_path / "cards")
    out = tmp_path / "run"
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--out", str(out),
                    "--cv", "leave-group-out", "--group", "dataset", "--soft-labels",
                    "--epochs", "1", "--batch-size", "8", "--threads", "1", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cv"] == {"kind": "leave-group-out", "group": "dataset"}
    assert set(summary["held_out"]) == {"MIDOG21", "TUPAC16"}
    assert summary["held_out"]["TUPAC16"]["n"] == 10  # 5 per class
    with open(out / "folds.csv", newline="") as fh:
        held = {r["name"]: r["held_out"] for r in csv.DictReader(fh)}
    assert set(held.values()) == {"MIDOG21", "TUPAC16"}
    trained = load_card(out / "card.toml")
    assert trained.metrics["cv"] == "leave-group-out"
    assert set(trained.metrics["held_out"]) == {"MIDOG21", "TUPAC16"}
    assert trained.training["soft_labels"] is True
    # Carried through `results` (one column per held-out group) and `evaluate --group`.
    assert run_cli(["results", str(out)]) == 0
    table = capsys.readouterr().out
    assert "leave-dataset-out mean" in table and "held-out TUPAC16" in table
    report_path = tmp_path / "eval.json"
    assert run_cli(["evaluate", "--data", str(data), "--model", str(out / "card.toml"),
                    "--group", "dataset", "--json", "--quiet"]) == 0
    report_path.write_text(capsys.readouterr().out)
    report = json.loads(report_path.read_text())
    assert report["group"] == "dataset"
    assert {g: m["n"] for g, m in report["by_group"].items()} == {
        g: m["n"] for g, m in summary["held_out"].items()}
    assert run_cli(["results", str(report_path)]) == 0
    assert f"{data.name}: MIDOG21" in capsys.readouterr().out


def test_cv_none_trains_one_model_on_every_crop_to_the_last_epoch(tmp_path):
    data = write_synthetic_crops(tmp_path / "data")
    card = write_tiny_card(tmp_path / "cards")
    out = tmp_path / "run"
    assert run_cli(["train", "--data", str(data), "--model", str(card), "--out", str(out),
                    "--cv", "none", "--epochs", "2", "--batch-size", "8", "--threads", "1",
                    "--selection", "inner", "--threshold", "inner", "--quiet"]) == 0
    assert sorted(p.name for p in out.glob("fold_*")) == ["fold_0"]
    result = json.loads((out / "fold_0" / "result.json").read_text())
    assert result["held_out"] == "all data" and result["best_epoch"] == 2
    assert result["predictions"]["names"] == []
    assert load_card(out / "card.toml").weights[0].file == "fold_0/best.safetensors"


def test_a_groups_table_that_cannot_be_read_is_bad_input(tmp_path):
    # Regression: not UTF-8, or a cell over csv's field limit, was an internal error (exit 1);
    # a row with a missing cell gave its slide the group None, silently
    data = load_dataset(write_synthetic_crops(tmp_path / "data", slides=4), size=32)
    table = tmp_path / "groups.csv"
    table.write_bytes(b"slide,lab\ns0.tiff,Caf\xe9\n")
    with pytest.raises(BadInputError, match="is not UTF-8 text"):
        crop_groups(data, "lab", table)
    table.write_text("slide,lab\ns0.tiff,A\ns1.tiff," + "A" * 200_000 + "\n")
    with pytest.raises(BadInputError, match="line 3: unreadable table"):
        crop_groups(data, "lab", table)
    table.write_text("slide,lab\ns0.tiff,A\n\ns1.tiff\ns2.tiff,B\ns3.tiff,C\n")
    with pytest.raises(BadInputError, match="line 4 has fewer cells than the header"):
        crop_groups(data, "lab", table)
    table.write_text("\ufeffslide,lab\ns0.tiff,A\ns1.tiff,A\ns2.tiff,B\ns3.tiff,C\n")
    assert set(crop_groups(data, "lab", table).tolist()) == {"A", "B", "C"}
    # the split CSV's reader: a filled cell past the header (a decimal comma, an unquoted
    # comma in a name) shifted nothing silently but is refused, as in the split CSV
    table.write_text("slide,lab\ns0.tiff,A\ns1.tiff,A,x\ns2.tiff,B\ns3.tiff,C\n")
    with pytest.raises(BadInputError, match="line 3 has more cells than the header"):
        crop_groups(data, "lab", table)
    table.write_text("slide\tlab\ns0.tiff\tA\ns1.tiff\tA\ns2.tiff\tB\ns3.tiff\tC\n")
    assert set(crop_groups(data, "lab", table).tolist()) == {"A", "B", "C"}


def test_a_groups_table_naming_a_slide_twice_or_no_slide_is_refused(tmp_path):
    # Regression: a slide listed again under another group silently took the last row's group;
    # a table of a header alone was said to lack its 'slide' column
    data = load_dataset(write_synthetic_crops(tmp_path / "data", slides=4), size=32)
    table = tmp_path / "groups.csv"
    table.write_text("slide,lab\ns0.tiff,A\ns1.tiff,A\ns2.tiff,B\ns3.tiff,C\ns0.tiff,B\n")
    with pytest.raises(BadInputError, match=r"slide 's0\.tiff' is listed twice with different"):
        crop_groups(data, "lab", table)
    table.write_text("slide,lab\ns0.tiff,A\ns1.tiff,A\ns2.tiff,B\ns3.tiff,C\ns0.tiff,A\n")
    assert set(crop_groups(data, "lab", table).tolist()) == {"A", "B", "C"}
    table.write_text("slide,lab\n")
    with pytest.raises(BadInputError, match=r"groups\.csv: no rows below the header"):
        crop_groups(data, "lab", table)
