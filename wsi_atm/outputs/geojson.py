"""QuPath-ready GeoJSON: one detection per classified candidate.

What QuPath reads is summarised in docs/qupath-geojson.md. In short: ``objectType`` lives inside
``properties``, a classification object needs both ``name`` and ``color``, ``id`` must be a UUID,
and coordinates are in the frame QuPath shows: OpenSlide's level-0 px minus the slide's bounds
offset. Candidates that were not classified (outside the slide, failed reads) are left out;
the CSV keeps them. The mitotic hotspot is one ``annotation`` (a 256-gon drawn round the field,
so every mitosis it counts, rim included, lies inside it) with its counts as measurements; with
``review_class`` flagged calls are classed "Mitosis to review" (their call stays in the
metadata and in ``p_atypical``).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterator
from typing import Any

from wsi_atm.detections.geojson import HOTSPOT_CLASS
from wsi_atm.detections.records import SNAP_DECIMALS, snap
from wsi_atm.files import atomic_text_file
from wsi_atm.options import SHAPES, Shape
from wsi_atm.slide_result import SlideResult

ATYPICAL_NAME = "Atypical mitosis"
NORMAL_NAME = "Normal mitosis"
REVIEW_NAME = "Mitosis to review"  # --review-class: flagged calls, whatever their call
HOTSPOT_NAME = HOTSPOT_CLASS  # an annotation; wsi-atm's GeoJSON reader skips it
ATYPICAL_RGB: tuple[int, int, int] = (220, 20, 60)
NORMAL_RGB: tuple[int, int, int] = (34, 139, 34)
REVIEW_RGB: tuple[int, int, int] = (255, 140, 0)
HOTSPOT_RGB: tuple[int, int, int] = (30, 110, 230)
HOTSPOT_VERTICES = 256
# The field is a closed disk and its best placement has mitoses on the rim; a polygon inscribed
# in it cuts those off between vertices (QuPath then shows them outside the hotspot that counts
# them). Vertices at rim / cos(pi / n), plus a margin for the rounding of coordinates, make the
# polygon hold the whole disk; it strays at most 0.008 % of the radius beyond it.
HOTSPOT_MARGIN_PX = 1e-3

CIRCLE_VERTICES = 32
COORD_DECIMALS = SNAP_DECIMALS  # as the crops are placed by: read back, they crop the same

# Fixed namespace so feature ids are stable across reruns for the same slide and candidate.
FEATURE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/wsi-atm/feature")


def feature_id(slide_name: str, candidate_id: str, occurrence: int = 0) -> str:
    """A UUID derived from the slide and candidate id (``occurrence`` separates repeated ids)."""
    key = f"{slide_name}\n{candidate_id}"
    if occurrence:
        key += f"\n{occurrence}"
    return str(uuid.uuid5(FEATURE_NAMESPACE, key))


def ellipse_ring(
    x: float, y: float, rx: float, ry: float, vertices: int = CIRCLE_VERTICES
) -> list[list[float]]:
    """A closed ring (first vertex repeated last) approximating an axis-aligned ellipse."""
    ring = [
        [
            round(x + rx * math.cos(2 * math.pi * i / vertices), COORD_DECIMALS),
            round(y + ry * math.sin(2 * math.pi * i / vertices), COORD_DECIMALS),
        ]
        for i in range(vertices)
    ]
    ring.append(list(ring[0]))
    return ring


def circle_ring(
    x: float, y: float, diameter: float, vertices: int = CIRCLE_VERTICES
) -> list[list[float]]:
    """A closed ring (first vertex repeated last) approximating a circle around (x, y)."""
    return ellipse_ring(x, y, diameter / 2.0, diameter / 2.0, vertices)


def _geometry(x: float, y: float, shape: str, diameter: float) -> dict[str, Any]:
    if shape == "point":
        return {
            "type": "Point",
            "coordinates": [round(x, COORD_DECIMALS), round(y, COORD_DECIMALS)],
        }
    return {"type": "Polygon", "coordinates": [circle_ring(x, y, diameter)]}


def hotspot_feature(result: SlideResult) -> dict[str, Any] | None:
    """The hotspot as a QuPath annotation (an ellipse in px when pixels are not square)."""
    h = result.hotspot
    if h is None:
        return None
    dx, dy = result.slide.bounds_offset
    cx, cy = h.center_px[0] - dx, h.center_px[1] - dy
    out = 1.0 / math.cos(math.pi / HOTSPOT_VERTICES)
    rx, ry = ((r * (1 + 1e-6) + HOTSPOT_MARGIN_PX) * out for r in h.radius_px)
    ring = ellipse_ring(cx, cy, rx, ry, vertices=HOTSPOT_VERTICES)
    measurements: dict[str, float] = {
        "area_mm2": h.area_mm2, "mitoses": float(h.mitoses), "atypical": float(h.atypical),
        "normal": float(h.mitoses - h.atypical)}
    if h.mitoses:
        measurements["atypical_fraction"] = h.atypical / h.mitoses
    return {
        "type": "Feature",
        "id": feature_id(result.slide.name, "\nhotspot"),
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {
            "objectType": "annotation",
            "name": f"Mitotic hotspot ({h.area_mm2:g} mm²)",
            "classification": {"name": HOTSPOT_NAME, "color": list(HOTSPOT_RGB)},
            "measurements": measurements,
            "metadata": {"model": result.model.name},
        },
    }


def _class(atypical: bool, review: bool, review_class: bool) -> tuple[str, tuple[int, int, int]]:
    if review and review_class:
        return REVIEW_NAME, REVIEW_RGB
    return (ATYPICAL_NAME, ATYPICAL_RGB) if atypical else (NORMAL_NAME, NORMAL_RGB)


def feature_collection(
    result: SlideResult, shape: Shape = "point", circle_diameter_px: float = 50.0,
    review_class: bool = False,
) -> dict[str, Any]:
    """The FeatureCollection of ``result``'s classified candidates, in QuPath's pixel frame."""
    _check_shape(shape, circle_diameter_px)
    return {"type": "FeatureCollection",
            "features": list(features(result, shape, circle_diameter_px, review_class))}


def _check_shape(shape: str, circle_diameter_px: float) -> None:
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}; got {shape!r}")
    if not (math.isfinite(circle_diameter_px) and circle_diameter_px > 0):
        raise ValueError(f"circle diameter must be a positive number, got {circle_diameter_px!r}")


def features(result: SlideResult, shape: Shape, circle_diameter_px: float,
             review_class: bool) -> Iterator[dict[str, Any]]:
    """One Feature per classified candidate, in input order, then the hotspot's."""
    cands = result.candidates
    dx, dy = result.slide.bounds_offset
    atypical = result.atypical
    classified = result.classified
    review, hot = result.review, result.hotspot_mask
    folds = result.review_rule.folds if result.review_rule else 1
    seen: dict[str, int] = {}
    for i in range(len(cands)):
        cid = str(cands.ids[i])
        occurrence = seen.get(cid, 0)
        seen[cid] = occurrence + 1
        if not classified[i]:
            continue
        name, rgb = _class(bool(atypical[i]), bool(review[i]), review_class)
        measurements: dict[str, float] = {"p_atypical": float(result.p_atypical[i])}
        if result.fold_std is not None and folds > 1:
            measurements["fold_std"] = float(result.fold_std[i])
        measurements["review"] = 1.0 if review[i] else 0.0
        measurements["in_hotspot"] = 1.0 if hot[i] else 0.0
        score = float(cands.score[i])
        if math.isfinite(score):
            measurements["detector_score"] = score
        measurements["at_border"] = 1.0 if result.at_border[i] else 0.0
        yield {
            "type": "Feature",
            "id": feature_id(result.slide.name, cid, occurrence),
            "geometry": _geometry(
                float(snap(cands.x[i])) - dx, float(snap(cands.y[i])) - dy, shape,
                circle_diameter_px,
            ),
            "properties": {
                "objectType": "detection",
                "classification": {"name": name, "color": list(rgb)},
                "measurements": measurements,
                "metadata": {
                    "candidate_id": cid,
                    "call": "atypical" if atypical[i] else "normal",
                    "detector_label": str(cands.label[i]),
                    "model": result.model.name,
                    "source": str(cands.source),
                },
            },
        }
    hotspot = hotspot_feature(result)
    if hotspot is not None:
        yield hotspot


def write_geojson(
    result: SlideResult,
    path: str | os.PathLike[str],
    shape: Shape = "point",
    circle_diameter_px: float = 50.0,
    review_class: bool = False,
) -> None:
    """Write :func:`feature_collection` to ``path`` atomically (strict JSON: no NaN), one
    feature at a time: the same bytes as dumping the whole collection, in bounded memory."""
    _check_shape(shape, circle_diameter_px)
    with atomic_text_file(path) as fh:
        fh.write('{"type": "FeatureCollection", "features": [')
        for k, feature in enumerate(features(result, shape, circle_diameter_px, review_class)):
            fh.write((", " if k else "") +
                     json.dumps(feature, allow_nan=False, ensure_ascii=False))
        fh.write("]}\n")
