"""Fold assignment: StratifiedGroupKFold over slides, exactly as the benchmark does it."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from wsi_atm.errors import BadInputError


def fold_splits(
    labels: np.ndarray, groups: np.ndarray | None, n_splits: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, validation) index pairs; grouped by slide when groups are known."""
    x = np.zeros(len(labels))
    try:
        if groups is None:
            splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            return list(splitter.split(x, labels))
        grouped = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return list(grouped.split(x, labels, groups))
    except ValueError as exc:  # too few crops or slides for the folds: an internal error was
        slides = f", {len(set(groups.tolist()))} slides" if groups is not None else ""
        raise BadInputError(f"cannot split {len(labels)} crops{slides} into {n_splits} "
                            f"folds: {' '.join(str(exc).split())}") from None


def inner_split(
    labels: np.ndarray, groups: np.ndarray | None, n_splits: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """One (fit, select) split of a training fold, grouped like the outer one."""
    return fold_splits(labels, groups, n_splits, seed)[0]
