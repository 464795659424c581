"""QuPath GeoJSON exports: points give points, polygons their centroid, in QuPath's frame."""

from __future__ import annotations

import math
from typing import Any

from shapely.errors import GEOSException
from shapely.geometry import shape

from wsi_atm.detections.records import RawDetections, is_imposter_name
from wsi_atm.errors import DetectionsError

# wsi-atm's own annotation in its GeoJSON output: an area, not a candidate, when read back.
HOTSPOT_CLASS = "Mitotic hotspot"
SCORE_KEYS = ("score", "probability", "detector_score", "confidence", "prob")
_AREAS = ("Polygon", "MultiPolygon")
# A polygon larger than this (µm²) is a region, not a mitosis: a mitotic figure spans ~10–30 µm.
# QuPath's export of all annotations holds the tissue outline, or fields marked by hand, beside
# the mitoses (regression: the outline's centroid became a candidate; and so did a marked
# high-power field of 0.2 mm² on a 0.5 µm/px slide while the cut was 1,000,000 px²).
REGION_AREA_UM2 = 10_000
REGION = "region polygon"  # how such a polygon is counted among the skipped features


def features_of(doc: Any, name: str) -> list[Any]:
    """The Features of a FeatureCollection, a single Feature, or a bare array."""
    if isinstance(doc, list):
        return doc
    if str(doc.get("type", "")).lower() == "feature":
        return [doc]
    features = doc.get("features")
    if features is None:
        return []
    if not isinstance(features, list):
        raise DetectionsError(f"{name}: 'features' must be a list")
    return features


def _label(props: dict[str, Any]) -> str:
    cls = props.get("classification")
    if isinstance(cls, dict):
        # QuPath 0.4+ writes a derived class (Tumor: Positive) as "names": [...], not "name";
        # its label was lost. Joined as QuPath shows it.
        names = cls.get("names")
        if cls.get("name") is None and isinstance(names, list) and names:
            return ": ".join(map(str, names))
        cls = cls.get("name")
    return "" if cls is None else str(cls)


def _measurements(props: dict[str, Any]) -> dict[str, Any]:
    raw = props.get("measurements")
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, list):  # legacy [{"name": ..., "value": ...}]
        return {str(m.get("name")): m.get("value") for m in raw if isinstance(m, dict)}
    return {}


def _score(props: dict[str, Any]) -> float:
    for source in (_measurements(props), props):
        lowered = {str(k).lower(): v for k, v in source.items()}
        for key in SCORE_KEYS:
            value = lowered.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
    return math.nan


def _points(geom: dict[str, Any], where: str, name: str,
            region_px: float) -> list[tuple[float, float]] | None:
    """The geometry's point(s), its centroid for polygons, ``None`` for unsupported types, []
    for a polygon of more than ``region_px`` px²."""
    kind = geom.get("type")
    coords: Any = geom.get("coordinates")
    try:
        if kind == "Point":
            return [(float(coords[0]), float(coords[1]))]
        if kind == "MultiPoint":
            return [(float(c[0]), float(c[1])) for c in coords]
        if kind in _AREAS:
            area = shape(geom)
            if area.area > region_px:
                return []
            centroid = area.centroid
            # to a millionth of a pixel: GEOS's centroid of a circle centred on a half pixel
            # (wsi-atm's own --shape circle output) comes back a hair below it, and the crop
            # would move by a whole pixel when rounded
            return None if centroid.is_empty else [(round(centroid.x, 6), round(centroid.y, 6))]
    except (TypeError, ValueError, OverflowError, IndexError, KeyError, AttributeError,
            GEOSException) as exc:
        raise DetectionsError(f"{name}: {where}: invalid {kind} coordinates ({exc})") from None
    return None


def read_geojson(doc: Any, name: str, mpp: float) -> RawDetections:
    """``mpp``: µm a slide pixel spans (QuPath's coordinates are the slide's level-0 pixels)."""
    region_px = REGION_AREA_UM2 / (mpp * mpp)
    ids, xs, ys, scores, labels, where_of = [], [], [], [], [], []
    skipped: dict[str, int] = {}
    for i, feature in enumerate(features_of(doc, name)):
        where = f"feature #{i}"
        if not isinstance(feature, dict):
            raise DetectionsError(f"{name}: {where} is not a GeoJSON object")
        geom = feature.get("geometry")
        props = feature.get("properties") or {}
        if not isinstance(props, dict):
            props = {}
        if _label(props) == HOTSPOT_CLASS:
            continue
        points = _points(geom, where, name, region_px) if isinstance(geom, dict) else None
        if not points:
            # [] from a polygon: a region; from a MultiPoint, no points (regression: an
            # empty MultiPoint was reported as a region polygon)
            kind = ("no geometry" if not isinstance(geom, dict) else
                    REGION if points == [] and geom.get("type") in _AREAS else
                    str(geom.get("type")))
            skipped[kind] = skipped.get(kind, 0) + 1
            continue
        meta = props.get("metadata")
        # wsi-atm's own output names the detector's id there (its feature id is a UUID made
        # from it): read back, the candidates keep their ids and QuPath objects their UUIDs
        own = meta.get("candidate_id") if isinstance(meta, dict) else None
        fid = own if own is not None else feature.get("id", props.get("id"))
        base = str(i) if fid is None else str(fid)
        for k, (x, y) in enumerate(points):
            ids.append(base if len(points) == 1 else f"{base}.{k}")
            xs.append(x)
            ys.append(y)
            scores.append(_score(props))
            labels.append(_label(props))
            where_of.append(where if fid is None else f"{where} (id {fid})")
    warnings = []
    regions = skipped.pop(REGION, 0)
    if regions:
        warnings.append(f"skipped {regions} polygon(s) of more than {REGION_AREA_UM2:,} µm² "
                        "(regions such as a tissue outline or a marked field, larger than any "
                        "mitosis)")
    if skipped:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(skipped.items()))
        warnings.append(f"skipped features without a point or polygon geometry: {kinds}")
    return RawDetections.build(
        ids,
        xs,
        ys,
        scores,
        labels,
        [is_imposter_name(label) for label in labels],
        qupath_frame=True,
        skipped=sum(skipped.values()) + regions,
        warnings=warnings,
        row_label=lambda i: where_of[i],
    )
