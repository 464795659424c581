"""Grand-challenge "Multiple points" JSON of the classified candidates, for other tools.

``point`` is ``[x, y, 0]`` in mm of the slide's level-0 frame (OpenSlide's, no bounds offset),
converted with the spacing a detector's mm refer to (the slide's declared µm/px, see
``slide.detections_mpp`` in the summary), with 12 decimals of a coordinate snapped to 1e-4 px:
read back by wsi-atm, the points land on the same pixel positions. ``name`` is the call,
``probability`` is p_atypical and ``id`` the detector's candidate id.
"""

from __future__ import annotations

import json
import os
from typing import Any

from wsi_atm.detections.records import snap
from wsi_atm.files import atomic_write_text
from wsi_atm.outputs.tables import p_text
from wsi_atm.slide_result import SlideResult

MM_DECIMALS = 12  # of a snapped coordinate: read back, it snaps to the same pixel position


def points_document(result: SlideResult) -> dict[str, Any]:
    s = result.slide
    mx, my = s.detections_mpp_xy or s.mpp_xy
    cands = result.candidates
    atypical = result.atypical
    points = []
    for i in map(int, result.classified.nonzero()[0]):
        points.append({
            "name": "atypical" if atypical[i] else "normal",
            "point": [round(float(snap(cands.x[i])) * mx / 1000, MM_DECIMALS),
                      round(float(snap(cands.y[i])) * my / 1000, MM_DECIMALS), 0],
            "probability": float(p_text(float(result.p_atypical[i]), result.model.threshold, 6)),
            "id": str(cands.ids[i]),
        })
    return {"name": f"{s.name}: mitoses classified by wsi-atm ({result.model.name})",
            "type": "Multiple points", "points": points, "version": {"major": 1, "minor": 0}}


def write_points_json(result: SlideResult, path: str | os.PathLike[str]) -> None:
    doc = points_document(result)
    atomic_write_text(path, json.dumps(doc, indent=1, allow_nan=False, ensure_ascii=False) + "\n")
