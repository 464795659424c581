"""The inference engine: a fold ensemble built once from a card, resident on its device.

Crops (uint8 NHWC at the card's crop size) stream in; P(atypical) comes out, the mean over
fold models. On CUDA: bf16 autocast, channels-last, optional torch.compile, and on out-of-memory
the batch is halved and the work goes on. On CPU the same code path runs in float32.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import TypeVar, cast

import numpy as np
import torch
from torch import nn

from wsi_atm.engines import MAX_DELTA_P, best_time, check_engine, graph_path, onnx_nets
from wsi_atm.errors import ModelError, OptionError
from wsi_atm.faults import inject
from wsi_atm.files import sha256_file
from wsi_atm.models.card import ModelCard
from wsi_atm.models.loading import build_from_checkpoint, p_atypical_from_logits
from wsi_atm.models.preprocess import BatchTransform

log = logging.getLogger(__name__)
T = TypeVar("T")


def set_cpu_threads(threads: int | None = None) -> None:
    """torch's intra-op CPU threads for this process (None: every core). Process-wide, so only
    entry points call it (the CLI, a batch worker), never a library object."""
    torch.set_num_threads(threads or os.cpu_count() or 1)


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise OptionError("--device cuda was asked for but no CUDA device is available")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise OptionError(f"--device must be auto, cpu or cuda, not {device!r}")
    return torch.device(device)


@dataclass(frozen=True)
class LoadedWeights:
    path: str
    sha256: str


def verify_weights(card: ModelCard) -> list[LoadedWeights]:
    """Check each weight file exists and matches the card's sha256 (when the card states one)."""
    if card.status == "untrained" or not card.weights:
        raise ModelError(
            f"model {card.name!r} is untrained (no weights): train it with `wsi-atm train` "
            "or choose a trained model (see `wsi-atm models`)")
    checked = []
    for w in card.weights:
        path = card.resolve(w.file)
        if not path.is_file():
            raise ModelError(f"model {card.name!r}: weight file missing: {path}")
        digest = sha256_file(path)
        if w.sha256 and digest != w.sha256:
            raise ModelError(f"model {card.name!r}: {path.name} does not match the card's sha256")
        checked.append(LoadedWeights(str(path), digest))
    return checked


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 flips/rotations of a NCHW batch."""
    x = torch.flip(x, dims=(-1,)) if k >= 4 else x
    return torch.rot90(x, k % 4, dims=(-2, -1))


class Classifier:
    """A card's fold ensemble, loaded once; ``predict`` gives P(atypical) per crop."""

    def __init__(
        self, card: ModelCard, device: str = "auto", batch_size: int | None = None,
        tta: bool = False, compile: bool = False, engine: str | None = None,
    ) -> None:
        self.card = card
        self.device = pick_device(device)
        self.batch_size = batch_size or card.batch_size
        if self.batch_size < 1:
            raise OptionError("--batch-size must be at least 1")
        self.tta = tta
        self.weights = verify_weights(card)
        self.nets = [self._load(w.path, compile) for w in self.weights]
        self.transform = BatchTransform(card.preprocess_for(), train=False)
        self.runners: list[Callable[[torch.Tensor], torch.Tensor]] = list(self.nets)
        if engine is None:  # the environment's choice is for CPU nodes; GPUs keep torch
            engine = os.environ.get("WSI_ATM_ENGINE") or "auto"
            if self.device.type != "cpu" and engine == "onnx":
                engine = "auto"
        self.engine = self._choose_engine(check_engine(engine), compile)
        self._verify = self.engine == "onnx"  # on the first real batch
        self.max_delta_p: float | None = None  # ONNX Runtime vs PyTorch on that batch

    def _choose_engine(self, asked: str, compile: bool) -> str:
        """torch, or ONNX Runtime on CPU when asked for or (auto) faster on a probe batch."""
        if asked == "torch" or (asked == "auto" and (self.device.type != "cpu" or compile)):
            return "torch"
        if self.device.type != "cpu":
            raise OptionError("--engine onnx runs on the CPU; use --device cpu")
        if compile:
            raise OptionError("--compile is for the torch engine; drop it or use --engine torch")
        size = self._model_size()
        try:
            twins = onnx_nets(self.nets, [w.sha256 for w in self.weights], size, self.card.name,
                              self._network_key())
        except Exception as exc:
            if asked == "onnx":
                raise ModelError(f"{self.card.name}: no ONNX Runtime graph ({exc})") from exc
            log.warning("%s: ONNX Runtime unavailable, using PyTorch (%s)", self.card.name, exc)
            return "torch"
        if asked == "auto":
            probe = torch.rand(self.batch_size, 3, size, size)
            with torch.inference_mode():
                t_torch = sum(best_time(n, probe.contiguous(memory_format=torch.channels_last))
                              for n in self.nets)
                t_onnx = sum(best_time(n, probe) for n in twins)
            log.info("engine probe: torch %.4f s, onnx %.4f s", t_torch, t_onnx)
            if t_onnx >= 0.95 * t_torch:
                return "torch"
        self.runners = list(twins)
        return "onnx"

    def _network_key(self) -> str:
        """What besides the weight file shapes an exported graph."""
        import timm

        c = self.card
        return (f"{c.architecture}|{c.trained_mode}|{c.output}|{sorted(c.kwargs.items())}|"
                f"timm {timm.__version__}")

    def _use_torch(self, why: str) -> None:
        log.warning("%s: %s; using PyTorch", self.card.name, why)
        for w in self.weights:  # a graph that failed is not trusted next time either
            graph_path(w.sha256, self._model_size(), self._network_key()).unlink(missing_ok=True)
        self.runners, self.engine, self._verify = list(self.nets), "torch", False

    def _model_size(self) -> int:
        blank = torch.zeros(1, 3, self.card.crop_size, self.card.crop_size, dtype=torch.uint8)
        return int(self.transform(blank).shape[-1])

    def _check_against_torch(self, crops: torch.Tensor, got: torch.Tensor) -> None:
        """ONNX Runtime must give PyTorch's probabilities (max |dp| <= 1e-3) on real crops."""
        self._verify = False
        runners, self.runners = self.runners, list(self.nets)
        try:
            ref = self._forward(crops)
        finally:
            self.runners = runners
        delta = float((ref - got).abs().max()) if got.numel() else 0.0
        self.max_delta_p = delta
        if not delta <= MAX_DELTA_P:  # NaN included
            self._use_torch(f"ONNX Runtime differs from PyTorch by {delta:.2g} in P(atypical)")

    def _load(self, path: str, compile: bool) -> nn.Module:
        # Converts upstream key layouts, checks every key, builds on the hub backbone only when
        # the file holds just adapters/heads, and merges LoRA adapters for inference.
        net = build_from_checkpoint(self.card, path)
        # channels-last suits convolutions on CPU (measured 1.7× for resnet10t) and on GPUs.
        net = net.eval().to(self.device).to(memory_format=torch.channels_last)
        if compile:
            compiled: nn.Module = torch.compile(net)  # type: ignore[assignment]  # a Module wrapper
            return compiled
        return net

    @property
    def weight_sha256(self) -> tuple[str, ...]:
        return tuple(w.sha256 for w in self.weights)

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """P(atypical) per fold model (F, N), averaged over the 8 dihedral views with TTA."""
        x = self.transform(x.to(self.device, non_blocking=True))
        x = x.contiguous(memory_format=torch.channels_last)
        views = range(8) if self.tta else (0,)
        out = torch.zeros(len(self.nets), x.shape[0], device=self.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            for f, net in enumerate(self.runners):
                for k in views:
                    out[f] += p_atypical_from_logits(net(dihedral(x, k)), self.card)
        return out / len(views)

    def _run_chunk(self, chunk: torch.Tensor) -> torch.Tensor | None:
        """P(atypical) per fold of one chunk, or None when the ONNX engine was just dropped."""
        if self.engine != "onnx":
            return self._forward(chunk).cpu()
        try:
            got = self._forward(chunk).cpu()
        except Exception as exc:
            self._use_torch(f"ONNX Runtime failed ({type(exc).__name__}: {exc})")
            return None
        if self._verify:
            self._check_against_torch(chunk, got)
            if self.engine == "torch":
                return None
        return got

    def predict_folds(self, crops: np.ndarray) -> np.ndarray:
        """P(atypical) of each fold model, shape (F, N), for uint8 crops (N, H, W, 3).

        On CUDA out-of-memory the batch size is halved and the work goes on.
        """
        inject("inference")
        if len(crops) == 0:
            return np.zeros((len(self.nets), 0), dtype=np.float64)
        x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2)
        out, start = [], 0
        while start < len(x):
            chunk = x[start : start + self.batch_size]
            try:
                probs_chunk = self._run_chunk(chunk)
                if probs_chunk is None:
                    continue  # ONNX Runtime was just dropped: redo this chunk with PyTorch
                out.append(probs_chunk)
            except torch.cuda.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                torch.cuda.empty_cache()
                log.warning("CUDA out of memory: batch size lowered to %d", self.batch_size)
                continue
            start += len(chunk)
        probs: np.ndarray = torch.cat(out, dim=1).double().numpy()
        return probs

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """The ensemble's P(atypical): the mean over fold models."""
        mean: np.ndarray = self.predict_folds(crops).mean(axis=0)
        return mean


def prefetch(items: Iterable[T], depth: int = 2) -> Generator[T, None, None]:
    """Iterate ``items`` in a background thread, ``depth`` ahead, so reading overlaps compute.

    Closing this generator (or leaving it by an exception in the consumer, when it is used as
    ``with closing(prefetch(...))``) stops the producer and closes ``items`` in the producer's
    own thread before returning: a crop stream's reader threads have joined by then, so the
    slide can be closed safely.
    """
    q: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
        except BaseException as exc:  # re-raised in the consumer
            q.put(exc)
            return
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # a generator's finally (e.g. joining its reader pool) runs here
        q.put(done)

    thread = threading.Thread(target=produce, daemon=True, name="wsi-atm-prefetch")
    try:
        thread.start()  # inside the try: a Ctrl-C right after the start still joins the thread
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield cast(T, item)
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
