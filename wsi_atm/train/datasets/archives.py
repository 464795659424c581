"""Reading the upstream archive (zip, tar.gz, an unpacked folder, zips inside it) and finding a
dataset's crops and files in it by name."""

from __future__ import annotations

import io
import re
import tarfile
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Protocol

from wsi_atm.errors import BadInputError
from wsi_atm.train.datasets.specs import CLASSES, Crop, DatasetSpec

# --- archives -------------------------------------------------------------------------------


class Archive(Protocol):
    names: list[str]  # member paths of regular files, '/'-separated

    def read(self, name: str) -> bytes: ...

    def size(self, name: str) -> int: ...  # bytes once read (a zip's declared size bounds it)

    def close(self) -> None: ...


_READ_ERRORS = (zipfile.BadZipFile, tarfile.TarError, zlib.error, OSError, EOFError, KeyError)


class ZipArchive:
    def __init__(self, path: Path) -> None:
        self._zip = zipfile.ZipFile(path)
        self.names = [i.filename for i in self._zip.infolist() if not i.is_dir()]

    def read(self, name: str) -> bytes:
        return self._zip.read(name)

    def size(self, name: str) -> int:
        return self._zip.getinfo(name).file_size

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

    def size(self, name: str) -> int:
        return self._members[name].size

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

    def size(self, name: str) -> int:
        return (self._root / name).stat().st_size

    def close(self) -> None:
        pass


class NestedArchive:
    """``outer`` with the zips in ``nested`` opened in place (``x/D.zip`` reads as ``x/D/``)."""

    def __init__(self, outer: Archive, nested: list[str]) -> None:
        self._outer = outer
        self._inner: dict[str, tuple[zipfile.ZipFile, str]] = {}
        for member in nested:
            try:
                z = zipfile.ZipFile(io.BytesIO(read_member(outer, member, MAX_ZIP_BYTES)))
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

    def size(self, name: str) -> int:
        if name in self._inner:
            z, inner = self._inner[name]
            return z.getinfo(inner).file_size
        return self._outer.size(name)

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


# Members are read whole into memory: a zip bomb (a few MB declaring many GB) is refused before
# it is unpacked. Crops are 128-px PNGs and CSV files of a few thousand rows (kB each); only a
# dataset's own zip inside the archive is large (hundreds of MB).
MAX_FILE_BYTES = 64 << 20
MAX_ZIP_BYTES = 4 << 30


def read_member(archive: Archive, name: str, limit: int = MAX_FILE_BYTES) -> bytes:
    try:
        size = archive.size(name)
        if size > limit:
            raise BadInputError(f"archive member {name}: {size:,} bytes, more than such a file "
                                f"can hold ({limit:,}): a damaged or malicious archive")
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

