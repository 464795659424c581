"""Batch throughput: slides/hour with the model resident vs one `wsi-atm classify` per slide.

    python benchmarks/batch.py [--slides 20] [--model NAME] [--workers N]

Copies the bundled sample slides (with their demo candidates) into a temporary cohort, runs
`wsi-atm batch` once (model loaded once, next slide pre-read while the current one runs), then
runs `wsi-atm classify` as a new process per slide, and prints slides/hour for both with the
batch time split into start-up, slide open, detections, crop reading (time inference waited for
crops), inference and writing (from each slide's summary timings).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = [("cmu_small_region.svs", "cmu_small_region.candidates.csv"),
           ("synthetic_025mpp.tif", "synthetic_025mpp.candidates.csv")]


def make_cohort(folder: Path, n: int) -> list[tuple[Path, Path]]:
    pairs = []
    for i in range(n):
        slide, det = SAMPLES[i % len(SAMPLES)]
        s = folder / f"s{i:03d}{Path(slide).suffix}"
        d = folder / f"s{i:03d}.csv"
        shutil.copyfile(REPO / "sample_slides" / slide, s)
        shutil.copyfile(REPO / "sample_slides" / det, d)
        pairs.append((s, d))
    return pairs


def wsi_atm() -> list[str]:
    return [sys.executable, "-m", "wsi_atm"]


def run_batch(folder: Path, out: Path, model: list[str], workers: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run([*wsi_atm(), "batch", str(folder), "--out-dir", str(out), "--quiet",
                    *model, *workers], check=True, capture_output=True)
    return time.perf_counter() - t


def run_per_slide(pairs: list[tuple[Path, Path]], out: Path, model: list[str]) -> float:
    t = time.perf_counter()
    for slide, det in pairs:
        subprocess.run([*wsi_atm(), "classify", str(slide), "--detections", str(det),
                        "--out-dir", str(out), "--quiet", *model], check=True,
                       capture_output=True)
    return time.perf_counter() - t


def stage_split(out: Path) -> dict[str, float]:
    totals: dict[str, float] = {}
    for path in out.glob("*.summary.json"):
        for k, v in (json.loads(path.read_text()).get("timings_s") or {}).items():
            totals[k] = totals.get(k, 0.0) + (v or 0.0)
    return totals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=20)
    ap.add_argument("--model", default=None)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    model = ["--model", args.model] if args.model else []
    workers = ["--workers", str(args.workers)] if args.workers else []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "slides").mkdir()
        pairs = make_cohort(root / "slides", args.slides)
        t_batch = run_batch(root / "slides", root / "batch", model, workers)
        t_single = run_per_slide(pairs, root / "single", model)
        split = stage_split(root / "batch")
    n = args.slides
    accounted = sum(split.values())
    print("| mode | slides | wall s | slides/hour | ratio |\n|---|---|---|---|---|")
    print(f"| batch (model resident) | {n} | {t_batch:.1f} | {n / t_batch * 3600:.0f} | "
          f"{t_single / t_batch:.2f}× |")
    print(f"| classify per slide | {n} | {t_single:.1f} | {n / t_single * 3600:.0f} | 1.00× |")
    print("\nbatch time split (sum over slides, s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in sorted(split.items()))
          + f"; start-up and the rest {max(t_batch - accounted, 0):.1f}")
    print(f"machine: {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
