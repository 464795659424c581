"""Find DEMO candidates (dark nucleus-like blobs) on a slide and write them in three formats.

    python sample_slides/find_demo_candidates.py [sample_slides/cmu_small_region.svs] [--max 60]

These are NOT verified mitoses: a crude blob detector gives the demo something realistic to
classify (candidates on real nuclei, clustered where the tissue is cellular). The procedure,
numpy only (no scipy/scikit-image):

1. read level 0 with wsi-atm's own reader (RGB, white outside);
2. colour deconvolution (Ruifrok & Johnston 2001 H&E vectors): optical density
   ``-log10((I + 1) / 256)`` per channel, times the inverse stain matrix → hematoxylin density;
3. Gaussian smoothing (sigma 1.5 px at 0.5 µm/px, scaled by µm/px) with a separable kernel;
4. threshold at the ``--percentile`` (default 97.5) of the smoothed hematoxylin over tissue
   pixels (optical density sum > 0.3), leaving out teal marking ink (green optical density
   below 0.7 × red), which deconvolution would otherwise count as hematoxylin;
5. 8-connected components by iterated neighbour-minimum label propagation;
6. keep blobs of 8–100 µm² that are compact (fill of the bounding box ≥ 0.35, box aspect ≤ 3);
7. score = the blob's mean hematoxylin density divided by the highest such mean (so the
   darkest blob scores 1), blobs closer than 10 µm to a higher-scoring one dropped, the
   ``--max`` best kept.

Writes beside the slide, named after it:
``<stem>.candidates.csv`` (``x,y,score``, level-0 px), ``<stem>.geojson`` (QuPath point
annotations, class "mitotic figure", ``measurements.score``) and ``<stem>.points.json``
(grand-challenge "Multiple points", ``point`` = [x mm, y mm, 0] with mm = px × µm/px / 1000).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from wsi_atm.slides import open_slide  # noqa: E402

# Ruifrok & Johnston H&E(+residual) optical-density vectors, rows: hematoxylin, eosin, residual
STAINS = np.array([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105], [0.268, 0.570, 0.776]])


def hematoxylin(rgb: np.ndarray) -> np.ndarray:
    """Hematoxylin optical density per pixel (float32) by colour deconvolution."""
    stains = STAINS / np.linalg.norm(STAINS, axis=1, keepdims=True)
    od = -np.log10((rgb.astype(np.float32) + 1.0) / 256.0)
    return (od.reshape(-1, 3) @ np.linalg.inv(stains)[:, 0]).reshape(rgb.shape[:2])


def stained_tissue(rgb: np.ndarray) -> np.ndarray:
    """Pixels with stain (optical density sum > 0.3) that are not teal marking ink."""
    od = -np.log10((rgb.astype(np.float32) + 1.0) / 256.0)
    return (od.sum(axis=2) > 0.3) & (od[..., 1] >= 0.7 * od[..., 0])


def gaussian(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge padding."""
    radius = max(1, int(3 * sigma + 0.5))
    t = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel /= kernel.sum()
    out = np.pad(image, radius, mode="edge")
    out = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="valid"), 1, out)
    return np.apply_along_axis(lambda c: np.convolve(c, kernel, mode="valid"), 0, out)


def label_components(mask: np.ndarray) -> np.ndarray:
    """8-connected component labels (0 = background) by neighbour-minimum propagation."""
    big = np.iinfo(np.int64).max
    labels = np.where(mask, np.arange(mask.size, dtype=np.int64).reshape(mask.shape) + 1, big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        h, w = mask.shape
        best = labels.copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                np.minimum(best, padded[dy : dy + h, dx : dx + w], out=best)
        best = np.where(mask, best, big)
        flat = best.ravel()
        fg = flat != big
        flat[fg] = np.minimum(flat[fg], flat[flat[fg] - 1])  # pointer jump to the root's label
        if np.array_equal(best, labels):
            break
        labels = best
    labels[~mask] = 0
    _, dense = np.unique(labels, return_inverse=True)
    return dense.reshape(mask.shape)


def blobs(rgb: np.ndarray, mpp: float, percentile: float) -> list[tuple[float, float, float]]:
    """(x, y, score) of compact dark hematoxylin blobs, best first."""
    h_od = gaussian(hematoxylin(rgb), sigma=1.5 * 0.5 / mpp)
    tissue = stained_tissue(rgb)
    threshold = np.percentile(h_od[tissue], percentile)
    labels = label_components((h_od > threshold) & tissue)
    n = int(labels.max()) + 1
    ys, xs = np.nonzero(labels)
    lab = labels[ys, xs]
    area = np.bincount(lab, minlength=n).astype(float)
    cx = np.bincount(lab, xs, minlength=n) / np.maximum(area, 1)
    cy = np.bincount(lab, ys, minlength=n) / np.maximum(area, 1)
    mean_h = np.bincount(lab, h_od[ys, xs], minlength=n) / np.maximum(area, 1)
    x0, x1, y0, y1 = (np.full(n, v) for v in (np.inf, -np.inf, np.inf, -np.inf))
    np.minimum.at(x0, lab, xs)
    np.maximum.at(x1, lab, xs)
    np.minimum.at(y0, lab, ys)
    np.maximum.at(y1, lab, ys)
    bw, bh = x1 - x0 + 1, y1 - y0 + 1
    um2 = area * mpp * mpp
    fill = area / np.maximum(bw * bh, 1)
    aspect = np.maximum(bw, bh) / np.maximum(np.minimum(bw, bh), 1)
    keep = (um2 >= 8) & (um2 <= 100) & (fill >= 0.35) & (aspect <= 3)
    keep[0] = False
    score = mean_h / mean_h[keep].max() if keep.any() else mean_h
    found = sorted(zip(cx[keep], cy[keep], score[keep], strict=True), key=lambda t: -t[2])
    return found


def suppress(found: list[tuple[float, float, float]], radius_px: float, limit: int) -> list:
    kept: list[tuple[float, float, float]] = []
    for x, y, s in found:
        if all((x - a) ** 2 + (y - b) ** 2 >= radius_px**2 for a, b, _ in kept):
            kept.append((x, y, s))
        if len(kept) == limit:
            break
    return kept


def write_outputs(slide_path: Path, cands: list, mpp: float) -> list[Path]:
    stem = slide_path.name.split(".")[0]
    out = slide_path.parent
    rows = [(round(x, 1), round(y, 1), round(float(s), 3)) for x, y, s in cands]
    table = out / f"{stem}.candidates.csv"
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["x", "y", "score"])
        writer.writerows(rows)
    features = [
        {
            "type": "Feature",
            "id": f"demo-{i}",
            "geometry": {"type": "Point", "coordinates": [x, y]},
            "properties": {
                "objectType": "annotation",
                "classification": {"name": "mitotic figure", "color": [200, 0, 0]},
                "measurements": {"score": s},
                "name": "DEMO candidate (not a verified mitosis)",
            },
        }
        for i, (x, y, s) in enumerate(rows)
    ]
    geojson = out / f"{stem}.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": features}, indent=1))
    points = [
        {
            "name": "mitotic figure",
            # 12 decimals: read back, each point snaps to the pixel position it was written at
            "point": [round(x * mpp / 1000, 12), round(y * mpp / 1000, 12), 0],
            "probability": s,
        }
        for x, y, s in rows
    ]
    doc = {"type": "Multiple points", "points": points, "version": {"major": 1, "minor": 0}}
    gc = out / f"{stem}.points.json"
    gc.write_text(json.dumps(doc, indent=1))
    return [table, geojson, gc]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide", type=Path, nargs="?", default=HERE / "cmu_small_region.svs")
    parser.add_argument("--max", type=int, default=60, help="most candidates to keep")
    parser.add_argument("--percentile", type=float, default=97.5)
    args = parser.parse_args(argv)
    with open_slide(args.slide) as slide:
        rgb = slide.read_region((0, 0), 0, slide.dimensions)
        mpp = slide.mpp
    found = blobs(rgb, mpp, args.percentile)
    cands = suppress(found, radius_px=10.0 / mpp, limit=args.max)
    paths = write_outputs(args.slide, cands, mpp)
    print(f"{len(found)} blobs, kept {len(cands)}: " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
