"""tifffile's complaints while a slide is opened: said only when it opens.

A file that fails to open gets one error line that says what is wrong with it; tifffile's
warnings about the same damage ("invalid offset to first page …") came before it as noise.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

TIFFFILE = "tifffile"


@contextlib.contextmanager
def tifffile_records_held() -> Iterator[None]:
    """Hold the records tifffile logs in this thread during the block; pass them on after it
    when it succeeds, drop them when it raises. Other threads' records (a batch reads one
    slide while it opens the next) pass as usual."""
    logger = logging.getLogger(TIFFFILE)
    me = threading.get_ident()
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        if record.thread == me:
            held.append(record)
            return False
        return True

    logger.addFilter(hold)
    try:
        yield
    finally:
        logger.removeFilter(hold)
    for record in held:  # reached only when the block did not raise
        logger.handle(record)
