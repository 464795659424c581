"""Paper-shaped tables: rows models, columns datasets, cells 'BA / AUROC' (mean ± std)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wsi_atm.errors import BadInputError
from wsi_atm.models.card import read_card


def _num(value: Any) -> str:
    """A metric to 4 places; "n/a" where it is undefined: null in ``evaluate --json`` and NaN
    in a run's summary (a group or fold of one class has no balanced accuracy or AUROC)."""
    if value is None or value != value:
        return "n/a"
    return f"{float(value):.4f}"


def _mean_std(stats: dict[str, Any]) -> str:
    if _num(stats["mean"]) == "n/a":
        return "n/a"
    return f"{_num(stats['mean'])}±{_num(stats['std'])}"


def _cell(ba: dict[str, Any], auc: dict[str, Any]) -> str:
    return f"{_mean_std(ba)} / {_mean_std(auc)}"


def _pair(m: dict[str, Any]) -> str:
    return f"{_num(m['balanced_accuracy'])} / {_num(m['auroc'])}"


def _run_entries(path: Path) -> list[tuple[str, str, str]]:
    summary_path, config_path = path / "summary.json", path / "card.toml"
    if not summary_path.is_file():
        raise BadInputError(f"{path}: no summary.json (is the run finished?)")
    s = json.loads(summary_path.read_text())
    name = read_card(config_path).get("name", path.name) if config_path.is_file() else path.name
    cv = s.get("cv", {"kind": "kfold"})
    planned, done = s.get("folds_planned"), len(s.get("folds", []))
    part = f" ({done} of {planned} folds)" if planned and done < planned else ""
    if cv["kind"] == "none":  # a refit on all the data: it has no held-out score
        return [(name, "refit, no cross-validation", "–")]
    if cv["kind"] != "leave-group-out":
        # folds of crops, not slides (no slide per crop): not the paper's grouped figure
        ungrouped = " by crop, not slide" if cv.get("group") == "crop" else ""
        return [(name, "cross-validation" + ungrouped + part,
                 _cell(s["balanced_accuracy"], s["auroc"]))]
    # Leave-group-out: the mean over held-out groups, then each group the fold never saw.
    entries = [(name, f"leave-{cv['group']}-out mean{part}",
                _cell(s["balanced_accuracy"], s["auroc"]))]
    for group, m in s.get("held_out", {}).items():
        entries.append((name, f"held-out {group}", _pair(m)))
    return entries


def load_entry(path: Path) -> list[tuple[str, str, str]]:
    """(model, dataset, cell) rows from a run directory or an ``evaluate --json`` file."""
    try:
        return _run_entries(path) if path.is_dir() else _evaluate_entries(path)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # Regression: '{}' was a
        # KeyError, an internal error; a file of the wrong shape is bad input
        what = "run directory" if path.is_dir() else "evaluate --json file"
        raise BadInputError(f"{path}: not a readable {what} (missing or malformed "
                            f"{exc.__class__.__name__}: {exc})") from None


def _evaluate_entries(path: Path) -> list[tuple[str, str, str]]:
    try:
        r = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{path}: not a run directory or evaluate JSON ({exc})") from None
    data = Path(r["data"]).name
    entries = [(r["model"], data, _cell(r["fold_balanced_accuracy"], r["fold_auroc"]))]
    for group, m in r.get("by_group", {}).items():
        entries.append((r["model"], f"{data}: {group}", _pair(m)))
    return entries


def results_table(paths: list[Path]) -> str:
    loaded = [(p, load_entry(p)) for p in paths]
    sources: dict[tuple[str, str], set[Path]] = {}
    for p, found in loaded:
        for m, d, _ in found:
            sources.setdefault((m, d), set()).add(p)
    # Regression: two runs of one card (its name) on one dataset shared a cell and the last
    # one silently replaced the other; such runs are told apart by their folder's name
    clash = {p for ps in sources.values() if len(ps) > 1 for p in ps}
    # ... by the path as given where clashing folders share a name (exp1/run, exp2/run: one
    # label, and again the last silently replaced the other)
    names = [p.name for p in clash]
    label = {p: p.name if names.count(p.name) == 1 else str(p) for p in clash}
    entries = [(f"{m} [{label[p]}]" if p in clash else m, d, c)
               for p, found in loaded for m, d, c in found]
    models = list(dict.fromkeys(m for m, _, _ in entries))
    datasets = list(dict.fromkeys(d for _, d, _ in entries))
    cells = {(m, d): c for m, d, c in entries}
    header = "| model | " + " | ".join(f"{d} (BA / AUROC)" for d in datasets) + " |"
    rule = "|---|" + "---|" * len(datasets)
    rows = ["| " + m + " | " + " | ".join(cells.get((m, d), "–") for d in datasets) + " |"
            for m in models]
    return "\n".join([header, rule, *rows])
