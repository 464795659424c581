"""Progress bars on stderr, hidden when stderr is not a terminal or when asked to be quiet."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int | None, desc: str, quiet: bool = False, unit: str = "it") -> tqdm:
    return tqdm(
        total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True,
        disable=quiet or sys.stderr is None or not sys.stderr.isatty(),
    )
