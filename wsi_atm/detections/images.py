"""Choosing the slide's entry in multi-slide files (MIDOG JSON, SlideRunner databases)."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePath

from wsi_atm.errors import DetectionsError

_SHOWN = 5


@dataclass(frozen=True)
class ImageInfo:
    """One image (slide) of a multi-slide detection file and its counts per label."""

    id: str
    name: str
    width: int = 0
    height: int = 0
    counts: dict[str, int] = field(default_factory=dict)


def _path(name: str) -> PurePath:
    # NFC: a name typed, or written by one tool, as "ä" is the same name as "a" + U+0308, as
    # macOS stores it (regression: no entry for slide 'Präparat.svs' among its images
    # (Präparat.svs, ...) for a slide copied from a Mac)
    return PurePath(unicodedata.normalize("NFC", name).replace("\\", "/"))


def _stem(name: str) -> str:
    return _path(name).stem.lower()


def _base(name: str) -> str:
    return _path(name).name.lower()


def names_match(a: str, b: str) -> bool:
    """Whether two image names are the same file name or stem, ignoring case, folders and
    Unicode normalisation (NFC against NFD)."""
    return _base(a) == _base(b) or _stem(a) == _stem(b)


def name_keys(name: str) -> set[str]:
    """The file name and stem an image name matches by (see :func:`names_match`)."""
    return {_base(name), _stem(name)}


def select_image(
    images: Sequence[ImageInfo], slide_name: str, wanted: str | None, file_name: str
) -> ImageInfo:
    """The entry named by ``wanted`` (name or id) or else matching the slide's file name.

    Names match exactly first, then on the stem (``007.tiff`` ↔ ``007.svs``), case-insensitively.
    No match, or several equally good ones, is a ``DetectionsError``.
    """
    key = wanted if wanted else slide_name
    what = f"image {wanted!r}" if wanted else f"slide {slide_name!r}"
    tiers = [
        [im for im in images if _base(im.name) == _base(key)],
        [im for im in images if _stem(im.name) == _stem(key)],
    ]
    if wanted:
        tiers.append([im for im in images if im.id == wanted])
    for found in tiers:
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(f"{im.name} (id {im.id})" for im in found[:_SHOWN])
            raise DetectionsError(
                f"{file_name}: {what} matches {len(found)} images ({names}); "
                "choose one with --image NAME|ID (in a batch, a manifest's image column)"
            )
    shown = ", ".join(im.name for im in images[:_SHOWN])
    more = ", …" if len(images) > _SHOWN else ""
    raise DetectionsError(
        f"{file_name}: no entry for {what} among its {len(images)} images "
        f"({shown}{more}); choose one with --image NAME|ID (in a batch, a manifest's "
        "image column)"
    )


def size_warning(image: ImageInfo, width: int, height: int) -> list[str]:
    if image.width > 0 and image.height > 0 and (image.width, image.height) != (width, height):
        return [
            f"image {image.name} is {image.width}×{image.height} px in the detection file "
            f"but the slide is {width}×{height} px: is it the right slide?"
        ]
    return []
