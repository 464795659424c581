"""Inference engines for a built network: PyTorch itself, or ONNX Runtime on CPU.

For the small CNNs wsi-atm bundles, ONNX Runtime runs the same network faster on CPU than
eager PyTorch (fused convolutions, no Python per layer). Its graph is a *cache* derived from the
card's safetensors weights: exported once per (weights, input size, torch, opset), written
atomically under the cache directory, and never a replacement for the weights. ``auto`` takes
ONNX Runtime on CPU only when it is faster on a probe batch; every run also checks, on its
first real batch, that both engines agree (max |Δp| ≤ 1e-3) and falls back to PyTorch if not.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wsi_atm.errors import ModelError, OptionError
from wsi_atm.files import atomic_path

log = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "onnx")
OPSET = 18
MAX_DELTA_P = 1e-3


def cache_dir() -> Path:
    """``$WSI_ATM_CACHE`` or ``$XDG_CACHE_HOME/wsi-atm`` (default ``~/.cache/wsi-atm``)."""
    base = os.environ.get("WSI_ATM_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "wsi-atm"


def graph_path(weights_sha256: str, size: int, network: str = "") -> Path:
    """Where the ONNX graph of one weight file at one input size is cached; ``network`` names
    whatever else shapes the graph (the card's architecture and mode, timm's version)."""
    key = f"{weights_sha256}|{size}|{network}|torch {torch.__version__}|opset {OPSET}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return cache_dir() / "onnx" / f"{digest}.onnx"


def export_graph(net: nn.Module, size: int, path: Path) -> None:
    """Export ``net`` (NCHW float input of ``size`` px, any batch) as one self-contained file."""
    import warnings

    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1)
    twin = copy.deepcopy(net).float().to(memory_format=torch.contiguous_format).eval()
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            twin, (example,),
            input_names=["x"], output_names=["logit"], dynamic_shapes={"x": {0: batch}},
            opset_version=OPSET, dynamo=True, verbose=False)
        if program is None:
            raise ModelError("torch.onnx.export returned no program")
        program.save(str(tmp), external_data=False)


class OnnxNet:
    """A cached ONNX graph run by ONNX Runtime; called like the network (NCHW float → logits)."""

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

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().float().cpu().numpy())
        (logit,) = self.session.run(None, {"x": arr})
        return torch.from_numpy(np.asarray(logit, dtype=np.float32))


def onnx_nets(nets: list[nn.Module], shas: list[str], size: int, name: str,
              network: str) -> list[OnnxNet]:
    """The ONNX Runtime twin of each network, exporting the graphs not yet cached."""
    threads = torch.get_num_threads()
    out = []
    for net, sha in zip(nets, shas, strict=True):
        path = graph_path(sha, size, network)
        if not path.is_file():
            log.warning("%s: building its ONNX Runtime graph once (cached in %s)", name,
                        path.parent)
            export_graph(net, size, path)
        out.append(OnnxNet(path, threads))
    return out


def best_time(fn: Any, x: torch.Tensor, repeats: int = 3) -> float:
    fn(x)  # warm-up (allocations, lazy initialisation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return min(times)


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise OptionError(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    return engine
