"""Slide-fraction error of each estimator on leave-group-out predictions, as Markdown tables.

Usage: python scripts/fraction_study.py RUN_DIR [RUN_DIR ...] [--reps N]
       python scripts/fraction_study.py --predictions docs/ablation/a4-robust-soft-norm.csv \
           [--slides ../shared/data/amibr-train/amibr_train_split.csv]
    [--in-domain-rates SENS SPEC N_ATYPICAL N_NORMAL THRESHOLD]   (the old corrected fraction)
Prints one row per (run, estimator), the pseudo-slides' error by true share, and each run's
fitted ``[fraction]`` table as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from wsi_atm.fraction.estimators import FractionModel
from wsi_atm.train.fraction_study import (
    PREVALENCES,
    Predictions,
    card_fraction,
    load_prediction_table,
    load_predictions,
    study,
)

COLUMNS = ("pooled", "pseudo", "real")


def _cell(score: dict) -> str:
    if score["mae"] is None:
        return "n/a"
    warned = f", {score['warned']:.0%} warned" if score["warned"] else ""
    coverage = "–" if score["coverage"] is None else f"{score['coverage']:.2f}"
    return f"{score['mae']:.3f} ({score['bias']:+.3f}, {coverage}{warned})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--predictions", type=Path, default=None,
                    help="a CSV of out-of-domain predictions instead of run folders")
    ap.add_argument("--slides", type=Path, default=None,
                    help="AMi-Br's split table, naming each crop's slide (--predictions)")
    ap.add_argument("--reps", type=int, default=25)
    ap.add_argument("--in-domain-rates", nargs=5, type=float, default=None)
    args = ap.parse_args()
    fixed = {}
    if args.in_domain_rates:
        se, sp, n_pos, n_neg, t = args.in_domain_rates
        fixed["rogan-gladen (in-domain rates)"] = FractionModel(
            threshold=t, method="rogan-gladen", sensitivity=se, specificity=sp,
            n_atypical=int(n_pos), n_normal=int(n_neg))
    runs: dict[str, Predictions] = {r.name: load_predictions(r) for r in args.runs}
    if args.predictions:
        runs[args.predictions.stem] = load_prediction_table(args.predictions, args.slides)
    results = {name: study(pred, reps=args.reps, fixed=fixed) for name, pred in runs.items()}
    print("| run | estimator | held-out scanner pooled | pseudo-slides | real slides ≥ 30 |")
    print("|---|---|---|---|---|")
    for run, result in results.items():
        for name, parts in result.items():
            print(f"| {run} | {name} | " + " | ".join(_cell(parts[c]) for c in COLUMNS) + " |")
    shares = [f"share {p:.2f}" for p in PREVALENCES]
    print("\n| run | estimator | " + " | ".join(shares) + " |")
    print("|---|---|" + "---|" * len(shares))
    for run, result in results.items():
        for name, parts in result.items():
            print(f"| {run} | {name} | " + " | ".join(_cell(parts[s]) for s in shares) + " |")
    print("\nEach cell: mean absolute error (bias, 95 % interval coverage, share of estimates "
          "warned about).")
    tables = {run: {m: card_fraction(pred, m) for m in ("calibrated-mean", "calibrated-em")}
              for run, pred in runs.items()}
    print(json.dumps(tables, indent=2))


if __name__ == "__main__":
    main()
