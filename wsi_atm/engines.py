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

import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from wsi_atm import __version__
from wsi_atm.errors import OptionError
from wsi_atm.files import atomic_path, file_sha256
from wsi_atm.models.card import ModelCard
from wsi_atm.signals import signals_held

log = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "onnx")
OPSET = 18
MAX_DELTA_P = 1e-3
RECORD_VERSION = 2
# Bump when wsi-atm's graph-building code changes what a graph computes (transform ops, export):
# cached graphs of the old code are then rebuilt and checked again, never trusted.
GRAPH_VERSION = 4  # 3, 4: Reinhard leaves flat channels flat (a black crop dropped the graph)
MIN_CHECK_CROPS = 32  # real crops a graph must have matched PyTorch on before it is trusted
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

    onnxruntime: str  # the runtime the checks below were made with
    # Largest |Δp| against PyTorch over the real crops checked so far, without and with TTA
    # (TTA flips the uint8 crops before the graph's transform, PyTorch after it: checked apart)
    max_delta_p: float | None = None
    checked_crops: int = 0
    max_delta_p_tta: float | None = None
    checked_crops_tta: int = 0
    probes: dict[str, dict[str, float]] = field(default_factory=dict)  # machine → seconds
    version: int = RECORD_VERSION
    # the sha256 of the graph file the checks were made on: the torch-free path trusts the
    # file only while it still has it (a damaged or swapped graph flipped calls silently)
    graph_sha256: str = ""

    def _current(self) -> bool:
        return self.onnxruntime == version("onnxruntime")

    def trusted(self, tta: bool) -> bool:
        """Checked on enough real crops with the ONNX Runtime installed now, within 1e-3."""
        delta, crops = ((self.max_delta_p_tta, self.checked_crops_tta) if tta
                        else (self.max_delta_p, self.checked_crops))
        return (self._current() and delta is not None and delta <= MAX_DELTA_P
                and crops >= MIN_CHECK_CROPS and bool(self.graph_sha256))

    @property
    def failed(self) -> bool:
        """Disagreed with PyTorch (or crashed) under the ONNX Runtime installed now."""
        worst = max(self.max_delta_p or 0.0, self.max_delta_p_tta or 0.0)
        return self._current() and not worst <= MAX_DELTA_P

    def add_check(self, delta: float, crops: int, tta: bool) -> None:
        """Fold one check into the record (a new ONNX Runtime starts the count again)."""
        if not self._current():
            self.onnxruntime, self.max_delta_p, self.checked_crops = version("onnxruntime"), None, 0
            self.max_delta_p_tta, self.checked_crops_tta, self.probes = None, 0, {}
        if tta:
            self.max_delta_p_tta = max(self.max_delta_p_tta or 0.0, delta)
            self.checked_crops_tta += crops
        else:
            self.max_delta_p = max(self.max_delta_p or 0.0, delta)
            self.checked_crops += crops

    def faster_here(self, machine: str) -> bool | None:
        """Whether ONNX Runtime beat PyTorch on this machine (None: never timed here)."""
        probe = self.probes.get(machine)
        if probe is None:
            return None
        return probe["onnx_s"] < FASTER * probe["torch_s"]


def read_record(graph: Path) -> GraphRecord | None:
    """The graph's record; None when absent or malformed (the graph is then checked again)."""
    try:
        data = json.loads(record_path(graph).read_text())
        if not isinstance(data, dict) or data.get("version") != RECORD_VERSION:
            return None
        record = GraphRecord(**data)
        return record if well_typed(record) else None
    except (OSError, ValueError, TypeError):
        return None


def well_typed(record: GraphRecord) -> bool:
    """Whether every field of a record read from JSON has its type. Regression: a record with
    ``"checked_crops": null`` (or a string for a Δp) was an internal error on every run."""
    def number(x: object, optional: bool = False) -> bool:
        return (x is None and optional) or (isinstance(x, float | int)
                                            and not isinstance(x, bool))

    probes_ok = isinstance(record.probes, dict) and all(
        isinstance(p, dict) and all(number(p.get(k)) for k in ("onnx_s", "torch_s"))
        for p in record.probes.values())
    return (probes_ok and isinstance(record.onnxruntime, str)
            and isinstance(record.graph_sha256, str)
            and number(record.max_delta_p, optional=True)
            and number(record.max_delta_p_tta, optional=True)
            and all(type(n) is int for n in (record.checked_crops, record.checked_crops_tta)))


def written_by_this_user(path: Path) -> bool:
    """Whether only this user (or root) can have written ``path``: owned by them and not
    writable by all. A graph trusted without torch decides every call, so one planted in a
    cache others can write to (``$WSI_ATM_CACHE`` on a shared folder) is checked against
    PyTorch again instead. Group-writable files pass: most systems give each user a group of
    their own."""
    geteuid = getattr(os, "geteuid", None)
    if geteuid is None:  # not POSIX: no owners to compare
        return True
    try:
        info = path.stat()
    except OSError:
        return False
    return info.st_uid in (geteuid(), 0) and not info.st_mode & stat.S_IWOTH


def not_writable_by_all(path: Path) -> None:
    """Drop the write permission for all from a cache file this process wrote. Regression:
    under a umask of 000 the graphs and records were written writable by all, so
    :func:`written_by_this_user` never trusted them again and every run imported torch."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & stat.S_IWOTH:
        path.chmod(mode & ~stat.S_IWOTH)


def write_record(graph: Path, record: GraphRecord) -> bool:
    """Best effort: a cache that cannot be written (read-only, full) only means the check and
    the probe are repeated next run, never a failed run."""
    try:
        with atomic_path(record_path(graph)) as tmp:
            tmp.write_text(json.dumps(asdict(record), indent=1, sort_keys=True))
            not_writable_by_all(tmp)
    except OSError as exc:
        log.warning("cannot write %s (%s): the engine check is repeated next run",
                    record_path(graph), exc)
        return False
    return True


def drop_graph(graph: Path, keep_record: bool = False) -> None:
    """Remove a graph (and, unless kept to remember a failure, its record); best effort."""
    for path in (graph,) if keep_record else (graph, record_path(graph)):
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


class OnnxNet:
    """A cached ONNX graph run by ONNX Runtime: uint8 crops (N, H, W, 3) → logits (N,)."""

    def __init__(self, path: Path, threads: int) -> None:
        with signals_held():  # a Ctrl-C in its init came out as ImportError
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


GPU_NODES = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")
# what --device may name besides auto
DEVICE_NAMES = re.compile(r"cpu|cuda(:[0-9]+)?")


def check_device(name: str) -> str:
    """``name``, checked as a --device value (whether that GPU exists is torch's to say)."""
    if name != "auto" and not DEVICE_NAMES.fullmatch(name):
        raise OptionError(f"--device must be auto, cpu, cuda or cuda:N, not {name!r}")
    return name


# what --precision may ask for
PRECISIONS = ("auto", "float32", "bf16")


def precision_on(device_type: str, kind: str, asked: str = "auto") -> str:
    """What PyTorch runs a card's networks in: ``float32`` or ``bf16-autocast``.

    ``auto`` keeps float32, the precision the bundled default model was trained and
    cross-validated in (on CPU), except for ViT and foundation cards on a GPU: there bf16
    autocast buys several times the throughput. A small CNN on a GPU waits on its crops, not
    on its arithmetic, and in bf16 it flips ~1-2 % of the default model's calls against
    float32 (measured on CPU)."""
    check_precision(asked)
    if asked == "auto":
        asked = "bf16" if device_type == "cuda" and kind != "cnn" else "float32"
    return "bf16-autocast" if asked == "bf16" else "float32"


ENGINE_ENV = "WSI_ATM_ENGINE"  # the engine for CPU machines, where --engine is not given


def check_precision(asked: str, engine: str = "auto", source: str = "--engine") -> str:
    """``asked``, checked as a --precision value and against the engine, which ``source``
    chose (``--engine``, or the ``WSI_ATM_ENGINE`` environment variable)."""
    if asked not in PRECISIONS:
        raise OptionError(f"--precision must be one of {', '.join(PRECISIONS)}, not {asked!r}")
    if asked == "bf16" and engine == "onnx":
        if source == ENGINE_ENV:
            raise OptionError(f"{ENGINE_ENV}=onnx runs in float32; drop --precision bf16 or "
                              f"unset {ENGINE_ENV}")
        raise OptionError("--engine onnx runs in float32; drop --precision bf16")
    return asked


def cuda_possible() -> bool:
    """False only when this machine certainly has no GPU torch could use as ``cuda`` (Linux: no
    NVIDIA driver entry or device node, no WSL2 GPU (/dev/dxg), no ROCm (/dev/kfd)), so
    ``--device auto`` can mean CPU without importing torch to ask."""
    if platform.system() != "Linux":
        return True
    return any(os.path.exists(p) for p in GPU_NODES)


def network_key(card: ModelCard) -> str:
    """Everything besides the weight file that shapes a card's exported graph: the whole card
    file (LoRA, embedding, backbone source and pins, transform… — any edit rebuilds, which is
    cheap next to trusting a stale graph), the version of the code that builds the graph and,
    for a hub card, the cached snapshot of its backbone (so such a graph is used only where
    that snapshot is cached: elsewhere nothing shows which backbone it holds)."""
    pre = card.preprocess_for()
    fields = (f"{card.architecture}|{card.trained_mode}|{card.output}|"
              f"{sorted(card.kwargs.items())}|crop {card.crop_size}|eval {list(pre.eval)}|"
              f"mean {list(pre.mean)}|std {list(pre.std)}")
    card_file = file_sha256(card.path) if card.path.is_file() else ""
    key = f"{fields}|card {card_file}|graph v{GRAPH_VERSION}|wsi-atm {__version__}"
    if card.is_hub:  # adapters or a head on the hub backbone: the cached snapshot is baked in
        from wsi_atm.models.sources import cached_revision

        key += f"|base {cached_revision(card.architecture, card.hub_revision) or card.hub_revision}"
    return key
