"""Slide-fraction error of each estimator on leave-group-out runs, as a Markdown table.

Usage: python scripts/fraction_study.py RUN_DIR [RUN_DIR ...] [--reps N]
    [--in-domain-rates SENS SPEC N_ATYPICAL N_NORMAL THRESHOLD]   (today's corrected fraction)
Prints one row per (run, estimator) and each run's fitted ``[fraction]`` table as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from wsi_atm.fraction.estimators import FractionModel
from wsi_atm.train.fraction_study import card_fraction, load_predictions, study

COLUMNS = ("pooled", "pseudo", "real")


def _cell(score: dict) -> str:
    if score["mae"] is None:
        return "n/a"
    return f"{score['mae']:.3f} ({score['bias']:+.3f}, {score['coverage']:.2f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--reps", type=int, default=25)
    ap.add_argument("--in-domain-rates", nargs=5, type=float, default=None)
    args = ap.parse_args()
    fixed = {}
    if args.in_domain_rates:
        se, sp, n_pos, n_neg, t = args.in_domain_rates
        fixed["rogan-gladen (in-domain rates)"] = FractionModel(
            threshold=t, method="rogan-gladen", sensitivity=se, specificity=sp,
            n_atypical=int(n_pos), n_normal=int(n_neg))
    print("| run | estimator | held-out scanner pooled | pseudo-slides | real slides ≥ 30 |")
    print("|---|---|---|---|---|")
    tables = {}
    for run in args.runs:
        pred = load_predictions(run)
        result = study(pred, reps=args.reps, fixed=fixed)
        for name, parts in result.items():
            print(f"| {run.name} | {name} | " + " | ".join(_cell(parts[c]) for c in COLUMNS)
                  + " |")
        tables[run.name] = {m: card_fraction(pred, m) for m in ("calibrated-mean", "calibrated-em")}
    print("\nEach cell: mean absolute error (bias, 95 % interval coverage).")
    print(json.dumps(tables, indent=2))


if __name__ == "__main__":
    main()
