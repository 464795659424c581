"""Write the synthetic demo slide ``synthetic_025mpp.tif`` and its DEMO candidates.

    python sample_slides/make_synthetic.py [--seed 2025] [--size 3000] [--out sample_slides]

The slide is a tiled (256 px) JPEG TIFF at 0.25 µm/px (X/YResolution in centimetres), with a
pyramid of downsamples 1, 4 and 16 in the main IFD chain (OpenSlide's generic-tiff driver reads
all three levels). Its pixels come from ``wsi_atm/synthetic.py``: a seeded, tissue-like canvas
(pink stroma, pale gaps, purple elliptical "nuclei"), identical for the same seed.

``synthetic_025mpp.candidates.csv`` lists the centres (x, y level-0 px) of the 24 darkest large
synthetic nuclei at least 64 px from the edge, score = darkness in [0, 1]. They are DEMO
candidates for exercising the pipeline, not mitoses: there are none on a synthetic slide.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # a checkout runs without installing wsi_atm

from wsi_atm.synthetic import nuclei, tissue_image, write_pyramid_tiff  # noqa: E402

MPP = 0.25
N_CANDIDATES = 24


def demo_candidates(size: int, seed: int, n: int = N_CANDIDATES) -> list[tuple[int, int, float]]:
    """The ``n`` darkest nuclei with radius ≥ 11 px whose 128-px crop lies inside the slide."""
    found = nuclei(0, 0, size, size, seed)
    x, y = found["x"], found["y"]
    inside = (x >= 64) & (y >= 64) & (x <= size - 64) & (y <= size - 64) & (found["radius"] >= 11)
    order = np.argsort(found["shade"][inside], kind="stable")[:n]
    xs, ys, shade = x[inside][order], y[inside][order], found["shade"][inside][order]
    return [
        (round(a), round(b), round(1.0 - float(s), 3))
        for a, b, s in zip(xs, ys, shade, strict=True)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--size", type=int, default=3000, help="width = height in px")
    parser.add_argument("--quality", type=int, default=85, help="JPEG quality")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    slide = args.out / "synthetic_025mpp.tif"
    image = tissue_image(args.size, args.size, seed=args.seed)
    write_pyramid_tiff(slide, image, MPP, levels=(1, 4, 16), tile=256, compression="jpeg",
                       quality=args.quality)  # fmt: skip
    table = args.out / "synthetic_025mpp.candidates.csv"
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["x", "y", "score"])
        writer.writerows(demo_candidates(args.size, args.seed))
    print(f"wrote {slide} ({slide.stat().st_size / 1e6:.2f} MB) and {table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
