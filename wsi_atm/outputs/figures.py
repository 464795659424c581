"""Review picture for a pathologist: the slide with its calls, and a gallery of crops.

Rendered with Pillow only. Layout: a header (slide, counts, atypical share and ratio, hotspot,
tissue, calls flagged for review), the slide thumbnail with every classified candidate marked
(atypical red, normal green; candidates that were not classified are not drawn), the mitotic
hotspot outlined in blue, and a legend below it, and to its right a grid of crops, each framed
in its call's colour and captioned with its probability.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from wsi_atm.fraction.stats import wilson_interval
from wsi_atm.outputs.geojson import ATYPICAL_RGB, HOTSPOT_RGB, NORMAL_RGB
from wsi_atm.outputs.summary import chance_reason, corrected_estimate
from wsi_atm.outputs.tables import p_text
from wsi_atm.slide_result import SlideResult

GalleryItem = tuple[np.ndarray, float, str]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)
MUTED = (110, 110, 110)
PANEL = 900  # longest side of the thumbnail panel, px
MARGIN = 20
TILE = 144  # displayed crop size, px
GALLERY_COLUMNS = 4
# Atypical calls are rarer and matter more: larger markers, drawn on top of the normal ones.
MARKER_RADIUS = {"atypical": 7, "normal": 4}


def threshold_text(t: float) -> str:
    """The threshold as the picture shows it: exactly, in at most 6 significant digits where
    they suffice (the default card's 0.332895, shown as 0.33, made a crop of p = 0.331 framed
    normal read as above it)."""
    text = f"{t:.6g}"
    return text if float(text) == t else repr(float(t))


def _font(size: int) -> Font:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font only
        return ImageFont.load_default()


def _to_image(array: np.ndarray) -> Image.Image:
    """An RGB image from an HxW, HxWx3 or HxWx4 array (uint8, or float in [0, 1])."""
    data = np.asarray(array)
    if data.dtype != np.uint8:
        data = np.clip(np.rint(data.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[:, :, 0]
    if data.ndim == 2:
        return Image.fromarray(data, "L").convert("RGB")
    if data.ndim == 3 and data.shape[2] == 4:
        rgba = Image.fromarray(data, "RGBA")
        flat = Image.new("RGB", rgba.size, BACKGROUND)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    if data.ndim == 3 and data.shape[2] == 3:
        return Image.fromarray(data, "RGB")
    raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image, got shape {data.shape}")


def pick_gallery(
    result: SlideResult, n_atypical: int = 8, n_uncertain: int = 8
) -> tuple[list[int], list[int]]:
    """Candidate indices of the most confident atypical calls and of the calls to review.

    Confident: called atypical and not flagged, highest ``p_atypical`` first. To review: the
    calls flagged for review (all classified calls when the result has no review rule), ``p``
    closest to the model's threshold first, then the widest fold disagreement.
    """
    p = result.p_atypical
    ruled = result.review_rule is not None
    review = result.review if ruled else np.zeros(len(p), dtype=bool)
    atypical = np.flatnonzero(result.atypical & ~review)
    confident = atypical[np.argsort(-p[atypical], kind="stable")][:n_atypical]
    if ruled:
        flagged = np.flatnonzero(review)
    else:
        taken = set(confident.tolist())
        flagged = np.array([i for i in np.flatnonzero(result.classified) if i not in taken], int)
    distance = np.abs(p[flagged] - result.model.threshold)
    spread = (np.nan_to_num(result.fold_std[flagged]) if result.fold_std is not None
              else np.zeros(len(flagged)))
    uncertain = flagged[np.lexsort((-spread, distance))][:n_uncertain]
    return [int(i) for i in confident], [int(i) for i in uncertain]


def _header_lines(result: SlideResult) -> tuple[str, list[str]]:
    atypical = int(np.count_nonzero(result.atypical))
    normal = int(np.count_nonzero(result.normal))
    classified = atypical + normal
    total = len(result.candidates)
    counts = f"{total} candidates, {classified} classified: {atypical} atypical, {normal} normal"
    if total > classified:
        counts += f" ({total - classified} not classified, not shown)"
    ci = wilson_interval(atypical, classified)
    if ci is None:
        share = "Atypical fraction: n/a (no classified candidates)"
    else:
        share = (
            f"Atypical fraction: {atypical / classified:.1%} "
            f"(95% CI {ci[0]:.1%} - {ci[1]:.1%}, Wilson)"
        )
    ratio = f"{atypical / normal:.3f}" if normal else "n/a (no normal calls)"
    share += f"    Atypical : normal = {atypical}:{normal} = {ratio}"
    model = result.model
    info = (
        f"Model {model.name}, threshold {threshold_text(model.threshold)}"
        f"{', TTA' if model.tta else ''}; "
        f"slide {result.slide.mpp:.3f} um/px ({result.slide.mpp_source})"
    )
    if result.slide.upsampled:
        info += f"; crops UPSAMPLED {result.slide.resample_factor:.2f}x"
    lines = [counts, share]
    corrected = _corrected_line(result)
    if corrected:
        lines.append(corrected)
    findings = _findings_line(result)
    if findings:
        lines.append(findings)
    return result.slide.name, [*lines, info]


def _findings_line(result: SlideResult) -> str | None:
    parts = []
    h = result.hotspot
    t = result.tissue
    if h is not None:
        # its outline can lie wholly off the picture then: say why there is no blue
        larger = " - larger than the tissue" if t is not None and h.area_mm2 > t.area_mm2 else ""
        # a stopped search's field is the best found, not proven best: say its ceiling
        ceiling = "" if h.exact else f" (no field more than {max(h.mitoses, h.mitoses_bound)})"
        parts.append(f"Hotspot ({h.area_mm2:g} mm2, blue{larger}): {h.mitoses} mitoses"
                     f"{ceiling}, {h.atypical} atypical")
    if t is not None and t.area_mm2 > 0:
        n = int(np.count_nonzero(result.classified))
        parts.append(f"tissue {t.area_mm2:.3g} mm2, {n / t.area_mm2:.3g} mitoses/mm2")
    if result.review_rule is not None:
        flagged = int(np.count_nonzero(result.review))
        parts.append(f"{flagged} call{'' if flagged == 1 else 's'} flagged for review")
    return "; ".join(parts) or None


def _corrected_line(result: SlideResult) -> str | None:
    est = corrected_estimate(result)
    if est is None or est.value is None or est.ci95 is None:
        # said where the card's own rates are why (it was said only in summary.json)
        return ("No estimated true share: the card's calls are no better than chance "
                "(see the summary's warnings)") if chance_reason(result) else None
    lo, hi = est.ci95
    names = {"raw": "raw share", "calibrated-mean": "calibrated mean",
             "calibrated-em": "calibrated EM"}
    name = names.get(str(result.model.fraction.get("method")), "Rogan-Gladen")
    line = f"Estimated true atypical share: {est.value:.1%} (95% CI {lo:.1%} - {hi:.1%}, {name})"
    # the flag covers both warnings: the data contradict the card's rates, or the slide lies
    # beyond the shares the estimate was validated at (not a contradiction)
    return line + ("  [not to be trusted as it stands: see the summary's warning]"
                   if est.warning else "")


def _thumbnail_panel(thumbnail: np.ndarray, thumb_scale: float, result: SlideResult) -> Image.Image:
    image = _to_image(thumbnail)
    display = PANEL / max(image.size)
    size = (max(1, round(image.width * display)), max(1, round(image.height * display)))
    image = image.resize(size, Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(image)
    scale = thumb_scale * display
    cands = result.candidates
    for kind, mask, rgb in (
        ("normal", result.normal, NORMAL_RGB),
        ("atypical", result.atypical, ATYPICAL_RGB),
    ):
        r = MARKER_RADIUS[kind]
        for i in np.flatnonzero(mask):
            cx, cy = float(cands.x[i]) * scale, float(cands.y[i]) * scale
            box = (cx - r, cy - r, cx + r, cy + r)
            draw.ellipse(
                box, fill=rgb, outline=(255, 255, 255), width=2 if kind == "atypical" else 1
            )
    h = result.hotspot
    if h is not None:
        cx, cy = h.center_px[0] * scale, h.center_px[1] * scale
        rx, ry = max(h.radius_px[0] * scale, 3.0), max(h.radius_px[1] * scale, 3.0)
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), outline=HOTSPOT_RGB, width=3)
    return image


def _legend(width: int, result: SlideResult) -> Image.Image:
    font = _font(15)
    image = Image.new("RGB", (width, 30), BACKGROUND)
    draw = ImageDraw.Draw(image)
    x = 0
    t = threshold_text(result.model.threshold)
    n_atypical = int(np.count_nonzero(result.atypical))
    n_normal = int(np.count_nonzero(result.normal))
    for rgb, text in (
        (ATYPICAL_RGB, f"Atypical mitosis (p >= {t}): {n_atypical}"),
        (NORMAL_RGB, f"Normal mitosis (p < {t}): {n_normal}"),
    ):
        draw.ellipse((x, 9, x + 12, 21), fill=rgb, outline=INK)
        draw.text((x + 18, 15), text, fill=INK, font=font, anchor="lm")
        x += 18 + int(draw.textlength(text, font=font)) + 30
    return image


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Font, width: int) -> str:
    """``text``, shortened with "..." to fit ``width`` px."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _tile(crop: np.ndarray, p: float, caption: str, threshold: float) -> Image.Image:
    font = _font(13)
    rgb = ATYPICAL_RGB if p >= threshold else NORMAL_RGB
    tile = Image.new("RGB", (TILE, TILE + 36), BACKGROUND)
    image = _to_image(crop).resize((TILE - 8, TILE - 8), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(tile)
    draw.rectangle((0, 0, TILE - 1, TILE - 1), fill=rgb)
    tile.paste(image, (4, 4))
    # Ticks on the frame point at the crop centre, where the candidate is.
    mid, tick = TILE // 2, 14
    for box in (
        (mid - 1, 0, mid + 1, tick),
        (mid - 1, TILE - 1 - tick, mid + 1, TILE - 1),
        (0, mid - 1, tick, mid + 1),
        (TILE - 1 - tick, mid - 1, TILE - 1, mid + 1),
    ):
        draw.rectangle(box, fill=rgb)
    draw.text((TILE // 2, TILE + 9), f"p = {p_text(p, threshold)}", fill=INK, font=_font(14),
              anchor="mm")
    draw.text(
        (TILE // 2, TILE + 26),
        _fit(draw, caption, font, TILE - 4),
        fill=MUTED,
        font=font,
        anchor="mm",
    )
    return tile


def _gallery_panel(
    gallery: Sequence[GalleryItem],
    sections: Sequence[tuple[str, int]],
    threshold: float,
) -> Image.Image | None:
    if not gallery:
        return None
    title_h, gap = 30, 8
    tile_h = TILE + 36
    blocks: list[tuple[str, Sequence[GalleryItem]]] = []
    start = 0
    for title, count in sections:
        items = gallery[start : start + count]
        start += count
        if items:
            blocks.append((title, items))
    if start < len(gallery):
        blocks.append(("More examples", gallery[start:]))
    rows = sum(-(-len(items) // GALLERY_COLUMNS) for _, items in blocks)
    width = GALLERY_COLUMNS * (TILE + gap) - gap
    height = len(blocks) * title_h + rows * (tile_h + gap)
    panel = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(panel)
    y = 0
    for title, items in blocks:
        draw.text((0, y + title_h // 2), title, fill=INK, font=_font(17), anchor="lm")
        y += title_h
        for k, (crop, p, caption) in enumerate(items):
            col, row = k % GALLERY_COLUMNS, k // GALLERY_COLUMNS
            panel.paste(
                _tile(crop, p, caption, threshold), (col * (TILE + gap), y + row * (tile_h + gap))
            )
        y += -(-len(items) // GALLERY_COLUMNS) * (tile_h + gap)
    return panel


def _header_width(title: str, lines: Sequence[str]) -> int:
    """Width in px of the header's widest line, as :func:`render_review` draws it."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widths = [measure.textlength(title, font=_font(24))]
    widths += [measure.textlength(line, font=_font(16)) for line in lines]
    return math.ceil(max(widths))


def render_review(
    thumbnail: np.ndarray,
    thumb_scale: float,
    result: SlideResult,
    gallery: Sequence[GalleryItem] = (),
    sections: Sequence[tuple[str, int]] = (),
) -> Image.Image:
    """The review picture as an RGB image (see :func:`write_review_png`)."""
    title, lines = _header_lines(result)
    thumb = _thumbnail_panel(thumbnail, thumb_scale, result)
    legend = _legend(thumb.width, result)
    panel = _gallery_panel(
        gallery, sections or [("Examples", len(gallery))], result.model.threshold
    )

    header_h = 40 + 24 * len(lines) + 10
    left_h = thumb.height + 8 + legend.height
    width = MARGIN + thumb.width + MARGIN + (panel.width + MARGIN if panel else 0)
    # Never narrower than the header: without a gallery a portrait slide's picture cut off
    # its findings and flags (an upsampled slide's "crops UPSAMPLED", a flagged estimate).
    width = max(width, MARGIN + _header_width(title, lines) + MARGIN)
    height = header_h + max(left_h, panel.height if panel else 0) + MARGIN
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((MARGIN, 14), title, fill=INK, font=_font(24))
    for k, line in enumerate(lines):
        draw.text(
            (MARGIN, 46 + 24 * k), line, fill=MUTED if k == len(lines) - 1 else INK, font=_font(16)
        )
    canvas.paste(thumb, (MARGIN, header_h))
    draw.rectangle(
        (MARGIN - 1, header_h - 1, MARGIN + thumb.width, header_h + thumb.height), outline=MUTED
    )
    canvas.paste(legend, (MARGIN, header_h + thumb.height + 8))
    if panel is not None:
        canvas.paste(panel, (MARGIN + thumb.width + MARGIN, header_h))
    return canvas


def review_png(
    thumbnail: np.ndarray,
    thumb_scale: float,
    result: SlideResult,
    gallery: Sequence[GalleryItem] = (),
    sections: Sequence[tuple[str, int]] = (),
) -> bytes:
    """The review picture as PNG bytes.

    ``thumbnail`` is the whole slide in OpenSlide's frame (its (0, 0) is level-0 (0, 0));
    ``thumb_scale`` is thumbnail px per level-0 px. ``gallery`` holds ``(crop, p_atypical,
    caption)`` items; ``sections`` optionally splits it, in order, into titled groups of the
    given sizes, e.g. ``[("Most confident atypical", 8), ("Flagged for review", 8)]`` to
    match :func:`pick_gallery`.
    """
    if not (thumb_scale > 0):
        raise ValueError(f"thumb_scale must be positive, got {thumb_scale!r}")
    image = render_review(thumbnail, thumb_scale, result, gallery, sections)
    buffer = io.BytesIO()
    # compress_level 3: a third of the default's time for a few per cent more bytes
    image.save(buffer, format="PNG", compress_level=1)  # speed over a few % of size
    return buffer.getvalue()
