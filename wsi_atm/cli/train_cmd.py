"""``wsi-atm train``: cross-validated training with the benchmark's protocol by default."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import click

from wsi_atm.models.registry import find_card
from wsi_atm.options import check_out_dir
from wsi_atm.train.config import CHOICES, TrainConfig, card_recipe, load_config_file

_HELP = {
    "folds": "number of cross-validation folds (grouped by slide)",
    "selection": "choose the best epoch on the validation fold (paper) or an inner split",
    "threshold": "decision threshold: fixed 0.5 (paper) or chosen on the inner split",
    "cv": "kfold (the paper's StratifiedGroupKFold over slides), leave-group-out, or none "
          "(one model on every crop, last epoch: the refit of a validated recipe)",
    "group": "leave-group-out groups: scanner (AMi-Br's bundled table), dataset, slide, "
             "or a column of --groups",
    "groups": "CSV slide → group table (a 'slide' column plus group columns)",
    "soft_labels": "learn the share of expert votes (AMi-Br's three experts), not the majority",
    "patience": "early stopping after this many epochs without improvement (default: the "
                "paper's 15, or 10 for LoRA)",
    "input_size": "resize crops to this many px when loading (default: the card's crop size)",
    "threads": "torch CPU threads (default: every CPU this process may use)",
    "device": "where the network trains: auto (a CUDA GPU when torch sees one, else the "
              "CPU), cpu, cuda or cuda:N",
    "max_batches": "cap the batches of an epoch, for smoke tests (default: no cap)",
    "lr": "learning rate (default 5e-05, or the card's [recipe.MODE] value: Prov-GigaPath's "
          "linear probe 1e-3)",
    "weight_decay": "weight decay (default 1e-05, or the card's [recipe.MODE] value: "
                    "Prov-GigaPath's linear probe 1e-4)",
}


def _config_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """One --option per TrainConfig field (except mode), default None = keep config/paper value."""
    for f in reversed(fields(TrainConfig)):
        if f.name == "mode":
            continue
        name = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            opt = click.option(name + "/--no-" + f.name.replace("_", "-"), f.name, default=None,
                               help=_HELP.get(f.name))
        else:
            kind: Any = {"int": int, "float": float}.get(str(f.type), str)
            if f.name in CHOICES:
                kind = click.Choice(CHOICES[f.name])
            opt = click.option(name, f.name, type=kind, default=None,
                               help=_HELP.get(f.name, f"default {f.default!r}"))
        func = opt(func)
    return func


@click.command()
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="AMi-Br layout or {Atypical,Normal}/ folders of crops")
@click.option("--model", "model", required=True, help="model card name or path")
@click.option("--mode", type=click.Choice(CHOICES["mode"]), default=None,
              help="what is trained (default: the --config file's, else end-to-end)")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="run directory (default runs/<model>-<mode>); rerun to resume")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="JSON/TOML file of training options (command-line options win)")
@click.option("--quiet", is_flag=True, help="no progress bars")
@_config_options
def train(data_dir: Path, model: str, mode: str | None, out: Path | None,
          config_file: Path | None, quiet: bool, **overrides: object) -> None:
    """Train a model card with k-fold cross-validation and write a trained card."""
    from wsi_atm.train.run import train_run

    card = find_card(model)
    values: dict[str, Any] = load_config_file(config_file) if config_file is not None else {}
    # Regression: the config file's mode overrode an explicit --mode
    values.update({k: v for k, v in {"mode": mode, **overrides}.items() if v is not None})
    # The card's own recipe for the mode comes under the config file and the command line.
    # Regression: Prov-GigaPath's linear probe, which the benchmark trained with lr 1e-3 and
    # weight decay 1e-4, was trained with the shared 5e-5 / 1e-5
    values = card_recipe(card, values.get("mode", TrainConfig.mode)) | values
    cfg = TrainConfig.from_mapping(values)
    mode = cfg.mode
    out = check_out_dir(out or Path("runs") / f"{card.name}-{mode}", "--out")
    summary = train_run(card, data_dir, out, cfg, quiet=quiet)
    ba, auc = summary.fold_stats["balanced_accuracy"], summary.fold_stats["auroc"]
    # Regression: "over 6 folds" where 2 held out one class and the means are of the other 4
    defined = sum(f["balanced_accuracy"] == f["balanced_accuracy"] for f in summary.folds)
    over = f"{len(summary.folds)} folds" if defined == len(summary.folds) else (
        f"the {defined} of {len(summary.folds)} folds that hold out both classes")
    click.echo(
        f"{card.name} {mode}: balanced accuracy {ba.mean:.4f} ± {ba.std:.4f}, "
        f"AUROC {auc.mean:.4f} ± {auc.std:.4f} over {over}; "
        f"card: {out / 'card.toml'}"
    )
