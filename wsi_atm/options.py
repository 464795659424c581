"""What a run was asked to do, in three parts shared by ``classify`` and ``batch``.

``OpenOptions``: how to open a slide. ``CallOptions``: how probabilities become calls, flags
and the hotspot (they change numbers in every output). ``OutputOptions``: which files and how
they look. The batch completion key holds all three.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from wsi_atm.errors import OptionError

Shape = Literal["point", "circle"]
SHAPES: tuple[str, ...] = ("point", "circle")

REVIEW_BAND = 0.10
REVIEW_FOLD_STD = 0.15
HOTSPOT_AREA_MM2 = 2.0
MAX_HOTSPOT_AREA_MM2 = 1000.0  # a whole large section; beyond it the field is no hotspot


# µm/px a slide can have: from ~0.05 (beyond 100× optics) to 20 (a low-power overview). The
# same range decides which TIFF resolution tags are believed (slides/mpp.py).
MPP_RANGE = (0.05, 20.0)


def check_mpp(mpp: float | None) -> float | None:
    """A µm/px override: None, or a number in :data:`MPP_RANGE` (--mpp 1e-4 asked for a
    286 GiB crop window)."""
    if mpp is not None and not (isinstance(mpp, int | float) and math.isfinite(mpp) and mpp > 0):
        raise OptionError(f"--mpp must be a positive number of µm per pixel, got {mpp!r}")
    if mpp is not None and not MPP_RANGE[0] <= mpp <= MPP_RANGE[1]:
        raise OptionError(f"--mpp {mpp:g} µm per pixel is not a slide's: expected "
                          f"{MPP_RANGE[0]:g} to {MPP_RANGE[1]:g}")
    return mpp


def check_out_dir(out_dir: Path, flag: str = "--out-dir") -> Path:
    """An output folder: one that exists or can be made, and written to (a file in the way or
    a read-only folder is bad input, found before any work instead of when the outputs are
    written)."""
    # Regression: a link to a folder not yet made (results -> /scratch/results) passed, then
    # mkdir failed on it once the slide was classified: an internal error (FileExistsError)
    for folder in (out_dir, *out_dir.parents):
        if folder.is_symlink() and not folder.exists():
            raise OptionError(f"{flag} {out_dir}: {folder} is a link to {os.readlink(folder)}, "
                              "which does not exist: make that folder or choose another")
    # resolved first: "missing/../ro" named a folder that does not exist, so the check went
    # on to ro's parent and passed a read-only ro
    resolved = out_dir.resolve()
    for folder in (resolved, *resolved.parents):
        if folder.exists():
            if not folder.is_dir():
                raise OptionError(f"{flag} {out_dir}: {folder} is a file, not a folder")
            if not _can_make_in(folder):
                raise OptionError(f"{flag} {out_dir}: {folder} cannot be written to")
            break
    return out_dir


def _can_make_in(folder: Path) -> bool:
    """Whether a folder can be made in ``folder``, tried (and removed at once). Permission bits
    do not tell: a read-only mount, or /proc, where root's access() says yes and mkdir fails
    (that run failed at its end, after classifying, exit 1)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".wsi-atm-probe-", dir=folder))
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class OpenOptions:
    """How to open a slide: the reading library and a µm/px override."""

    backend: str = "auto"
    mpp: float | None = None
    mpp_origin: str = "--mpp"  # who gave ``mpp``: said in its source and warnings

    def __post_init__(self) -> None:
        check_mpp(self.mpp)


@dataclass(frozen=True)
class CallOptions:
    """How probabilities become calls, review flags and the hotspot.

    A classified candidate is flagged for review when ``|p - threshold| <= review_band`` or,
    with more than one fold model, when the fold models' standard deviation of p reaches
    ``review_fold_std``.
    """

    threshold: float | None = None  # None: the card's
    review_band: float = REVIEW_BAND
    review_fold_std: float = REVIEW_FOLD_STD
    hotspot_area_mm2: float = HOTSPOT_AREA_MM2

    def __post_init__(self) -> None:
        # Regression: --threshold nan passed click's [0, 1] range and called every mitosis normal
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise OptionError(f"--threshold must be between 0 and 1, not {self.threshold}")
        if not 0 <= self.review_band <= 0.5:
            raise OptionError(f"--review-band must be between 0 and 0.5, not {self.review_band}")
        if not 0 < self.review_fold_std <= 0.5:
            raise OptionError("--review-fold-std must be above 0 and at most 0.5 (the largest "
                              f"spread of probabilities), not {self.review_fold_std}")
        area = self.hotspot_area_mm2
        if not (math.isfinite(area) and 0 < area <= MAX_HOTSPOT_AREA_MM2):
            # the limit said: "must be a positive area" for 5000 read as a contradiction
            raise OptionError(f"--hotspot-area must be a positive area of at most "
                              f"{MAX_HOTSPOT_AREA_MM2:g} mm², not {area}")


@dataclass(frozen=True)
class OutputOptions:
    """Which outputs to write beside the GeoJSON, CSV and summary, and how they look."""

    shape: Shape = "point"
    figure: bool = True  # the review PNG
    review_class: bool = False  # flagged calls get their own QuPath class
    points_json: bool = False  # <stem>.points.json (grand-challenge points, mm)
