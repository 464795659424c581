"""A whole training run: resolve config, assign folds, train each fold, write the run's card."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from wsi_atm.cpus import usable_cpus
from wsi_atm.errors import OptionError
from wsi_atm.files import atomic_path, atomic_write_text, sha256_file
from wsi_atm.models.card import ModelCard, read_card
from wsi_atm.models.schema import dump, leading_comment
from wsi_atm.train.config import TrainConfig
from wsi_atm.train.data import CropDataset, load_dataset
from wsi_atm.train.protocol import FoldData, FoldTrainer, plan_folds
from wsi_atm.train.results import SUMMARY_KEYS, FoldResult, RunSummary, summarise


def prepare_run_dir(out: Path, cfg: TrainConfig) -> TrainConfig:
    """Create the run dir, or resume one: a saved config must match the requested one."""
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "config.json"
    if saved.is_file():
        previous = TrainConfig.from_mapping(json.loads(saved.read_text()))
        # Which folds this process trains and its thread count may differ between resumes.
        if replace(previous, only_folds="", threads=0) != replace(cfg, only_folds="", threads=0):
            raise OptionError(
                f"{out} holds a run with a different configuration; resume it with the same "
                "options or choose another --out")
        return replace(previous, only_folds=cfg.only_folds, threads=cfg.threads)
    atomic_write_text(saved, cfg.to_json())
    return cfg


def write_folds(out: Path, data: CropDataset, plans: list[FoldData]) -> None:
    role = {}
    for p in plans:
        role.update({int(i): (p.fold, "validation") for i in p.report})
    with atomic_path(out / "folds.csv") as tmp, open(tmp, "w", newline="",
                                                         encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "group", "label", "fold", "held_out"])
        names = {p.fold: p.held_out for p in plans}
        for i, name in enumerate(data.names):
            group = "" if data.groups is None else data.groups[i]
            fold = role[i][0] if i in role else ""  # --cv none holds nothing out
            w.writerow([name, group, "Atypical" if data.labels[i] else "Normal", fold,
                        names.get(int(fold), "") if fold != "" else ""])


def train_run(
    card: ModelCard, data_dir: Path, out: Path, cfg: TrainConfig, quiet: bool = False
) -> RunSummary:
    cfg = prepare_run_dir(out, cfg)
    torch.set_num_threads(cfg.threads or usable_cpus())
    data = load_dataset(data_dir, size=cfg.input_size or card.crop_size)
    plans = plan_folds(data, cfg)
    write_folds(out, data, plans)
    if cfg.mode == "linear-probe":
        from wsi_atm.train.probe import train_probe_folds

        results = train_probe_folds(card, data, plans, cfg, out, quiet)
    else:
        wanted = set(cfg.fold_list) if cfg.only_folds else {p.fold for p in plans}
        results = [
            FoldTrainer(card, data, p, cfg, out / f"fold_{p.fold}", quiet).run()
            for p in plans if p.fold in wanted
        ]
    summary = summarise(results, cfg.cv, cfg.group if cfg.cv == "leave-group-out" else "slide")
    atomic_write_text(out / "summary.json", json.dumps(summary.to_json(), indent=2))
    write_run_card(card, cfg, out, results, summary)
    return summary


def write_run_card(
    card: ModelCard, cfg: TrainConfig, out: Path, results: list[FoldResult],
    summary: RunSummary,
) -> Path:
    """A card for the trained fold ensemble, next to the weights it names."""
    raw = {k: v for k, v in read_card(card.path).items()
           if k not in ("decision", "metrics", "training", "weights")}
    raw |= {"status": "trained", "trained_mode": cfg.mode}
    raw["decision"] = {"threshold": round(summary.threshold, 6)}
    raw["metrics"] = run_metrics(summary)
    raw["training"] = json.loads(cfg.to_json())
    raw["weights"] = [
        {"file": f"fold_{r.fold}/best.safetensors",
         "sha256": sha256_file(out / f"fold_{r.fold}" / "best.safetensors"), "fold": r.fold}
        for r in results]
    card_path = out / "card.toml"
    atomic_write_text(card_path, dump(raw, comment=leading_comment(card.path)))
    return card_path


def run_metrics(summary: RunSummary) -> dict[str, Any]:
    """The card's ``[metrics]`` from a run summary: fold means, out-of-fold rates, per group."""
    source = ("leave-one-group-out: each fold model on the group it never saw"
              if summary.cv_kind == "leave-group-out"
              else "cross-validation (each fold model on its validation fold)")
    metrics: dict[str, Any] = {"source": source, "cv": summary.cv_kind,
                               "cv_group": summary.cv_group}
    for key in SUMMARY_KEYS:
        metrics[f"cv_{key}_mean"] = round(summary.fold_stats[key].mean, 6)
        metrics[f"cv_{key}_std"] = round(summary.fold_stats[key].std, 6)
    oof = summary.out_of_fold
    # The operating point classify uses: out-of-fold predictions at the card's threshold.
    # Counts only when there are some (a --cv none refit holds nothing out): a card's counts
    # are sample sizes, and a size of 0 would make the slide interval meaningless.
    counts = {"cv_n_atypical": oof["n_atypical"], "cv_n_normal": oof["n_normal"]}
    metrics |= {k: n for k, n in counts.items() if n}
    metrics |= {"sensitivity": round(oof["sensitivity"], 6),
                "specificity": round(oof["specificity"], 6),
                "cv_out_of_fold_balanced_accuracy": round(oof["balanced_accuracy"], 6)}
    held = {name: {"balanced_accuracy": round(m["balanced_accuracy"], 6),
                   "auroc": round(m["auroc"], 6), "n": m["n_atypical"] + m["n_normal"]}
            for name, m in summary.held_out.items()}
    if held:
        metrics["held_out"] = held
    return metrics
