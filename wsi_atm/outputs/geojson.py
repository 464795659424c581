"""QuPath-ready GeoJSON: one detection per classified candidate.

What QuPath reads is summarised in docs/qupath-geojson.md. In short: ``objectType`` lives inside
``properties``, a classification object needs both ``name`` and ``color``, ``id`` must be a UUID,
and coordinates are in the frame QuPath shows: OpenSlide's level-0 px minus the slide's bounds
offset. Candidates that were not classified (outside the slide, failed reads) are left out;
the CSV keeps them.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from typing import Any, Literal

from wsi_atm.files import atomic_write_text
from wsi_atm.slide_result import SlideResult

Shape = Literal["point", "circle"]
SHAPES: tuple[str, ...] = ("point", "circle")

ATYPICAL_NAME = "Atypical mitosis"
NORMAL_NAME = "Normal mitosis"
ATYPICAL_RGB: tuple[int, int, int] = (220, 20, 60)
NORMAL_RGB: tuple[int, int, int] = (34, 139, 34)

CIRCLE_VERTICES = 32
COORD_DECIMALS = 3

# Fixed namespace so feature ids are stable across reruns for the same slide and candidate.
FEATURE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/wsi-atm/feature")


def feature_id(slide_name: str, candidate_id: str, occurrence: int = 0) -> str:
    """A UUID derived from the slide and candidate id (``occurrence`` separates repeated ids)."""
    key = f"{slide_name}\n{candidate_id}"
    if occurrence:
        key += f"\n{occurrence}"
    return str(uuid.uuid5(FEATURE_NAMESPACE, key))


def circle_ring(
    x: float, y: float, diameter: float, vertices: int = CIRCLE_VERTICES
) -> list[list[float]]:
    """A closed ring (first vertex repeated last) approximating a circle around (x, y)."""
    r = diameter / 2.0
    ring = [
        [
            round(x + r * math.cos(2 * math.pi * i / vertices), COORD_DECIMALS),
            round(y + r * math.sin(2 * math.pi * i / vertices), COORD_DECIMALS),
        ]
        for i in range(vertices)
    ]
    ring.append(list(ring[0]))
    return ring


def _geometry(x: float, y: float, shape: str, diameter: float) -> dict[str, Any]:
    if shape == "point":
        return {
            "type": "Point",
            "coordinates": [round(x, COORD_DECIMALS), round(y, COORD_DECIMALS)],
        }
    return {"type": "Polygon", "coordinates": [circle_ring(x, y, diameter)]}


def feature_collection(
    result: SlideResult, shape: Shape = "point", circle_diameter_px: float = 50.0
) -> dict[str, Any]:
    """The FeatureCollection of ``result``'s classified candidates, in QuPath's pixel frame."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}; got {shape!r}")
    if not (math.isfinite(circle_diameter_px) and circle_diameter_px > 0):
        raise ValueError(f"circle diameter must be a positive number, got {circle_diameter_px!r}")
    cands = result.candidates
    dx, dy = result.slide.bounds_offset
    atypical = result.atypical
    classified = result.classified
    seen: dict[str, int] = {}
    features: list[dict[str, Any]] = []
    for i in range(len(cands)):
        cid = str(cands.ids[i])
        occurrence = seen.get(cid, 0)
        seen[cid] = occurrence + 1
        if not classified[i]:
            continue
        name, rgb = (ATYPICAL_NAME, ATYPICAL_RGB) if atypical[i] else (NORMAL_NAME, NORMAL_RGB)
        measurements: dict[str, float] = {"p_atypical": float(result.p_atypical[i])}
        score = float(cands.score[i])
        if math.isfinite(score):
            measurements["detector_score"] = score
        measurements["at_border"] = 1.0 if result.at_border[i] else 0.0
        features.append(
            {
                "type": "Feature",
                "id": feature_id(result.slide.name, cid, occurrence),
                "geometry": _geometry(
                    float(cands.x[i]) - dx, float(cands.y[i]) - dy, shape, circle_diameter_px
                ),
                "properties": {
                    "objectType": "detection",
                    "classification": {"name": name, "color": list(rgb)},
                    "measurements": measurements,
                    "metadata": {
                        "candidate_id": cid,
                        "detector_label": str(cands.label[i]),
                        "model": result.model.name,
                        "source": str(cands.source),
                    },
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(
    result: SlideResult,
    path: str | os.PathLike[str],
    shape: Shape = "point",
    circle_diameter_px: float = 50.0,
) -> None:
    """Write :func:`feature_collection` to ``path`` atomically (strict JSON: no NaN)."""
    collection = feature_collection(result, shape, circle_diameter_px)
    atomic_write_text(path, json.dumps(collection, allow_nan=False, ensure_ascii=False) + "\n")
