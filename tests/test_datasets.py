"""``wsi-atm datasets``: small archives in the upstream layout, served by file:// and http://."""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import io
import json
import shutil
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli_helpers import run_cli
from wsi_atm.errors import BadInputError
from wsi_atm.train import datasets
from wsi_atm.train.data import load_dataset
from wsi_atm.train.datasets import UPSTREAM_COMMIT, DatasetSpec

TOP = f"AMi-Br_Benchmark-{UPSTREAM_COMMIT}"
REAL = dict(datasets.DATASETS)
SMALL = {
    "ami-br": DatasetSpec("ami-br", "AMi-Br", {"Atypical": 12, "Normal": 18},
                          split_csv="amibr_train_split.csv", split_rows=20),
    "atnorm-br": DatasetSpec("atnorm-br", "AtNorM-Br", {"Atypical": 6, "Normal": 9}),
    "atnorm-md": DatasetSpec("atnorm-md", "AtNorM-MD", {"Atypical": 5, "Normal": 10},
                             extra_files=("AtNorM-MD_expert_votes.csv",)),
}
N_TRAIN = {"Atypical": 8, "Normal": 12}  # the first crops of each class form the training split
DEAD_PID = 2**22 + 7  # above any Linux pid_max


@functools.cache
def png(seed: int, size: int = 128, mode: str = "RGB") -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def amibr_name(cls: str, i: int) -> str:
    return f"{'MIDOG21' if i % 2 else 'TUPAC16'}_{cls[0]}{i}.png"


def upstream(split_folders: bool = False) -> dict[str, bytes]:
    """Member path -> bytes of a small archive laid out like the upstream repository.

    ``split_folders``: AMi-Br as ``AMi-Br/{Train,Test}/<class>/`` (as upstream's scripts read
    it) rather than ``AMi-Br/<class>/``.
    """
    members: dict[str, bytes] = {f"{TOP}/README.md": b"benchmark\n"}
    rows = []
    for cls, n in SMALL["ami-br"].counts.items():
        for i in range(n):
            train = i < N_TRAIN[cls]
            sub = ("Train/" if train else "Test/") if split_folders else ""
            members[f"{TOP}/AMi-Br/{sub}{cls}/{amibr_name(cls, i)}"] = png(100 + i + 50 * len(cls))
            if train:
                rows.append({"": len(rows), "slide": f"s{i % 4}.tiff", "dataset": "MIDOG21",
                             "uid": i, "final_label": cls, "dataset_uid": amibr_name(cls, i),
                             "x": 10, "y": 20})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    members[f"{TOP}/AMi-Br/amibr_train_split.csv"] = buf.getvalue().encode()
    for key in ("atnorm-br", "atnorm-md"):
        spec = SMALL[key]
        for cls, n in spec.counts.items():
            for i in range(n):  # AtNorM names repeat across classes: Atypical/1.png, Normal/1.png
                seed = 300 + i + 40 * len(key) + 20 * len(cls)
                members[f"{TOP}/{spec.folder}/{cls}/{i + 1}.png"] = png(seed)
    votes = "Filename,Expert_1,Expert_2,Expert_3,Expert_4,Expert_5,Majority\n1.png,A,A,N,A,A,A\n"
    members[f"{TOP}/AtNorM-MD/AtNorM-MD_expert_votes.csv"] = votes.encode()
    return members


def write(members: dict[str, bytes], path: Path) -> Path:
    """Write ``members`` as a .zip, .tar.gz or plain folder, by ``path``'s name."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
    elif path.name.endswith(".tar.gz"):
        with tarfile.open(path, "w:gz") as t:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    else:
        for name, data in members.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
    return path


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "DATASETS", dict(SMALL))


def download(dest: Path, url: str, *args: str) -> int:
    return run_cli(["datasets", "download", *(args or ("ami-br",)), "--dest", str(dest),
                    "--url", url, "--quiet"])


def crops(folder: Path) -> set[tuple[str, str]]:
    return {(p.parent.name, p.name) for p in folder.glob("*/*.png")}


def hidden(dest: Path) -> list[str]:
    return [p.name for p in dest.iterdir() if p.name.startswith(".")]


@contextmanager
def serve(folder: Path) -> Iterator[tuple[str, list[str]]]:
    """A loopback http server for ``folder`` on an ephemeral port: (base URL, paths requested)."""
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, directory=str(folder), **kw)  # type: ignore[arg-type]

        def do_GET(self) -> None:
            requested.append(self.path)
            super().do_GET()

        def log_message(self, *a: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requested
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# --- AMi-Br: layout and the train/test complement ----------------------------------------------


def check_amibr(dest: Path, members: dict[str, bytes]) -> None:
    train, test = dest / "ami-br" / "train", dest / "ami-br" / "test"
    in_archive = {(Path(m).parent.name, Path(m).name) for m in members
                  if m.endswith(".png") and "/AMi-Br/" in m}
    with open(train / "amibr_train_split.csv", newline="") as fh:
        listed = {(r["final_label"], r["dataset_uid"]) for r in csv.DictReader(fh)}
    assert crops(train) == listed and len(listed) == 20
    assert not crops(train) & crops(test)
    assert crops(train) | crops(test) == in_archive and len(in_archive) == 30
    ds = load_dataset(train)
    assert len(ds) == 20 and ds.images.shape[1:] == (3, 128, 128)
    assert ds.groups is not None and set(ds.groups) == {f"s{k}.tiff" for k in range(4)}
    assert int(ds.labels.sum()) == N_TRAIN["Atypical"]  # label 1 = atypical
    test_ds = load_dataset(test)
    assert len(test_ds) == 10 and test_ds.groups is None
    assert not hidden(dest), "temporaries left behind"


def test_ami_br_from_a_file_url(small, tmp_path):
    members = upstream()
    archive = write(members, tmp_path / "a.zip")
    dest = tmp_path / "data"
    assert download(dest, archive.as_uri()) == 0
    check_amibr(dest, members)
    record = json.loads((dest / "ami-br" / "DATASET.json").read_text())
    assert record["upstream_commit"] == record["archive_commit"] == UPSTREAM_COMMIT
    assert record["archive_sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert record["source"] == archive.as_uri()
    assert record["counts"] == {"Atypical": 12, "Normal": 18, "train": 20, "test": 10}
    assert record["created"][:4].isdigit()
    assert sorted(p.name for p in dest.iterdir()) == ["ami-br"]


def test_ami_br_with_upstream_train_test_folders_from_a_tar_gz(small, tmp_path):
    members = upstream(split_folders=True)
    dest = tmp_path / "data"
    assert download(dest, str(write(members, tmp_path / "a.tar.gz"))) == 0
    check_amibr(dest, members)


def test_train_test_folders_that_contradict_the_csv_fail(small, tmp_path, capsys):
    members = upstream(split_folders=True)
    name = f"{TOP}/AMi-Br/Train/Normal/{amibr_name('Normal', 0)}"
    members[name.replace("/Train/", "/Test/")] = members.pop(name)
    dest = tmp_path / "data"
    assert download(dest, str(write(members, tmp_path / "a.zip"))) == 2
    assert "Test/ folder" in capsys.readouterr().err
    assert not dest.exists()


# --- hold-out sets, one fetch for several, over http ------------------------------------------


def test_all_datasets_from_one_http_download(small, tmp_path, capsys):
    (tmp_path / "serve").mkdir()
    members = upstream()
    write(members, tmp_path / "serve" / "a.zip")
    dest = tmp_path / "data"
    with serve(tmp_path / "serve") as (base, requested):
        assert download(dest, f"{base}/a.zip", "all") == 0
        assert download(dest, f"{base}/missing.zip", "atnorm-br", "--force") == 2
    assert requested == ["/a.zip", "/missing.zip"]
    check_amibr(dest, members)
    assert crops(dest / "atnorm-br") == {(c, f"{i + 1}.png") for c, n in
                                         SMALL["atnorm-br"].counts.items() for i in range(n)}
    md = load_dataset(dest / "atnorm-md")
    assert len(md) == 15 and int(md.labels.sum()) == 5
    votes = (dest / "atnorm-md" / "AtNorM-MD_expert_votes.csv").read_bytes()
    assert votes == members[f"{TOP}/AtNorM-MD/AtNorM-MD_expert_votes.csv"]
    # the server is gone: a rerun needs no network
    capsys.readouterr()
    assert download(dest, f"{base}/a.zip", "all") == 0
    assert capsys.readouterr().out.count("nothing to do") == 3


# --- reruns -------------------------------------------------------------------------------------


def test_rerun_is_a_no_op_force_redoes_and_damage_is_repaired(small, tmp_path, capsys):
    archive = str(write(upstream(), tmp_path / "a.zip"))
    dest = tmp_path / "data"
    record = dest / "atnorm-br" / "DATASET.json"
    assert download(dest, archive, "atnorm-br") == 0
    stamp = record.stat().st_ino, record.stat().st_mtime_ns
    capsys.readouterr()
    assert download(dest, archive, "atnorm-br") == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (record.stat().st_ino, record.stat().st_mtime_ns) == stamp
    assert download(dest, archive, "atnorm-br", "--force") == 0
    assert "downloaded and checked" in capsys.readouterr().out
    assert (record.stat().st_ino, record.stat().st_mtime_ns) != stamp
    (dest / "atnorm-br" / "Normal" / "3.png").unlink()
    assert download(dest, archive, "atnorm-br") == 0
    assert "downloaded and checked" in capsys.readouterr().out
    assert (dest / "atnorm-br" / "Normal" / "3.png").is_file()
    assert not hidden(dest)


def test_crops_named_in_capitals_are_counted_as_installed(small, tmp_path, capsys):
    # Regression: a crop named *.PNG was checked and written but never counted on disk, so
    # the dataset never read as installed: every rerun downloaded it again, `list` said missing
    members = upstream()
    crop = f"{TOP}/AtNorM-Br/Normal/2.png"
    members[crop.replace(".png", ".PNG")] = members.pop(crop)
    archive = str(write(members, tmp_path / "a.zip"))
    dest = tmp_path / "data"
    assert download(dest, archive, "atnorm-br") == 0
    capsys.readouterr()
    assert download(dest, archive, "atnorm-br") == 0
    assert "nothing to do" in capsys.readouterr().out
    assert run_cli(["datasets", "list", "--dest", str(dest)]) == 0
    assert "[installed]" in next(line for line in capsys.readouterr().out.splitlines()
                                 if line.startswith("atnorm-br"))


# --- failures: exit 2, one line, nothing left behind --------------------------------------------

BR = f"{TOP}/AtNorM-Br/Normal/2.png"
LFS = b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n"


def broken(case: str) -> tuple[str, dict[str, bytes] | bytes | None, str]:
    """(dataset, archive members or raw bytes or None for no file, expected error text)."""
    m = upstream()
    csv_name = f"{TOP}/AMi-Br/amibr_train_split.csv"
    if case == "wrong_counts":
        del m[BR]
        return "atnorm-br", m, "found 6 atypical / 8 normal crops, expected 6 / 9"
    if case == "not_128":
        m[BR] = png(1, size=100)
        return "atnorm-br", m, "AtNorM-Br/Normal/2.png: expected a 128×128 RGB PNG, found 100×100"
    if case == "rgba":
        m[BR] = png(1, mode="RGBA")
        return "atnorm-br", m, "Normal/2.png: expected a 128×128 RGB PNG, found 128×128 RGBA"
    if case == "not_an_image":
        m[BR] = b"\x89PNG\r\n\x1a\n garbage"
        return "atnorm-br", m, "AtNorM-Br/Normal/2.png: does not decode"
    if case == "lfs_pointer":
        m[BR] = LFS
        return "atnorm-br", m, "AtNorM-Br/Normal/2.png: a Git LFS pointer"
    if case == "no_such_folder":
        m = {k.replace("/AtNorM-Br/", "/Other/"): v for k, v in m.items()}
        return "atnorm-br", m, "no AtNorM-Br/ folder"
    if case == "corrupt_zip":
        return "atnorm-br", b"PK\x03\x04 this is not a zip", "not a readable zip or tar archive"
    if case == "missing_source":
        return "atnorm-br", None, "cannot download"
    if case == "csv_lists_a_missing_crop":
        m[csv_name] = m[csv_name].replace(amibr_name("Normal", 0).encode(), b"nope.png")
        return "ami-br", m, "1 listed crops are not in the archive (e.g. Normal/nope.png)"
    if case == "csv_extra_row":
        m[csv_name] += b"99,s9.tiff,MIDOG21,9,Normal,nope.png,1,2\n"
        return "ami-br", m, "amibr_train_split.csv: 21 rows, expected 20"
    if case == "csv_without_slide":
        m[csv_name] = m[csv_name].replace(b"slide", b"slidename", 1)
        return "ami-br", m, "missing columns slide"
    if case == "csv_not_utf8":  # Regression: these three were an internal error (exit 1), a
        # final_label of None and missing columns the header has
        m[csv_name] = m[csv_name].replace(b"MIDOG21", b"MIDOG\xe921", 1)
        return "ami-br", m, "amibr_train_split.csv is not UTF-8 text"
    if case == "csv_short_row":
        m[csv_name] = m[csv_name].replace(b"\n1,", b"\n1,s1.tiff\n7,", 1)
        return "ami-br", m, "amibr_train_split.csv: line 3 has fewer cells than the header"
    if case == "csv_header_only":
        m[csv_name] = m[csv_name].partition(b"\n")[0] + b"\n"
        return "ami-br", m, "amibr_train_split.csv: no rows below the header"
    if case == "csv_missing":
        del m[csv_name]
        return "ami-br", m, "no amibr_train_split.csv"
    raise AssertionError(case)


CASES = ["wrong_counts", "not_128", "rgba", "not_an_image", "lfs_pointer", "no_such_folder",
         "corrupt_zip", "missing_source", "csv_lists_a_missing_crop", "csv_extra_row",
         "csv_without_slide", "csv_not_utf8", "csv_short_row", "csv_header_only", "csv_missing"]


@pytest.mark.parametrize("case", CASES)
def test_bad_sources_exit_2_and_leave_nothing(small, case, tmp_path, capsys):
    name, content, expected = broken(case)
    archive = tmp_path / "a.zip"
    if isinstance(content, dict):
        write(content, archive)
    elif isinstance(content, bytes):
        archive.write_bytes(content)
    dest = tmp_path / "data"
    assert download(dest, archive.as_uri(), name) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wsi-atm: error:"), err
    assert expected in err[0]
    assert not dest.exists()


def test_truncated_and_damaged_zips_exit_2(small, tmp_path, capsys):
    members = upstream()
    good = write(members, tmp_path / "good.zip").read_bytes()
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good[: len(good) // 2])
    damaged = tmp_path / "damaged.zip"  # a flipped byte inside a stored member: CRC error
    at = good.index(members[f"{TOP}/AtNorM-Br/Atypical/1.png"]) + 500
    damaged.write_bytes(good[:at] + bytes([good[at] ^ 0xFF]) + good[at + 1:])
    for archive in (truncated, damaged):
        dest = tmp_path / archive.stem
        assert download(dest, str(archive), "atnorm-br") == 2
        assert not dest.exists()
    assert capsys.readouterr().err.count("wsi-atm: error:") == 2


def test_a_failed_force_keeps_the_installed_dataset(small, tmp_path):
    dest = tmp_path / "data"
    (dest / "mine").mkdir(parents=True)
    assert download(dest, str(write(upstream(), tmp_path / "a.zip")), "atnorm-br") == 0
    before = crops(dest / "atnorm-br")
    m = upstream()
    del m[BR]
    assert download(dest, str(write(m, tmp_path / "bad.zip")), "atnorm-br", "--force") == 2
    assert crops(dest / "atnorm-br") == before
    assert datasets.is_installed(dest / "atnorm-br", SMALL["atnorm-br"])
    assert sorted(p.name for p in dest.iterdir()) == ["atnorm-br", "mine"]


def test_a_folder_not_written_by_download_is_not_replaced(small, tmp_path, capsys):
    dest = tmp_path / "data"
    (dest / "atnorm-br").mkdir(parents=True)
    (dest / "atnorm-br" / "notes.txt").write_text("mine")
    archive = str(write(upstream(), tmp_path / "a.zip"))
    assert download(dest, archive, "atnorm-br") == 2
    assert "--force" in capsys.readouterr().err
    assert (dest / "atnorm-br" / "notes.txt").read_text() == "mine"
    assert download(dest, archive, "atnorm-br", "--force") == 0
    assert not (dest / "atnorm-br" / "notes.txt").exists()


# --- sources, temporaries, the Python API, list -------------------------------------------------


def test_folder_source_and_leftovers_of_a_killed_run(small, tmp_path, capsys):
    source = tmp_path / "checkout"
    write(upstream(), source)
    dest = tmp_path / "data"
    assert download(dest, str(source), "atnorm-md") == 0
    record = json.loads((dest / "atnorm-md" / "DATASET.json").read_text())
    assert record["archive_sha256"] is None and record["archive_commit"] == UPSTREAM_COMMIT
    # a killed --force had moved atnorm-md aside; a killed build left temporaries
    (dest / "atnorm-md").rename(dest / f".wsi-atm-{DEAD_PID}-old-atnorm-md")
    (dest / f".wsi-atm-{DEAD_PID}-k3j2h1g0" / "Normal").mkdir(parents=True)
    (dest / f".wsi-atm-{DEAD_PID}-download-abc").write_bytes(b"partial")
    capsys.readouterr()
    assert download(dest, str(tmp_path / "nowhere.zip"), "atnorm-md") == 0
    assert "nothing to do" in capsys.readouterr().out
    assert sorted(p.name for p in dest.iterdir()) == ["atnorm-md"]


@pytest.mark.parametrize("inner_folder", [True, False])
def test_a_dataset_shipped_as_a_zip_inside_the_archive(small, inner_folder, tmp_path):
    members = upstream()
    md = {k: v for k, v in members.items() if "/AtNorM-MD/" in k}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for k, v in md.items():
            z.writestr(k.split("/AtNorM-MD/")[1] if not inner_folder else
                       "AtNorM-MD/" + k.split("/AtNorM-MD/")[1], v)
    outer = {k: v for k, v in members.items() if k not in md} | {f"{TOP}/AtNorM-MD.zip":
                                                                  buf.getvalue()}
    dest = tmp_path / "data"
    assert download(dest, str(write(outer, tmp_path / "a.zip")), "atnorm-md") == 0
    assert len(load_dataset(dest / "atnorm-md")) == 15
    assert (dest / "atnorm-md" / "AtNorM-MD_expert_votes.csv").is_file()


@pytest.mark.parametrize("member", [f"{TOP}/AtNorM-Br/Atypical/1.png",
                                    f"{TOP}/AtNorM-MD/AtNorM-MD_expert_votes.csv"])
def test_a_zip_bomb_member_is_refused_before_it_is_unpacked(small, member, tmp_path, capsys,
                                                            monkeypatch):
    # Regression: every member was inflated whole into memory, so a 9 MB zip declaring a 2 GB
    # crop took 4 GB of memory (a larger one: a MemoryError, an internal error, or the OOM killer)
    members = upstream()
    members[member] = bytes(65 << 20)  # zeros: deflates to ~65 kB
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    inflated: list[str] = []
    read = zipfile.ZipFile.read
    monkeypatch.setattr(zipfile.ZipFile, "read",
                        lambda self, name, pwd=None: inflated.append(name) or read(self, name, pwd))
    dest = tmp_path / "data"
    name = "atnorm-br" if "AtNorM-Br" in member else "atnorm-md"
    assert download(dest, str(archive), name) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{member}: {65 << 20:,} bytes, more than" in err[0], err
    assert member not in inflated
    assert not dest.exists()


def test_a_missing_votes_file_is_a_warning(small, tmp_path, capsys):
    members = upstream()
    del members[f"{TOP}/AtNorM-MD/AtNorM-MD_expert_votes.csv"]
    dest = tmp_path / "data"
    assert download(dest, str(write(members, tmp_path / "a.zip")), "atnorm-md") == 0
    assert "no AtNorM-MD_expert_votes.csv" in capsys.readouterr().err
    assert datasets.is_installed(dest / "atnorm-md", SMALL["atnorm-md"])


def test_python_api_with_expected_counts_and_the_env_url(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "DATASETS", REAL)
    archive = write(upstream(), tmp_path / "a.zip")
    monkeypatch.setenv(datasets.URL_ENV, str(archive))
    result = datasets.download("atnorm-br", tmp_path / "data",
                               expected_counts={"Atypical": 6, "Normal": 9})
    assert result.downloaded and result.counts == {"Atypical": 6, "Normal": 9}
    assert result.path == tmp_path / "data" / "atnorm-br"
    with pytest.raises(BadInputError, match="expected 128 / 618"):
        datasets.download("atnorm-br", tmp_path / "other")
    with pytest.raises(BadInputError, match="unknown dataset"):
        datasets.download("mnist", tmp_path / "other")


def test_list(small, tmp_path, capsys):
    dest = tmp_path / "data"
    assert download(dest, str(write(upstream(), tmp_path / "a.zip")), "atnorm-md") == 0
    capsys.readouterr()
    assert run_cli(["datasets", "list", "--dest", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "ami-br" in out and "training split 20 rows" in out
    assert "atnorm-md" in out and "[installed]" in out and "[missing]" in out
    assert datasets.DEFAULT_URL in out


def test_the_registry_holds_the_paper_counts():
    assert {n: (s.counts["Atypical"], s.counts["Normal"]) for n, s in REAL.items()} == {
        "ami-br": (832, 2888), "atnorm-br": (128, 618), "atnorm-md": (219, 1888)}
    assert REAL["ami-br"].split_rows == 2894
    assert datasets.DEFAULT_URL.endswith(f"/archive/{UPSTREAM_COMMIT}.zip")


def test_real_amibr_training_crops_pass_the_checks(amibr_dir, tmp_path):
    """The development copy of the 2894 training crops, as a folder source named AMi-Br/."""
    source = tmp_path / "src" / "AMi-Br"
    for cls in ("Atypical", "Normal"):
        (source / cls).mkdir(parents=True)
        for p in (amibr_dir / cls).glob("*.png"):
            (source / cls / p.name).symlink_to(p)
    shutil.copy(amibr_dir / "amibr_train_split.csv", source)
    result = datasets.download("ami-br", tmp_path / "data", url=str(source.parent),
                               expected_counts={"Atypical": 648, "Normal": 2246})
    assert result.counts == {"Atypical": 648, "Normal": 2246, "train": 2894, "test": 0}
