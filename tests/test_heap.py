"""The pinned mmap threshold (wsi_atm/heap.py): tile-sized blocks freed and allocated over and
over (the tile cache's churn) stay off the heap, so it cannot fragment and grow (glibc only)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

# An LRU of 50 tile-sized arrays churned 1000 times, with long-lived small objects allocated in
# between (as a real run does); prints how far the heap (mallinfo2().arena) grew, in bytes.
CHURN = """
import collections, ctypes, sys
import numpy as np

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "pin":
    from wsi_atm.heap import pin_mmap_threshold
    assert pin_mmap_threshold()
start, peak = libc.mallinfo2().arena, 0
tiles, small = collections.deque(), []
for _ in range(1000):
    tiles.append(np.ones((256, 256, 3), np.uint8))
    small.append(bytearray(3000))
    if len(tiles) > 50:
        tiles.popleft()
    peak = max(peak, libc.mallinfo2().arena)
print(peak - start)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc's malloc only")
def test_tile_churn_stays_off_the_heap_once_pinned() -> None:
    # Regression: peak RSS of 20,000 candidates was 16 % above 500 candidates' (heap growth).
    # glibc turns the dynamic threshold off whenever a MALLOC_* tuning variable is set (dask,
    # imported by other tests, sets MALLOC_TRIM_THRESHOLD_): measure glibc's own default
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}

    def growth(mode: str) -> int:
        return int(subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True,
                                  text=True, check=True, timeout=60, env=env).stdout)

    tiles = 50 * 256 * 256 * 3
    default, pinned = growth("default"), growth("pin")
    assert default - pinned > tiles // 2  # by default the live tiles sit in the heap
    assert pinned < 1000 * 3000 * 1.5  # pinned, the heap holds only the small objects
