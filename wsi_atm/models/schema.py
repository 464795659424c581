"""The model card's TOML schema: which keys exist, which values are allowed, and one writer.

A card is read strictly: an unknown or misspelt key, or a value outside an enumerated field,
is an error that names the key (``decision.treshold`` must not silently become 0.5). Every
program that writes a card (``train``, the bundling script) builds a plain dict and calls
:func:`dump`, so what is written is what :func:`validate` accepts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from wsi_atm.fraction.estimators import METHODS as FRACTION_METHODS

MODES = ("end-to-end", "linear-probe", "lora")
ENUMS: dict[str, tuple[str, ...]] = {
    "kind": ("cnn", "vit", "foundation"),
    "status": ("trained", "untrained", "external"),
    "trained_mode": MODES,
    "labels.output": ("p_atypical", "p_normal"),
    # the estimators' own names: a card may name only what classify can compute
    "fraction.method": FRACTION_METHODS,
}
# Tables whose keys are fixed; ``None`` marks a sub-table whose own keys are free (timm kwargs,
# a hub's config, per-group metrics). Keys of [training] are the record of the run's options.
FIXED: dict[str, dict[str, Any]] = {
    "": {"name": 1, "description": 1, "kind": 1, "batch_size": 1, "status": 1,
         "trained_mode": 1, "architecture": 1, "input": 1, "labels": 1, "preprocess": 1,
         "decision": 1, "metrics": 1, "training": None, "weights": 1, "lora": 1,
         "embedding": 1, "fraction": 1},
    "architecture": {"name": 1, "pretrained": 1, "pretrained_sha256": 1, "revision": 1,
                     "timm_equivalent": 1, "kwargs": None, "hub_model_args": None},
    "input": {"crop_size": 1, "model_size": 1, "mpp": 1},
    "labels": {"output": 1},
    "decision": {"threshold": 1, "source": 1},
    "lora": {"r": 1, "alpha": 1, "dropout": 1, "target_modules": 1, "adapt_patch_embed": 1,
             "head": 1},
    "embedding": {"method": 1, "patch_start": 1, "dim": 1},
    "weights": {"file": 1, "sha256": 1, "fold": 1},
    "preprocess.*": {"train": 1, "eval": 1, "mean": 1, "std": 1},
    "fraction": {"method": 1, "platt_a": 1, "platt_b": 1, "shift_sd": 1, "prior": 1,
                 "q_atypical": 1, "q_normal": 1, "source": 1},
}
# Numbers that are shares or probabilities: a threshold of 7 or nan would call every mitosis
# normal without a word, a sensitivity of 2 would bend the slide estimate.
UNIT_INTERVAL = ("decision.threshold", "metrics.sensitivity", "metrics.specificity",
                 "fraction.prior", "fraction.q_atypical", "fraction.q_normal")
NON_NEGATIVE = ("fraction.shift_sd", "metrics.cv_sensitivity_std", "metrics.cv_specificity_std")
METRIC_STATS = ("balanced_accuracy", "auroc", "sensitivity", "specificity")
METRICS = {"source", "cv", "cv_group", "sensitivity", "specificity", "cv_n_atypical",
           "cv_n_normal", "cv_out_of_fold_balanced_accuracy", "threshold_source",
           *(f"cv_{m}_{s}" for m in METRIC_STATS for s in ("mean", "std"))}
METRIC_TABLES = ("held_out", "in_domain", "out_of_domain")
SECTION_ORDER = ("architecture", "input", "labels", "preprocess", "lora", "embedding",
                 "decision", "metrics", "fraction", "training", "weights")


def validate(raw: dict[str, Any]) -> None:
    """Raise ValueError naming the first unknown key or disallowed value."""
    _keys(raw, FIXED[""], "")
    for table in ("architecture", "input", "labels", "decision", "lora", "embedding",
                  "fraction"):
        if table in raw:
            _keys(_table(raw, table), FIXED[table], table + ".")
    for mode, spec in _table(raw, "preprocess").items():
        if mode not in MODES:
            raise ValueError(f"unknown key preprocess.{mode} (modes: {', '.join(MODES)})")
        _keys(_table({mode: spec}, mode), FIXED["preprocess.*"], f"preprocess.{mode}.")
    for i, w in enumerate(raw.get("weights", [])):
        if not isinstance(w, dict) or "file" not in w:
            raise ValueError(f"weights[{i}] needs a file")
        _keys(w, FIXED["weights"], f"weights[{i}].")
    for key, value in _table(raw, "metrics").items():
        if key not in METRICS and not (key in METRIC_TABLES and isinstance(value, dict)):
            raise ValueError(f"unknown key metrics.{key}")
    for dotted, allowed in ENUMS.items():
        value = _get(raw, dotted)
        if value is not None and value not in allowed:
            raise ValueError(f"{dotted} = {value!r} is not one of {', '.join(allowed)}")
    for dotted in (*UNIT_INTERVAL, *NON_NEGATIVE):
        value = _get(raw, dotted)
        if value is None:
            continue
        # NaN metrics are undefined, not wrong: a fold without atypical mitoses has no spread
        # of sensitivity, a `--cv none` refit no out-of-fold rates at all
        undefined = dotted.startswith("metrics.") and value != value
        ok = isinstance(value, int | float) and not isinstance(value, bool) and (
            undefined or (0 <= value <= 1 if dotted in UNIT_INTERVAL else 0 <= value < math.inf))
        if not ok:
            span = "between 0 and 1" if dotted in UNIT_INTERVAL else "a number of at least 0"
            raise ValueError(f"{dotted} = {value!r} must be {span}")


def _table(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a table")
    return value


def _keys(table: dict[str, Any], allowed: dict[str, Any], prefix: str) -> None:
    for key in table:
        if key not in allowed:
            raise ValueError(f"unknown key {prefix}{key}")


def _get(raw: dict[str, Any], dotted: str) -> Any:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def dump(raw: dict[str, Any], comment: str = "") -> str:
    """The card as TOML text: top-level keys, then tables in a fixed order, weights last."""
    validate(raw)
    lines = [f"# {ln}".rstrip() for ln in comment.splitlines()] if comment else []
    lines += [f"{k} = {_value(v)}" for k, v in raw.items() if not _is_table(v)]
    order = [k for k in SECTION_ORDER if k in raw and _is_table(raw[k])]
    for key in order:
        value = raw[key]
        if isinstance(value, list):
            for item in value:
                lines += ["", f"[[{key}]]", *(f"{k} = {_value(v)}" for k, v in item.items())]
        else:
            lines += _table_lines(key, value)
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_table(value: Any) -> bool:
    return isinstance(value, dict) or (
        isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value))


def _table_lines(name: str, table: dict[str, Any]) -> list[str]:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    lines = ["", f"[{name}]", *(f"{_key(k)} = {_value(v)}" for k, v in scalars.items())]
    if not scalars and any(isinstance(v, dict) for v in table.values()):
        lines = []
    for key, value in table.items():
        if isinstance(value, dict):
            lines += _table_lines(f"{name}.{_key(key)}", value)
    return lines


def _key(key: str) -> str:
    bare = key.replace("-", "").replace("_", "").isalnum() and key.isascii()
    return key if bare else json.dumps(key)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):  # e.g. the metrics of a --cv none run: nothing was held out
            return "nan"
        return repr(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise ValueError(f"a card cannot hold {type(v).__name__} values")


def leading_comment(path: Path) -> str:
    """The comment block a card file starts with (its prose), without the ``#`` marks."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].removeprefix(" "))
    return "\n".join(lines)
