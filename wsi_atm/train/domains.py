"""Which acquisition domain each training crop comes from, for leave-one-group-out validation.

A crop's group is one of: its slide (``slide``), a column of the split CSV (``dataset``), or a
column of a slide → group table (``scanner``), read from ``--groups FILE`` or, for AMi-Br, from
the bundled ``amibr_domains.csv`` (derived from MIDOG++'s CC0 metadata by
``scripts/make_domain_table.py``: Aperio CS2, Hamamatsu S360, Hamamatsu XR, TUPAC16).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from wsi_atm.errors import BadInputError, OptionError
from wsi_atm.train.data import CropDataset
from wsi_atm.train.tables import read_rows

BUNDLED_TABLE = "amibr_domains.csv"


def bundled_table() -> Path:
    return Path(str(resources.files("wsi_atm.train") / BUNDLED_TABLE))


def read_group_table(path: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Columns and rows (keyed by ``slide``) of a CSV/TSV slide → group table."""
    rows = read_rows(path, "groups table", delimiter=None)
    columns = list(rows[0]) if rows else []
    if "slide" not in columns:
        raise BadInputError(f"{path}: a groups table needs a 'slide' column")
    table: dict[str, dict[str, str]] = {}
    for row in rows:
        # Regression: a slide listed again under another group silently took the last one
        if table.setdefault(row["slide"], row) != row:
            raise BadInputError(f"{path}: slide {row['slide']!r} is listed twice with "
                                "different groups")
    return columns, table


def crop_groups(data: CropDataset, group: str, table: Path | None = None) -> np.ndarray:
    """The group of every crop of ``data`` under the name ``group``."""
    if data.groups is None:
        raise OptionError("grouped validation needs a dataset with a slide per crop "
                          "(the AMi-Br split CSV)")
    if group == "slide":
        return data.groups
    if table is None and group in data.columns:
        return data.columns[group]
    path = table or bundled_table()
    columns, rows = read_group_table(path)
    if group not in columns:
        known = sorted({*data.columns, *columns[1:], "slide"})
        raise OptionError(f"--group {group}: no such column (known: {', '.join(known)})")
    missing = sorted({s for s in data.groups if s not in rows})
    if missing:
        raise BadInputError(
            f"{path}: {len(missing)} slides of the dataset have no {group} "
            f"(first: {missing[0]}); supply a table with --groups FILE")
    return np.array([rows[s][group] for s in data.groups])
