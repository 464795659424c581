"""Loading a detection file and recognising its format from content (never the extension)."""

from __future__ import annotations

import codecs
import gzip
import json
import os
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi_atm.detections import midog, table
from wsi_atm.detections.records import (
    CSV,
    EMPTY,
    GC_POINTS,
    MIDOG_JSON,
    QUPATH_GEOJSON,
    SLIDERUNNER,
    one_line,
    supported_formats_text,
)
from wsi_atm.errors import DetectionsError

SQLITE_MAGIC = b"SQLite format 3\x00"
GZIP_MAGIC = b"\x1f\x8b"
GC_TYPES = ("multiple points", "mulitple points")
_CACHE_SIZE = 4


@dataclass(frozen=True)
class Loaded:
    """A recognised file: its format and what its reader needs.

    ``payload`` is a ``MidogIndex`` (MIDOG JSON), the parsed JSON (points, GeoJSON), the text
    (CSV/TSV), the path (SQLite) or ``None`` (empty file). Cached: never mutate it.
    """

    fmt: str
    payload: Any
    path: Path


_cache: OrderedDict[tuple[str, int, int], Loaded] = OrderedDict()
_cache_lock = threading.Lock()


def load(path: str | os.PathLike[str]) -> Loaded:
    """Read and recognise ``path``; the result is cached on (path, mtime, size) and read-only."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise DetectionsError(f"detection file not found: {p}") from None
    except OSError as exc:
        raise DetectionsError(f"cannot read detection file {p}: {one_line(exc)}") from None
    if not p.is_file():
        raise DetectionsError(f"detection file is not a regular file: {p}")
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    loaded = _load_uncached(p)
    with _cache_lock:
        _cache[key] = loaded
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return loaded


def _load_uncached(p: Path) -> Loaded:
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise DetectionsError(f"cannot read detection file {p}: {one_line(exc)}") from None
    if data.startswith(SQLITE_MAGIC):
        return Loaded(SLIDERUNNER, p, p)
    if data.startswith(GZIP_MAGIC):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DetectionsError(f"{p.name}: corrupt gzip file: {one_line(exc)}") from None
        if data.startswith(SQLITE_MAGIC):
            raise DetectionsError(f"{p.name}: gzip-compressed SQLite is not supported; unpack it")
    text = _text(data, p)
    stripped = text.lstrip()
    if not stripped:
        return Loaded(EMPTY, None, p)
    if stripped[0] in "{[":
        doc = parse_json(text, p.name)
        fmt = json_format(doc, p.name)
        return Loaded(fmt, midog.index(doc, p.name) if fmt == MIDOG_JSON else doc, p)
    if table.find_columns(text) is not None:
        return Loaded(CSV, text, p)
    first = stripped.splitlines()[0][:80]
    if any(d in first for d in table.DELIMITERS):
        raise _unknown(
            p,
            f"delimited text whose header ({first!r}) has no x/y columns "
            f"(accepted: {table.accepted_xy_text()})",
        )
    raise _unknown(p, f"text starting {first!r}")


def _text(data: bytes, p: Path) -> str:
    """The file as text: UTF-8 (with or without a BOM), or UTF-16 with its BOM (Excel's
    "Unicode text" export)."""
    encoding = "utf-16" if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        if b"\0" in data[:4096]:
            raise _unknown(p, "binary content") from None
        raise DetectionsError(f"{p.name}: text that is not UTF-8 (nor UTF-16 with a byte-order "
                              "mark); save it as UTF-8") from None


def _unknown(p: Path | str, what: str) -> DetectionsError:
    name = p.name if isinstance(p, Path) else p
    return DetectionsError(
        f"{name}: unknown detection format ({what}); supported formats: {supported_formats_text()}"
    )


def parse_json(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DetectionsError(
            f"{name}: malformed JSON at line {exc.lineno} column {exc.colno}: {one_line(exc.msg)}"
        ) from None
    except RecursionError:
        raise DetectionsError(f"{name}: malformed JSON (nested too deeply)") from None
    except ValueError as exc:  # e.g. an integer longer than Python converts (4,300 digits)
        raise DetectionsError(f"{name}: unreadable JSON: {one_line(exc)}") from None


def json_format(doc: Any, name: str) -> str:
    """Which JSON format ``doc`` is, or a ``DetectionsError`` describing what it looks like."""
    if isinstance(doc, dict):
        kind = str(doc.get("type", "")).strip().lower()
        if "images" in doc and "annotations" in doc:
            return MIDOG_JSON
        if kind in GC_TYPES or (not kind and isinstance(doc.get("points"), list)):
            return GC_POINTS
        if kind in ("featurecollection", "feature"):
            return QUPATH_GEOJSON
        keys = one_line(", ".join(sorted(map(repr, doc))[:8]))
        what = f"JSON object with type {doc.get('type')!r} and keys {keys}"
    elif isinstance(doc, list):
        if all(isinstance(f, dict) and str(f.get("type", "")).lower() == "feature" for f in doc):
            return QUPATH_GEOJSON
        what = "JSON array whose items are not GeoJSON Features"
    else:
        what = f"JSON {type(doc).__name__}"
    raise _unknown(name, what)
