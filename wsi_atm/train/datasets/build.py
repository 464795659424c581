"""Checking and laying out one dataset, what is already installed, fetching the archive, and the
temporaries renamed into place only after every check passed."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

from PIL import Image

from wsi_atm.errors import BadInputError
from wsi_atm.progress import progress_bar
from wsi_atm.train.datasets.archives import (
    Archive,
    find_crops,
    find_file,
    read_member,
    with_nested,
)
from wsi_atm.train.datasets.specs import (
    CLASSES,
    CROP_SIZE,
    LFS_MAGIC,
    RECORD,
    TMP_PREFIX,
    Crop,
    DatasetSpec,
)
from wsi_atm.train.tables import parse_rows

# --- checks --------------------------------------------------------------------------------------


def check_png(data: bytes, name: str) -> None:
    """A ``CROP_SIZE``² RGB image, or a ``BadInputError`` naming the file."""
    if data.startswith(LFS_MAGIC):
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


def split_keys(data: bytes, spec: DatasetSpec) -> set[tuple[str, str]]:
    """(final_label, dataset_uid) of every row of the training-split CSV, checked.
    Regression: a CSV not in UTF-8 (or unreadable as a table) was an internal error and a row
    short of cells was reported as a final_label of None."""
    rows = parse_rows(data, spec.split_csv, spec.split_csv)
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
        train = split_keys(csv_bytes, spec)
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
    # Any case, as find_crops takes them. Regression: a crop named *.PNG was never counted, so
    # the dataset never read as installed and every run downloaded it again.
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())


def disk_counts(target: Path, spec: DatasetSpec) -> dict[str, int]:
    """Crops per class (and per split for AMi-Br) found in an installed dataset."""
    if not spec.split_csv:
        return {c: _pngs(target / c) for c in CLASSES}
    per_split = {s: {c: _pngs(target / s / c) for c in CLASSES} for s in ("train", "test")}
    counts = {c: per_split["train"][c] + per_split["test"][c] for c in CLASSES}
    return counts | {s: sum(per_split[s].values()) for s in per_split}


def recorded_counts(target: Path) -> dict[str, int] | None:
    try:
        counts = json.loads((target / RECORD).read_text(encoding="utf-8"))["counts"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return counts if isinstance(counts, dict) else None


def is_installed(target: Path, spec: DatasetSpec) -> bool:
    """``target`` holds ``spec`` as a previous download recorded and verified it."""
    recorded = recorded_counts(target)
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
