"""``wsi-atm batch --scheduler``: a real dask scheduler and two worker processes on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.batch_helpers import card_128, cohort_rows, features, make_cohort, write_candidates
from tests.cli_helpers import run_cli

distributed = pytest.importorskip("dask.distributed")


def rows_without_timing(out: Path) -> list[dict[str, str]]:
    rows = cohort_rows(out)
    for r in rows:
        r.pop("elapsed_s")
    return rows


def model_loads() -> int:
    from wsi_atm.batch import run

    return int(run._RESIDENT["loads"])


def test_dask_cluster_matches_single_process(tmp_path):
    card = card_128(tmp_path / "card")
    slides = tmp_path / "slides"
    make_cohort(slides, n=4)
    (slides / "broken.svs").write_bytes(b"not a slide")
    write_candidates(slides / "broken.csv", 2)
    common = ["--model", str(card), "--device", "cpu", "--quiet"]
    local, dask = tmp_path / "local", tmp_path / "dask"
    assert run_cli(["batch", str(slides), "--out-dir", str(local), *common]) == 1
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        assert run_cli(["batch", str(slides), "--out-dir", str(dask), "--scheduler",
                        cluster.scheduler_address, *common]) == 1
        loads = client.run(model_loads)
    assert sorted(loads.values()) == [1, 1]  # each worker process loaded the model once
    rows = rows_without_timing(dask)
    assert rows == rows_without_timing(local)
    assert [r["status"] for r in rows] == ["failed", "ok", "ok", "ok", "ok"]
    for i in range(4):
        assert features(local / f"case{i}.geojson") == features(dask / f"case{i}.geojson")
        summary = json.loads((dask / f"case{i}.summary.json").read_text())
        assert summary["counts"] == json.loads(
            (local / f"case{i}.summary.json").read_text())["counts"]
        assert (dask / f"case{i}.png").is_file()
        assert (dask / ".wsi-atm" / f"case{i}.done.json").is_file()
    # The completion records are the same, so a local rerun skips what dask did.
    assert run_cli(["batch", str(slides), "--out-dir", str(dask), *common]) == 1
    assert [r["status"] for r in cohort_rows(dask)] == ["failed"] + ["skipped"] * 4


def test_workers_option_starts_a_local_cluster(tmp_path, monkeypatch):
    card = card_128(tmp_path / "card")
    slides = tmp_path / "slides"
    make_cohort(slides, n=1)
    out = tmp_path / "out"
    # Regression: the client reopened every slide to draw its review picture after a worker
    # had read it. Workers are spawned processes; this only stops the client from opening.
    from wsi_atm import pipeline
    from wsi_atm import slides as slides_pkg
    from wsi_atm.batch import run

    def no_open(*args, **kwargs):
        raise AssertionError("the dask client opened a slide")

    monkeypatch.setattr(pipeline, "open_slide", no_open)
    monkeypatch.setattr(slides_pkg, "open_slide", no_open)
    monkeypatch.setattr(run, "open_slide", no_open, raising=False)  # where it was imported
    assert run_cli(["batch", str(slides), "--out-dir", str(out), "--workers", "1",
                    "--model", str(card), "--device", "cpu", "--quiet"]) == 0
    assert [r["status"] for r in cohort_rows(out)] == ["ok"]
    assert (out / "case0.geojson").is_file()
    with open(out / "case0.png", "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def _die_once(settings: object) -> None:
    """A model load that kills its worker process the first time (as the OOM killer would)."""
    import os

    marker = Path(os.environ["WSI_ATM_TEST_DIE_ONCE"])
    if not marker.exists():
        marker.touch()
        os._exit(1)


def test_a_worker_lost_while_loading_the_model_does_not_hang_the_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: the preload task was pinned to its worker (allow_other_workers=False); a
    # worker killed during the load never came back under that address, so gather waited forever
    import threading

    from wsi_atm.batch import run

    monkeypatch.setenv("WSI_ATM_TEST_DIE_ONCE", str(tmp_path / "died"))
    monkeypatch.setattr(run, "_load_resident", _die_once)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        client.wait_for_workers(2)
        done = threading.Event()
        thread = threading.Thread(target=lambda: (run._preload(client, None), done.set()),
                                  daemon=True)
        thread.start()
        thread.join(90)
        assert (tmp_path / "died").exists()
        assert done.is_set(), "the batch hung waiting for a worker that died loading the model"
