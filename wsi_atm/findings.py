"""What a slide shows beyond each call: the mitotic hotspot, tissue area, calls to review.

Computed once, where the slide is open (a batch worker), into the :class:`SlideResult` that
every writer reads.
"""

from __future__ import annotations

import numpy as np

from wsi_atm.density import find_hotspot, hotspot_radius_um, tissue_area
from wsi_atm.options import CallOptions
from wsi_atm.slide_result import HotspotMeta, ReviewRule, SlideResult


def add_hotspot(result: SlideResult, area_mm2: float) -> None:
    """The field of ``area_mm2`` holding the most classified mitoses (µm, so a true circle)."""
    mx, my = result.slide.mpp_xy
    idx = np.flatnonzero(result.classified)
    r = hotspot_radius_um(area_mm2)
    cands = result.candidates
    hot = find_hotspot(cands.x[idx] * mx, cands.y[idx] * my, result.atypical[idx], r)
    result.in_hotspot = np.zeros(len(cands), dtype=bool)
    if hot is None:
        result.hotspot = None
        return
    result.in_hotspot[idx[hot.members]] = True
    cx, cy = hot.center_um
    result.hotspot = HotspotMeta(
        area_mm2=area_mm2, radius_um=r, center_px=(cx / mx, cy / my), radius_px=(r / mx, r / my),
        mitoses=hot.mitoses, atypical=hot.atypical, mitoses_bound=hot.mitoses_bound,
        exact=hot.exact)


def add_tissue(result: SlideResult, thumbnail: np.ndarray) -> None:
    mx, my = result.slide.mpp_xy
    result.tissue = tissue_area(thumbnail, (result.slide.width * mx, result.slide.height * my))


def add_findings(result: SlideResult, calls: CallOptions, folds: int,
                 thumbnail: np.ndarray | None) -> None:
    """Review rule, hotspot and (with a thumbnail) tissue area, into ``result``."""
    result.review_rule = ReviewRule(band=calls.review_band, fold_std=calls.review_fold_std,
                                    folds=folds)
    add_hotspot(result, calls.hotspot_area_mm2)
    if thumbnail is not None:
        add_tissue(result, thumbnail)
