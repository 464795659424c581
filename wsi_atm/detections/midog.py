"""MIDOG++ / MIDOG 2021 COCO-like JSON: many images, ``bbox`` = [x1, y1, x2, y2] pixels."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from wsi_atm.detections.images import ImageInfo, select_image, size_warning
from wsi_atm.detections.records import (
    CandidateOptions,
    RawDetections,
    SlideFrame,
    as_float,
    declared_size,
    first_floats,
)
from wsi_atm.errors import DetectionsError

MITOSIS_CATEGORY_ID = 1


@dataclass(frozen=True)
class MidogIndex:
    """The file parsed once: images (with counts per category) and annotations per image id."""

    images: list[ImageInfo]
    categories: dict[str, str]
    by_image: dict[str, list[dict[str, Any]]]


def _key(value: Any) -> str:
    """Ids as strings; JSON ints and their float/str spellings compare equal."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _category(ann: dict[str, Any]) -> str | None:
    """The annotation's category id; ``None`` when it gives none (a detector's boxes)."""
    value = ann.get("category_id")
    return None if value is None else _key(value)


def _label(categories: dict[str, str], cid: str | None) -> str:
    return "" if cid is None else categories.get(cid, cid)


def index(doc: dict[str, Any], name: str) -> MidogIndex:
    images_raw, annotations = doc.get("images"), doc.get("annotations")
    if not isinstance(images_raw, list) or not isinstance(annotations, list):
        raise DetectionsError(f"{name}: MIDOG JSON needs lists 'images' and 'annotations'")
    categories_raw = doc.get("categories") or []
    if not isinstance(categories_raw, list):  # regression: an internal error (TypeError)
        raise DetectionsError(f"{name}: MIDOG JSON 'categories' must be a list")
    categories = {
        _key(c.get("id")): str(c.get("name", c.get("id")))
        for c in categories_raw
        if isinstance(c, dict)
    }
    by_image: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict) or "image_id" not in ann:
            raise DetectionsError(f"{name}: annotation #{i} has no 'image_id'")
        by_image[_key(ann["image_id"])].append(ann)
    images = []
    for i, im in enumerate(images_raw):
        if not isinstance(im, dict) or "id" not in im:
            raise DetectionsError(f"{name}: image #{i} has no 'id'")
        iid = _key(im["id"])
        counts = Counter(_label(categories, _category(a)) for a in by_image.get(iid, []))
        images.append(
            ImageInfo(
                id=iid,
                name=str(im.get("file_name", iid)),
                width=declared_size(im.get("width")),
                height=declared_size(im.get("height")),
                counts=dict(counts),
            )
        )
    return MidogIndex(images=images, categories=categories, by_image=dict(by_image))


def _mitosis_ids(idx: MidogIndex, wanted: str, name: str) -> set[str]:
    found = {cid for cid, cname in idx.categories.items() if cname.lower() == wanted.lower()}
    if found:
        return found
    if not idx.categories:
        given = {c for anns in idx.by_image.values() for a in anns
                 if (c := _category(a)) is not None}
        if given and str(MITOSIS_CATEGORY_ID) not in given:
            # Regression: a file whose one class was category_id 0 gave every annotation as
            # an imposter, zero candidates without a word
            raise DetectionsError(
                f"{name}: no 'categories' list, and no annotation has category_id "
                f"{MITOSIS_CATEGORY_ID} (MIDOG's mitotic figure; found: "
                f"{', '.join(sorted(given))}): add the list naming {wanted!r}")
        return {str(MITOSIS_CATEGORY_ID)}
    names = ", ".join(f"{cid}: {cname}" for cid, cname in idx.categories.items())
    raise DetectionsError(f"{name}: no category named {wanted!r} (categories: {names})")


def _centre(ann: dict[str, Any], name: str) -> tuple[float, float]:
    bbox = ann.get("bbox")
    values = first_floats(bbox, 4) if isinstance(bbox, list) and len(bbox) == 4 else None
    if values is None:
        raise DetectionsError(
            f"{name}: annotation id {ann.get('id')} has no [x1, y1, x2, y2] bbox: {bbox!r}"
        )
    x1, y1, x2, y2 = values
    # Regression: a COCO export ([x, y, width, height]) read as corners put every centre at
    # about half its true position, silently.
    if x2 < x1 or y2 < y1:
        raise DetectionsError(
            f"{name}: annotation id {ann.get('id')} has bbox {bbox!r} with x2 < x1 or y2 < y1; "
            "MIDOG JSON boxes are [x1, y1, x2, y2] (a COCO [x, y, width, height] export must "
            "be converted first)"
        )
    return (x1 + x2) / 2.0, (y1 + y2) / 2.0


SCORE_KEYS = ("score", "probability", "confidence")


def _score(ann: dict[str, Any], name: str) -> float:
    """The detector's score when the annotation carries one (detector output in this format
    does: ``score``), NaN when not."""
    for key in SCORE_KEYS:
        if ann.get(key) is not None:
            value = as_float(ann[key])
            if value is None:
                raise DetectionsError(
                    f"{name}: annotation id {ann.get('id')}: {key} {ann[key]!r} is not a number"
                )
            return value
    return math.nan


def read_midog(
    idx: MidogIndex, frame: SlideFrame, options: CandidateOptions, name: str
) -> RawDetections:
    image = select_image(idx.images, frame.name, options.image, name)
    mitosis = _mitosis_ids(idx, options.mitosis_class, name)
    ids, xs, ys, scores, labels, imposters = [], [], [], [], [], []
    for i, ann in enumerate(idx.by_image.get(image.id, [])):
        x, y = _centre(ann, name)
        scores.append(_score(ann, name))
        cid = _category(ann)
        ids.append(_key(ann["id"]) if "id" in ann else str(i))
        xs.append(x)
        ys.append(y)
        labels.append(_label(idx.categories, cid))
        # no category is no class, kept as in every other format (regression: a detector's
        # boxes without category_id were all imposters, zero candidates without a word)
        imposters.append(cid is not None and cid not in mitosis)
    return RawDetections.build(
        ids,
        xs,
        ys,
        scores,
        labels,
        imposters,
        image=image.name,
        warnings=size_warning(image, frame.width, frame.height),
        row_label=lambda i: f"annotation id {ids[i]}",
    )
