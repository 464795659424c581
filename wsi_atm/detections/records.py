"""The typed records the detection readers share: slide frame, options, report, candidates."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from wsi_atm.errors import OptionError


class CandidateStatus(StrEnum):
    """A candidate's status in ``Candidates.status`` and, after classification, in the result
    and the CSV's ``status`` column (the values are the strings written)."""

    OK = "ok"  # inside the slide, not classified yet
    OUTSIDE_SLIDE = "outside_slide"  # kept, never cropped
    CLASSIFIED = "classified"

MIDOG_JSON = "midog-json"
GC_POINTS = "gc-points"
SLIDERUNNER = "sliderunner-sqlite"
CSV = "csv"
QUPATH_GEOJSON = "qupath-geojson"
EMPTY = "empty"

SUPPORTED_FORMATS: tuple[str, ...] = (MIDOG_JSON, GC_POINTS, SLIDERUNNER, CSV, QUPATH_GEOJSON)

FORMAT_DESCRIPTIONS: dict[str, str] = {
    MIDOG_JSON: "MIDOG++/MIDOG21 COCO-like JSON",
    GC_POINTS: "grand-challenge 'Multiple points' JSON",
    SLIDERUNNER: "SlideRunner SQLite",
    CSV: "CSV/TSV with x,y columns",
    QUPATH_GEOJSON: "QuPath GeoJSON",
}

UNIT_ALIASES: dict[str, str] = {
    "px": "px",
    "pixel": "px",
    "pixels": "px",
    "um": "um",
    "µm": "um",
    "μm": "um",
    "micron": "um",
    "microns": "um",
    "mm": "mm",
}
MICRONS_PER_UNIT: dict[str, float] = {"um": 1.0, "mm": 1000.0}


# Candidates' level-0 coordinates count to a ten-thousandth of a pixel: the crop engine snaps
# them there before placing a window (crops.plan.window_origins) and the outputs write as many
# decimals (points.json in mm to match), so a coordinate read back from any of them, or from
# millimetres, or as a polygon's centroid, lands in the same crop. Without it 500.5 px written
# as 0.125125 mm came back as 500.49999999999994, and 1000.4996 written as 1000.500: each
# crop moved a pixel.
SNAP_DECIMALS = 4


def snap(v: np.ndarray | float) -> np.ndarray:
    """Level-0 coordinates to :data:`SNAP_DECIMALS`."""
    out: np.ndarray = np.round(np.asarray(v, np.float64), SNAP_DECIMALS)
    return out


def one_line(text: object) -> str:
    """``text`` with all whitespace runs (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


def as_float(value: object) -> float | None:
    """``value`` as a float, or None when it is not a number Python can hold as one (text,
    a list, an integer too large for a float: JSON allows any number of digits)."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None


def declared_size(value: object) -> int:
    """An image's declared width or height in a detection file; 0 (unknown) when it is not a
    usable number (text, infinite, too large for a float)."""
    size = as_float(value)
    return int(size) if size is not None and math.isfinite(size) and size > 0 else 0


def first_floats(values: object, count: int) -> list[float] | None:
    """The first ``count`` items of a JSON list as floats, or None when the list is shorter
    or one of them is not a number (:func:`as_float`)."""
    if not isinstance(values, list) or len(values) < count:
        return None
    found = [as_float(v) for v in values[:count]]
    return None if None in found else found  # type: ignore[return-value]


def supported_formats_text() -> str:
    return ", ".join(f"{name} ({FORMAT_DESCRIPTIONS[name]})" for name in SUPPORTED_FORMATS)


# Detector labels that mean "looks like a mitosis but is not one", the same in every reader
# (CSV label/class column, GeoJSON classification name, grand-challenge point name), compared
# case-insensitively with "_"/"-" read as spaces. Anything else, unknown names included, is
# kept as a candidate.
IMPOSTER_NAMES = frozenset({
    "imposter", "imposters", "mitotic imposter", "mitotic figure imposter", "non mitotic figure",
    "non mitotic", "nonmitotic figure", "not mitotic figure", "non mitosis", "no mitosis",
    "not mitosis", "hard negative", "mitotic like figure", "mitosis like figure", "mimic",
    "mitotic mimic",
    # the hard-negative classes of the canine MITOS_WSI datasets (SlideRunner) and of
    # COADEL/ODAEL: exported to a table or QuPath they were kept as mitoses
    "mitotic figure lookalike", "mitotic figure look alike", "mitotic cell lookalike",
    "mitotic cell look alike", "mitosis lookalike", "mitosis look alike", "lookalike",
    "look alike",
})


def is_imposter_name(label: str) -> bool:
    """Whether a label names an imposter; a QuPath derived class ("Imposter: Positive", as
    wsi-atm joins its names) is one when any of its parts is (regression: such a label was
    kept as a mitosis)."""
    return any(" ".join(part.strip().lower().replace("_", " ").replace("-", " ").split())
               in IMPOSTER_NAMES for part in label.split(": "))


@dataclass(frozen=True)
class SlideFrame:
    """What the readers need to know about the slide (built by the caller from a Slide)."""

    name: str
    width: int
    height: int
    mpp: float  # what a slide pixel really is (the override when one is given): crop geometry
    bounds_offset: tuple[int, int] = (0, 0)
    # The spacing (x, y) the detector saw when it wrote physical units (µm, mm): the slide's
    # declared µm/px, even under a --mpp override, with x and y apart for non-square pixels.
    # None: ``mpp`` on both axes.
    units_mpp: tuple[float, float] | None = None

    @property
    def detector_mpp_xy(self) -> tuple[float, float]:
        return (self.mpp, self.mpp) if self.units_mpp is None else self.units_mpp

    @property
    def detector_mpp(self) -> float:
        return sum(self.detector_mpp_xy) / 2

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise OptionError(f"slide size must be positive, got {self.width}×{self.height} px")
        if not (math.isfinite(self.mpp) and self.mpp > 0):
            raise OptionError(f"slide µm/px must be a positive number, got {self.mpp!r}")


@dataclass(frozen=True)
class CandidateOptions:
    """How to read candidates; ``units=None`` means the format's own default.

    ``mitosis_class`` names the class kept by default in formats whose classes are named
    (SlideRunner ``Classes.name``, MIDOG JSON category names; matched case-insensitively);
    every other class is treated as an imposter.
    """

    min_score: float | None = None
    include_imposters: bool = False
    units: str | None = None
    image: str | None = None
    merge_radius_um: float = 3.0
    mitosis_class: str = "Mitotic figure"

    def __post_init__(self) -> None:
        if self.units is not None:
            unit = UNIT_ALIASES.get(str(self.units).strip().lower())
            if unit is None:
                raise OptionError(f"units must be one of mm, um, px; got {self.units!r}")
            object.__setattr__(self, "units", unit)
        if self.min_score is not None and not math.isfinite(self.min_score):
            raise OptionError(f"min_score must be a finite number, got {self.min_score!r}")
        if not (math.isfinite(self.merge_radius_um) and self.merge_radius_um >= 0):
            raise OptionError(
                f"merge radius must be a finite number ≥ 0 µm, got {self.merge_radius_um!r}"
            )
        if self.image is not None:
            object.__setattr__(self, "image", str(self.image).strip())


@dataclass
class ReadReport:
    """What happened while reading: counts and human-readable warnings."""

    rows_read: int = 0
    excluded_imposters: int = 0
    below_min_score: int = 0
    merged_duplicates: int = 0
    outside_slide: int = 0
    skipped: int = 0
    image: str | None = None
    units: str = "px"
    warnings: list[str] = field(default_factory=list)


@dataclass
class Candidates:
    """One typed table (parallel arrays) of candidate mitoses in level-0 px, OpenSlide frame."""

    ids: np.ndarray
    x: np.ndarray
    y: np.ndarray
    score: np.ndarray
    label: np.ndarray
    status: np.ndarray
    source: str
    report: ReadReport

    def __len__(self) -> int:
        return len(self.ids)

    def inside(self) -> np.ndarray:
        return np.asarray(self.status == CandidateStatus.OK, dtype=bool)


@dataclass
class RawDetections:
    """A reader's output before the shared steps (units, filters, merging, status)."""

    ids: list[str]
    x: np.ndarray
    y: np.ndarray
    score: np.ndarray
    label: list[str]
    imposter: np.ndarray
    units: str = "px"
    units_declared: bool = False  # the file names its units (a table's x_um column), not a default
    qupath_frame: bool = False
    image: str | None = None
    skipped: int = 0
    warnings: list[str] = field(default_factory=list)
    row_label: Callable[[int], str] | None = None

    def where(self, index: int) -> str:
        """Where row ``index`` is in the file, for error messages."""
        if self.row_label is not None:
            return self.row_label(index)
        return f"row {index + 1} (id {self.ids[index]})"

    @classmethod
    def build(
        cls,
        ids: list[str],
        xs: list[float],
        ys: list[float],
        scores: list[float],
        labels: list[str],
        imposters: list[bool],
        *,
        units: str = "px",
        units_declared: bool = False,
        qupath_frame: bool = False,
        image: str | None = None,
        skipped: int = 0,
        warnings: list[str] | None = None,
        row_label: Callable[[int], str] | None = None,
    ) -> RawDetections:
        """From per-row lists (what the readers collect) to arrays."""
        return cls(
            ids=ids,
            x=np.asarray(xs, dtype=np.float64).reshape(-1),
            y=np.asarray(ys, dtype=np.float64).reshape(-1),
            score=np.asarray(scores, dtype=np.float64).reshape(-1),
            label=labels,
            imposter=np.asarray(imposters, dtype=bool).reshape(-1),
            units=units,
            units_declared=units_declared,
            qupath_frame=qupath_frame,
            image=image,
            skipped=skipped,
            warnings=list(warnings or []),
            row_label=row_label,
        )

    def __len__(self) -> int:
        return len(self.ids)
