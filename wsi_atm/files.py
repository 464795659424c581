"""File safety, in one place: atomic writes (a killed or failing run never leaves a half-written
file behind) and sha256 digests (cached per path, size and mtime in this process).

Data goes to a hidden temp file in the destination's directory (same file system, so the
rename is atomic), is fsynced, then ``os.replace``d onto the destination. On any exception the
temp file is removed and an existing destination is left untouched.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import secrets
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import TextIO


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(directory: Path) -> None:
    """Make the renames done in ``directory`` durable (where the file system allows)."""
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform/file system allows it.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path``, on error it is removed.

    The caller writes the complete file to the yielded path (by any means: PIL, numpy, ...).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_text_file(path: str | os.PathLike[str]) -> Iterator[TextIO]:
    """A text file (UTF-8, no newline translation) written piece by piece and put in place
    only when complete: large outputs stream to disk instead of being built in memory."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        yield fh


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (no newline translation)."""
    atomic_write_bytes(path, text.encode(encoding))


def remove_temps(path: str | os.PathLike[str]) -> None:
    """Remove the temp files a killed write of ``path`` may have left (``.<name>.<hex>.tmp``)."""
    target = Path(path)
    # ".name.*.tmp", and "..name.*.tmp": the temp of a staged ".name.<hex>.tmp" (pipeline)
    for prefix in (f".{target.name}.", f"..{target.name}."):
        for tmp in target.parent.glob(glob.escape(prefix) + "*.tmp"):
            tmp.unlink(missing_ok=True)


def utf8_name(path: str | os.PathLike[str]) -> bool:
    """Whether a path is valid UTF-8 (Python keeps other bytes as lone surrogates, which no
    UTF-8 output, JSON, CSV or GeoJSON, can hold)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(path: str | os.PathLike[str]) -> str:
    """A path as text any UTF-8 output can hold: bytes that are not UTF-8 as \\x escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=64)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def file_sha256(path: Path) -> str:
    """sha256 of a file, computed once per (path, size, mtime) in this process."""
    st = path.stat()
    return _cached_sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)
