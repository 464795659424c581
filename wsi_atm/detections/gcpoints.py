"""Grand-challenge "Multiple points" JSON (MIDOG challenge output): ``point`` = [x, y, z] in mm."""

from __future__ import annotations

import math
from typing import Any

from wsi_atm.detections.records import (
    RawDetections,
    as_float,
    first_floats,
    is_imposter_name,
)
from wsi_atm.errors import DetectionsError


def _score(value: Any, where: str, name: str) -> float:
    if value is None:
        return math.nan
    score = as_float(value)
    if score is None:
        raise DetectionsError(f"{name}: {where}: probability {value!r} is not a number")
    return score


def read_points(doc: dict[str, Any], name: str) -> RawDetections:
    points = doc.get("points")
    if points is None:
        points = []
    if not isinstance(points, list):
        raise DetectionsError(f"{name}: 'points' must be a list, got {type(points).__name__}")
    ids, xs, ys, scores, labels, imposters = [], [], [], [], [], []
    for i, item in enumerate(points):
        where = f"point #{i}"
        coords = item.get("point") if isinstance(item, dict) else None
        xy = first_floats(coords, 2)
        if xy is None:
            raise DetectionsError(f"{name}: {where} has no [x, y, z] 'point': {coords!r}")
        x, y = xy
        label = str(item.get("name") or "")
        ids.append(str(item.get("id", i)))
        xs.append(x)
        ys.append(y)
        scores.append(_score(item.get("probability"), where, name))
        labels.append(label)
        imposters.append(is_imposter_name(label))
    return RawDetections.build(
        ids,
        xs,
        ys,
        scores,
        labels,
        imposters,
        units="mm",
        row_label=lambda i: f"point #{i}",
    )
