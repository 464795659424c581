"""``wsi-atm datasets download``: the benchmark's crop datasets, fetched, checked and laid out.

The source is the upstream benchmark repository's archive at a pinned commit. Inside it, each
dataset is found as the directory holding ``Atypical/`` and ``Normal/`` whose name matches the
dataset's (case, ``-`` and ``_`` ignored), so the exact nesting of the archive does not matter;
the AMi-Br split file and the AtNorM-MD votes are found by file name anywhere in the archive.

Layout written (what ``train`` and ``evaluate`` read)::

    DEST/ami-br/train/{Atypical,Normal}/*.png + amibr_train_split.csv   (the 2894 listed crops)
    DEST/ami-br/test/{Atypical,Normal}/*.png                             (every other crop)
    DEST/atnorm-br/{Atypical,Normal}/*.png
    DEST/atnorm-md/{Atypical,Normal}/*.png + AtNorM-MD_expert_votes.csv
    DEST/<name>/DATASET.json                                             (source, sha256, counts)

Everything is built in a temporary folder beside the destination and renamed into place only
after every check passed, so a failed or killed download leaves no half dataset.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image

from wsi_atm.errors import BadInputError
from wsi_atm.progress import progress_bar

UPSTREAM_REPO = "DeepMicroscopy/AMi-Br_Benchmark"
UPSTREAM_COMMIT = "3acf4dad662ed71b63f283858892b54c84a49696"
DEFAULT_URL = f"https://github.com/{UPSTREAM_REPO}/archive/{UPSTREAM_COMMIT}.zip"
URL_ENV = "WSI_ATM_DATASETS_URL"
CLASSES = ("Atypical", "Normal")
CROP_SIZE = 128


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str  # the dataset's directory name in the archive
    counts: dict[str, int]  # crops per class in the whole dataset
    split_csv: str = ""  # AMi-Br: the training split; the test split is its complement
    split_rows: int = 0
    extra_files: tuple[str, ...] = field(default_factory=tuple)


DATASETS: dict[str, DatasetSpec] = {
    "ami-br": DatasetSpec("ami-br", "AMi-Br", {"Atypical": 832, "Normal": 2888},
                          split_csv="amibr_train_split.csv", split_rows=2894),
    "atnorm-br": DatasetSpec("atnorm-br", "AtNorM-Br", {"Atypical": 128, "Normal": 618}),
    "atnorm-md": DatasetSpec("atnorm-md", "AtNorM-MD", {"Atypical": 219, "Normal": 1888},
                             extra_files=("AtNorM-MD_expert_votes.csv",)),
}


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


class Archive:
    """Read-only view of a zip or tar.gz archive: member names and bytes."""

    def __init__(self, path: Path) -> None:
        try:
            if zipfile.is_zipfile(path):
                self._zip = zipfile.ZipFile(path)
                self.names = [n for n in self._zip.namelist() if not n.endswith("/")]
                self._tar = None
            else:
                self._tar = tarfile.open(path)  # noqa: SIM115 - kept open for reads
                self._zip = None
                self.names = [m.name for m in self._tar.getmembers() if m.isfile()]
        except (zipfile.BadZipFile, tarfile.TarError, OSError):
            raise BadInputError("the downloaded file is not a readable zip or tar archive") \
                from None

    def read(self, name: str) -> bytes:
        try:
            if self._zip is not None:
                return self._zip.read(name)
            member = self._tar.extractfile(name)  # type: ignore[union-attr]
            return member.read() if member else b""
        except (zipfile.BadZipFile, tarfile.TarError, OSError, KeyError) as exc:
            raise BadInputError(f"archive member {name}: cannot be read ({exc})") from None

    def close(self) -> None:
        (self._zip or self._tar).close()  # type: ignore[union-attr]


def find_root(names: list[str], spec: DatasetSpec) -> PurePosixPath:
    """The archive directory of ``spec``: it holds Atypical/ and Normal/ and is named like it."""
    roots = set()
    for n in names:
        p = PurePosixPath(n)
        if len(p.parts) >= 2 and p.parts[-2] in CLASSES:
            roots.add(p.parent.parent)
    matching = sorted(r for r in roots if r.name and _key(r.name) == _key(spec.folder))
    if not matching:
        raise BadInputError(
            f"the archive holds no {spec.folder}/ folder with Atypical/ and Normal/ crops")
    return matching[0]


def find_file(names: list[str], file_name: str) -> str:
    hits = sorted((n for n in names if PurePosixPath(n).name == file_name), key=len)
    if not hits:
        raise BadInputError(f"the archive holds no {file_name}")
    return hits[0]


def _check_png(data: bytes, name: str) -> None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            ok = im.mode == "RGB" and im.size == (CROP_SIZE, CROP_SIZE)
            found = f"{im.size[0]}×{im.size[1]} {im.mode}"
    except OSError as exc:
        raise BadInputError(f"{name}: does not decode as an image ({exc})") from None
    if not ok:
        raise BadInputError(f"{name}: expected a {CROP_SIZE}×{CROP_SIZE} RGB PNG, found {found}")


def _crops(archive: Archive, root: PurePosixPath) -> Iterator[tuple[str, str, str]]:
    """(class, file name, archive member) of every PNG crop under ``root``."""
    for n in archive.names:
        p = PurePosixPath(n)
        if p.parent.parent == root and p.parent.name in CLASSES and p.suffix.lower() == ".png":
            yield p.parent.name, p.name, n


def _split_rows(archive: Archive, spec: DatasetSpec) -> set[tuple[str, str]]:
    text = archive.read(find_file(archive.names, spec.split_csv)).decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or not {"final_label", "dataset_uid"} <= set(rows[0]):
        raise BadInputError(f"{spec.split_csv}: missing final_label/dataset_uid columns")
    if spec.split_rows and len(rows) != spec.split_rows:
        raise BadInputError(f"{spec.split_csv}: {len(rows)} rows, expected {spec.split_rows}")
    return {(r["final_label"], r["dataset_uid"]) for r in rows}


def build(archive: Archive, spec: DatasetSpec, out: Path, quiet: bool = True) -> dict[str, int]:
    """Check and write one dataset from ``archive`` into the empty folder ``out``."""
    root = find_root(archive.names, spec)
    crops = list(_crops(archive, root))
    counts = {c: sum(1 for k, _, _ in crops if k == c) for c in CLASSES}
    if counts != spec.counts:
        raise BadInputError(f"{spec.name}: found {counts['Atypical']} atypical / "
                            f"{counts['Normal']} normal crops, expected "
                            f"{spec.counts['Atypical']} / {spec.counts['Normal']}")
    train = _split_rows(archive, spec) if spec.split_csv else set()
    missing = train - {(c, n) for c, n, _ in crops}
    if missing:
        raise BadInputError(f"{spec.split_csv}: {len(missing)} listed crops are not in the "
                            f"archive (e.g. {sorted(missing)[0][1]})")
    bar = progress_bar(len(crops), f"checking {spec.name}", quiet=quiet, unit="crop")
    for cls, name, member in crops:
        data = archive.read(member)
        _check_png(data, member)
        split = ("train" if (cls, name) in train else "test") if spec.split_csv else ""
        target = out / split / cls / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        bar.update(1)
    bar.close()
    if spec.split_csv:
        (out / "train" / spec.split_csv).write_bytes(
            archive.read(find_file(archive.names, spec.split_csv)))
    for extra in spec.extra_files:
        (out / extra).write_bytes(archive.read(find_file(archive.names, extra)))
    return {**counts, "train": len(train), "test": len(crops) - len(train)} if train else counts


def fetch(url: str, dest_dir: Path, quiet: bool = True) -> Path:
    """Download (or copy) the archive into a temp file in ``dest_dir``."""
    if "://" not in url:
        url = Path(url).resolve().as_uri()
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".download-", suffix=".tmp")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, os.fdopen(fd, "wb") as fh:
            size = int(resp.headers.get("Content-Length") or 0) or None
            bar = progress_bar(size, "downloading", quiet=quiet, unit="B")
            while block := resp.read(1 << 20):
                fh.write(block)
                bar.update(len(block))
            bar.close()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise BadInputError(f"cannot download {url}: {exc}") from None
    return Path(tmp)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_installed(target: Path, spec: DatasetSpec) -> bool:
    record = target / "DATASET.json"
    if not record.is_file():
        return False
    try:
        counts = json.loads(record.read_text())["counts"]
    except (ValueError, KeyError):
        return False
    return all(counts.get(c) == n for c, n in spec.counts.items())


def download(
    name: str, dest: Path, url: str | None = None, force: bool = False, quiet: bool = True,
    specs: dict[str, DatasetSpec] | None = None,
) -> tuple[Path, bool]:
    """Fetch, check and lay out dataset ``name`` under ``dest``; (folder, whether work was done).

    ``specs`` replaces the registry (tests use small archives with other counts).
    """
    specs = specs or DATASETS
    if name not in specs:
        raise BadInputError(f"unknown dataset {name!r}; known: {', '.join(specs)}")
    spec = specs[name]
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / name
    if is_installed(target, spec) and not force:
        return target, False
    source = url or os.environ.get(URL_ENV) or DEFAULT_URL
    archive_path = fetch(source, dest, quiet)
    work = Path(tempfile.mkdtemp(dir=dest, prefix=f".{name}-"))
    try:
        archive = Archive(archive_path)
        try:
            counts = build(archive, spec, work, quiet)
        finally:
            archive.close()
        record = {"dataset": name, "source": source, "upstream_commit": UPSTREAM_COMMIT,
                  "archive_sha256": sha256_of(archive_path), "counts": counts,
                  "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        (work / "DATASET.json").write_text(json.dumps(record, indent=2))
        _replace_dir(work, target)
    finally:
        archive_path.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    return target, True


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an existing ``target`` is swapped out, then removed."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
