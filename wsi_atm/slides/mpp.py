"""µm/px of a slide's level 0, worked out by wsi-atm itself so that both backends agree.

First plausible value wins (plausible: 0.05–20 µm/px):

1. ``aperio.MPP`` (Aperio SVS ImageDescription; one value for both axes);
2. ``openslide.mpp-x/y`` from a vendor driver (not generic-tiff, whose value comes from the
   TIFF tags that step 5 reads itself);
3. ``tiffslide.mpp-x/y`` from a vendor parser (same rule);
4. ``PhysicalSizeX/Y`` in OME-XML;
5. level-0 TIFF ``X/YResolution`` with ``ResolutionUnit`` inch or centimeter (unit none or an
   implausible value such as the 72-dpi default counts as unknown).

An ``--mpp`` override (one number: square pixels) beats all of them. x and y stay apart
(:class:`Mpp`): a scanner with 0.25 × 0.26 µm pixels needs each axis converted on its own.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi_atm.options import MPP_RANGE

# OME UnitsLength symbols (µm is the micro sign; the Greek mu is a common spelling of it)
OME_SOURCE = "ome.PhysicalSizeX"
_OME_UNITS_UM = {"µm": 1.0, "\u03bcm": 1.0, "um": 1.0, "nm": 1e-3, "pm": 1e-6, "Å": 1e-4,
                 "mm": 1e3, "cm": 1e4, "m": 1e6}


@dataclass(frozen=True)
class Mpp:
    """µm per level-0 pixel along x and y, and where the value came from."""

    x: float
    y: float
    source: str

    @property
    def value(self) -> float:
        """The mean of x and y: the one number summaries and tolerances use."""
        return (self.x + self.y) / 2

    @property
    def square(self) -> bool:
        return math.isclose(self.x, self.y, rel_tol=1e-6)

    @classmethod
    def of(cls, x: float | None, y: float | None, source: str) -> Mpp | None:
        """From x and y, either of which may be missing (then the other serves both); ``None``
        when neither is a plausible value."""
        good = [v for v in (x, y) if v is not None and plausible(v)]
        if not good:
            return None
        vx = x if x is not None and plausible(x) else good[0]
        vy = y if y is not None and plausible(y) else good[0]
        return cls(float(vx), float(vy), source)


def plausible(value: float | None) -> bool:
    return value is not None and MPP_RANGE[0] <= value <= MPP_RANGE[1]


def parse_float(text: object) -> float | None:
    try:
        value = float(str(text).strip().strip('"'))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def mpp_from_properties(props: Mapping[str, str]) -> Mpp | None:
    aperio = parse_float(props.get("aperio.MPP"))
    candidates = [Mpp.of(aperio, aperio, "aperio.MPP")]
    for prefix in ("openslide", "tiffslide"):
        if props.get(f"{prefix}.vendor", "generic-tiff") != "generic-tiff":
            x, y = (parse_float(props.get(f"{prefix}.mpp-{axis}")) for axis in "xy")
            candidates.append(Mpp.of(x, y, f"{prefix}.mpp-x"))
    return next((c for c in candidates if c is not None), None)


def mpp_from_ome(xml: str | None) -> Mpp | None:
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for element in root.iter():
        if element.tag.endswith("}Pixels") or element.tag == "Pixels":
            values = []
            for axis in ("X", "Y"):
                size = parse_float(element.get(f"PhysicalSize{axis}"))
                scale = _OME_UNITS_UM.get(element.get(f"PhysicalSize{axis}Unit", "µm"))
                values.append(size * scale if size is not None and scale else None)
            return Mpp.of(values[0], values[1], OME_SOURCE)
    return None


def mpp_from_resolution(tags: Any) -> Mpp | None:
    unit_tag, x_tag, y_tag = (tags.get(k) for k in ("ResolutionUnit", "XResolution", "YResolution"))
    if unit_tag is None or x_tag is None:
        return None
    unit = {2: ("inch", 25_400.0), 3: ("centimeter", 10_000.0)}.get(int(unit_tag.value))
    if unit is None:
        return None
    per_unit = [_rational(t.value) if t is not None else None for t in (x_tag, y_tag)]
    x, y = (unit[1] / r if r and r > 0 else None for r in per_unit)
    return Mpp.of(x, y, f"tiff.XResolution ({unit[0]})")


def _rational(value: Any) -> float | None:
    if isinstance(value, tuple) and len(value) == 2:
        return value[0] / value[1] if value[1] else None
    return parse_float(value)


def mpp_from_tiff(tif: Any) -> Mpp | None:
    """From an open ``tifffile.TiffFile``: OME-XML PhysicalSize, else the first page's
    resolution (see :func:`page_mpps` for a level 0 that is not the first page)."""
    mpp = mpp_from_ome(tif.ome_metadata) if tif.is_ome else None
    return mpp or mpp_from_resolution(tif.pages.first.tags)


def page_mpps(tif: Any, first: Mpp | None) -> tuple[tuple[tuple[int, int], Mpp | None], ...]:
    """Each main-chain page's (width, height) and the µm/px its own resolution tags give; ()
    where ``first`` (:func:`mpp_from_tiff`'s) is OME-XML PhysicalSize, which speaks for the
    image."""
    if first is not None and first.source == OME_SOURCE:
        return ()
    return tuple(((int(page.imagewidth), int(page.imagelength)), mpp_from_resolution(page.tags))
                 for page in tif.pages)


def level0_mpp(first: Mpp | None, pages: tuple[tuple[tuple[int, int], Mpp | None], ...],
               size: tuple[int, int]) -> Mpp | None:
    """µm/px from the TIFF tags of the page that is the slide's level 0 (``size``): a pyramid
    written smallest first has a reduced level as its first page, whose resolution is its own
    (OpenSlide still sorts the largest to level 0). ``first``: where no one page has that
    size, or OME-XML speaks."""
    same = [mpp for page_size, mpp in pages if page_size == size]
    return same[0] if len(same) == 1 else first


OVERRIDE = " override"  # ends the source of a µm/px given by the user: "--mpp override"
OVERRIDE_TOLERANCE = 0.1  # scanners' own values of one objective differ by a few per cent


def override_warning(declared: float | None, used: float, source: str) -> str | None:
    """A warning when a µm/px given by the user (``--mpp``, a manifest's ``mpp``) overrides
    one the slide declares by more than 10 %: one of the two is wrong, and if the slide is
    right every crop is at the wrong scale."""
    if not source.endswith(OVERRIDE) or declared is None:
        return None
    if abs(used / declared - 1) <= OVERRIDE_TOLERANCE:
        return None
    given = source[: -len(OVERRIDE)]
    return (f"{given} {used:g} overrides the {declared:.4g} µm/px the slide declares "
            f"({used / declared:.2f}×): if the slide's value is right, each crop holds "
            f"{declared / used:.2f}× the width of tissue the model expects")


def resolve_mpp(props: Mapping[str, str], from_tiff: Mpp | None, override: float | None,
                origin: str = "--mpp") -> Mpp | None:
    """The override (``origin`` says who gave it), else vendor properties, else TIFF tags."""
    if override is not None:
        return Mpp(float(override), float(override), origin + OVERRIDE)
    return mpp_from_properties(props) or from_tiff


def unknown_mpp_message(path: Path) -> str:
    return (
        f"{path}: the slide declares no usable µm/px (no vendor metadata or plausible TIFF "
        "resolution); pass --mpp, e.g. --mpp 0.25"
    )
