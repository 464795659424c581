"""The inference engine: a fold ensemble built once from a card, resident on its device.

Crops (uint8 NHWC at the card's crop size) stream in; P(atypical) comes out, the mean over
fold models. channels-last, optional torch.compile, and on CUDA out-of-memory the batch is
halved and the work goes on. The networks run in float32 (TF32 off) unless bf16 autocast is
asked for or, with ``auto``, the card is a ViT or foundation model on a GPU
(:func:`~wsi_atm.engines.precision_on`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wsi_atm.cpus import usable_cpus
from wsi_atm.engines import (
    ENGINE_ENV,
    FASTER,
    MAX_DELTA_P,
    GraphRecord,
    OnnxNet,
    best_time,
    check_device,
    check_engine,
    check_precision,
    drop_graph,
    graph_path,
    machine_key,
    network_key,
    onnx_folds,
    precision_on,
    read_record,
    version,
    write_record,
)
from wsi_atm.errors import ModelError, OptionError
from wsi_atm.faults import inject
from wsi_atm.files import file_sha256
from wsi_atm.models.card import ModelCard, atypical_sign, verify_weights
from wsi_atm.models.loading import build_from_checkpoint, p_atypical_from_logits
from wsi_atm.models.preprocess import BatchTransform

log = logging.getLogger(__name__)


def set_cpu_threads(threads: int | None = None) -> None:
    """torch's intra-op CPU threads for this process (None: every CPU it may use). Process-wide,
    so only entry points call it (the CLI, a batch worker), never a library object."""
    torch.set_num_threads(threads or usable_cpus())


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    check_device(device)
    if not torch.cuda.is_available():
        raise OptionError(f"--device {device} was asked for but no CUDA device is available")
    count = torch.cuda.device_count()
    if device != "cuda" and int(device[5:]) >= count:
        raise OptionError(f"--device {device}: this machine has {count} CUDA device(s), "
                          f"cuda:0 to cuda:{count - 1}")
    return torch.device(device)


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 flips/rotations of a NCHW batch."""
    x = torch.flip(x, dims=(-1,)) if k >= 4 else x
    return torch.rot90(x, k % 4, dims=(-2, -1))


PROBE_CROPS = 256  # random crops the engine probe times both engines on


class Classifier:
    """A card's fold ensemble, loaded once; ``predict`` gives P(atypical) per crop."""

    def __init__(
        self, card: ModelCard, device: str = "auto", batch_size: int | None = None,
        tta: bool = False, compile: bool = False, engine: str | None = None,
        precision: str = "auto",
    ) -> None:
        self.card = card
        self.device = pick_device(device)
        self.torch_precision = precision_on(self.device.type, card.kind, precision)
        if self.device.type == "cuda" and self.torch_precision == "float32":
            # float32 in full: TF32 (cuDNN's default for convolutions) keeps 10 bits of
            # mantissa. Process-wide, set once here: a per-call context would race between
            # threads sharing the classifier (a dask worker with several threads).
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.batch_size = batch_size or card.batch_size
        if self.batch_size < 1:
            raise OptionError("--batch-size must be at least 1")
        self.tta = tta
        self.weights = verify_weights(card)
        self.transform = BatchTransform(card.preprocess_for(), train=False)
        # the fold models share the card's architecture: one of them shows whether it runs
        self.nets = [self._load(w.path, compile, check=k == 0)
                     for k, w in enumerate(self.weights)]
        self.graph_runners: list[OnnxNet] = []  # set when the engine is ONNX Runtime
        source = "--engine"
        if engine is None:  # the environment's choice is for CPU nodes; GPUs keep torch
            engine, source = os.environ.get(ENGINE_ENV) or "auto", ENGINE_ENV
            if self.device.type != "cpu" and engine == "onnx":
                engine = "auto"
        check_precision(precision, engine, source)
        self.engine = self._choose_engine(check_engine(engine), compile)
        self._verify = self.engine == "onnx"  # on the first real batch
        self.max_delta_p: float | None = None  # ONNX Runtime vs PyTorch on that batch

    def _choose_engine(self, asked: str, compile: bool) -> str:
        """torch, or ONNX Runtime on CPU when asked for or (auto) faster on a probe batch."""
        bf16 = self.torch_precision != "float32"
        if asked == "torch" or (asked == "auto" and (self.device.type != "cpu" or compile
                                                     or bf16)):
            return "torch"
        if self.device.type != "cpu":
            raise OptionError("--engine onnx runs on the CPU; use --device cpu")
        if compile:
            raise OptionError("--compile is for the torch engine; drop it or use --engine torch")
        if asked == "auto" and any(r is not None and r.failed
                                   for r in map(read_record, self._graph_paths())):
            log.info("%s: ONNX Runtime disagreed with PyTorch on this model before", self.card.name)
            return "torch"
        try:
            twins = self._graphs()
        except Exception as exc:
            if asked == "onnx":
                raise ModelError(f"{self.card.name}: no ONNX Runtime graph ({exc})") from exc
            log.warning("%s: ONNX Runtime unavailable, using PyTorch (%s)", self.card.name, exc)
            return "torch"
        if asked == "auto" and not self._probe(twins):
            return "torch"
        self.graph_runners = twins
        return "onnx"

    def _graph_paths(self) -> list[Path]:
        key = network_key(self.card)
        return [graph_path(w.sha256, key) for w in self.weights]

    def _graphs(self) -> list[OnnxNet]:
        """The ONNX Runtime twin of each network, exporting the graphs not yet cached."""
        from wsi_atm.graph_export import export_graph

        paths = self._graph_paths()
        loaded = [self._cached_graph(path) for path in paths]
        missing = [k for k, graph in enumerate(loaded) if graph is None]
        if missing:  # said once for the card (it was said once per fold model)
            graphs = ("its ONNX Runtime graph" if len(paths) == 1 else
                      f"1 of its {len(paths)} ONNX Runtime graphs" if len(missing) == 1 else
                      f"its {len(missing)} ONNX Runtime graphs (one per fold model)")
            log.warning("%s: building %s once (cached in %s)",
                        self.card.name, graphs, paths[0].parent)
        for k in missing:
            drop_graph(paths[k])  # a record left by an earlier graph no longer applies
            export_graph(self.transform, self.nets[k], self.card.crop_size, paths[k])
            loaded[k] = OnnxNet(paths[k], torch.get_num_threads())
        return [graph for graph in loaded if graph is not None]

    def _cached_graph(self, path: Path) -> OnnxNet | None:
        """The cached graph at ``path``; None when it is not there or unusable."""
        if not path.is_file():
            return None
        try:
            return OnnxNet(path, torch.get_num_threads())
        except ImportError:  # ONNX Runtime itself, not the file: keep the graph
            raise
        except Exception as exc:  # a damaged cache file, whatever its record says
            log.warning("%s: cached ONNX graph %s unusable (%s); rebuilding it",
                        self.card.name, path.name, exc)
            return None

    def _probe(self, twins: list[OnnxNet]) -> bool:
        """Whether ONNX Runtime is faster here (the whole path, transform included), timed
        once per machine and remembered in the graphs' records."""
        machine = machine_key(torch.get_num_threads(), self.batch_size)
        first = self._graph_paths()[0]
        record = read_record(first) or GraphRecord(onnxruntime=version("onnxruntime"))
        known = record.faster_here(machine)
        if known is not None:
            return known
        # at most PROBE_CROPS: a --batch-size of 1024 made the probe of an 8-candidate slide
        # take 75 s and 4 GB, and 16,384 would have needed ~60 GB
        crops = torch.randint(0, 256, (min(self.batch_size, PROBE_CROPS), self.card.crop_size,
                                       self.card.crop_size, 3), dtype=torch.uint8)
        with torch.inference_mode():
            t_torch = sum(best_time(self._net_on_crops(net), crops) for net in self.nets)
        t_onnx = sum(best_time(g, crops.numpy()) for g in twins)
        log.info("engine probe: torch %.4f s, onnx %.4f s", t_torch, t_onnx)
        for path in self._graph_paths():
            rec = read_record(path) or GraphRecord(onnxruntime=version("onnxruntime"))
            rec.probes[machine] = {"torch_s": round(t_torch, 6), "onnx_s": round(t_onnx, 6)}
            write_record(path, rec)
        return t_onnx < FASTER * t_torch

    def _net_on_crops(self, net: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(crops: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = net(self._torch_input(crops))
            return out
        return run

    def _torch_input(self, crops: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC crops → the network's normalised float input, on its device."""
        x = self.transform(crops.permute(0, 3, 1, 2).to(self.device, non_blocking=True))
        return x.contiguous(memory_format=torch.channels_last)

    def _use_torch(self, why: str, delta: float, crops: int) -> None:
        """Drop the graphs; their records keep the failure, so ``auto`` does not export and
        fail again on every run (``--engine onnx`` rebuilds and checks afresh)."""
        log.warning("%s: %s; using PyTorch", self.card.name, why)
        for path in self._graph_paths():
            drop_graph(path, keep_record=True)
            self._record_check(path, delta, crops)
        self.graph_runners, self.engine, self._verify = [], "torch", False

    def _record_check(self, path: Path, delta: float, crops: int) -> None:
        rec = read_record(path) or GraphRecord(onnxruntime=version("onnxruntime"))
        digest = file_sha256(path) if path.is_file() else rec.graph_sha256
        if rec.graph_sha256 and digest != rec.graph_sha256:  # another graph: start over
            rec = GraphRecord(onnxruntime=version("onnxruntime"))
        rec.graph_sha256 = digest
        rec.add_check(delta if delta == delta else 1.0, crops, self.tta)  # NaN: a failure
        write_record(path, rec)

    @property
    def n_models(self) -> int:
        return len(self.nets)

    def _check_against_torch(self, crops: np.ndarray, got: np.ndarray) -> None:
        """ONNX Runtime must give PyTorch's probabilities (max |dp| <= 1e-3) on real crops; the
        verdict is kept in each graph's record, so later runs can skip torch altogether."""
        self._verify = False
        ref = self._forward_torch(crops)
        delta = float(np.abs(ref - got).max()) if got.size else 0.0
        self.max_delta_p = delta
        if not delta <= MAX_DELTA_P:  # NaN included
            self._use_torch(f"ONNX Runtime differs from PyTorch by {delta:.2g} in P(atypical)",
                            delta, len(crops))
            return
        for path in self._graph_paths():
            self._record_check(path, delta, len(crops))

    def _load(self, path: str, compile: bool, check: bool = True) -> nn.Module:
        # Converts upstream key layouts, checks every key, builds on the hub backbone only when
        # the file holds just adapters/heads, and merges LoRA adapters for inference.
        net = build_from_checkpoint(self.card, path)
        # channels-last suits convolutions on CPU (measured 1.7× for resnet10t) and on GPUs.
        net = net.eval().to(self.device).to(memory_format=torch.channels_last)
        if check:
            self._check_runs(net)
        if compile:
            compiled: nn.Module = torch.compile(net)  # type: ignore[assignment]  # a Module wrapper
            return compiled
        return net

    @torch.inference_mode()
    def _check_runs(self, net: nn.Module) -> None:
        """One blank crop through the card's eval transform and ``net``. Regression: a network
        that cannot take the card's input (a ViT built for another size, a kwarg of the wrong
        type) was an internal error on the first batch, or a page of torch.export output."""
        size = self.card.crop_size
        blank = torch.zeros(1, size, size, 3, dtype=torch.uint8)
        try:
            net(self._torch_input(blank))
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:
            text = str(exc).strip()
            why = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")
            raise ModelError(f"{self.card.name}: its network cannot run on the card's "
                             f"{size}-px crops after its eval preprocessing ({why})") from None

    @property
    def weight_sha256(self) -> tuple[str, ...]:
        return tuple(w.sha256 for w in self.weights)

    @property
    def precision(self) -> str:
        """What the networks compute in: ``float32`` or ``bf16-autocast``."""
        return self.torch_precision if self.engine == "torch" else "float32"

    @torch.inference_mode()
    def _forward_torch(self, crops: np.ndarray) -> np.ndarray:
        """P(atypical) per fold model (F, N), averaged over the 8 dihedral views with TTA."""
        x = self._torch_input(torch.from_numpy(np.ascontiguousarray(crops)))
        views = range(8) if self.tta else (0,)
        out = torch.zeros(len(self.nets), x.shape[0], device=self.device)
        # float32 needs no context: TF32 was switched off when the model loaded
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.torch_precision != "float32"):
            for f, net in enumerate(self.nets):
                for k in views:
                    out[f] += p_atypical_from_logits(net(dihedral(x, k)), self.card)
        probs: np.ndarray = (out / len(views)).cpu().double().numpy()
        return probs

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray | None:
        """P(atypical) per fold of one chunk, or None when the ONNX engine was just dropped."""
        if self.engine != "onnx":
            return self._forward_torch(chunk)
        try:
            got = onnx_folds(self.graph_runners, chunk, atypical_sign(self.card), self.tta)
        except Exception as exc:
            self._use_torch(f"ONNX Runtime failed ({type(exc).__name__}: {exc})", 1.0,
                            len(chunk))
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
        out, start = [], 0
        while start < len(crops):
            chunk = crops[start : start + self.batch_size]
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
        return np.concatenate(out, axis=1)

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """The ensemble's P(atypical): the mean over fold models."""
        mean: np.ndarray = self.predict_folds(crops).mean(axis=0)
        return mean
