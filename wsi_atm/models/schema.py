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
from wsi_atm.models.checks import Check, either, number, of_type, one_of, pair, triple
from wsi_atm.models.sources import is_hub_id, is_valid_hub_id

MODES = ("end-to-end", "linear-probe", "lora")
EMBEDDING_METHODS = ("cls", "cls+mean")
LORA_HEADS = ("token0", "pooled", "replace")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
CALIBRATED = ("calibrated-mean", "calibrated-em")
ENUMS: dict[str, tuple[str, ...]] = {
    "kind": ("cnn", "vit", "foundation"),
    "status": ("trained", "untrained", "external"),
    "trained_mode": MODES,
    "labels.output": ("p_atypical", "p_normal"),
    # the estimators' own names: a card may name only what classify can compute
    "fraction.method": FRACTION_METHODS,
    "embedding.method": EMBEDDING_METHODS,
    "lora.head": LORA_HEADS,
}
# Tables whose keys are fixed; ``None`` marks a sub-table whose own keys are free (timm kwargs,
# a hub's config, per-group metrics). Keys of [training] are the record of the run's options.
FIXED: dict[str, dict[str, Any]] = {
    "": {"name": 1, "description": 1, "kind": 1, "batch_size": 1, "status": 1,
         "trained_mode": 1, "architecture": 1, "input": 1, "labels": 1, "preprocess": 1,
         "decision": 1, "metrics": 1, "training": None, "weights": 1, "lora": 1,
         "embedding": 1, "fraction": 1, "recipe": None},
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
                 "fraction.q_atypical", "fraction.q_normal")
NON_NEGATIVE = ("fraction.shift_sd", "metrics.cv_sensitivity_std", "metrics.cv_specificity_std")
METRIC_STATS = ("balanced_accuracy", "auroc", "sensitivity", "specificity")
METRICS = {"source", "cv", "cv_group", "sensitivity", "specificity", "cv_n_atypical",
           "cv_n_normal", "cv_out_of_fold_balanced_accuracy", "threshold_source",
           *(f"cv_{m}_{s}" for m in METRIC_STATS for s in ("mean", "std"))}
METRIC_TABLES = ("held_out", "in_domain", "out_of_domain")
SECTION_ORDER = ("architecture", "input", "labels", "preprocess", "lora", "embedding",
                 "recipe", "decision", "metrics", "fraction", "training", "weights")

SIZE = number(1, integer=True)
SHARE = number(0, 1)
NON_NEG = number(0)
INTERP = one_of(INTERPOLATIONS)
# Each preprocessing op's parameters (``p``, the share of images it applies to, is common to
# all) and which of them it cannot do without.
OP_PARAMS: dict[str, dict[str, Check]] = {
    "resize": {"size": SIZE, "interpolation": INTERP},
    "center_crop": {"size": SIZE},
    "hflip": {}, "vflip": {}, "rot90": {},
    "rotate": {"degrees": either(NON_NEG, pair(number())), "interpolation": INTERP},
    "color_jitter": {"brightness": NON_NEG, "contrast": NON_NEG, "saturation": NON_NEG,
                     "hue": number(0, 0.5)},
    "random_resized_crop": {"size": SIZE, "scale": pair(number(0, 1, above=True)),
                            "ratio": pair(number(0, above=True)), "interpolation": INTERP},
    "stain_jitter": {"scale": NON_NEG, "shift": NON_NEG},
    "hed_jitter": {"sigma": NON_NEG, "bias": NON_NEG},
    "gaussian_blur": {"kernel": number(1, integer=True),
                      "sigma": pair(number(0, above=True))},
    "sharpness": {"factor": NON_NEG},
    "jpeg": {"quality": pair(number(1, 100, integer=True))},
    "reinhard": {"mean": triple(number()), "std": triple(number(0, above=True))},
}
EVAL_OPS = ("resize", "center_crop", "reinhard")  # deterministic, batched, exportable


def _non_empty(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else "a non-empty string"


OP_REQUIRED = {"resize": ("size",), "center_crop": ("size",), "rotate": ("degrees",),
               "random_resized_crop": ("size",), "reinhard": ("mean", "std")}
# Values whose type or range the code that reads them relies on (a crop size of 32.9, an mpp
# of 0 or a LoRA rank of -1 were accepted and failed, or misbehaved, far from the card).
FIELDS: dict[str, Check] = {
    "name": _non_empty,
    "description": of_type(str, "a string"),
    # the network and its source: a number here was an internal error far from the card
    "architecture.name": _non_empty,
    "architecture.revision": of_type(str, "a string"),
    "architecture.timm_equivalent": of_type(str, "a string"),
    "architecture.pretrained_sha256": of_type(str, "a string"),
    "batch_size": SIZE, "input.crop_size": SIZE, "input.model_size": SIZE,
    "input.mpp": number(0, above=True),
    "lora.r": SIZE, "lora.alpha": number(0, above=True), "lora.dropout": number(0, 1, below=True),
    "lora.adapt_patch_embed": of_type(bool, "true or false"),
    "embedding.patch_start": number(0, integer=True), "embedding.dim": number(0, integer=True),
    "fraction.platt_a": number(), "fraction.platt_b": number(),
    "fraction.prior": number(0, 1, above=True, below=True),  # the EM divides by it and 1 - it
    # 0: no count (run cards of `--cv none` refits written before these checks say so)
    "metrics.cv_n_atypical": number(0, integer=True),
    "metrics.cv_n_normal": number(0, integer=True),
}


def check_op(spec: Any, where: str) -> None:
    """Raise ValueError naming ``where`` and the parameter for an op a card cannot mean."""
    kinds = ", ".join(OP_PARAMS)
    if not isinstance(spec, dict) or spec.get("op") not in OP_PARAMS:
        op = spec.get("op") if isinstance(spec, dict) else spec
        raise ValueError(f"{where}: unknown preprocessing op {op!r} (known: {kinds})")
    op = spec["op"]
    params = OP_PARAMS[op] | {"p": SHARE}
    for key, value in spec.items():
        if key == "op":
            continue
        if key not in params:
            raise ValueError(f"{where}: unknown key {key!r} of op {op!r} "
                             f"(it takes {', '.join(params)})")
        allowed = params[key](value)
        if allowed:
            raise ValueError(f"{where}.{key} = {value!r} must be {allowed} (op {op!r})")
    missing = [k for k in OP_REQUIRED.get(op, ()) if k not in spec]
    if missing:
        raise ValueError(f"{where}: op {op!r} needs {' and '.join(missing)}")


def _check_preprocess(mode: str, spec: dict[str, Any], crop_size: int,
                      model_size: int | None) -> None:
    for part in ("train", "eval"):
        ops = spec.get(part, [])
        if not isinstance(ops, list):
            raise ValueError(f"preprocess.{mode}.{part} must be a list of ops")
        for i, op in enumerate(ops):
            check_op(op, f"preprocess.{mode}.{part}[{i}]")
    size = crop_size  # the side of the square image each eval op is given
    for i, op in enumerate(spec.get("eval", [])):
        # Regression: augmentations (or p) were applied at inference, one draw per batch (a
        # slide's calls changed from run to run); jpeg was an internal error
        if op["op"] not in EVAL_OPS or "p" in op:
            what = f"op {op['op']!r}" if op["op"] not in EVAL_OPS else "p"
            raise ValueError(f"preprocess.{mode}.eval[{i}]: {what} is not for eval (it takes "
                             f"{', '.join(EVAL_OPS)}, without p: the same for every crop)")
        if op["op"] == "center_crop" and op["size"] > size:  # it pads with black: garbage
            raise ValueError(f"preprocess.{mode}.eval[{i}]: center_crop size {op['size']} is "
                             f"larger than the {size}-px image it is given")
        if "size" in op:
            size = op["size"]
    # Regression: fed another size, a CNN ran silently and a ViT was an internal error
    if model_size is not None and size != model_size:
        raise ValueError(f"preprocess.{mode}.eval gives {size}-px images, not the "
                         f"input.model_size of {model_size} px")
    checks = {"mean": triple(number()), "std": triple(number(0, above=True))}
    for key, check in checks.items():
        if key in spec and (allowed := check(spec[key])):
            raise ValueError(f"preprocess.{mode}.{key} = {spec[key]!r} must be {allowed}")


def _check_fraction(raw: dict[str, Any]) -> None:
    """What the card's fraction method needs (see wsi_atm.fraction.estimators)."""
    f = _table(raw, "fraction")
    if not f:
        return
    if "method" not in f:
        raise ValueError(f"fraction.method is missing (one of {', '.join(FRACTION_METHODS)})")
    missing = [k for k in ("platt_a", "platt_b") if k not in f]
    if f["method"] in CALIBRATED and missing:
        raise ValueError(f"fraction.method = {f['method']!r} needs fraction.{missing[0]}")
    q = [k for k in ("q_normal", "q_atypical") if k in f]
    if len(q) == 1:
        raise ValueError(f"fraction.{q[0]} needs its partner: give both q_normal and "
                         "q_atypical, or neither")
    if q and not f["q_normal"] < f["q_atypical"]:
        raise ValueError(f"fraction.q_normal = {f['q_normal']!r} must be below "
                         f"fraction.q_atypical = {f['q_atypical']!r}")


def _check_hub_id(value: Any) -> None:
    """A hub architecture must name a Hub repository: ``..``, spaces or a third part were
    internal errors of the Hub's client when the model was built, far from the card."""
    if isinstance(value, str) and is_hub_id(value) and not is_valid_hub_id(value):
        raise ValueError(f"architecture.name = {value!r} is not a hub id "
                         "hf-hub:ORG/NAME[@REVISION] (ORG and NAME of letters, digits, '_', '-' "
                         "and '.')")


def _check_source(value: Any) -> None:
    """Where pretrained weights come from; anything else was silently read as ImageNet."""
    if value is None or value in ("none", "imagenet") or (isinstance(value, str) and (
            is_hub_id(value) or value.startswith("package:"))):
        return
    raise ValueError(f"architecture.pretrained = {value!r} is not one of none, imagenet, "
                     "hf-hub:ORG/NAME or package:PACKAGE/FILE")


def validate(raw: dict[str, Any]) -> None:
    """Raise ValueError naming the first unknown key or disallowed value."""
    _keys(raw, FIXED[""], "")
    for table in ("architecture", "input", "labels", "decision", "lora", "embedding",
                  "fraction"):
        if table in raw:
            _keys(_table(raw, table), FIXED[table], table + ".")
    for sub in ("kwargs", "hub_model_args"):  # Regression: "(TypeError: 'int' object is ...)"
        if not isinstance(_get(raw, f"architecture.{sub}"), dict | None):
            raise ValueError(f"architecture.{sub} must be a table")
    for mode, spec in _table(raw, "preprocess").items():
        if mode not in MODES:
            raise ValueError(f"unknown key preprocess.{mode} (modes: {', '.join(MODES)})")
        _keys(_table({mode: spec}, mode), FIXED["preprocess.*"], f"preprocess.{mode}.")
    # [recipe.MODE]: training options the benchmark used for this card in that mode where they
    # differ from the shared defaults (checked, field by field, by `train`'s own config)
    for mode, spec in _table(raw, "recipe").items():
        if mode not in MODES:
            raise ValueError(f"unknown key recipe.{mode} (modes: {', '.join(MODES)})")
        if not isinstance(spec, dict):
            raise ValueError(f"recipe.{mode} must be a table")
    for i, w in enumerate(raw.get("weights", [])):
        if not isinstance(w, dict) or "file" not in w:
            raise ValueError(f"weights[{i}] needs a file")
        _keys(w, FIXED["weights"], f"weights[{i}].")
        if not isinstance(w["file"], str) or not w["file"].strip():
            raise ValueError(f"weights[{i}].file = {w['file']!r} must be a non-empty string")
        if "fold" in w and (wanted := number(0, integer=True)(w["fold"])):
            raise ValueError(f"weights[{i}].fold = {w['fold']!r} must be {wanted}")
        digest = w.get("sha256", "")
        if not (isinstance(digest, str) and (digest == "" or (
                len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)))):
            raise ValueError(f"weights[{i}].sha256 = {digest!r} must be 64 hex digits")
    for key, value in _table(raw, "metrics").items():
        if key not in METRICS and not (key in METRIC_TABLES and isinstance(value, dict)):
            raise ValueError(f"unknown key metrics.{key}")
    for dotted, allowed in ENUMS.items():
        value = _get(raw, dotted)
        if value is not None and value not in allowed:
            raise ValueError(f"{dotted} = {value!r} is not one of {', '.join(allowed)}")
    _check_source(_get(raw, "architecture.pretrained"))
    _check_hub_id(_get(raw, "architecture.name"))
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
    for dotted, check in FIELDS.items():
        value = _get(raw, dotted)
        if value is not None and (wanted := check(value)):
            raise ValueError(f"{dotted} = {value!r} must be {wanted}")
    crop_size = _get(raw, "input.crop_size") or 128
    for mode, spec in _table(raw, "preprocess").items():
        _check_preprocess(mode, spec, crop_size, _get(raw, "input.model_size"))
    targets = _get(raw, "lora.target_modules")
    if targets is not None and (not isinstance(targets, list) or not targets
                                or not all(isinstance(t, str) and t for t in targets)):
        raise ValueError(f"lora.target_modules = {targets!r} must be a list of module names")
    _check_fraction(raw)


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
