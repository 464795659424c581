"""Records that cross module boundaries after classification: one slide's complete result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wsi_atm.density import Tissue
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
    resample_factor: float  # of the larger axis; >1: upsampled (slide coarser than the model)
    upsampled: bool
    # µm/px used to turn a detector's physical units (µm, mm) into pixels: the spacing the file
    # declares (what the detector saw), not a --mpp override; the override where the slide
    # declares none; None in records built without it.
    detections_mpp: float | None = None
    mpp_x: float | None = None  # None: square pixels of ``mpp`` (records built without them)
    mpp_y: float | None = None
    detections_mpp_xy: tuple[float, float] | None = None  # the same, x and y apart
    pixel_reader: str = ""  # "tiles" (wsi-atm decoded the crop level's tiles) or the backend

    @property
    def mpp_xy(self) -> tuple[float, float]:
        """µm/px along x and y (``mpp`` for both in records built without them)."""
        return (self.mpp if self.mpp_x is None else self.mpp_x,
                self.mpp if self.mpp_y is None else self.mpp_y)


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
    # the rates' SD between cross-validation folds (between scanners for leave-group-out)
    sensitivity_sd: float | None = None
    specificity_sd: float | None = None
    tta: bool = False
    engine: str = "torch"  # what ran the networks: torch, or onnx (ONNX Runtime on CPU)
    # float32, or bf16-autocast (PyTorch on a GPU): calls near the threshold can differ
    precision: str = "float32"
    # The card's ``[fraction]`` table (how to estimate the slide's true share); empty when the
    # card has none or when it does not hold for this run (TTA changes the probabilities).
    fraction: dict[str, Any] = field(default_factory=dict)
    # The card's own threshold and cross-validated rates whatever --threshold this run used
    # (FractionModel keywords; empty under TTA or without rates): the calibrated estimates,
    # which hold at any threshold, use them to tell a slide beyond the validated shares.
    card_rates: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReviewRule:
    """When a call is flagged for review (see :class:`wsi_atm.options.CallOptions`)."""

    band: float  # |p - threshold| at most this
    fold_std: float  # or the fold models' std of p at least this (only with folds > 1)
    folds: int  # fold models behind each p


@dataclass(frozen=True)
class HotspotMeta:
    """The circular field of ``area_mm2`` holding the most classified mitoses."""

    area_mm2: float
    radius_um: float
    center_px: tuple[float, float]  # level-0 px, OpenSlide's frame
    radius_px: tuple[float, float]  # along x and y (differ when pixels are not square)
    mitoses: int
    atypical: int
    # No field of this area holds more mitoses; above ``mitoses`` only when the points were
    # spread so evenly that the exact search stopped early (see density.hotspot).
    mitoses_bound: int = 0
    exact: bool = True  # False: the search stopped (best found, no field above the bound)


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
    fold_std: np.ndarray | None = None  # float64 per candidate: std of p over fold models
    review_rule: ReviewRule | None = None
    hotspot: HotspotMeta | None = None  # None: no classified mitoses
    in_hotspot: np.ndarray | None = None  # bool per candidate
    tissue: Tissue | None = None
    review_png: bytes | None = None  # the review picture, rendered where the slide was open

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

    @property
    def review(self) -> np.ndarray:
        """Boolean mask of classified calls flagged for review (see :class:`ReviewRule`)."""
        rule = self.review_rule
        if rule is None:
            return np.zeros(len(self.candidates), dtype=bool)
        with np.errstate(invalid="ignore"):
            near = np.abs(self.p_atypical - self.model.threshold) <= rule.band
            spread = np.zeros(len(near), dtype=bool)
            if rule.folds > 1 and self.fold_std is not None:
                spread = self.fold_std >= rule.fold_std
        return np.asarray(self.classified & (near | spread))

    @property
    def hotspot_mask(self) -> np.ndarray:
        if self.in_hotspot is None:
            return np.zeros(len(self.candidates), dtype=bool)
        return np.asarray(self.in_hotspot, dtype=bool)
