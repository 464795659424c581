"""Keep the C heap from growing with the number of candidates (glibc only).

The crop engine allocates and frees a ~200 KB RGB array per decoded tile, from several threads.
glibc's malloc serves blocks that size with mmap at first, but every free of such a block
raises its mmap threshold, after which they come from the threads' heap arenas, which fragment
and do not shrink: measured on 20,000 candidates, peak RSS grew 16 % over a 500-candidate run.
Pinning the threshold at glibc's default of 128 KiB keeps large blocks on mmap (returned to the
system when freed); peak RSS then no longer depends on the candidate count (measured: 20,000
candidates 741 MB vs 500 candidates 747 MB). A process-wide setting: the commands that
stream crops (classify, batch workers) call it; training, whose large tensors would then
page-fault on every allocation, does not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h
MMAP_THRESHOLD_BYTES = 128 * 1024


def pin_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold (stops its dynamic growth); False where not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError) as exc:  # not the C library we expect: leave it be
        log.debug("mallopt unavailable (%s)", exc)
        return False
