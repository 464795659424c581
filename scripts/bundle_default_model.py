"""Make a finished refit the bundled default model, with its operating point set out of domain.

    .venv/bin/python scripts/bundle_default_model.py REFIT_RUN \\
        --out-of-domain docs/ablation/a2-robust-soft.csv --data data/ami-br/train \\
        [--in-domain KFOLD_RUN] [--command "wsi-atm train ..."] [--name wsi-atm-default]

REFIT_RUN is a ``train --cv none`` run (one network on every crop). Its threshold, the
sensitivity/specificity the summary uses and the ``[fraction]`` calibration all come from the
recipe's pooled leave-scanner-out predictions (``--out-of-domain``: the CSV that
``scripts/ablation.py --export`` writes), never from in-domain data; ``--in-domain`` adds the
recipe's in-domain 5-fold metrics. Writes ``wsi_atm/models/cards/<name>.toml`` and
``wsi_atm/models/cards/<name>/model.safetensors`` (removing any other weight file there).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import numpy as np

from wsi_atm.files import sha256_file
from wsi_atm.models.card import read_card
from wsi_atm.models.schema import dump
from wsi_atm.train.fraction_study import Predictions, card_fraction
from wsi_atm.train.metrics import best_threshold, binary_metrics

REPO = Path(__file__).resolve().parents[1]
CARDS = REPO / "wsi_atm" / "models" / "cards"


def out_of_domain(path: Path, data: Path) -> Predictions:
    """Exported leave-group-out predictions, each crop joined to its slide by the split CSV."""
    with open(data / "amibr_train_split.csv", newline="", encoding="utf-8") as fh:
        slide_of = {r["dataset_uid"]: r["slide"] for r in csv.DictReader(fh)}
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return Predictions(np.array([float(r["p_atypical"]) for r in rows]),
                       np.array([int(r["label"]) for r in rows]),
                       np.array([r["held_out"] for r in rows]),
                       np.array([slide_of[r["name"].split("/")[-1]] for r in rows]))


def rounded(m: dict) -> dict:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in m.items()}


def metrics(pred: Predictions, threshold: float, in_domain: Path | None) -> dict:
    pooled = binary_metrics(pred.labels, pred.p, threshold)
    out: dict = {
        "source": "pooled leave-one-scanner-out predictions of the recipe (each fold model on "
                  "the scanner it never saw), at the card's threshold",
        "threshold_source": "maximum balanced accuracy on the pooled leave-scanner-out "
                            "predictions",
        "cv": "leave-group-out", "cv_group": "scanner",
        "sensitivity": round(pooled["sensitivity"], 6),
        "specificity": round(pooled["specificity"], 6),
        "cv_n_atypical": int(pred.labels.sum()), "cv_n_normal": int((1 - pred.labels).sum()),
        "cv_out_of_fold_balanced_accuracy": round(pooled["balanced_accuracy"], 6),
    }
    groups = {}
    for g in sorted(set(pred.group)):
        m = binary_metrics(pred.labels[pred.group == g], pred.p[pred.group == g], threshold)
        groups[g] = rounded({k: m[k] for k in ("balanced_accuracy", "auroc", "sensitivity",
                                               "specificity")} | {"n": int(m["n"])})
    # the between-scanner spread of the rates: Rogan-Gladen intervals add it (estimators.py)
    for rate in ("sensitivity", "specificity"):
        out[f"cv_{rate}_std"] = round(float(np.std([m[rate] for m in groups.values()])), 6)
    bas = [m["balanced_accuracy"] for m in groups.values()]
    aucs = [m["auroc"] for m in groups.values()]
    out["out_of_domain"] = {"balanced_accuracy_mean": round(float(np.mean(bas)), 6),
                            "balanced_accuracy_std": round(float(np.std(bas)), 6),
                            "auroc_mean": round(float(np.mean(aucs)), 6),
                            "pooled_auroc": round(pooled["auroc"], 6), **groups}
    if in_domain is not None:
        s = json.loads((in_domain / "summary.json").read_text())
        out["in_domain"] = {
            "source": "StratifiedGroupKFold over slides, 5 folds (each fold model on its "
                      "validation fold, at its inner-split threshold)",
            **{f"{k}_{stat}": round(s[k][stat], 6)
               for k in ("balanced_accuracy", "auroc", "sensitivity", "specificity")
               for stat in ("mean", "std")},
            "out_of_fold_balanced_accuracy": round(s["out_of_fold"]["balanced_accuracy"], 6)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("refit", type=Path)
    ap.add_argument("--out-of-domain", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="the AMi-Br training split")
    ap.add_argument("--in-domain", type=Path)
    ap.add_argument("--name", default="wsi-atm-default")
    ap.add_argument("--command", default="", help="the exact training command, for the record")
    ap.add_argument("--comment", type=Path, help="a text file: the card's prose")
    args = ap.parse_args()
    raw = read_card(args.refit / "card.toml")
    pred = out_of_domain(args.out_of_domain, args.data)
    threshold = best_threshold(pred.labels, pred.p)
    dest = CARDS / args.name
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    target = dest / "model.safetensors"
    shutil.copyfile(args.refit / "fold_0" / "best.safetensors", target)
    raw |= {"name": args.name, "status": "trained"}
    raw["decision"] = {"threshold": round(threshold, 6)}
    raw["metrics"] = metrics(pred, threshold, args.in_domain)
    raw["fraction"] = card_fraction(pred, "calibrated-mean")
    raw["weights"] = [{"file": f"{args.name}/{target.name}", "sha256": sha256_file(target)}]
    comment = args.comment.read_text(encoding="utf-8") if args.comment else ""
    if args.command:
        comment += f"\nTraining command:\n  {args.command}"
    out = CARDS / f"{args.name}.toml"
    out.write_text(dump(raw, comment=comment.strip()), encoding="utf-8")
    print(f"wrote {out} and {target} (threshold {threshold:.4f})")


if __name__ == "__main__":
    main()
