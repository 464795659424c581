"""Reading the small CSV/TSV tables a user supplies (the split CSV, a groups table), with every
fault one ``BadInputError``. Light on imports: ``datasets download`` checks its split CSV with it
without loading torch."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from wsi_atm.errors import BadInputError


def read_rows(path: Path, what: str = "", delimiter: str | None = ",") -> list[dict[str, str]]:
    """A CSV's rows, each with exactly the header's cells; ``what`` names the table in
    messages, ``delimiter`` None takes a tab if the header line has one, else a comma.
    Regression: a BOM hid the first column; text not in UTF-8, a row with a missing or an
    extra cell (or a quote left open) and a cell over csv's field limit were internal errors
    (exit 1) or misread."""
    name = f"{what} {path}" if what else str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInputError(f"cannot read {name}: {exc.strerror}") from None
    return parse_rows(data, name, str(path), delimiter)


def parse_rows(data: bytes, name: str, where: str,
               delimiter: str | None = ",") -> list[dict[str, str]]:
    """:func:`read_rows` of a table's bytes: ``name`` says what is not UTF-8, ``where`` starts
    the other messages. Regression: a table of a header and no rows was said to lack the
    header's columns."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{name} is not UTF-8 text ({exc.reason} at byte "
                            f"{exc.start})") from None
    if delimiter is None:
        delimiter = "\t" if "\t" in next(iter(text.splitlines()), "") else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = []
    try:
        for row in reader:
            extra = row.pop(None, None)  # cells past the header
            if None in row.values():
                raise BadInputError(f"{where}: line {reader.line_num} has fewer cells than "
                                    "the header")
            if any(cell.strip() for cell in extra or ()):
                raise BadInputError(f"{where}: line {reader.line_num} has more cells than "
                                    "the header")
            rows.append(row)
    except csv.Error as exc:
        # the DictReader's own line_num is only updated after a row is read
        raise BadInputError(f"{where}: line {reader.reader.line_num}: unreadable table: "
                            f"{exc}") from None
    if not rows and reader.fieldnames:
        raise BadInputError(f"{where}: no rows below the header")
    return rows
