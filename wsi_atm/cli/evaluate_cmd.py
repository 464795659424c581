"""``wsi-atm evaluate`` and ``wsi-atm results``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from wsi_atm.cli.options import MAX_BATCH
from wsi_atm.errors import OptionError


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    return value


@click.command()
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="AMi-Br layout or {Atypical,Normal}/ folders of crops")
@click.option("--model", default=None, help="model name or card (default: the bundled default)")
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH), default=None)
@click.option("--tta", is_flag=True, help="mean over the 8 flips/rotations")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object to stdout")
@click.option("--group", default=None,
              help="also report the ensemble per group: scanner, dataset, slide or a column of "
                   "--groups")
@click.option("--groups", "groups_table", type=click.Path(path_type=Path), default=None,
              help="slide → group table (CSV/TSV with a 'slide' column)")
@click.option("--quiet", is_flag=True)
def evaluate(data_dir: Path, model: str | None, device: str, batch_size: int | None, tta: bool,
             group: str | None, groups_table: Path | None, as_json: bool, quiet: bool) -> None:
    """Balanced accuracy, AUROC, sensitivity, specificity per fold model and for the ensemble."""
    from wsi_atm.models.registry import find_card
    from wsi_atm.train.evaluate import evaluate as run

    if groups_table is not None and group is None:  # it was ignored without a word
        raise OptionError("--groups is the table --group reads: give --group too, a column "
                          "of that table")

    report = run(find_card(model), data_dir, device=device, batch_size=batch_size, tta=tta,
                 quiet=quiet or as_json, group=group, groups_table=groups_table)
    if as_json:  # strict JSON: an undefined metric (a group of one class) is null, not NaN
        click.echo(json.dumps(_nan_to_none(report), indent=2, allow_nan=False))
        return
    click.echo(f"{report['model']} on {data_dir} (n={report['n']}: {report['n_atypical']} "
               f"atypical, {report['n_normal']} normal; threshold {report['threshold']:.3f})")
    click.echo(f"{'':<10} {'BA':>7} {'AUROC':>7} {'sens':>7} {'spec':>7}")
    for k, m in enumerate(report["folds"]):
        click.echo(f"fold {k:<5} {m['balanced_accuracy']:7.4f} {m['auroc']:7.4f} "
                   f"{m['sensitivity']:7.4f} {m['specificity']:7.4f}")
    ba, auc = report["fold_balanced_accuracy"], report["fold_auroc"]
    click.echo(f"{'folds':<10} {ba['mean']:.4f}±{ba['std']:.4f} {auc['mean']:.4f}±{auc['std']:.4f}")
    e = report["ensemble"]
    click.echo(f"{'ensemble':<10} {e['balanced_accuracy']:7.4f} {e['auroc']:7.4f} "
               f"{e['sensitivity']:7.4f} {e['specificity']:7.4f}")
    for g, m in report.get("by_group", {}).items():
        click.echo(f"  {g} (n={m['n']}): BA {m['balanced_accuracy']:.4f}, AUROC "
                   f"{m['auroc']:.4f}, sens {m['sensitivity']:.4f}, spec {m['specificity']:.4f}")


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
def results(runs: tuple[Path, ...]) -> None:
    """A paper-shaped table (rows models, columns datasets, BA / AUROC) of run directories.

    Each RUN is a training run directory (cross-validation) or a JSON file written by
    `wsi-atm evaluate --json` (a dataset).
    """
    from wsi_atm.train.report import results_table

    click.echo(results_table(list(runs)))
