"""How the default card's headline estimate behaves at every true share, high ones included.

    python scripts/high_share_check.py [--rounds 300]

Pseudo-slides resampled from the committed leave-scanner-out predictions
(``docs/ablation/a4-robust-soft-norm.csv``): a scanner drawn at random, then n mitoses of true
share t from its crops. Prints, per n and t, the 95 % interval's coverage and the share of
estimates carrying a warning. Unlike ``scripts/fraction_study.py`` (nested, shares 0-0.5) it uses
the card as shipped, so it shows what a user gets, in-sample for the calibration.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from wsi_atm.fraction.estimators import estimate  # noqa: E402
from wsi_atm.models.registry import find_card  # noqa: E402
from wsi_atm.train.fraction_study import (  # noqa: E402
    card_fraction_model,
    load_prediction_table,
)

SIZES = (10, 30, 100, 300, 1000)
SHARES = (0.0, 0.2, 0.35, 0.5, 0.6, 0.75, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    pred = load_prediction_table(REPO / "docs" / "ablation" / "a4-robust-soft-norm.csv")
    fm, rng = card_fraction_model(find_card(None)), np.random.default_rng(1)
    groups = np.unique(pred.group)
    print("| n | " + " | ".join(f"t = {t:g}" for t in SHARES) + " |")
    print("|---" * (len(SHARES) + 1) + "|")
    for n in SIZES:
        cells = []
        for t in SHARES:
            covered = warned = 0
            for _ in range(args.rounds):
                g = rng.choice(groups)
                k = rng.binomial(n, t)
                idx = np.concatenate([
                    rng.choice(np.flatnonzero((pred.group == g) & (pred.labels == 1)), k),
                    rng.choice(np.flatnonzero((pred.group == g) & (pred.labels == 0)), n - k)])
                e = estimate(pred.p[idx], fm)
                assert e.ci95 is not None
                covered += e.ci95[0] <= k / n <= e.ci95[1]
                warned += e.warning is not None
            cells.append(f"{covered / args.rounds:.2f} ({warned / args.rounds:.0%} warned)")
        print(f"| {n} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
