"""``wsi-atm datasets download`` against archives built here, served by file:// and http://."""

from __future__ import annotations

import csv
import functools
import http.server
import io
import json
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli_helpers import run_cli
from wsi_atm import datasets
from wsi_atm.datasets import DatasetSpec
from wsi_atm.train.data import load_dataset

TOP = f"AMi-Br_Benchmark-{datasets.UPSTREAM_COMMIT}"
SMALL = {
    "ami-br": DatasetSpec("ami-br", "AMi-Br", {"Atypical": 4, "Normal": 6},
                          split_csv="amibr_train_split.csv", split_rows=7),
    "atnorm-br": DatasetSpec("atnorm-br", "AtNorM-Br", {"Atypical": 2, "Normal": 3}),
    "atnorm-md": DatasetSpec("atnorm-md", "AtNorM-MD", {"Atypical": 2, "Normal": 2},
                             extra_files=("AtNorM-MD_expert_votes.csv",)),
}


def png(seed: int, size: int = 128, mode: str = "RGB") -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def make_archive(path: Path, bad_png: str | None = None, drop: int = 0) -> Path:
    """A zip laid out like the upstream repository at the pinned commit (small counts)."""
    rows = []
    with zipfile.ZipFile(path, "w") as z:
        seed = 0
        for spec in SMALL.values():
            for cls, n in spec.counts.items():
                for i in range(n - (drop if spec.name == "atnorm-br" else 0)):
                    name = f"{spec.folder.split('-')[0]}_{cls[0]}{i}.png"
                    member = f"{TOP}/data/{spec.folder}/{cls}/{name}"
                    z.writestr(member, png(seed, 100 if member == bad_png else 128))
                    seed += 1
                    if spec.name == "ami-br" and len(rows) < 7 and (cls == "Normal" or i < 2):
                        rows.append({"slide": f"s{i % 3}.tiff", "dataset": "MIDOG21", "uid": i,
                                     "final_label": cls, "dataset_uid": name, "x": 1, "y": 2})
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        z.writestr(f"{TOP}/amibr_train_split.csv", buf.getvalue())
        z.writestr(f"{TOP}/data/AtNorM-MD_expert_votes.csv", "Filename,Majority\n1.png,AMF\n")
        z.writestr(f"{TOP}/README.md", "benchmark")
    return path


@pytest.fixture(autouse=True)
def small_registry(monkeypatch):
    for name, spec in SMALL.items():
        monkeypatch.setitem(datasets.DATASETS, name, spec)


def download(dest: Path, url: str, name: str = "ami-br", *extra: str) -> int:
    return run_cli(["datasets", "download", name, "--dest", str(dest), "--url", url, "--quiet",
                    *extra])


def test_ami_br_layout_and_train_test_complement(tmp_path):
    archive = make_archive(tmp_path / "a.zip")
    dest = tmp_path / "data"
    assert download(dest, archive.as_uri()) == 0
    train, test = dest / "ami-br" / "train", dest / "ami-br" / "test"
    train_files = {p.relative_to(train) for p in train.glob("*/*.png")}
    test_files = {p.relative_to(test) for p in test.glob("*/*.png")}
    assert len(train_files) == 7 and len(test_files) == 3
    assert not train_files & test_files
    assert (train / "amibr_train_split.csv").is_file()
    record = json.loads((dest / "ami-br" / "DATASET.json").read_text())
    assert record["upstream_commit"] == datasets.UPSTREAM_COMMIT
    assert len(record["archive_sha256"]) == 64
    ds = load_dataset(train)
    assert len(ds) == 7 and ds.groups is not None and ds.images.shape[1:] == (3, 128, 128)
    assert len(load_dataset(test)) == 3
    assert not list(dest.glob(".*")), "temporary files left behind"


def test_holdout_sets_over_http(tmp_path):
    (tmp_path / "serve").mkdir()
    archive = make_archive(tmp_path / "serve" / "a.zip")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(archive.parent))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/a.zip"
        dest = tmp_path / "data"
        assert download(dest, url, "atnorm-br") == 0
        assert download(dest, url, "atnorm-md") == 0
    finally:
        server.shutdown()
        server.server_close()
    assert len(list((dest / "atnorm-br" / "Atypical").glob("*.png"))) == 2
    assert (dest / "atnorm-md" / "AtNorM-MD_expert_votes.csv").is_file()
    assert len(load_dataset(dest / "atnorm-md")) == 4


def test_rerun_is_a_no_op_and_force_redoes(tmp_path, capsys):
    archive = make_archive(tmp_path / "a.zip")
    dest = tmp_path / "data"
    assert download(dest, str(archive), "atnorm-br") == 0
    stamp = (dest / "atnorm-br" / "DATASET.json").stat().st_mtime_ns
    capsys.readouterr()
    assert download(dest, str(archive), "atnorm-br") == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (dest / "atnorm-br" / "DATASET.json").stat().st_mtime_ns == stamp
    assert download(dest, str(archive), "atnorm-br", "--force") == 0
    assert "downloaded" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["wrong_counts", "bad_png", "corrupt_zip", "missing_url"])
def test_bad_archives_exit_2_and_leave_nothing(case, tmp_path, capsys):
    bad = f"{TOP}/data/AtNorM-Br/Normal/AtNorM_N1.png"
    archive = tmp_path / "a.zip"
    if case == "wrong_counts":
        make_archive(archive, drop=1)
    elif case == "bad_png":
        make_archive(archive, bad_png=bad)
    elif case == "corrupt_zip":
        archive.write_bytes(b"PK\x03\x04 this is not a zip")
    url = str(tmp_path / "nope.zip") if case == "missing_url" else archive.as_uri()
    dest = tmp_path / "data"
    assert download(dest, url, "atnorm-br") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wsi-atm: error:")
    if case == "bad_png":
        assert "AtNorM_N1.png" in err[0] and "128" in err[0]
    assert not dest.exists() or not any(dest.iterdir())
