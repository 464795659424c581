"""Paper-shaped tables: rows models, columns datasets, cells 'BA / AUROC' (mean ± std)."""

from __future__ import annotations

import json
from pathlib import Path

from wsi_atm.errors import BadInputError


def _cell(ba: dict, auc: dict) -> str:
    return f"{ba['mean']:.4f}±{ba['std']:.4f} / {auc['mean']:.4f}±{auc['std']:.4f}"


def load_entry(path: Path) -> tuple[str, str, str]:
    """(model, dataset, cell) from a run directory or an ``evaluate --json`` file."""
    if path.is_dir():
        summary_path, config_path = path / "summary.json", path / "card.toml"
        if not summary_path.is_file():
            raise BadInputError(f"{path}: no summary.json (is the run finished?)")
        s = json.loads(summary_path.read_text())
        import tomllib

        name = tomllib.loads(config_path.read_text()).get("name", path.name) \
            if config_path.is_file() else path.name
        return name, "cross-validation", _cell(s["balanced_accuracy"], s["auroc"])
    try:
        r = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{path}: not a run directory or evaluate JSON ({exc})") from None
    return r["model"], Path(r["data"]).name, _cell(r["fold_balanced_accuracy"], r["fold_auroc"])


def results_table(paths: list[Path]) -> str:
    entries = [load_entry(p) for p in paths]
    models = list(dict.fromkeys(m for m, _, _ in entries))
    datasets = list(dict.fromkeys(d for _, d, _ in entries))
    cells = {(m, d): c for m, d, c in entries}
    header = "| model | " + " | ".join(f"{d} (BA / AUROC)" for d in datasets) + " |"
    rule = "|---|" + "---|" * len(datasets)
    rows = ["| " + m + " | " + " | ".join(cells.get((m, d), "–") for d in datasets) + " |"
            for m in models]
    return "\n".join([header, rule, *rows])
