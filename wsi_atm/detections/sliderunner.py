"""SlideRunner SQLite databases (MIDOG++ ``.sqlite``): many slides, classes by name."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from wsi_atm.detections.images import ImageInfo, select_image, size_warning
from wsi_atm.detections.records import (
    CandidateOptions,
    RawDetections,
    SlideFrame,
    declared_size,
    one_line,
)
from wsi_atm.errors import DetectionsError

REQUIRED_TABLES = ("Slides", "Annotations", "Annotations_coordinates", "Classes")

_ANNOTATIONS = """
SELECT a.uid, c.name, AVG(co.coordinateX), AVG(co.coordinateY), COUNT(co.uid),
       SUM(typeof(co.coordinateX) NOT IN ('integer', 'real')
           OR typeof(co.coordinateY) NOT IN ('integer', 'real'))
FROM Annotations a
LEFT JOIN Classes c ON c.uid = a.agreedClass
LEFT JOIN Annotations_coordinates co ON co.annoId = a.uid
WHERE a.slide = ? AND COALESCE(a.deleted, 0) = 0
GROUP BY a.uid
ORDER BY a.uid
"""

_COUNTS = """
SELECT a.slide, COALESCE(c.name, ''), COUNT(*)
FROM Annotations a LEFT JOIN Classes c ON c.uid = a.agreedClass
WHERE COALESCE(a.deleted, 0) = 0
GROUP BY a.slide, c.name
"""


@contextmanager
def _connect(path: Path) -> Iterator[sqlite3.Connection]:
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise DetectionsError(f"{path.name}: cannot open SQLite file: {one_line(exc)}") from None
    with closing(conn):
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            missing = [t for t in REQUIRED_TABLES if t not in tables]
            if missing:
                raise DetectionsError(
                    f"{path.name}: SQLite file is not a SlideRunner database "
                    f"(missing tables: {', '.join(missing)})"
                )
            yield conn
        except sqlite3.Error as exc:
            raise DetectionsError(
                f"{path.name}: cannot read SlideRunner database: {one_line(exc)}"
            ) from None


def _images(conn: sqlite3.Connection, with_counts: bool) -> list[ImageInfo]:
    counts: dict[str, dict[str, int]] = {}
    if with_counts:
        for slide, cname, n in conn.execute(_COUNTS):
            counts.setdefault(str(slide), {})[cname] = int(n)
    return [
        ImageInfo(
            id=str(uid),
            name=str(filename or uid),
            width=declared_size(width),
            height=declared_size(height),
            counts=counts.get(str(uid), {}),
        )
        for uid, filename, width, height in conn.execute(
            "SELECT uid, filename, width, height FROM Slides ORDER BY uid"
        )
    ]


def list_slides(path: Path) -> list[ImageInfo]:
    with _connect(path) as conn:
        return _images(conn, with_counts=True)


def _check_class(conn: sqlite3.Connection, wanted: str, name: str) -> None:
    """Refuse a database with no class named ``wanted``, as MIDOG JSON's categories are.
    Regression: every annotation of a database naming its class "Mitosis" was an imposter,
    zero candidates without a word."""
    classes = conn.execute("SELECT uid, name FROM Classes ORDER BY uid").fetchall()
    if not any(str(cname or "").strip().lower() == wanted.strip().lower()
               for _, cname in classes):
        names = one_line(", ".join(f"{uid}: {cname}" for uid, cname in classes)) or "none"
        raise DetectionsError(f"{name}: no class named {wanted!r} (classes: {names})")


def read_sliderunner(path: Path, frame: SlideFrame, options: CandidateOptions) -> RawDetections:
    wanted = options.mitosis_class.strip().lower()
    with _connect(path) as conn:
        image = select_image(_images(conn, with_counts=False), frame.name, options.image, path.name)
        _check_class(conn, options.mitosis_class, path.name)
        slide_uid: int | str = int(image.id) if image.id.lstrip("-").isdigit() else image.id
        rows = conn.execute(_ANNOTATIONS, (slide_uid,)).fetchall()
    ids, xs, ys, labels, imposters = [], [], [], [], []
    empty = 0
    for uid, cname, x, y, n, not_numbers in rows:
        if n == 0:
            empty += 1
            continue
        if not_numbers:  # SQLite averages text as 0: a silent corner, not an error
            raise DetectionsError(
                f"{path.name}: annotation {uid} has a coordinate that is not a number"
            )
        label = str(cname or "")
        ids.append(str(uid))
        xs.append(math.nan if x is None else float(x))
        ys.append(math.nan if y is None else float(y))
        labels.append(label)
        imposters.append(label.strip().lower() != wanted)
    warnings = size_warning(image, frame.width, frame.height)
    if empty:
        warnings.append(f"skipped {empty} annotation(s) without coordinates")
    return RawDetections.build(
        ids,
        xs,
        ys,
        [math.nan] * len(ids),
        labels,
        imposters,
        image=image.name,
        skipped=empty,
        warnings=warnings,
        row_label=lambda i: f"annotation uid {ids[i]}",
    )
