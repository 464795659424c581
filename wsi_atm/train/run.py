"""A whole training run: resolve config, assign folds, train each fold, write the run's card."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from wsi_atm.cards import ModelCard, sha256_file
from wsi_atm.errors import OptionError
from wsi_atm.train.config import TrainConfig
from wsi_atm.train.data import CropDataset, load_dataset
from wsi_atm.train.metrics import binary_metrics, mean_std
from wsi_atm.train.protocol import FoldData, FoldTrainer, plan_folds

SUMMARY_KEYS = ("balanced_accuracy", "auroc", "sensitivity", "specificity")


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
    tmp = out / "config.json.tmp"
    tmp.write_text(cfg.to_json())
    tmp.replace(saved)
    return cfg


def write_folds(out: Path, data: CropDataset, plans: list[FoldData]) -> None:
    role = {}
    for p in plans:
        role.update({int(i): (p.fold, "validation") for i in p.report})
    with open(out / "folds.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "group", "label", "fold", "held_out"])
        names = {p.fold: p.held_out for p in plans}
        for i, name in enumerate(data.names):
            group = "" if data.groups is None else data.groups[i]
            fold = role[i][0] if i in role else ""  # --cv none holds nothing out
            w.writerow([name, group, "Atypical" if data.labels[i] else "Normal", fold,
                        names.get(fold, "") if fold != "" else ""])


def train_run(
    card: ModelCard, data_dir: Path, out: Path, cfg: TrainConfig, quiet: bool = False
) -> dict:
    cfg = prepare_run_dir(out, cfg)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
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
    summary = summarise(results)
    summary["cv"] = {"kind": cfg.cv, "group": cfg.group if cfg.cv == "leave-group-out" else "slide"}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_run_card(card, cfg, out, results, summary)
    return summary


def summarise(results: list[dict]) -> dict:
    summary: dict = {"folds": [r["metrics"] for r in results]}
    for key in SUMMARY_KEYS:
        mean, std = mean_std([r["metrics"][key] for r in results])
        summary[key] = {"mean": mean, "std": std}
        m05, s05 = mean_std([r["metrics_at_0.5"][key] for r in results])
        summary[f"{key}_at_0.5"] = {"mean": m05, "std": s05}
    labels = np.concatenate([r["predictions"]["labels"] for r in results])
    probs = np.concatenate([r["predictions"]["p_atypical"] for r in results])
    thresholds = [r["threshold"] for r in results]
    summary["threshold"] = float(np.mean(thresholds))
    summary["out_of_fold"] = binary_metrics(labels, probs, summary["threshold"])
    summary["held_out"] = {r.get("held_out") or f"fold {r['fold']}": r["metrics"] for r in results}
    return summary


def _toml_value(v: object) -> str:
    return json.dumps(v) if not isinstance(v, bool) else str(v).lower()


def write_run_card(
    card: ModelCard, cfg: TrainConfig, out: Path, results: list[dict], summary: dict
) -> Path:
    """A card for the trained fold ensemble, next to the weights it names."""
    src = card.path.read_text(encoding="utf-8")
    head, _, _ = src.partition("\n[[weights]]")
    head = _strip_sections(head, ("decision", "metrics", "training"))
    head = _set_top(head, {"status": "trained", "trained_mode": cfg.mode})
    cv = summary.get("cv", {"kind": "kfold", "group": "slide"})
    source = ("leave-one-group-out: each fold model on the group it never saw"
              if cv["kind"] == "leave-group-out"
              else "cross-validation (each fold model on its validation fold)")
    lines = [head.rstrip(), "", "[decision]", f"threshold = {summary['threshold']:.6f}", "",
             "[metrics]", f'source = "{source}"', f'cv = "{cv["kind"]}"',
             f'cv_group = "{cv["group"]}"']
    for key in SUMMARY_KEYS:
        lines.append(f"cv_{key}_mean = {summary[key]['mean']:.6f}")
        lines.append(f"cv_{key}_std = {summary[key]['std']:.6f}")
    oof = summary["out_of_fold"]
    lines += [f"cv_n_atypical = {oof['n_atypical']}", f"cv_n_normal = {oof['n_normal']}",
              # The operating point classify uses for its corrected fraction: out-of-fold
              # predictions at the card's (ensemble) threshold.
              f"sensitivity = {oof['sensitivity']:.6f}",
              f"specificity = {oof['specificity']:.6f}",
              f"cv_out_of_fold_balanced_accuracy = {oof['balanced_accuracy']:.6f}", ""]
    for name, m in summary.get("held_out", {}).items():
        lines += [f"[metrics.held_out.{json.dumps(name)}]",
                  f"balanced_accuracy = {m['balanced_accuracy']:.6f}",
                  f"auroc = {m['auroc']:.6f}", f"n = {m['n_atypical'] + m['n_normal']}", ""]
    lines += ["[training]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in sorted(json.loads(cfg.to_json()).items())]
    lines.append("")
    for r in results:
        path = out / f"fold_{r['fold']}" / "best.safetensors"
        lines += ["[[weights]]", f'file = "fold_{r["fold"]}/best.safetensors"',
                  f'sha256 = "{sha256_file(path)}"', f"fold = {r['fold']}", ""]
    card_path = out / "card.toml"
    tmp = out / "card.toml.tmp"
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(card_path)
    return card_path


def _strip_sections(text: str, names: tuple[str, ...]) -> str:
    """Drop whole ``[name]`` tables from a TOML text (until the next table header)."""
    out, skipping = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            skipping = stripped.strip("[]") in names
        if not skipping:
            out.append(line)
    return "\n".join(out)


def _set_top(text: str, values: dict[str, str]) -> str:
    """Set top-level string keys (before the first table) of a TOML text."""
    lines = text.splitlines()
    first_table = next((i for i, ln in enumerate(lines) if ln.strip().startswith("[")), len(lines))
    top = [ln for ln in lines[:first_table] if ln.split("=")[0].strip() not in values]
    top += [f'{k} = "{v}"' for k, v in values.items()]
    return "\n".join(top + lines[first_table:])
