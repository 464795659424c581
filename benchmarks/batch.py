"""Batch throughput: slides/hour with the model resident vs one `wsi-atm classify` per slide.

    python benchmarks/batch.py [--slides 20] [--candidates N] [--workers N] [--model tiny|NAME]

Copies the sample slides (``sample_slides/``: the real CMU SVS and the synthetic 0.25 µm/px
TIFF, alternately) with their DEMO candidates into a temporary cohort; ``--candidates N`` gives
each slide N candidates (the sample's points, repeated with small offsets). Then it runs
``wsi-atm batch`` once (model loaded once, next slide opened while the current one is
classified; with ``--workers``, a local dask cluster) and ``wsi-atm classify`` as a new process
per slide, and prints slides/hour for both with the time split into start-up (interpreter,
imports, model loading and anything else outside the slides: wall time minus the stages), slide
open, detection reading, crop reading (time inference waited for crops), inference, the
thumbnail, the hotspot search and tissue area, the review picture and writing,
summed from each slide's ``timings_s``. In batch mode, opening and detection reading of all
but the first slide overlap the previous slide's classification.

``--model tiny`` (the default, as the bundled default model may still be untrained) builds the
tests' 128-px ResNet card with random weights; any bundled name or card path works too.
"""

from __future__ import annotations

import argparse
import csv
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
STAGES = [("open_s", "slide open"), ("detections_s", "detections"),
          ("crop_wait_s", "crop reading"), ("inference_s", "inference"),
          ("thumbnail_s", "thumbnail"), ("findings_s", "hotspot & tissue"),
          ("review_png_s", "review picture"), ("write_s", "writing")]


def candidates(source: Path, n: int | None) -> str:
    """The sample's candidates, or ``n`` of them cycling over its points with offsets."""
    with open(source, newline="") as fh:
        rows = [(float(r["x"]), float(r["y"])) for r in csv.DictReader(fh)]
    if n is None:
        return source.read_text()
    lines = ["x,y,score"]
    for j in range(n):
        x, y = rows[j % len(rows)]
        r = j // len(rows)
        lines.append(f"{x + (17 * r) % 160:.1f},{y + (29 * r) % 160:.1f},0.9")
    return "\n".join(lines) + "\n"


def make_cohort(folder: Path, n_slides: int, n_candidates: int | None) -> list[tuple[Path, Path]]:
    folder.mkdir(parents=True)
    pairs = []
    for i in range(n_slides):
        slide, det = SAMPLES[i % len(SAMPLES)]
        s = folder / f"s{i:03d}{Path(slide).suffix}"
        d = folder / f"s{i:03d}.csv"
        shutil.copyfile(REPO / "sample_slides" / slide, s)
        d.write_text(candidates(REPO / "sample_slides" / det, n_candidates))
        pairs.append((s, d))
    return pairs


def model_args(model: str, root: Path) -> list[str]:
    if model != "tiny":
        return ["--model", model]
    sys.path.insert(0, str(REPO))
    from tests.batch_helpers import card_128

    return ["--model", str(card_128(root / "card"))]


def wsi_atm(*args: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "wsi_atm", *args], check=True, capture_output=True,
                   cwd=REPO)
    return time.perf_counter() - t


def stage_totals(out: Path) -> dict[str, float]:
    totals = dict.fromkeys([k for k, _ in STAGES], 0.0)
    for path in out.glob("*.summary.json"):
        timings = json.loads(path.read_text()).get("timings_s") or {}
        for k in totals:
            totals[k] += float(timings.get(k) or 0.0)
    return totals


def row(mode: str, n: int, wall: float, totals: dict[str, float], base: float) -> str:
    startup = max(wall - sum(totals.values()), 0.0)
    cells = [f"{startup:.1f}"] + [f"{totals[k]:.1f}" for k, _ in STAGES]
    return (f"| {mode} | {n} | {wall:.1f} | {n / wall * 3600:.0f} | {base / wall:.2f}× | "
            + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=20)
    ap.add_argument("--candidates", type=int, default=None,
                    help="candidates per slide (default: the sample files' own: 60 and 24)")
    ap.add_argument("--workers", type=int, default=None, help="local dask worker processes")
    ap.add_argument("--model", default="tiny", help="'tiny' (random weights), a name or a card")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pairs = make_cohort(root / "slides", args.slides, args.candidates)
        common = [*model_args(args.model, root), "--device", args.device, "--quiet"]
        workers = ["--workers", str(args.workers)] if args.workers else []
        t_batch = wsi_atm("batch", str(root / "slides"), "--out-dir", str(root / "batch"),
                          *common, *workers)
        t_single = sum(wsi_atm("classify", str(s), "--detections", str(d), "--out-dir",
                               str(root / "single"), *common) for s, d in pairs)
        batch_totals, single_totals = stage_totals(root / "batch"), stage_totals(root / "single")
    mode = (f"batch, local dask, {args.workers} worker(s)" if args.workers
            else "batch (model resident)")
    print(f"{args.slides} slides, model {args.model}, device {args.device}, "
          f"{os.cpu_count()} CPU cores; seconds summed over slides\n")
    print("| mode | slides | wall s | slides/hour | speed-up | start-up & other | "
          + " | ".join(label for _, label in STAGES) + " |")
    print("|---" * (6 + len(STAGES)) + "|")
    print(row("classify, one process per slide", args.slides, t_single, single_totals,
              t_single))
    print(row(mode, args.slides, t_batch, batch_totals, t_single))


if __name__ == "__main__":
    main()
