"""Inference engines: the ONNX Runtime graph cache, its records, and the graph runner.

For the small CNNs wsi-atm bundles, ONNX Runtime runs the same network faster on CPU than
eager PyTorch (fused convolutions, no Python per layer). Its graph — the card's eval transform
and the network in one, uint8 crops in, logits out — is a *cache* derived from the card's
safetensors weights: exported once per (weights, card, torch, timm, opset), written atomically
under the cache directory, and never a replacement for the weights.

Each graph has a record beside it (JSON): whether it has been checked against PyTorch on real
crops (max |Δp| ≤ 1e-3), and on which machines (CPU model, threads, batch size) it was timed
against PyTorch. A run whose graphs are all checked, and (for ``auto``) faster on this machine,
needs neither torch nor timm: it starts in a fraction of a second. This module imports neither.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from wsi_atm.errors import OptionError
from wsi_atm.files import atomic_path
from wsi_atm.models.card import ModelCard

log = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "onnx")
OPSET = 18
MAX_DELTA_P = 1e-3
RECORD_VERSION = 1
FASTER = 0.95  # ONNX Runtime must take at most this share of PyTorch's time to be chosen


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise OptionError(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    return engine


@cache
def version(package: str) -> str:
    """An installed package's version without importing it (torch's import takes seconds)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def cache_dir() -> Path:
    """``$WSI_ATM_CACHE`` or ``$XDG_CACHE_HOME/wsi-atm`` (default ``~/.cache/wsi-atm``)."""
    base = os.environ.get("WSI_ATM_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "wsi-atm"


def graph_path(weights_sha256: str, network: str) -> Path:
    """Where the ONNX graph of one weight file is cached; ``network`` names everything else
    that shapes the graph (architecture, mode, crop size, eval transform; see
    ``network_key``)."""
    key = (f"{weights_sha256}|{network}|torch {version('torch')}|timm {version('timm')}|"
           f"opset {OPSET}")
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return cache_dir() / "onnx" / f"{digest}.onnx"


def record_path(graph: Path) -> Path:
    return graph.with_suffix(".json")


def machine_key(threads: int, batch_size: int) -> str:
    """What a speed probe depends on: the CPU, the thread count, the batch size, the runtimes."""
    return (f"{cpu_model()}|{threads} threads|batch {batch_size}|"
            f"onnxruntime {version('onnxruntime')}|torch {version('torch')}")


@cache
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class GraphRecord:
    """What is known about one cached graph (stored as JSON beside it)."""

    onnxruntime: str  # the runtime the check below was made with
    max_delta_p: float | None = None  # against PyTorch on real crops; None: not yet checked
    checked_crops: int = 0
    probes: dict[str, dict[str, float]] = field(default_factory=dict)  # machine → seconds
    version: int = RECORD_VERSION

    @property
    def checked(self) -> bool:
        """Checked on real crops with the ONNX Runtime installed now, and within tolerance."""
        return (self.onnxruntime == version("onnxruntime") and self.max_delta_p is not None
                and self.max_delta_p <= MAX_DELTA_P)

    def faster_here(self, machine: str) -> bool | None:
        """Whether ONNX Runtime beat PyTorch on this machine (None: never timed here)."""
        probe = self.probes.get(machine)
        if probe is None:
            return None
        return probe["onnx_s"] < FASTER * probe["torch_s"]


def read_record(graph: Path) -> GraphRecord | None:
    """The graph's record; None when absent or unreadable (the graph is then re-checked)."""
    try:
        data = json.loads(record_path(graph).read_text())
        if data.get("version") != RECORD_VERSION:
            return None
        return GraphRecord(**data)
    except (OSError, ValueError, TypeError):
        return None


def write_record(graph: Path, record: GraphRecord) -> bool:
    """Best effort: a cache that cannot be written (read-only, full) only means the check and
    the probe are repeated next run, never a failed run."""
    try:
        with atomic_path(record_path(graph)) as tmp:
            tmp.write_text(json.dumps(asdict(record), indent=1, sort_keys=True))
    except OSError as exc:
        log.warning("cannot write %s (%s): the engine check is repeated next run",
                    record_path(graph), exc)
        return False
    return True


def drop_graph(graph: Path) -> None:
    """A graph that failed or disagreed is not trusted next time: rebuilt and re-checked."""
    graph.unlink(missing_ok=True)
    record_path(graph).unlink(missing_ok=True)


class OnnxNet:
    """A cached ONNX graph run by ONNX Runtime: uint8 crops (N, H, W, 3) → logits (N,)."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # idle workers must not spin while the crop threads decode tiles on the same cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session: Any = ort.InferenceSession(str(path), options,
                                                 providers=["CPUExecutionProvider"])

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        (logit,) = self.session.run(None, {"x": np.ascontiguousarray(crops, dtype=np.uint8)})
        return np.asarray(logit, dtype=np.float32).reshape(len(crops))


def dihedral_nhwc(crops: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the 8 flips/rotations of an NHWC batch (the same views as ``infer.dihedral``
    gives for NCHW)."""
    x = crops[:, :, ::-1] if k >= 4 else crops
    return np.rot90(x, k % 4, axes=(1, 2))


def sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    return out


def onnx_folds(runners: list[OnnxNet], crops: np.ndarray, sign: float,
               tta: bool) -> np.ndarray:
    """P(atypical) per graph (F, N) for uint8 crops (N, H, W, 3); with TTA the mean over the
    8 dihedral views. ``sign`` is -1 for weights whose sigmoid is P(normal)."""
    views = range(8) if tta else (0,)
    out = np.zeros((len(runners), len(crops)), dtype=np.float64)
    for f, run in enumerate(runners):
        for k in views:
            out[f] += sigmoid(sign * run(dihedral_nhwc(crops, k)))
    return out / len(views)


def best_time(fn: Callable[[Any], Any], x: Any, repeats: int = 3) -> float:
    fn(x)  # warm-up (allocations, lazy initialisation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return min(times)


def cuda_possible() -> bool:
    """False only when this machine certainly has no NVIDIA driver (Linux: no /proc entry and
    no device node), so ``--device auto`` can mean CPU without importing torch to ask."""
    if platform.system() != "Linux":
        return True
    return os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/nvidiactl")


def network_key(card: ModelCard) -> str:
    """Everything of a card besides the weight file that shapes its exported graph."""
    pre = card.preprocess_for()
    return (f"{card.architecture}|{card.trained_mode}|{card.output}|"
            f"{sorted(card.kwargs.items())}|crop {card.crop_size}|eval {list(pre.eval)}|"
            f"mean {list(pre.mean)}|std {list(pre.std)}")
