"""Whole-command `wsi-atm classify` against the naive way, and its memory against slide size.

    python benchmarks/classify.py [--slide /tmp/bench20k.svs] [--candidates 2000]
                                  [--memory 500,50000] [--engine auto]

1. Speed: wall time of the whole command (Python start-up, model load, every output) on the
   crop benchmark's 20000² JPEG SVS (written by ``benchmarks/crops.py --keep PATH`` if absent)
   with ``--candidates`` detections (best of 3, after one warm-up run that builds the ONNX
   graph as any first run on a machine does), against a naive script (best of 3) doing the
   same classification the obvious way: a fresh Python that loads the same networks, then per
   candidate one OpenSlide ``read_region`` (RGBA → RGB with PIL), the card's transform, and
   each network at batch size 1, writing a CSV. Both run as child processes, one after the
   other, same cores.
2. Memory: peak RSS of the whole command for each ``--memory`` candidate count (the same slide,
   uniform candidates), and the ratio of the largest to the smallest.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PY = sys.executable
REPEATS = 3


def write_candidates(path: Path, n: int, size: int, seed: int, clustered: bool) -> None:
    sys.path.insert(0, str(HERE))
    from crops import candidates  # the crop benchmark's detector-like placement

    if clustered:
        xs, ys = candidates(n, size, seed)
    else:
        rng = np.random.default_rng(seed)
        xs, ys = rng.uniform(0, size - 1, n), rng.uniform(0, size - 1, n)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["x", "y"])
        w.writerows(zip(np.round(xs, 1), np.round(ys, 1), strict=True))


def run_child(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one child process."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{args[:4]} failed ({proc.returncode}): "
                             f"{err.read().decode()[-400:]}")
    return wall, usage.ru_maxrss / 1024


def naive(slide: str, detections: str, out: str) -> None:
    """The obvious classifier loop (runs in the child)."""
    import openslide
    import torch

    from wsi_atm.infer import Classifier
    from wsi_atm.models.loading import p_atypical_from_logits
    from wsi_atm.models.registry import find_card

    card = find_card(None)
    clf = Classifier(card, device="cpu", engine="torch")
    nets = [n.to(memory_format=torch.contiguous_format) for n in clf.nets]
    osr = openslide.OpenSlide(slide)
    size = card.crop_size
    with open(detections, newline="") as fh:
        points = [(float(r["x"]), float(r["y"])) for r in csv.DictReader(fh)]
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["x", "y", "p_atypical"])
        for x, y in points:
            region = osr.read_region((int(x) - size // 2, int(y) - size // 2), 0, (size, size))
            crop = np.asarray(region.convert("RGB"))
            t = torch.from_numpy(crop.copy()).permute(2, 0, 1)[None]
            with torch.no_grad():
                p = [float(p_atypical_from_logits(n(clf.transform(t)), card)) for n in nets]
            w.writerow([x, y, sum(p) / len(p)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slide", type=Path, default=Path("/tmp/bench20k.svs"))
    ap.add_argument("--size", type=int, default=20_000)
    ap.add_argument("--candidates", type=int, default=2_000)
    ap.add_argument("--memory", default="500,50000")
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--naive-child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.naive_child:
        naive(*args.naive_child)
        return 0
    if not args.slide.is_file():
        subprocess.run([PY, str(HERE / "crops.py"), "--keep", str(args.slide), "--size",
                        str(args.size), "--candidates", "10"], check=True,
                       stdout=subprocess.DEVNULL)
    wsi_atm = [PY, "-m", "wsi_atm", "classify", str(args.slide), "--quiet",
               "--engine", args.engine]
    with tempfile.TemporaryDirectory(prefix="wsi-atm-bench-") as tmp:
        d = Path(tmp)
        det = d / "bench.csv"  # the speed comparison's candidates, clustered
        write_candidates(det, args.candidates, args.size, 0, clustered=True)
        # warm-up: the first run on a machine builds, checks and times the ONNX graph
        run_child([*wsi_atm, "--detections", str(det), "--out-dir", str(d / "warm")])
        counts = sorted(int(c) for c in args.memory.split(","))
        peaks = []
        for n in counts:
            uniform = d / f"mem{n}.csv"
            write_candidates(uniform, n, args.size, 1, clustered=False)
            wall, peak = run_child([*wsi_atm, "--detections", str(uniform), "--out-dir",
                                    str(d / f"mem{n}")])
            peaks.append((n, wall, peak))
        # best of REPEATS for both (this VM's timings move by ±15 % from run to run)
        fast = min(run_child([*wsi_atm, "--detections", str(det), "--out-dir",
                              str(d / f"o{k}")])[0] for k in range(REPEATS))
        slow = min(run_child([PY, str(Path(__file__).resolve()), "--naive-child",
                              str(args.slide), str(det), str(d / "naive.csv")])[0]
                   for _ in range(REPEATS))
    n = args.candidates
    print(f"slide {args.slide.name}, {n} clustered candidates, engine {args.engine}\n")
    print("| run | wall s | candidates/s | speed-up |")
    print("|---|---:|---:|---:|")
    print(f"| wsi-atm classify (whole command, all outputs) | {fast:.1f} | {n / fast:.0f} "
          f"| {slow / fast:.2f}× |")
    print(f"| naive: read_region + PIL, each network at batch 1, CSV only | {slow:.1f} "
          f"| {n / slow:.0f} | 1.00× |")
    print("\n| candidates (uniform) | wall s | peak RSS MB |")
    print("|---:|---:|---:|")
    for count, wall, peak in peaks:
        print(f"| {count} | {wall:.1f} | {peak:.0f} |")
    print(f"\npeak RSS {counts[-1]} ÷ {counts[0]} candidates: {peaks[-1][2] / peaks[0][2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
