"""Ablation table of leave-group-out training runs, and their out-of-fold predictions as CSV.

Usage: python scripts/ablation.py RUN_DIR [RUN_DIR ...] [--export DIR] [--reps N]
    [--in-domain-rates SENS SPEC N_ATYPICAL N_NORMAL THRESHOLD]

Prints a Markdown table: one row per run with each held-out group's balanced accuracy and AUROC
(each fold model at its own inner-split threshold, on the group it never saw), their means, and
the slide-fraction error (mean absolute error on each held-out group pooled as one slide and on
pseudo-slides resampled from it) of the raw share, Rogan-Gladen with the given in-domain rates
(the estimator classify used before) and the calibrated mean. ``--export`` writes each run's
predictions as ``DIR/<run>.csv`` (name, group, label, p_atypical) so the table can be rebuilt.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from wsi_atm.fraction.estimators import FractionModel
from wsi_atm.train.fraction_study import load_predictions, study
from wsi_atm.train.metrics import binary_metrics
from wsi_atm.train.results import FoldResult

TODAY = "rogan-gladen (in-domain rates)"


def fold_results(run: Path) -> list[FoldResult]:
    return [FoldResult.read(p) for p in sorted(run.glob("fold_*/result.json"))]


def export(run: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / f"{run.name}.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["name", "held_out", "label", "p_atypical"])
        for r in fold_results(run):
            pred = r.predictions
            for n, y, p in zip(pred.names, pred.labels, pred.p_atypical, strict=True):
                w.writerow([n, r.held_out, int(y), f"{p:.5f}"])


def row(run: Path, fixed: dict[str, FractionModel], reps: int) -> tuple[list[str], list[str]]:
    folds = fold_results(run)
    groups = [r.group_name for r in folds]
    ba = [r.metrics["balanced_accuracy"] for r in folds]
    auc = [r.metrics["auroc"] for r in folds]
    pred = load_predictions(run)
    pooled = binary_metrics(pred.labels, pred.p, 0.5)
    frac = study(pred, reps=reps, fixed=fixed)
    cells = [f"{b:.3f} / {a:.3f}" for b, a in zip(ba, auc, strict=True)]
    cells += [f"**{np.mean(ba):.3f}** ± {np.std(ba):.3f}", f"{np.mean(auc):.3f}",
              f"{pooled['auroc']:.3f}"]
    for name in ("raw", TODAY, "calibrated-mean"):
        if name in frac:
            s = frac[name]
            cells.append(f"{s['pooled']['mae']:.3f} / {s['pseudo']['mae']:.3f}")
        else:
            cells.append("n/a")
    return groups, [run.name, *cells]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--export", type=Path)
    ap.add_argument("--reps", type=int, default=25)
    ap.add_argument("--in-domain-rates", nargs=5, type=float, default=None)
    args = ap.parse_args()
    fixed = {}
    if args.in_domain_rates:
        se, sp, n_pos, n_neg, t = args.in_domain_rates
        fixed[TODAY] = FractionModel(threshold=t, method="rogan-gladen", sensitivity=se,
                                     specificity=sp, n_atypical=int(n_pos), n_normal=int(n_neg))
    header_groups: list[str] = []
    lines = []
    for run in args.runs:
        groups, cells = row(run, fixed, args.reps)
        header_groups = header_groups or groups
        lines.append("| " + " | ".join(cells) + " |")
        if args.export:
            export(run, args.export)
    head = ["run", *[f"{g} BA / AUROC" for g in header_groups], "mean BA", "mean AUROC",
            "pooled AUROC", "fraction MAE raw (pooled / pseudo)",
            "Rogan-Gladen, in-domain rates", "calibrated mean"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
