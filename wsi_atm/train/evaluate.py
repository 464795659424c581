"""``wsi-atm evaluate``: a card's fold models and their ensemble on a folder of labelled crops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from wsi_atm.infer import Classifier
from wsi_atm.models.card import ModelCard
from wsi_atm.progress import progress_bar
from wsi_atm.train.data import load_dataset, require_both_classes
from wsi_atm.train.domains import crop_groups
from wsi_atm.train.metrics import binary_metrics, mean_std
from wsi_atm.train.results import SUMMARY_KEYS, metric


def evaluate(
    card: ModelCard, data_dir: Path, device: str = "auto", batch_size: int | None = None,
    tta: bool = False, quiet: bool = False, group: str | None = None,
    groups_table: Path | None = None,
) -> dict[str, Any]:
    """Metrics (atypical = positive) per fold model, their mean ± population std, and ensemble.

    With ``group`` (``scanner``, ``dataset``, ``slide`` or a column of ``groups_table``), the
    ensemble's metrics are also given per group under ``by_group``.
    """
    # The data and groups before the model (torch, weights, an ONNX build): bad input fails
    # at once, not 20 s later
    data = load_dataset(data_dir, size=card.crop_size)
    require_both_classes(data, "balanced accuracy, AUROC and the rates need both classes")
    group_of = crop_groups(data, group, groups_table) if group else None
    # float32 as training validated the folds and the benchmark scored them: on a GPU the
    # classifier's "auto" ran ViT and foundation cards in bf16 autocast, which moves
    # probabilities by hundredths and flips calls near the threshold
    classifier = Classifier(card, device=device, batch_size=batch_size, tta=tta,
                            precision="float32")
    images = data.images.permute(0, 2, 3, 1).numpy()
    step = max(classifier.batch_size, 1)
    bar = progress_bar(len(images), "evaluating", quiet=quiet, unit="crop")
    parts = []
    for i in range(0, len(images), step):
        parts.append(classifier.predict_folds(images[i : i + step]))
        bar.update(min(step, len(images) - i))
    bar.close()
    per_fold = np.concatenate(parts, axis=1)
    folds = [binary_metrics(data.labels, p, card.threshold) for p in per_fold]
    ensemble = binary_metrics(data.labels, per_fold.mean(axis=0), card.threshold)
    report: dict[str, Any] = {
        "model": card.name, "data": str(data_dir), "n": len(data),
        "n_atypical": int(data.labels.sum()), "n_normal": int((1 - data.labels).sum()),
        "threshold": card.threshold, "tta": tta, "precision": classifier.precision,
        "folds": folds, "ensemble": ensemble,
    }
    for key in SUMMARY_KEYS:
        mean, std = mean_std([metric(f, key) for f in folds])
        report[f"fold_{key}"] = {"mean": mean, "std": std}
    if group_of is not None:
        mean_p = per_fold.mean(axis=0)
        report["group"] = group
        report["by_group"] = {
            str(g): binary_metrics(data.labels[group_of == g], mean_p[group_of == g],
                                   card.threshold)
            for g in sorted(set(group_of.tolist()))
        }
    report["balanced_accuracy"] = ensemble["balanced_accuracy"]
    report["auroc"] = ensemble["auroc"]
    return report
