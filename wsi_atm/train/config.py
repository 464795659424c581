"""Training configuration: defaults reproduce Banerjee et al. 2025; every value is overridable."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_atm.errors import OptionError

if TYPE_CHECKING:
    from wsi_atm.models.card import ModelCard


@dataclass
class TrainConfig:
    mode: str = "end-to-end"
    folds: int = 5
    # "kfold": the paper's StratifiedGroupKFold over slides (the in-domain figure).
    # "leave-group-out": one fold per group (e.g. scanner), each model never sees its group.
    cv: str = "kfold"
    group: str = "scanner"  # leave-group-out: slide | a split-CSV column | a groups-table column
    groups: str = ""  # slide → group table (CSV); "" = the bundled AMi-Br domain table
    soft_labels: bool = False  # train on the share of expert votes instead of the majority
    seed: int = 42
    epochs: int = 100
    batch_size: int = 8
    optimizer: str = "adam"  # adam | adamw
    lr: float = 5e-5
    weight_decay: float = 1e-5
    scheduler: str = "plateau"  # plateau (on validation BA) | onecycle | none
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    min_lr: float = 1e-7
    patience: int = 0  # early stopping; 0 = the paper's (15, or 10 for LoRA)
    sampler: str = "weighted"  # weighted (1/class count, with replacement) | shuffle
    # "validation": best epoch by BA at 0.5 on the fold that reports the score (the paper's way).
    # "inner": epoch and threshold chosen on an inner split of the training fold (honest).
    selection: str = "validation"
    select_metric: str = "balanced_accuracy"  # or "auroc"
    inner_splits: int = 5  # the inner split holds out 1/inner_splits of the training fold
    threshold: str = "fixed"  # fixed (0.5) | inner (max. BA on the inner split)
    ema: float = 0.0  # EMA decay of weights for evaluation and checkpoints; 0 = off
    pretrained: bool = True  # load the card's pretrained weights (hub/ImageNet) when it has them
    input_size: int = 0  # crops are resized to this when loading; 0 = card's crop size
    threads: int = 0  # torch CPU threads; 0 = all cores
    # where the network trains: auto (a CUDA GPU where torch sees one, else the CPU), cpu,
    # cuda or cuda:N; like threads, not part of what a resumed run must match
    device: str = "auto"
    channels_last: bool = False  # NHWC memory layout (≈1.7× faster for CNNs on CPU)
    half_weights: bool = False  # store fold checkpoints as fp16
    max_batches: int = 0  # cap batches per epoch (smoke tests); 0 = no cap
    only_folds: str = ""  # e.g. "0,2": train just these folds

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise OptionError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}")
        if self.threshold == "inner" and self.selection != "inner":
            raise OptionError("--threshold inner needs --selection inner")
        if self.folds < 2:
            raise OptionError("--folds must be at least 2")
        if self.groups and self.cv != "leave-group-out":  # it was ignored without a word
            raise OptionError("--groups is the table of --cv leave-group-out; this run's "
                              f"--cv is {self.cv}")
        from wsi_atm.engines import check_device

        check_device(self.device)
        self._check_numbers()

    def _check_numbers(self) -> None:
        """Ranges of the numeric options, checked before anything is written (a NaN learning
        rate was an internal error after config.json, itself invalid JSON, was written)."""
        ranges: dict[str, tuple[float, float, bool]] = {  # low, high, high included
            "epochs": (1, math.inf, False), "batch_size": (1, math.inf, False),
            "seed": (0, 2**32 - 1, True), "lr": (0, 10, True), "weight_decay": (0, 10, True),
            "plateau_factor": (0, 1, False), "plateau_patience": (0, math.inf, False),
            "min_lr": (0, 10, True), "patience": (0, math.inf, False),
            "inner_splits": (2, math.inf, False), "ema": (0, 1, False),
            "input_size": (0, 4096, True), "threads": (0, math.inf, False),
            "max_batches": (0, math.inf, False),
        }
        for name, (low, high, closed) in ranges.items():
            value = getattr(self, name)
            inside = low <= value <= high if closed else low <= value < high
            if not inside or (name == "lr" and value == 0):
                top = f"at most {high:g}" if closed else f"below {high:g}"
                bottom = "above 0" if name == "lr" else f"at least {low:g}"
                span = bottom + ("" if high == math.inf else f" and {top}")
                raise OptionError(f"--{name.replace('_', '-')} must be {span}, not {value!r}")
        # Under leave-group-out the number of folds is the number of groups, known only once
        # the data is read: train_run checks the numbers against the planned folds.
        limit = self.folds if self.cv == "kfold" else math.inf
        if self.only_folds and not all(
                f.isascii() and f.isdigit() and int(f) < limit
                for f in self.only_folds.split(",")):
            below = f" below --folds ({self.folds})" if self.cv == "kfold" else ""
            raise OptionError(f"--only-folds must list fold numbers{below}, like 0,2; "
                              f"not {self.only_folds!r}")

    @property
    def early_stop(self) -> int:
        return self.patience or (10 if self.mode == "lora" else 15)

    @property
    def fold_list(self) -> list[int]:
        if not self.only_folds:
            return list(range(self.folds))
        return [int(f) for f in self.only_folds.split(",")]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_mapping(cls, values: Any) -> TrainConfig:
        """A config from option = value pairs (a --config file, the command line), each value
        of its field's type: ``pretrained = "false"`` counted as true, ``epochs = "5"`` or
        ``folds = 2.5`` failed inside the run."""
        if not isinstance(values, dict):
            raise OptionError("training options must be a table of option = value, "
                              f"not a {type(values).__name__}")
        kinds = {f.name: str(f.type) for f in fields(cls)}
        unknown = set(values) - set(kinds)
        if unknown:
            raise OptionError(f"unknown training options: {', '.join(sorted(unknown))}")
        typed: dict[str, Any] = {}
        for name, value in values.items():
            kind = kinds[name]
            ok = {"bool": isinstance(value, bool), "str": isinstance(value, str),
                  "int": isinstance(value, int) and not isinstance(value, bool),
                  "float": isinstance(value, int | float) and not isinstance(value, bool)}[kind]
            if not ok:
                raise OptionError(f"training option {name} must be {_KIND_WORDS[kind]}, "
                                  f"not {value!r}")
            typed[name] = float(value) if kind == "float" else value
        return cls(**typed)


_KIND_WORDS = {"bool": "true or false", "str": "a string", "int": "a whole number",
               "float": "a number"}


# the values a text option may take (the command line offers them as choices)
CHOICES: dict[str, tuple[str, ...]] = {
    "mode": ("end-to-end", "linear-probe", "lora"),
    "optimizer": ("adam", "adamw"),
    "scheduler": ("plateau", "onecycle", "none"),
    "sampler": ("weighted", "shuffle"),
    "selection": ("validation", "inner"),
    "select_metric": ("balanced_accuracy", "auroc"),
    "threshold": ("fixed", "inner"),
    "cv": ("kfold", "leave-group-out", "none"),
}


def load_config_file(path: Path) -> dict[str, Any]:
    """A JSON or TOML file of TrainConfig fields."""
    import tomllib

    try:
        text = path.read_text(encoding="utf-8")
        values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise OptionError(f"cannot read training config {path}: {exc}") from None
    if not isinstance(values, dict):
        raise OptionError(f"training config {path} must be a table of option = value, "
                          f"not a {type(values).__name__}")
    return values


def card_recipe(card: ModelCard, mode: Any) -> dict[str, Any]:
    """The training options a card's ``[recipe.MODE]`` sets for ``mode`` (the benchmark's
    exceptions to its shared recipe), checked like a config file's."""
    recipe = card.recipe.get(mode, {}) if isinstance(mode, str) else {}
    if "mode" in recipe:
        raise OptionError(f"{card.path}: [recipe.{mode}] cannot set the mode")
    if recipe:
        try:
            TrainConfig.from_mapping(recipe)
        except OptionError as exc:
            raise OptionError(f"{card.path}: [recipe.{mode}]: {exc}") from None
    return dict(recipe)
