"""``wsi-atm datasets download``: the benchmark's crop datasets, fetched, checked and laid out.

Source: the archive of github.com/DeepMicroscopy/AMi-Br_Benchmark at the pinned commit
(``--url`` or ``$WSI_ATM_DATASETS_URL`` may name another ``http(s)://``/``file://`` URL, a local
.zip/.tar.gz, or an unpacked checkout folder).

What is known about that archive (from its README and scripts; the image files themselves could
not be inspected when this was written): the README lists the dataset folders ``AtNorM-Br/`` and
``AtNorM-MD/`` and the repository has an ``AMi-Br/`` folder; the training scripts read
``AMi-Br/amibr_train_split.csv`` and ``AMi-Br/Train/<final_label>/<dataset_uid>``, the inference
notebooks ``AMi-Br/Test/{Atypical,Normal}`` (826 crops), ``AtNorM-Br/{Atypical,Normal}`` (746)
and ``AtNorM-MD/{Atypical,Normal}`` (2107). The extractor therefore relies on names, not paths:

* a dataset's folder is the directory named like ``DatasetSpec.folder`` (case, ``-`` and ``_``
  ignored) holding ``Atypical/`` and ``Normal/`` crop folders, directly or one level down
  (``AMi-Br/Train/Atypical``, ``AMi-Br/Test/Normal``): crops are pooled over those sub-folders;
* a dataset found nowhere as a folder is looked for as a ``<folder>.zip`` inside the archive;
* the AMi-Br split file and the AtNorM-MD votes are found by file name, preferably inside the
  dataset's folder, otherwise anywhere in the archive;
* AMi-Br's test split is the complement of ``amibr_train_split.csv``; when the archive has
  ``Train``/``Test`` sub-folders they must agree with the CSV.

Layout written (what ``train`` and ``evaluate`` read)::

    DEST/ami-br/train/{Atypical,Normal}/*.png + amibr_train_split.csv   (the 2894 listed crops)
    DEST/ami-br/test/{Atypical,Normal}/*.png                             (every other crop)
    DEST/atnorm-br/{Atypical,Normal}/*.png
    DEST/atnorm-md/{Atypical,Normal}/*.png + AtNorM-MD_expert_votes.csv
    DEST/<name>/DATASET.json                                             (source, sha256, counts)

Everything is built in hidden ``DEST/.wsi-atm-<pid>-*`` temporaries and renamed into place only
after every check passed, so a failed run leaves nothing and a killed one leaves only hidden
temporaries, which the next run removes.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

from PIL import Image

from wsi_atm import __version__
from wsi_atm.errors import BadInputError
from wsi_atm.progress import progress_bar

UPSTREAM_REPO = "DeepMicroscopy/AMi-Br_Benchmark"
UPSTREAM_COMMIT = "3acf4dad662ed71b63f283858892b54c84a49696"
DEFAULT_URL = f"https://github.com/{UPSTREAM_REPO}/archive/{UPSTREAM_COMMIT}.zip"
URL_ENV = "WSI_ATM_DATASETS_URL"
CLASSES = ("Atypical", "Normal")
CROP_SIZE = 128
RECORD = "DATASET.json"
TMP_PREFIX = ".wsi-atm-"
_LFS_MAGIC = b"version https://git-lfs"


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lies in the archive and what it must hold."""

    name: str  # the folder written under DEST
    folder: str  # the dataset's directory name in the archive (case, '-', '_' ignored)
    counts: Mapping[str, int]  # crops per class in the whole dataset
    split_csv: str = ""  # AMi-Br: the training split; the test split is its complement
    split_rows: int = 0  # rows expected in split_csv (0: not checked)
    extra_files: tuple[str, ...] = field(default_factory=tuple)  # copied along when present


DATASETS: dict[str, DatasetSpec] = {
    "ami-br": DatasetSpec("ami-br", "AMi-Br", {"Atypical": 832, "Normal": 2888},
                          split_csv="amibr_train_split.csv", split_rows=2894),
    "atnorm-br": DatasetSpec("atnorm-br", "AtNorM-Br", {"Atypical": 128, "Normal": 618}),
    "atnorm-md": DatasetSpec("atnorm-md", "AtNorM-MD", {"Atypical": 219, "Normal": 1888},
                             extra_files=("AtNorM-MD_expert_votes.csv",)),
}


@dataclass(frozen=True)
class Crop:
    cls: str  # Atypical or Normal
    name: str  # file name
    member: str  # path in the archive
    subset: str  # sub-folder between the dataset folder and the class folder ('' if none)


@dataclass(frozen=True)
class DownloadResult:
    name: str
    path: Path
    downloaded: bool  # False: already present and verified, nothing done
    counts: dict[str, int]


# --- archives -------------------------------------------------------------------------------


class Archive(Protocol):
    names: list[str]  # member paths of regular files, '/'-separated

    def read(self, name: str) -> bytes: ...

    def close(self) -> None: ...


_READ_ERRORS = (zipfile.BadZipFile, tarfile.TarError, zlib.error, OSError, EOFError, KeyError)


class ZipArchive:
    def __init__(self, path: Path) -> None:
        self._zip = zipfile.ZipFile(path)
        self.names = [i.filename for i in self._zip.infolist() if not i.is_dir()]

    def read(self, name: str) -> bytes:
        return self._zip.read(name)

    def close(self) -> None:
        self._zip.close()


class TarArchive:
    def __init__(self, path: Path) -> None:
        self._tar = tarfile.open(path)  # noqa: SIM115 - closed by close()
        self._members = {m.name: m for m in self._tar.getmembers() if m.isfile()}
        self.names = list(self._members)

    def read(self, name: str) -> bytes:
        fh = self._tar.extractfile(self._members[name])
        return fh.read() if fh is not None else b""

    def close(self) -> None:
        self._tar.close()


class DirArchive:
    """An unpacked checkout (e.g. a ``git lfs`` clone) read like an archive."""

    def __init__(self, root: Path) -> None:
        self._root = root
        rel = (p.relative_to(root) for p in root.rglob("*") if p.is_file())
        self.names = sorted(r.as_posix() for r in rel if not r.parts[0].startswith(".git"))

    def read(self, name: str) -> bytes:
        return (self._root / name).read_bytes()

    def close(self) -> None:
        pass


class NestedArchive:
    """``outer`` with the zips in ``nested`` opened in place (``x/D.zip`` reads as ``x/D/``)."""

    def __init__(self, outer: Archive, nested: list[str]) -> None:
        self._outer = outer
        self._inner: dict[str, tuple[zipfile.ZipFile, str]] = {}
        for member in nested:
            try:
                z = zipfile.ZipFile(io.BytesIO(read_member(outer, member)))
            except (zipfile.BadZipFile, OSError):
                raise BadInputError(f"archive member {member}: not a readable zip") from None
            base = str(PurePosixPath(member).with_suffix(""))
            for info in z.infolist():
                if not info.is_dir():
                    self._inner[f"{base}/{info.filename}"] = (z, info.filename)
        self.names = [n for n in outer.names if n not in nested] + list(self._inner)

    def read(self, name: str) -> bytes:
        if name in self._inner:
            z, inner = self._inner[name]
            return z.read(inner)
        return self._outer.read(name)

    def close(self) -> None:
        self._outer.close()


def with_nested(archive: Archive, spec: DatasetSpec) -> Archive:
    """``archive``, or, when it holds the dataset only as ``<folder>.zip``, that zip opened."""
    try:
        find_crops(archive.names, spec)
        return archive
    except BadInputError:
        nested = [n for n in archive.names if n.lower().endswith(".zip")
                  and _key(PurePosixPath(n).stem) == _key(spec.folder)]
    return NestedArchive(archive, nested) if nested else archive


def open_archive(path: Path, source: str = "") -> Archive:
    """A zip, tar(.gz) or folder; anything else is a ``BadInputError``."""
    if path.is_dir():
        return DirArchive(path)
    try:
        return ZipArchive(path) if zipfile.is_zipfile(path) else TarArchive(path)
    except (*_READ_ERRORS, ValueError):
        raise BadInputError(f"{source or path}: not a readable zip or tar archive") from None


def read_member(archive: Archive, name: str) -> bytes:
    try:
        return archive.read(name)
    except _READ_ERRORS as exc:
        raise BadInputError(f"archive member {name}: cannot be read ({exc})") from None


# --- locating a dataset in the archive ---------------------------------------------------------


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


_CLASS_BY_KEY = {c.lower(): c for c in CLASSES}


def find_crops(names: Iterable[str], spec: DatasetSpec) -> tuple[PurePosixPath, list[Crop]]:
    """The dataset folder of ``spec`` and every PNG crop in its (sub-)class folders."""
    found: dict[PurePosixPath, list[Crop]] = {}
    for n in names:
        p = PurePosixPath(n)
        cls = _CLASS_BY_KEY.get(p.parent.name.lower())
        if cls is None or p.suffix.lower() != ".png":
            continue
        holder = p.parent.parent  # the folder holding Atypical/ and Normal/
        root = next((a for a in (holder, holder.parent)
                     if a.name and _key(a.name) == _key(spec.folder)), None)
        if root is not None:
            subset = holder.name if root != holder else ""
            found.setdefault(root, []).append(Crop(cls, p.name, n, subset))
    if not found:
        raise BadInputError(f"the archive holds no {spec.folder}/ folder with Atypical/ and "
                            "Normal/ crops (wrong source? pass --url)")
    if len(found) > 1:
        raise BadInputError(f"the archive holds several {spec.folder}/ folders: "
                            f"{', '.join(sorted(map(str, found)))}")
    [(root, crops)] = found.items()
    seen: dict[tuple[str, str], str] = {}
    for c in crops:
        if (c.cls, c.name) in seen:
            raise BadInputError(f"{spec.name}: {c.cls}/{c.name} is in the archive twice "
                                f"({seen[(c.cls, c.name)]} and {c.member})")
        seen[(c.cls, c.name)] = c.member
    return root, crops


def find_file(names: Iterable[str], file_name: str, prefer: PurePosixPath | None = None) -> str:
    """The member called ``file_name`` (case-insensitive), preferably under ``prefer``."""
    hits = [n for n in names if PurePosixPath(n).name.lower() == file_name.lower()]
    if not hits:
        raise BadInputError(f"the archive holds no {file_name}")
    inside = [n for n in hits if prefer is not None and prefer in PurePosixPath(n).parents]
    return min(inside or hits, key=lambda n: (len(PurePosixPath(n).parts), n))


def commit_of(names: list[str]) -> str | None:
    """The commit a GitHub archive was made from (its top folder is ``<repo>-<sha>``)."""
    tops = {PurePosixPath(n).parts[0] for n in names if "/" in n}
    hits = {m.group(1) for t in tops if (m := re.search(r"-([0-9a-f]{40})$", t))}
    return hits.pop() if len(hits) == 1 else None


# --- checks --------------------------------------------------------------------------------------


def check_png(data: bytes, name: str) -> None:
    """A ``CROP_SIZE``² RGB image, or a ``BadInputError`` naming the file."""
    if data.startswith(_LFS_MAGIC):
        raise BadInputError(f"{name}: a Git LFS pointer, not an image (the archive lacks the LFS "
                            "files; clone with git-lfs and pass the folder with --url)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode, size = im.mode, im.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadInputError(f"{name}: does not decode as an image ({exc})") from None
    if mode != "RGB" or size != (CROP_SIZE, CROP_SIZE):
        raise BadInputError(f"{name}: expected a {CROP_SIZE}×{CROP_SIZE} RGB PNG, "
                            f"found {size[0]}×{size[1]} {mode}")


def _check_counts(spec: DatasetSpec, crops: list[Crop]) -> dict[str, int]:
    counts = {c: sum(1 for k in crops if k.cls == c) for c in CLASSES}
    if counts != dict(spec.counts):
        raise BadInputError(
            f"{spec.name}: found {counts['Atypical']} atypical / {counts['Normal']} normal "
            f"crops, expected {spec.counts['Atypical']} / {spec.counts['Normal']}")
    return counts


def split_keys(text: str, spec: DatasetSpec) -> set[tuple[str, str]]:
    """(final_label, dataset_uid) of every row of the training-split CSV, checked."""
    rows = list(csv.DictReader(io.StringIO(text)))
    missing = {"slide", "final_label", "dataset_uid"} - set(rows[0] if rows else {})
    if missing:
        raise BadInputError(f"{spec.split_csv}: missing columns {', '.join(sorted(missing))}")
    bad = [r["final_label"] for r in rows if r["final_label"] not in CLASSES]
    if bad:
        raise BadInputError(f"{spec.split_csv}: final_label {bad[0]!r} is not one of "
                            f"{', '.join(CLASSES)}")
    if spec.split_rows and len(rows) != spec.split_rows:
        raise BadInputError(f"{spec.split_csv}: {len(rows)} rows, expected {spec.split_rows}")
    keys = {(r["final_label"], r["dataset_uid"]) for r in rows}
    if len(keys) != len(rows):
        raise BadInputError(f"{spec.split_csv}: {len(rows) - len(keys)} duplicate rows")
    return keys


def _check_split(spec: DatasetSpec, crops: list[Crop], train: set[tuple[str, str]]) -> None:
    missing = train - {(c.cls, c.name) for c in crops}
    if missing:
        example = "/".join(sorted(missing)[0])
        raise BadInputError(f"{spec.split_csv}: {len(missing)} listed crops are not in the "
                            f"archive (e.g. {example})")
    wrong = [c for c in crops if c.subset.lower() in ("train", "test")
             and (c.subset.lower() == "train") != ((c.cls, c.name) in train)]
    if wrong:
        raise BadInputError(f"{spec.name}: {len(wrong)} crops lie in the archive's "
                            f"{wrong[0].subset}/ folder but {spec.split_csv} says otherwise "
                            f"(e.g. {wrong[0].member})")


# --- building one dataset ---------------------------------------------------------------------


def build(archive: Archive, spec: DatasetSpec, out: Path, quiet: bool = True) -> dict[str, int]:
    """Check ``spec``'s crops in ``archive`` and write them into the empty folder ``out``."""
    archive = with_nested(archive, spec)
    root, crops = find_crops(archive.names, spec)
    counts = _check_counts(spec, crops)
    train: set[tuple[str, str]] = set()
    csv_bytes = b""
    if spec.split_csv:
        csv_bytes = read_member(archive, find_file(archive.names, spec.split_csv, root))
        train = split_keys(csv_bytes.decode("utf-8-sig"), spec)
        _check_split(spec, crops, train)
    bar = progress_bar(len(crops), f"checking {spec.name}", quiet=quiet, unit="crop")
    for crop in crops:
        data = read_member(archive, crop.member)
        check_png(data, crop.member)
        split = ("train" if (crop.cls, crop.name) in train else "test") if spec.split_csv else ""
        target = out / split / crop.cls / crop.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        bar.update(1)
    bar.close()
    if spec.split_csv:
        (out / "train" / spec.split_csv).write_bytes(csv_bytes)
        counts |= {"train": len(train), "test": len(crops) - len(train)}
    for extra in spec.extra_files:
        try:
            member = find_file(archive.names, extra, root)
        except BadInputError:
            warnings.warn(f"{spec.name}: the archive holds no {extra}; not copied", stacklevel=2)
            continue
        (out / extra).write_bytes(read_member(archive, member))
    return counts


# --- what is installed ------------------------------------------------------------------------


def _pngs(folder: Path) -> int:
    return sum(1 for p in folder.glob("*.png")) if folder.is_dir() else 0


def disk_counts(target: Path, spec: DatasetSpec) -> dict[str, int]:
    """Crops per class (and per split for AMi-Br) found in an installed dataset."""
    if not spec.split_csv:
        return {c: _pngs(target / c) for c in CLASSES}
    per_split = {s: {c: _pngs(target / s / c) for c in CLASSES} for s in ("train", "test")}
    counts = {c: per_split["train"][c] + per_split["test"][c] for c in CLASSES}
    return counts | {s: sum(per_split[s].values()) for s in per_split}


def _recorded(target: Path) -> dict[str, int] | None:
    try:
        counts = json.loads((target / RECORD).read_text(encoding="utf-8"))["counts"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return counts if isinstance(counts, dict) else None


def is_installed(target: Path, spec: DatasetSpec) -> bool:
    """``target`` holds ``spec`` as a previous download recorded and verified it."""
    recorded = _recorded(target)
    if recorded is None:
        return False
    if any(recorded.get(c) != n for c, n in spec.counts.items()):
        return False
    if spec.split_rows and recorded.get("train") != spec.split_rows:
        return False
    if spec.split_csv and not (target / "train" / spec.split_csv).is_file():
        return False
    return disk_counts(target, spec) == recorded


# --- fetching ---------------------------------------------------------------------------------


def local_path(source: str) -> Path | None:
    """The local file or folder ``source`` names (a path or a file:// URL), else None."""
    if "://" not in source:
        return Path(source).expanduser()
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    return None


def fetch(source: str, dest_dir: Path, quiet: bool = True) -> tuple[Path, str]:
    """Download (or copy) ``source`` into a temp file in ``dest_dir``: (path, sha256)."""
    local = local_path(source)
    url = local.resolve().as_uri() if local is not None else source
    if urllib.parse.urlparse(url).scheme not in ("http", "https", "file"):
        raise BadInputError(f"{source}: not an http(s):// or file:// URL or a local path")
    fd, name = tempfile.mkstemp(dir=dest_dir, prefix=f"{TMP_PREFIX}{os.getpid()}-download-")
    tmp, digest = Path(name), hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as fh, urllib.request.urlopen(url, timeout=60) as resp:
            size = int(resp.headers.get("Content-Length") or 0) or None
            bar = progress_bar(size, "downloading", quiet=quiet, unit="B")
            got = 0
            while block := resp.read(1 << 20):
                fh.write(block)
                digest.update(block)
                got += len(block)
                bar.update(len(block))
            bar.close()
        if size is not None and got != size:
            raise BadInputError(f"{source}: download incomplete ({got} of {size} bytes)")
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        raise BadInputError(f"cannot download {source}: {exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, digest.hexdigest()


# --- temporaries and the final rename ---------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def clean_stale(dest: Path) -> None:
    """Remove temporaries of killed runs; put back a dataset a killed --force had moved aside."""
    pattern = re.compile(rf"^{re.escape(TMP_PREFIX)}(\d+)-(old-(.+)|.*)$")
    for entry in sorted(dest.iterdir()):
        m = pattern.match(entry.name)
        if m is None or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        if m.group(3) and entry.is_dir() and not (dest / m.group(3)).exists():
            entry.rename(dest / m.group(3))
        elif entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an existing ``target`` is swapped out, then removed."""
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f"{TMP_PREFIX}{os.getpid()}-old-{target.name}")
        target.rename(old)
    new.rename(target)
    if old is not None and old.is_symlink():
        old.unlink()
    elif old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- the public entry points ------------------------------------------------------------------


def with_counts(spec: DatasetSpec, expected: Mapping[str, int]) -> DatasetSpec:
    """``spec`` expecting other counts: ``{"Atypical": a, "Normal": n[, "train": rows]}``."""
    unknown = set(expected) - {*CLASSES, "train"}
    if unknown:
        raise ValueError(f"unknown count keys: {', '.join(sorted(unknown))}")
    counts = {c: expected.get(c, spec.counts[c]) for c in CLASSES}
    return dataclasses.replace(spec, counts=counts,
                               split_rows=expected.get("train", spec.split_rows))


def download(
    name: str, dest: str | os.PathLike[str], url: str | None = None, force: bool = False,
    quiet: bool = True, expected_counts: Mapping[str, int] | None = None,
) -> DownloadResult:
    """Fetch, check and lay out dataset ``name`` under ``dest``.

    ``expected_counts`` replaces the registry's counts (``{"Atypical", "Normal"[, "train"]}``),
    e.g. for small test archives.
    """
    specs = dict(DATASETS)
    if expected_counts is not None:
        if name not in specs:
            raise BadInputError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
        specs[name] = with_counts(specs[name], expected_counts)
    return download_many([name], dest, url=url, force=force, quiet=quiet, specs=specs)[0]


def download_many(
    names: Iterable[str], dest: str | os.PathLike[str], url: str | None = None,
    force: bool = False, quiet: bool = True, specs: Mapping[str, DatasetSpec] | None = None,
) -> list[DownloadResult]:
    """Like :func:`download` for several datasets from one fetch of the archive.

    Either every dataset that needed work is in place afterwards or none is touched.
    """
    specs = DATASETS if specs is None else specs
    wanted = list(dict.fromkeys(names))
    unknown = [n for n in wanted if n not in specs]
    if unknown or not wanted:
        raise BadInputError(f"unknown dataset {', '.join(map(repr, unknown)) or '(none)'}; "
                            f"known: {', '.join(specs)}")
    dest = Path(dest).expanduser()
    if dest.exists() and not dest.is_dir():
        raise BadInputError(f"{dest}: not a folder")
    created = not dest.exists()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"{dest}: cannot create ({exc.strerror or exc})") from None
    try:
        clean_stale(dest)
        todo = [n for n in wanted if force or not is_installed(dest / n, specs[n])]
        _refuse_foreign([dest / n for n in todo], force)
        built = _build_all(todo, specs, dest, url or os.environ.get(URL_ENV) or DEFAULT_URL,
                           quiet) if todo else {}
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    return [DownloadResult(n, dest / n, n in built, built.get(n) or _recorded(dest / n) or {})
            for n in wanted]


def _refuse_foreign(targets: list[Path], force: bool) -> None:
    """Never replace, without --force, a non-empty folder that no download of ours wrote."""
    for target in targets:
        if force or not target.exists():
            continue
        if not target.is_dir() or (_recorded(target) is None and any(target.iterdir())):
            raise BadInputError(f"{target} exists and was not written by `wsi-atm datasets "
                                "download`; move it away or pass --force to replace it")


def _build_all(names: list[str], specs: Mapping[str, DatasetSpec], dest: Path, source: str,
               quiet: bool) -> dict[str, dict[str, int]]:
    """Fetch ``source`` once, build every dataset in a temp folder, then rename them all."""
    local = local_path(source)
    fetched: Path | None = None
    sha: str | None = None
    if local is None or not local.is_dir():
        fetched, sha = fetch(source, dest, quiet)
    work: dict[str, Path] = {}
    counts: dict[str, dict[str, int]] = {}
    try:
        archive = open_archive(fetched or local or Path(source), source)
        try:
            for n in names:
                work[n] = Path(tempfile.mkdtemp(dir=dest, prefix=f"{TMP_PREFIX}{os.getpid()}-"))
                counts[n] = build(archive, specs[n], work[n], quiet)
                record = _record(n, source, sha, commit_of(archive.names), counts[n])
                (work[n] / RECORD).write_text(json.dumps(record, indent=2) + "\n",
                                              encoding="utf-8")
        finally:
            archive.close()
        for n in names:
            replace_dir(work.pop(n), dest / n)
    finally:
        if fetched is not None:
            fetched.unlink(missing_ok=True)
        for path in work.values():
            shutil.rmtree(path, ignore_errors=True)
    return counts


def _record(name: str, source: str, sha: str | None, commit: str | None,
            counts: dict[str, int]) -> dict[str, object]:
    return {
        "dataset": name,
        "source": source,
        "upstream_repository": f"https://github.com/{UPSTREAM_REPO}",
        "upstream_commit": UPSTREAM_COMMIT,
        "archive_commit": commit,
        "archive_sha256": sha,
        "counts": counts,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "wsi_atm_version": __version__,
    }
