"""``wsi-atm batch --workers 2``: a real dask scheduler and two worker processes on 127.0.0.1."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tests.batch_helpers import card_128, make_cohort
from tests.cli_helpers import run_cli


def rows_without_timing(out: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader((out / "cohort.csv").read_text().splitlines()))
    for r in rows:
        r.pop("elapsed_s")
    return rows


def features(path: Path) -> list[tuple]:
    geo = json.loads(path.read_text())
    return sorted((f["id"], tuple(f["geometry"]["coordinates"]),
                   f["properties"]["classification"]["name"],
                   round(f["properties"]["measurements"]["p_atypical"], 5))
                  for f in geo["features"])


def test_dask_cluster_matches_single_process(tmp_path):
    card = card_128(tmp_path / "card")
    slides = tmp_path / "slides"
    make_cohort(slides, n=3)
    common = ["--model", str(card), "--device", "cpu", "--quiet"]
    local, dask = tmp_path / "local", tmp_path / "dask"
    assert run_cli(["batch", str(slides), "--out-dir", str(local), *common]) == 0
    assert run_cli(["batch", str(slides), "--out-dir", str(dask), "--workers", "2",
                    *common]) == 0
    assert rows_without_timing(local) == rows_without_timing(dask)
    for i in range(3):
        assert features(local / f"case{i}.geojson") == features(dask / f"case{i}.geojson")
        assert (dask / f"case{i}.png").is_file()
