"""Which classifier runs a card: a torch-free ONNX Runtime one when it can be trusted, else
PyTorch's (``wsi_atm.infer.Classifier``), which builds, checks and times the graphs for next time.

The ONNX-only classifier is used when every weight file's graph is cached and its record says
it was checked against PyTorch on real crops with the ONNX Runtime installed now, the device is
the CPU, and — for ``--engine auto`` — ONNX Runtime was the faster on this machine. It imports
neither torch nor timm, so ``classify`` starts in a fraction of a second instead of ~5 s.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Protocol

import numpy as np

from wsi_atm.cpus import usable_cpus
from wsi_atm.engines import (
    ENGINE_ENV,
    OnnxNet,
    check_engine,
    check_precision,
    cuda_possible,
    drop_graph,
    graph_path,
    machine_key,
    network_key,
    onnx_folds,
    read_record,
    record_path,
    written_by_this_user,
)
from wsi_atm.errors import OptionError
from wsi_atm.faults import inject
from wsi_atm.files import file_sha256
from wsi_atm.models.card import LoadedWeights, ModelCard, atypical_sign, verify_weights

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger(__name__)


class SlideClassifier(Protocol):
    """What the pipeline needs of a classifier."""

    card: ModelCard
    tta: bool
    engine: str
    batch_size: int

    @property
    def precision(self) -> str: ...

    @property
    def weight_sha256(self) -> tuple[str, ...]: ...

    @property
    def n_models(self) -> int: ...

    def predict_folds(self, crops: np.ndarray) -> np.ndarray: ...


class OnnxClassifier:
    """A card's checked ONNX Runtime graphs: P(atypical) per fold model, no torch involved."""

    engine = "onnx"
    precision = "float32"  # ONNX Runtime on the CPU

    def __init__(self, card: ModelCard, weights: list[LoadedWeights], graphs: list[Path],
                 batch_size: int, tta: bool, threads: int, max_delta_p: float) -> None:
        self.card, self.weights, self.batch_size, self.tta = card, weights, batch_size, tta
        self.runners = [OnnxNet(g, threads) for g in graphs]
        self.max_delta_p = max_delta_p  # the check recorded when the graphs were first used
        self._sign = atypical_sign(card)

    @property
    def weight_sha256(self) -> tuple[str, ...]:
        return tuple(w.sha256 for w in self.weights)

    @property
    def n_models(self) -> int:
        return len(self.runners)

    def predict_folds(self, crops: np.ndarray) -> np.ndarray:
        """P(atypical) of each fold model, shape (F, N), for uint8 crops (N, H, W, 3)."""
        inject("inference")
        if len(crops) == 0:
            return np.zeros((self.n_models, 0), dtype=np.float64)
        chunks = [onnx_folds(self.runners, crops[i : i + self.batch_size], self._sign, self.tta)
                  for i in range(0, len(crops), self.batch_size)]
        return np.concatenate(chunks, axis=1)

    def predict(self, crops: np.ndarray) -> np.ndarray:
        mean: np.ndarray = self.predict_folds(crops).mean(axis=0)
        return mean


def onnx_only(card: ModelCard, device: str, batch_size: int | None, tta: bool, compile: bool,
              engine: str, threads: int, precision: str = "auto") -> OnnxClassifier | None:
    """The torch-free classifier when its graphs are cached, checked and (auto) faster here."""
    if engine == "torch" or compile or device not in ("cpu", "auto") or precision == "bf16":
        return None
    if device == "auto" and cuda_possible():
        return None  # torch decides whether a GPU is there
    size = batch_size or card.batch_size
    if size < 1:
        raise OptionError("--batch-size must be at least 1")
    weights = verify_weights(card)
    key = network_key(card)
    graphs = [graph_path(w.sha256, key) for w in weights]
    records = [read_record(g) if g.is_file() else None for g in graphs]
    if not all(r is not None and r.trusted(tta) for r in records):
        return None
    # Regression: a graph and record another user wrote (a shared cache folder) were trusted
    if not all(written_by_this_user(p) for g in graphs for p in (g, record_path(g))):
        return None
    for graph, record in zip(graphs, records, strict=True):
        if record is not None and file_sha256(graph) != record.graph_sha256:
            log.warning("%s: cached ONNX graph %s is not the one checked; rebuilding it",
                        card.name, graph.name)
            drop_graph(graph)
            return None
    if engine == "auto":
        machine = machine_key(threads, size)
        if not all(r is not None and r.faster_here(machine) for r in records):
            return None
    delta = max((r.max_delta_p_tta if tta else r.max_delta_p) or 0.0
                for r in records if r is not None)
    try:
        return OnnxClassifier(card, weights, graphs, size, tta, threads, delta)
    except Exception as exc:  # a damaged cache file: rebuilt and checked by the torch path
        log.warning("%s: cached ONNX graph unusable (%s); rebuilding it", card.name, exc)
        for graph in graphs:
            drop_graph(graph)
        return None


def load_classifier(card: ModelCard, device: str = "auto", batch_size: int | None = None,
                    tta: bool = False, compile: bool = False, engine: str | None = None,
                    threads: int | None = None, precision: str = "auto") -> SlideClassifier:
    """The classifier for ``card``: ONNX-only when that is known to be right, else PyTorch's."""
    chosen = check_engine(engine or os.environ.get(ENGINE_ENV) or "auto")
    if engine is not None:  # the environment's onnx does not bind a GPU (see Classifier)
        check_precision(precision, chosen)  # before torch is imported
    n_threads = threads or usable_cpus()
    fast = onnx_only(card, device, batch_size, tta, compile, chosen, n_threads, precision)
    if fast is not None:
        log.info("%s: ONNX Runtime graphs checked earlier (max |dp| %.2g); torch not loaded",
                 card.name, fast.max_delta_p)
        return fast
    from wsi_atm.infer import Classifier, set_cpu_threads

    set_cpu_threads(n_threads)
    return Classifier(card, device=device, batch_size=batch_size, tta=tta, compile=compile,
                      engine=engine, precision=precision)
