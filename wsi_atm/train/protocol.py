"""The cross-validation training loop behind ``wsi-atm train``.

A run directory holds ``config.json``, ``folds.csv``, per fold ``fold_K/metrics.jsonl``,
``fold_K/state.pt`` (resume point, tensors only), ``fold_K/best.safetensors`` and
``fold_K/result.json``, and at the end ``card.toml`` that ``classify``/``evaluate`` accept;
``run_key.json`` names the data and card it was trained on (a resume must match them).

A LoRA or linear-probe checkpoint holds only what was trained (adapters, head) when the
backbone is the card's pretrained one; without pretrained weights (``pretrained = "none"``,
``--no-pretrained``) it also holds the run's random backbone, so the card rebuilds exactly the
trained network.
"""

from __future__ import annotations

import copy
import json
import logging
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wsi_atm.errors import OptionError
from wsi_atm.files import atomic_path, atomic_write_text
from wsi_atm.models.adapters import save_lora
from wsi_atm.models.card import ModelCard
from wsi_atm.models.nets import build_net
from wsi_atm.models.preprocess import BatchTransform
from wsi_atm.models.weight_files import (
    load_tensors_only,
    load_weights,
    save_safetensors,
    trainable_state,
)
from wsi_atm.progress import progress_bar
from wsi_atm.train.config import TrainConfig
from wsi_atm.train.data import CropDataset
from wsi_atm.train.domains import crop_groups
from wsi_atm.train.folds import fold_splits, inner_split
from wsi_atm.train.metrics import best_threshold, binary_metrics
from wsi_atm.train.results import FoldResult, fold_result

log = logging.getLogger(__name__)


def uses_pretrained(card: ModelCard, cfg: TrainConfig) -> bool:
    """Whether the backbone starts from the card's pretrained weights."""
    return cfg.pretrained and card.pretrained != "none"


@dataclass
class FoldData:
    fold: int
    fit: np.ndarray  # indices the weights are trained on
    select: np.ndarray  # indices epochs (and maybe the threshold) are chosen on
    report: np.ndarray  # indices the fold's score is reported on
    held_out: str = ""  # the fold's name: "fold k", or the left-out group


def outer_splits(data: CropDataset, cfg: TrainConfig) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """(train, held-out, name) per fold: k-fold over slides, or one fold per left-out group."""
    if cfg.cv == "none":  # one model on every crop: the deployable refit of a validated recipe
        return [(np.arange(len(data)), np.zeros(0, dtype=np.int64), "all data")]
    if cfg.cv == "kfold":
        splits = fold_splits(data.labels, data.groups, cfg.folds, cfg.seed)
        return [(tr, va, f"fold {k}") for k, (tr, va) in enumerate(splits)]
    table = Path(cfg.groups) if cfg.groups else None
    groups = crop_groups(data, cfg.group, table)
    names = sorted(set(groups.tolist()))
    if len(names) < 2:
        raise OptionError(f"--group {cfg.group}: leave-group-out needs at least 2 groups")
    idx = np.arange(len(groups))
    return [(idx[groups != g], idx[groups == g], str(g)) for g in names]


def plan_folds(data: CropDataset, cfg: TrainConfig) -> list[FoldData]:
    plans = []
    for k, (train, val, name) in enumerate(outer_splits(data, cfg)):
        if cfg.cv == "none":
            plans.append(FoldData(k, train, np.zeros(0, dtype=np.int64), val, name))
        elif cfg.selection == "inner":
            groups = None if data.groups is None else data.groups[train]
            # within numpy's seeds (0 to 2**32 - 1): --seed 4294967295 was refused as data
            # that "cannot split"
            inner_seed = (cfg.seed + 1 + k) % 2**32
            fit, sel = inner_split(data.labels[train], groups, cfg.inner_splits, inner_seed)
            plans.append(FoldData(k, train[fit], train[sel], val, name))
        else:
            plans.append(FoldData(k, train, val, val, name))
    return plans


class Ema:
    """Exponential moving average of a model's floating-point state."""

    def __init__(self, net: nn.Module, decay: float) -> None:
        self.decay = decay
        self.net = copy.deepcopy(net).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        for ema_v, v in zip(self.net.state_dict().values(), net.state_dict().values(), strict=True):
            if ema_v.is_floating_point():
                ema_v.mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                ema_v.copy_(v)


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` of each training batch of ``n`` crops: batches of ``batch_size``, except
    that a last batch of one crop joins the one before. Regression: batch norm cannot train on
    one crop where the feature map is 1×1 (crops of 32 px), an internal error."""
    bounds = [(lo, min(n, lo + batch_size)) for lo in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def _sample_epoch(labels: np.ndarray, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    n = len(labels)
    if cfg.sampler == "shuffle":
        return torch.randperm(n, generator=gen)
    counts = np.bincount(labels, minlength=2).astype(float)
    weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
    return torch.multinomial(weights, n, replacement=True, generator=gen)


@torch.inference_mode()
def predict(
    net: nn.Module, images: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 128,
) -> np.ndarray:
    """Sigmoid of the net's logit for uint8 NCHW images (in the net's own convention), on the
    net's device (the eval ops are deterministic and run there, on the whole batch)."""
    net.eval()
    device = next(net.parameters()).device
    out = [
        torch.sigmoid(net(transform(images[i : i + batch_size].to(device)))).float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def _optimizer(net: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in net.parameters() if p.requires_grad]
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps: int) -> Any:
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience,
            min_lr=cfg.min_lr)
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps, pct_start=0.15)
    return None


def unusable_resume_file(path: Path, exc: BaseException | str) -> OptionError:
    """A damaged or foreign resume file of a run folder: one line, never torch's advice to
    unpickle it (``weights_only=False``)."""
    first = " ".join(str(exc).split())[:200] or type(exc).__name__
    if isinstance(exc, pickle.UnpicklingError):
        first = "not a plain tensor checkpoint; other pickled objects are never loaded"
    return OptionError(f"{path}: cannot resume from it (damaged, or not written by "
                       f"`wsi-atm train`: {first}); remove it to compute it again")


def load_resume_file(path: Path) -> Any:
    """A run folder's ``torch.save`` file (tensors only), or a one-line OptionError."""
    try:
        return load_tensors_only(path)
    except Exception as exc:  # UnpicklingError (refused objects), RuntimeError, EOFError...
        raise unusable_resume_file(path, exc) from None


class FoldTrainer:
    """Trains one fold, epoch by epoch, checkpointing after each so a killed run resumes."""

    def __init__(
        self, card: ModelCard, data: CropDataset, plan: FoldData, cfg: TrainConfig,
        fold_dir: Path, quiet: bool = False, net: nn.Module | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        frozen: dict[str, torch.Tensor] | None = None, device: torch.device | None = None,
    ) -> None:
        """``net``/``transform`` replace the card's network and preprocessing (linear probes
        train a head on precomputed features); ``frozen`` is written into each checkpoint
        besides the trained weights (the probe's backbone when it is not the pretrained one).
        The network trains on ``device`` (default the CPU); the training augmentations run on
        the CPU, crop by crop, as a data loader's would."""
        self.card, self.data, self.plan, self.cfg = card, data, plan, cfg
        self.dir, self.quiet, self.frozen = fold_dir, quiet, frozen or {}
        pre = card.preprocess_for(cfg.mode)
        self.train_tf = transform or BatchTransform(pre, True)
        self.eval_tf = transform or BatchTransform(pre, False)
        torch.manual_seed(cfg.seed + plan.fold)
        self.pretrained = uses_pretrained(card, cfg)
        self.net = net if net is not None else build_net(card, cfg.mode,
                                                         pretrained=self.pretrained)
        self.device = device or torch.device("cpu")
        self.net = self.net.to(self.device)
        if cfg.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.full = cfg.mode == "end-to-end"
        self.opt = _optimizer(self.net, cfg)
        n_batches = len(batch_bounds(len(plan.fit), cfg.batch_size))
        self.steps = min(n_batches, cfg.max_batches) if cfg.max_batches else n_batches
        self.sched = _scheduler(self.opt, cfg, self.steps)
        self.ema = Ema(self.net, cfg.ema) if cfg.ema > 0 else None
        self.loss = nn.BCEWithLogitsLoss()
        self.epoch, self.best, self.best_epoch, self.bad = 0, -1.0, -1, 0
        # Balanced accuracy and AUROC are undefined on one class: every epoch scored NaN, no
        # checkpoint was kept and the run crashed at its end. Such a fold takes its last epoch.
        chosen = data.labels[plan.select]
        self.note = "" if not len(chosen) or len(np.unique(chosen)) == 2 else (
            f"the selection set holds only {'atypical' if chosen[0] else 'normal'} mitoses: "
            "no epoch can be chosen on it, the last epoch is the model and the threshold 0.5")
        if self.note:
            log.warning("fold %d: %s", plan.fold, self.note)

    # --- resume ------------------------------------------------------------------------------
    def save_state(self) -> None:
        state = {
            "net": self.net.state_dict(), "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict() if self.sched else {},
            "ema": self.ema.net.state_dict() if self.ema else {},
            "epoch": self.epoch, "best": self.best, "best_epoch": self.best_epoch, "bad": self.bad,
        }
        with atomic_path(self.dir / "state.pt") as tmp:
            torch.save(state, tmp)

    def load_state(self) -> bool:
        path = self.dir / "state.pt"
        if not path.is_file():
            return False
        state = load_resume_file(path)
        try:
            self.net.load_state_dict(state["net"])
            self.opt.load_state_dict(state["opt"])
            if self.sched:
                self.sched.load_state_dict(state["sched"])
            if self.ema:
                self.ema.net.load_state_dict(state["ema"])
            self.epoch, self.best = int(state["epoch"]), float(state["best"])
            self.best_epoch, self.bad = int(state["best_epoch"]), int(state["bad"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise unusable_resume_file(path, exc) from None
        return True

    # --- training ----------------------------------------------------------------------------
    def target(self, idx: np.ndarray) -> torch.Tensor:
        """P(atypical) to learn per crop (the expert share with soft labels), in the card's
        convention."""
        soft = self.cfg.soft_labels and self.data.soft is not None
        values = self.data.soft[idx] if soft else self.data.labels[idx]  # type: ignore[index]
        y = torch.as_tensor(values, dtype=torch.float32)
        return 1.0 - y if self.card.output == "p_normal" else y

    def train_epoch(self) -> float:
        # Seeds derive from (seed, fold, epoch) so a resumed run draws what it would have drawn.
        seed, fold = self.cfg.seed, self.plan.fold
        gen = torch.Generator().manual_seed(seed * 1000 + fold * 100 + self.epoch)
        torch.manual_seed(seed * 7919 + fold * 101 + self.epoch)
        fit = self.plan.fit
        order = fit[_sample_epoch(self.data.labels[fit], self.cfg, gen).numpy()]
        self.net.train()
        total, seen = 0.0, 0
        bar = progress_bar(total=self.steps, desc=f"fold {self.plan.fold} epoch {self.epoch + 1}",
                           quiet=self.quiet)
        for lo, hi in batch_bounds(len(order), self.cfg.batch_size)[: self.steps]:
            idx = order[lo:hi]
            x = self.train_tf(self.data.images[torch.as_tensor(idx)]).to(self.device)
            if self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = self.loss(self.net(x), self.target(idx).to(self.device))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            if self.cfg.scheduler == "onecycle":
                self.sched.step()
            if self.ema:
                self.ema.update(self.net)
            total, seen = total + loss.item() * len(idx), seen + len(idx)
            bar.update(1)
            bar.set_postfix(loss=f"{total / seen:.3f}")
        bar.close()
        return total / max(seen, 1)

    @property
    def eval_net(self) -> nn.Module:
        return self.ema.net if self.ema else self.net

    def p_atypical(self, idx: np.ndarray) -> np.ndarray:
        p = predict(self.eval_net, self.data.images[torch.as_tensor(idx)], self.eval_tf)
        return 1.0 - p if self.card.output == "p_normal" else p

    def run(self) -> FoldResult:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.load_state()
        while self.epoch < self.cfg.epochs and self.bad < self.cfg.early_stop:
            t0 = time.time()
            loss = self.train_epoch()
            select = self.plan.select
            sel: dict[str, Any]
            if len(select) and not self.note:
                sel = dict(binary_metrics(self.data.labels[select], self.p_atypical(select)))
                score = float(sel[self.cfg.select_metric])
            else:  # nothing (--cv none) or one class held out: the last epoch is the model
                sel, score = {"balanced_accuracy": float(self.epoch)}, float(self.epoch)
            if self.cfg.scheduler == "plateau":
                self.sched.step(sel["balanced_accuracy"])
            self.epoch += 1
            if score > self.best:
                self.best, self.best_epoch, self.bad = score, self.epoch, 0
                self.save_best()
            else:
                self.bad += 1
            lr = self.opt.param_groups[0]["lr"]
            self._log({"epoch": self.epoch, "train_loss": loss, "lr": lr, "select": sel,
                       "seconds": round(time.time() - t0, 2)} | ({"note": self.note}
                                                                 if self.note else {}))
            self.save_state()
        return self.finish()

    def save_best(self) -> None:
        path, half = self.dir / "best.safetensors", self.cfg.half_weights
        # Without pretrained weights the frozen backbone is this run's random one: the card
        # could not rebuild it, so the checkpoint holds it too (loading then skips the hub).
        full = self.full or not self.pretrained
        if self.cfg.mode == "lora":  # records the base model id
            save_lora(self.eval_net, self.card, path, half=half, full=full)
        else:
            state = trainable_state(self.eval_net, full) | self.frozen
            save_safetensors(state, path, half=half)

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def finish(self) -> FoldResult:
        best = load_weights(self.dir / "best.safetensors")
        self.eval_net.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in best.items()},
            strict=self.full)
        threshold = 0.5
        if self.cfg.threshold == "inner" and not self.note:
            sel = self.plan.select
            threshold = best_threshold(self.data.labels[sel], self.p_atypical(sel))
        report = self.plan.report
        probs = self.p_atypical(report)
        result = fold_result(self.plan.fold, self.plan.held_out, self.best_epoch, self.epoch,
                             threshold, [self.data.names[i] for i in report],
                             self.data.labels[report], probs, note=self.note)
        atomic_write_text(self.dir / "result.json", json.dumps(result.to_json(), indent=1))
        return result
