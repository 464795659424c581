"""A whole training run: resolve config, assign folds, train each fold, write the run's card."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from wsi_atm.cpus import usable_cpus
from wsi_atm.errors import BadInputError, OptionError
from wsi_atm.files import atomic_path, atomic_write_text, sha256_file
from wsi_atm.infer import pick_device
from wsi_atm.models.card import ModelCard, read_card
from wsi_atm.models.package_weights import is_package_source, package_file
from wsi_atm.models.schema import dump, leading_comment
from wsi_atm.train.config import TrainConfig
from wsi_atm.train.data import (
    AMIBR_CSV,
    EXPERT_VOTES,
    CropDataset,
    load_dataset,
    require_both_classes,
)
from wsi_atm.train.protocol import FoldData, FoldTrainer, plan_folds, uses_pretrained
from wsi_atm.train.results import SUMMARY_KEYS, FoldResult, RunSummary, summarise

RUN_KEY = "run_key.json"
log = logging.getLogger(__name__)


def run_key(card: ModelCard, data: CropDataset, cfg: TrainConfig) -> dict[str, str]:
    """What a run's results depend on besides its config: the crops as training sees them
    (names, labels, groups, expert votes, pixels after resizing), the card, the groups table."""
    digest = hashlib.sha256()
    digest.update(json.dumps([data.names, data.labels.tolist(),
                              None if data.groups is None else data.groups.tolist(),
                              None if data.soft is None else data.soft.tolist(),
                              {k: v.tolist() for k, v in sorted(data.columns.items())}]).encode())
    digest.update(data.images.numpy().tobytes())
    card_text = json.dumps(read_card(card.path), sort_keys=True, default=str)
    key = {"data": digest.hexdigest(),
           "card": hashlib.sha256(card_text.encode()).hexdigest()}
    if cfg.cv == "leave-group-out" and cfg.groups:
        key["groups"] = sha256_file(Path(cfg.groups))
    return key


def prepare_run_dir(out: Path, cfg: TrainConfig, key: dict[str, str]) -> TrainConfig:
    """Create the run dir, or resume one: its config, data and card must match the request's
    (another --data or card into the same --out reused the old fold models)."""
    saved, saved_key = out / "config.json", out / RUN_KEY
    if saved.is_file():
        try:
            previous = TrainConfig.from_mapping(json.loads(saved.read_text()))
        except (OptionError, ValueError) as exc:
            raise OptionError(f"{out} holds an unreadable config.json ({exc}); "
                              "choose another --out") from None
        # Which folds this process trains, its thread count and its device may differ
        # between resumes.
        if _protocol(previous) != _protocol(cfg):
            raise OptionError(
                f"{out} holds a run with a different configuration; resume it with the same "
                "options or choose another --out")
        old = _saved_key(saved_key) if saved_key.is_file() else None
        if old is not None and old != key:  # no key: a run begun before keys were kept
            changed = " and ".join(k for k in ("data", "card", "groups")
                                   if old.get(k) != key.get(k))
            raise OptionError(f"{out} holds a run on other {changed}; resume it with the same "
                              "--data and --model or choose another --out")
        atomic_write_text(saved_key, json.dumps(key, indent=1))
        return replace(previous, **{name: getattr(cfg, name) for name in RUN_ONLY})
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved_key, json.dumps(key, indent=1))
    atomic_write_text(saved, cfg.to_json())
    return cfg


# what only says how this process runs a run: may differ between resumes
RUN_ONLY = ("only_folds", "threads", "device")


def _protocol(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` without what only says how this process runs it."""
    return replace(cfg, **{name: getattr(TrainConfig, name) for name in RUN_ONLY})


def _saved_key(path: Path) -> dict[str, Any]:
    """The run key a resumed run folder holds; a damaged one is refused, not an internal error."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OptionError(f"{path}: unreadable ({exc}); choose another --out") from None
    if not isinstance(old, dict):
        raise OptionError(f"{path}: not a run key (a JSON object); choose another --out")
    return old


def chosen_plans(plans: list[FoldData], cfg: TrainConfig) -> list[FoldData]:
    """The folds this process trains: --only-folds' among the planned ones (under
    leave-group-out one per group, with --cv none one)."""
    if not cfg.only_folds:
        return plans
    wanted = set(cfg.fold_list)
    planned = {p.fold for p in plans}
    if not wanted <= planned:
        unknown = ", ".join(str(k) for k in sorted(wanted - planned))
        raise OptionError(f"--only-folds {unknown}: this run has folds 0 to {len(plans) - 1} "
                          f"only ({len(plans)} planned)")
    return [p for p in plans if p.fold in wanted]


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
    # Everything that can refuse the request does so before the run folder is written.
    card.preprocess_for(cfg.mode)  # Regression: a mode the card has no preprocessing for
    # was refused only by the first fold, after the run folder (which then refused the
    # corrected command as "a different configuration") was written
    cfg = fit_threads(cfg)
    check_input_size(card, cfg)
    if uses_pretrained(card, cfg) and is_package_source(card.pretrained):
        package_file(card.pretrained)  # no [train] extra: refused before the run folder
    data = load_dataset(data_dir, size=cfg.input_size or card.crop_size)
    # Regression: a run on one class wrote a complete-looking run and a card of NaN metrics
    require_both_classes(data, "a classifier needs atypical and normal crops to train on")
    if cfg.soft_labels and data.soft is None:  # Regression: trained on the majority labels
        where = f"{data_dir / AMIBR_CSV}"
        raise OptionError(f"--soft-labels needs the experts' votes: {where}: "
                          f"{data.votes_problem}" if data.votes_problem else
                          f"--soft-labels needs the experts' votes: columns "
                          f"{', '.join(EXPERT_VOTES)} in {where}")
    check_batch_size(card, data, cfg)
    if cfg.cv == "kfold" and data.groups is None:  # Regression: said nothing, and the run's
        # card and summary recorded folds grouped by slide
        log.warning("%s: no slide per crop (no %s): the folds split crops, not slides, so "
                    "crops of one slide can be trained on and validated on, and the "
                    "cross-validation scores are optimistic", data_dir, AMIBR_CSV)
    plans = plan_folds(data, cfg)
    chosen = chosen_plans(plans, cfg)
    device = pick_device(cfg.device)  # a GPU asked for and missing: before the run folder
    cfg = prepare_run_dir(out, cfg, run_key(card, data, cfg))
    torch.set_num_threads(cfg.threads or usable_cpus())
    log.info("training on %s", device)
    write_folds(out, data, plans)
    if cfg.mode == "linear-probe":
        from wsi_atm.train.probe import train_probe_folds

        results = train_probe_folds(card, data, chosen, cfg, out, quiet, device)
    else:
        results = [FoldTrainer(card, data, p, cfg, out / f"fold_{p.fold}", quiet,
                               device=device).run()
                   for p in chosen]
    results = with_finished_folds(out, plans, results)
    cv_group = cfg.group if cfg.cv == "leave-group-out" else (
        "slide" if data.groups is not None else "crop")
    summary = summarise(results, cfg.cv, cv_group)
    if len(results) < len(plans):
        log.warning("%d of %d folds are finished: summary.json and card.toml cover only "
                    "those; train the others (or rerun without --only-folds) to complete the "
                    "run", len(results), len(plans))
    atomic_write_text(out / "summary.json", json.dumps(
        summary.to_json() | {"folds_planned": len(plans)}, indent=2, allow_nan=False))
    write_run_card(card, cfg, out, results, summary)
    return summary


def with_finished_folds(out: Path, plans: list[FoldData],
                        results: list[FoldResult]) -> list[FoldResult]:
    """``results`` and every other planned fold already finished in ``out`` (by an earlier
    or a parallel ``--only-folds`` process), in fold order: the run's summary and card were
    those of the last process's folds alone, and looked complete."""
    done = {r.fold: r for r in results}
    for p in plans:
        path = out / f"fold_{p.fold}" / "result.json"
        if p.fold not in done and path.is_file():
            try:
                done[p.fold] = FoldResult.read(path)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise OptionError(f"{path} is unreadable or not a fold result "
                                  f"({type(exc).__name__}: {exc}); remove {path.parent} to "
                                  "train that fold again") from None
    return [done[k] for k in sorted(done)]


def fit_threads(cfg: TrainConfig) -> TrainConfig:
    """``--threads`` cut to the CPUs this process may use, with a warning: more only
    oversubscribe them, and --threads 100000 killed the run in OpenMP (exit 1, no message of
    ours) after the run folder was written."""
    cpus = usable_cpus()
    if cfg.threads <= cpus:
        return cfg
    log.warning("--threads %d: this process may use %d CPUs; using %d", cfg.threads, cpus, cpus)
    return replace(cfg, threads=cpus)


def check_batch_size(card: ModelCard, data: CropDataset, cfg: TrainConfig) -> None:
    """``--batch-size 1`` end to end: batch norm cannot train on one crop where the network's
    feature map is 1×1 (crops of 32 px); that was an internal error in the first epoch, after
    the run folder was written. One crop through the untrained network tells."""
    if cfg.batch_size != 1 or cfg.mode != "end-to-end":
        return
    from wsi_atm.models.nets import build_net
    from wsi_atm.models.preprocess import BatchTransform

    net = build_net(card, cfg.mode, pretrained=False).train()
    x = BatchTransform(card.preprocess_for(cfg.mode), False)(data.images[:1])
    try:
        with torch.no_grad():
            net(x)
    except ValueError as exc:
        first = " ".join(str(exc).split())[:200]
        raise OptionError(f"--batch-size 1: {card.name!r} cannot train on one crop at a time "
                          f"at this crop size ({first}); use --batch-size 2 or more") from None


def check_input_size(card: ModelCard, cfg: TrainConfig) -> None:
    """``--input-size`` only for cards whose preprocessing has no sized op: their crops and
    random crops are sized for the card's crop size, and on other sizes the eval centre crop
    padded the crops with black (and training cropped what evaluation padded)."""
    if not cfg.input_size or cfg.input_size == card.crop_size:
        return
    pre = card.preprocess_for(cfg.mode)
    sized = sorted({str(op["op"]) for op in (*pre.train, *pre.eval) if "size" in op})
    if sized:
        raise BadInputError(f"--input-size {cfg.input_size}: card {card.name!r} sizes its "
                            f"crops itself ({', '.join(sized)} for {card.crop_size}-px crops); "
                            "change those ops in a copy of the card instead")


def write_run_card(
    card: ModelCard, cfg: TrainConfig, out: Path, results: list[FoldResult],
    summary: RunSummary,
) -> Path:
    """A card for the trained fold ensemble, next to the weights it names.

    What described the source card's weights goes: its threshold, metrics, training record,
    weight files and ``[fraction]`` calibration (fitted on another model's predictions).
    """
    raw = {k: v for k, v in read_card(card.path).items()
           if k not in ("decision", "metrics", "training", "weights", "fraction")}
    raw |= {"status": "trained", "trained_mode": cfg.mode}
    if cfg.input_size and cfg.input_size != card.crop_size:
        raw["input"] = resized_input(raw.get("input", {}), card, cfg.input_size)
        # the other modes' eval ops are sized for the source card's crops. Regression: one
        # ending at its crop size no longer gave the model size, and the finished run ended
        # in an internal error instead of its card
        raw["preprocess"] = {cfg.mode: raw["preprocess"][cfg.mode]}
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


def resized_input(table: dict[str, Any], card: ModelCard, size: int) -> dict[str, Any]:
    """The card's ``[input]`` for crops resized to ``size`` px, as --input-size trained on:
    the same field of view (the card's crop_size px at its mpp) in ``size`` px, so classify
    cuts, and evaluate reads, what the fold models saw. A model size equal to the crop size
    (no resize among the eval ops) follows it."""
    out = dict(table) | {"crop_size": size, "mpp": round(card.mpp * card.crop_size / size, 6)}
    if card.input_size == card.crop_size:
        out["model_size"] = size
    return out


def run_metrics(summary: RunSummary) -> dict[str, Any]:
    """The card's ``[metrics]`` from a run summary: fold means, out-of-fold rates, per group."""
    source = ("leave-one-group-out: each fold model on the group it never saw"
              if summary.cv_kind == "leave-group-out"
              else "cross-validation (each fold model on its validation fold)")
    if summary.cv_group == "crop":
        source = ("cross-validation by crop, not slide (no slide per crop: crops of one slide can "
                  "be in training and validation; optimistic)")
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
