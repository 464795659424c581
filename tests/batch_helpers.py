"""Small slide cohorts and a 128-px random-weights card for batch tests (and the benchmark)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tests.test_infer import make_trained_card
from wsi_atm.synthetic import tissue_image, write_pyramid_tiff


def card_128(folder: Path) -> Path:
    """A trained-status tiny ResNet card with random weights, cutting 128-px crops."""
    path = make_trained_card(folder)
    path.write_text(path.read_text().replace("crop_size = 32", "crop_size = 128")
                    .replace("model_size = 32", "model_size = 128"))
    return path


def write_candidates(path: Path, n: int, seed: int = 0) -> Path:
    """``n`` candidates as CSV ``x,y,score`` spread over a 768-px slide."""
    lines = ["x,y,score"] + [f"{100 + (90 * k + 7 * seed) % 560},{150 + (60 * k) % 480},"
                             f"0.{(k % 9) + 1}" for k in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_cohort(folder: Path, n: int = 3, size: int = 768) -> list[Path]:
    """``n`` small 0.25 µm/px slides ``case<i>.tif`` with ``case<i>.csv`` (4 + i candidates)."""
    folder.mkdir(parents=True, exist_ok=True)
    slides = []
    for i in range(n):
        slide = write_pyramid_tiff(folder / f"case{i}.tif", tissue_image(size, size, seed=i),
                                   0.25, levels=(1, 4))
        write_candidates(folder / f"case{i}.csv", 4 + i, seed=i)
        slides.append(slide)
    return slides


def midog_json(path: Path, entries: dict[str, list[tuple[float, float]]]) -> Path:
    """A MIDOG++-style JSON: one image per file name, a 50-px box around each point."""
    images, annotations = [], []
    for i, (name, points) in enumerate(entries.items(), start=1):
        images.append({"id": i, "file_name": name, "width": 768, "height": 768})
        annotations += [{"id": len(annotations) + 1, "image_id": i, "category_id": 1,
                         "bbox": [x - 25, y - 25, x + 25, y + 25]} for x, y in points]
    doc = {"images": images, "annotations": annotations,
           "categories": [{"id": 1, "name": "mitotic figure"}, {"id": 2, "name": "imposter"}]}
    path.write_text(json.dumps(doc))
    return path


def cohort_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "cohort.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def features(path: Path) -> list[tuple]:
    """GeoJSON features without anything run-dependent."""
    geo = json.loads(path.read_text())
    return sorted((f["id"], tuple(f["geometry"]["coordinates"]),
                   f["properties"]["classification"]["name"],
                   round(f["properties"]["measurements"]["p_atypical"], 6))
                  for f in geo["features"] if f["properties"]["objectType"] == "detection")
