"""Small slide cohorts and a 128-px random-weights card for batch tests."""

from __future__ import annotations

from pathlib import Path

from tests.slide_factory import tissue_image, write_pyramid_tiff
from tests.test_infer import make_trained_card


def card_128(folder: Path) -> Path:
    path = make_trained_card(folder)
    path.write_text(path.read_text().replace("crop_size = 32", "crop_size = 128")
                    .replace("model_size = 32", "model_size = 128"))
    return path


def make_cohort(folder: Path, n: int = 3, size: int = 768) -> list[Path]:
    """``n`` small 0.25 µm/px slides with CSV detections named ``<stem>.csv`` beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    slides = []
    for i in range(n):
        slide = write_pyramid_tiff(folder / f"case{i}.tif", tissue_image(size, size, seed=i),
                                   0.25, levels=(1, 4))
        lines = ["x,y,score"] + [f"{100 + 90 * k + 7 * i},{150 + 60 * k},0.{k + 1}"
                                 for k in range(4 + i)]
        (folder / f"case{i}.csv").write_text("\n".join(lines) + "\n")
        slides.append(slide)
    return slides
