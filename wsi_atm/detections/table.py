"""CSV / TSV detection tables: a header row with x/y columns, optional score, label and id."""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from wsi_atm.detections.images import ImageInfo, names_match, select_image
from wsi_atm.detections.records import RawDetections, is_imposter_name, one_line
from wsi_atm.errors import DetectionsError

DELIMITERS = ("\t", ",", ";", "|")
_PREFIXES = ("", "centroid_", "center_", "centre_")
_SUFFIXES = {"": None, "_px": "px", "_um": "um", "_µm": "um", "_μm": "um", "_mm": "mm"}
XY_ALIASES: dict[str, tuple[str, str | None]] = {
    f"{pre}x{suf}": (f"{pre}y{suf}", unit) for pre in _PREFIXES for suf, unit in _SUFFIXES.items()
}
# QuPath's measurement export ("Centroid X µm") is the one producer of these names; its
# coordinates are in QuPath's frame, which starts at openslide.bounds-x/y (as its GeoJSON).
# QuPath always writes the µ (GeneralTools.micrometerSymbol): "centroid_x_um" is a detector's
# own name, in OpenSlide's frame like its x_um (it was shifted by the bounds offset).
QUPATH_XY = ("centroid_x_µm", "centroid_x_μm")
# An uncalibrated image's export says "Centroid X px": only that exact spelling is taken for
# QuPath's, as "centroid_x_px" is a common name for a detector's own columns.
QUPATH_PX = "Centroid X px"
SCORE_ALIASES = ("score", "probability", "confidence", "prob", "detector_score")
LABEL_ALIASES = ("label", "class", "classification", "class_name", "category", "name")
ID_ALIASES = ("id", "uid", "object_id", "candidate_id")
# QuPath's measurement export of several images has an "Image" column; detectors' tables
# covering a cohort name the slide (regression: a cohort table's "slide_id" column was not
# seen, and every slide's rows landed on each slide). Not "filename" or "file_name": detectors
# name each candidate's patch so.
IMAGE_ALIASES = ("image", "image_name", "slide", "slide_name", "slide_id", "image_id")


def accepted_xy_text() -> str:
    return "x,y / centroid_x,centroid_y / x_px,y_px, any case, optionally _um or _mm"


@dataclass(frozen=True)
class Columns:
    delimiter: str
    x: int
    y: int
    units: str | None
    qupath_frame: bool
    score: int | None
    label: int | None
    id: int | None
    image: int | None = None
    ambiguity: str = ""  # why the x/y columns cannot be told apart, if they cannot


def _norm(name: str) -> str:
    return re.sub(r"[\s\-.()\[\]]+", "_", name.strip().lstrip("\ufeff").lower()).strip("_")


def _first(names: list[str], aliases: tuple[str, ...]) -> int | None:
    for alias in aliases:
        if alias in names:
            return names.index(alias)
    return None


_SEP_LINE = re.compile(r"\A\ufeff?sep=[\t,;|]\r?(?=\n|\r|\Z)")


def _without_sep_line(text: str) -> str:
    """The table without Excel's ``sep=;`` first line (its delimiter hint), blanked so line
    numbers stay the file's. Regression: such files were refused as having no x/y header."""
    return _SEP_LINE.sub("", text, count=1)


def _header(text: str) -> str | None:
    for line in _without_sep_line(text).splitlines():
        if line.strip():
            return line
    return None


def _ambiguity(names: list[str], cells: list[str]) -> str:
    """Why the header's coordinates are ambiguous ("" if they are not): a column named twice,
    or two coordinate pairs (x,y and x_um,y_um), of which wsi-atm would silently pick one."""
    pairs = _pairs(names)
    used = [p for p in pairs if (p[2] in (None, "px")) == (pairs[0][2] in (None, "px"))]
    twice = sorted({c.strip() for c, n in zip(cells, names, strict=True)
                    if names.count(n) > 1 and any(n in pair[:2] for pair in used)})
    if twice:
        return f"the header names {', '.join(twice)} more than once"
    for kind in ("px", "physical"):  # a pixel pair beside a µm or mm pair is read in pixels
        same = [(x, y) for x, y, units in pairs if (units in (None, "px")) == (kind == "px")]
        if len(same) > 1 and (kind == "px" or len(same) == len(pairs)):
            shown = " and ".join(f"{cells[names.index(x)].strip()},"
                                 f"{cells[names.index(y)].strip()}" for x, y in same)
            return f"the header has two coordinate pairs, {shown}: keep one"
    return ""


def _pairs(names: list[str]) -> list[tuple[str, str, str | None]]:
    """Every x/y pair of the header (x name, y name, units), pixel pairs first."""
    found = [(x, y, units) for x, (y, units) in XY_ALIASES.items()
             if x in names and y in names]
    return sorted(found, key=lambda pair: pair[2] not in (None, "px"))


def find_columns(text: str) -> Columns | None:
    """The header's x/y (and optional) columns, trying each delimiter; ``None`` if it has none."""
    line = _header(text)
    if line is None:
        return None
    for delimiter in DELIMITERS:
        if delimiter not in line:
            continue
        try:
            cells = next(csv.reader([line], delimiter=delimiter))
        except csv.Error:  # e.g. a cell over csv's field limit: not this delimiter's header
            continue
        names = [_norm(c) for c in cells]
        for x_name, y_name, units in _pairs(names)[:1]:
            x = names.index(x_name)
            return Columns(
                ambiguity=_ambiguity(names, cells),
                delimiter=delimiter,
                x=x,
                y=names.index(y_name),
                units=units,
                qupath_frame=x_name in QUPATH_XY
                or cells[x].strip().lstrip("\ufeff") == QUPATH_PX,
                score=_first(names, SCORE_ALIASES),
                label=_first(names, LABEL_ALIASES),
                id=_first(names, ID_ALIASES),
                image=_first(names, IMAGE_ALIASES),
            )
    return None


def _number(row: list[str], index: int, what: str, where: str, name: str) -> float:
    cell = row[index].strip() if index < len(row) else ""
    try:
        return float(cell)
    except ValueError:
        raise DetectionsError(f"{name}: {where}: {what} value {cell!r} is not a number") from None


def _cell(row: list[str], index: int | None) -> str:
    return row[index].strip() if index is not None and index < len(row) else ""


@dataclass
class _Rows:
    """A table's rows as read, before choosing the slide's."""

    ids: list[str]
    xs: list[float]
    ys: list[float]
    scores: list[float]
    labels: list[str]
    images: list[str]
    lines: list[int]

    def subset(self, keep: list[bool]) -> _Rows:
        def pick(values: list[Any]) -> list[Any]:
            return [v for v, k in zip(values, keep, strict=True) if k]

        return _Rows(pick(self.ids), pick(self.xs), pick(self.ys), pick(self.scores),
                     pick(self.labels), pick(self.images), pick(self.lines))


def _records(text: str, delimiter: str, name: str) -> Iterator[tuple[int, list[str]]]:
    """The table's rows with their line numbers. Regression: a file with CR line endings
    (Excel for Mac's "CSV (Macintosh)") and a cell over csv's field limit were internal
    errors (csv.Error), exit 1."""
    # newline="": csv sees the line endings itself, CR alone among them
    text = _without_sep_line(text).lstrip("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    start = 1  # the line the row being read starts on
    # The row read last, yielded once another follows: a quote left open swallows the rest of
    # the file, so only the last row can have swallowed rows (regression: a legitimate
    # multi-line cell earlier was blamed, and a harmless open quote on the last line refused)
    held: tuple[int, int, list[str]] | None = None
    try:
        for row in reader:
            if held is not None:
                yield held[1], held[2]
            held = (start, reader.line_num, row)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DetectionsError(f"{name}: line {reader.line_num}: unreadable table: "
                              f"{one_line(exc)}") from None
    if held is None:
        return
    first, last, row = held
    if last > first and _open_at_end(text, delimiter, first):
        raise DetectionsError(
            f"{name}: line {first}: a quote opened in this row is never closed, so "
            "the rest of the file would be read as one cell")
    yield last, row


def _open_at_end(text: str, delimiter: str, first: int) -> bool:
    """Whether the table, read from line ``first`` on, ends inside a quoted cell. Regression:
    the rows after a quote left open were read as that cell's text, and so silently
    dropped."""
    lines = io.StringIO(text, newline="").readlines()[first - 1:]
    strict = csv.reader(lines, delimiter=delimiter, strict=True)
    try:
        for _ in strict:
            pass
    except csv.Error as exc:
        return "unexpected end of data" in str(exc)
    return False


def _check_width(row: list[str], width: int, delimiter: str, where: str, name: str) -> None:
    """Refuse a row with filled cells beyond the header's. Regression: "1234,5,567,8" under
    "x,y" (decimal commas in a comma-separated file) was read as x=1234, y=5, and R's
    write.table (row names, no header cell for them) as x = the row name, silently."""
    if any(cell.strip() for cell in row[width:]):
        shown = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "bar"}[delimiter]
        commas = "decimal commas in a comma-separated file, " if delimiter == "," else ""
        raise DetectionsError(
            f"{name}: {where} has {len(row)} cells but the header {width} (an unquoted "
            f"{shown} inside a value, {commas}or row names without a header cell?): its "
            "values would land in the wrong columns"
        )


def _rows(text: str, cols: Columns, name: str) -> _Rows:
    rows = _Rows([], [], [], [], [], [], [])
    width = 0  # the header's cells; 0 until it is seen
    for line, row in _records(text, cols.delimiter, name):
        if not any(cell.strip() for cell in row):
            continue
        if not width:
            width = len(row)
            continue
        where = f"line {line}"
        _check_width(row, width, cols.delimiter, where, name)
        rows.xs.append(_number(row, cols.x, "x", where, name))
        rows.ys.append(_number(row, cols.y, "y", where, name))
        score = math.nan
        if _cell(row, cols.score):
            score = _number(row, cols.score, "score", where, name)  # type: ignore[arg-type]
        rows.scores.append(score)
        rows.labels.append(_cell(row, cols.label))
        # without an id column, the row's index; a blank cell in one, an id no number
        # in that column can equal
        fallback = str(len(rows.ids)) if cols.id is None else f"line {line}"
        rows.ids.append(_cell(row, cols.id) or fallback)
        rows.images.append(_cell(row, cols.image))
        rows.lines.append(line)
    return rows


def _this_slide(rows: _Rows, slide_name: str, wanted: str | None,
                name: str) -> tuple[_Rows, str | None, list[str]]:
    """The rows of the slide's image when the table names images (its rows, the image's name,
    warnings); all rows when it names one image and none was asked for."""
    distinct = list(dict.fromkeys(v for v in rows.images if v))
    if not distinct:
        return rows, None, []
    if len(distinct) == 1 and not wanted:
        if names_match(distinct[0], slide_name):
            return rows, distinct[0], []
        return rows, distinct[0], [f"the table's rows name image {distinct[0]!r}, not the "
                                   f"slide {slide_name!r}: is it the right file?"]
    if len(distinct) > 1 and "" in rows.images:
        line = rows.lines[rows.images.index("")]
        raise DetectionsError(f"{name}: line {line} names no image, but the table holds "
                              f"{len(distinct)} images' rows")
    chosen = select_image([ImageInfo(id=v, name=v) for v in distinct], slide_name, wanted, name)
    return rows.subset([v == chosen.name for v in rows.images]), chosen.name, []


def read_table(text: str, name: str, slide_name: str = "",
               wanted: str | None = None) -> RawDetections:
    """Rows of a CSV/TSV as candidates (units from the column names, else pixels); when the
    table names images (QuPath's measurement export of a project), the rows of the slide
    ``slide_name``'s image, or of the image ``wanted``."""
    cols = find_columns(text)
    if cols is None:  # pragma: no cover - sniffing guarantees columns
        raise DetectionsError(f"{name}: no x/y columns ({accepted_xy_text()})")
    if cols.ambiguity:  # Regression: x,x,y or x,y plus x_um,y_um silently used one column
        raise DetectionsError(f"{name}: {cols.ambiguity}")
    # Regression: a QuPath export of several images put every image's cells on this slide
    rows, image, warnings = _this_slide(_rows(text, cols, name), slide_name, wanted, name)
    lines = rows.lines
    return RawDetections.build(
        rows.ids,
        rows.xs,
        rows.ys,
        rows.scores,
        rows.labels,
        [is_imposter_name(label) for label in rows.labels],
        units=cols.units or "px",
        units_declared=cols.units is not None,
        qupath_frame=cols.qupath_frame,
        image=image,
        warnings=warnings,
        row_label=lambda i: f"line {lines[i]}",
    )


def table_images(text: str, name: str) -> list[ImageInfo]:
    """The images a table's rows name (its Image/slide column), with their row counts; empty
    for a table of one slide's detections."""
    cols = find_columns(text)
    if cols is None or cols.image is None:
        return []
    counts: dict[str, int] = {}
    for value in _rows(text, cols, name).images:
        if value:
            counts[value] = counts.get(value, 0) + 1
    return [ImageInfo(id=v, name=v, counts={"rows": n}) for v, n in counts.items()]
