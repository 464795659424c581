"""Records that cross module boundaries after classification: one slide's complete result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wsi_atm.detections import Candidates
from wsi_atm.detections.records import CandidateStatus


@dataclass(frozen=True)
class SlideMeta:
    """What was read about the slide, and how crops were made from it."""

    path: str
    name: str  # file name; output names derive from its stem
    backend: str
    width: int
    height: int
    mpp: float
    mpp_source: str
    bounds_offset: tuple[int, int]
    crop_level: int
    resample_factor: float  # >1 means upsampled (slide coarser than the model's µm/px)
    upsampled: bool
    # µm/px used to turn a detector's physical units (µm, mm) into pixels: the spacing the file
    # declares (what the detector saw), not a --mpp override; None when the slide declares none.
    detections_mpp: float | None = None
    mpp_x: float | None = None  # None: square pixels of ``mpp`` (records built without them)
    mpp_y: float | None = None


@dataclass(frozen=True)
class ModelMeta:
    """The classifier that produced the probabilities."""

    name: str
    card_path: str
    weights_sha256: tuple[str, ...]
    threshold: float
    # Cross-validated operating point of the card (None when the card has none).
    sensitivity: float | None = None
    specificity: float | None = None
    n_atypical: int | None = None  # positives behind the sensitivity estimate
    n_normal: int | None = None  # negatives behind the specificity estimate
    tta: bool = False
    # The card's ``[fraction]`` table (how to estimate the slide's true share); empty when the
    # card has none or when it does not hold for this run (TTA changes the probabilities).
    fraction: dict[str, Any] = field(default_factory=dict)


@dataclass
class SlideResult:
    """Candidates of one slide with their probabilities, calls and provenance."""

    slide: SlideMeta
    model: ModelMeta
    candidates: Candidates
    p_atypical: np.ndarray  # float64 per candidate, NaN when not classified
    status: np.ndarray  # object str per candidate: a CandidateStatus value
    at_border: np.ndarray  # bool per candidate: crop padded past the slide edge
    detections_path: str
    detections_sha256: str
    candidate_options: dict[str, Any]
    elapsed_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    package_version: str = ""

    @property
    def classified(self) -> np.ndarray:
        return np.asarray(self.status == CandidateStatus.CLASSIFIED, dtype=bool)

    @property
    def atypical(self) -> np.ndarray:
        """Boolean mask of candidates called atypical (classified and p ≥ threshold)."""
        with np.errstate(invalid="ignore"):
            return np.asarray(self.classified & (self.p_atypical >= self.model.threshold))

    @property
    def normal(self) -> np.ndarray:
        return np.asarray(self.classified & ~self.atypical)
