"""Weight files: safetensors for our own, ``torch.load(weights_only=True)`` for upstream .pth.

Nothing here ever unpickles arbitrary objects: a checkpoint that needs it is refused.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from wsi_atm.errors import ModelError
from wsi_atm.files import atomic_path


def trainable_state(net: nn.Module, full: bool) -> dict[str, torch.Tensor]:
    """The state to checkpoint: everything, or only trainable tensors (LoRA adapters, heads)."""
    if full:
        return {k: v.detach() for k, v in net.state_dict().items()}
    return {k: p.detach() for k, p in net.named_parameters() if p.requires_grad}


def save_safetensors(
    state: dict[str, torch.Tensor], path: Path, half: bool = False,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write atomically (temp file + rename); optionally store floating tensors as fp16."""
    tensors = {
        k: (v.half() if half and v.is_floating_point() else v).contiguous().cpu()
        for k, v in state.items()
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict from safetensors, or from a .pth/.pt with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(f"{path}: not a valid safetensors file ({exc})") from None
    return _load_pth(path)


def load_tensors_only(path: Path) -> Any:
    """``torch.load`` of a file of tensors (and plain containers of them) only: never any other
    pickled object. torch's own warnings (a foreign pickle protocol) are silenced; its errors
    propagate, for the caller to word without torch's advice to load with
    ``weights_only=False``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


def _load_pth(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = load_tensors_only(path)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, pickle.UnpicklingError):
            # Regression: torch's own words advised loading it with weights_only=False, i.e.
            # running whatever the file holds
            first = "it holds objects other than tensors"
        raise ModelError(
            f"{path}: refused to load (only plain tensor checkpoints are accepted, "
            f"never arbitrary pickled objects): {first}"
        ) from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path}: not a state dict of tensors")
    return obj


def _unfit_values(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> str | None:
    """Why a tensor cannot stand for the net's floating-point one (a damaged or foreign file),
    or None: integers, booleans or complex numbers, or NaN/infinite values where the net has
    none (a mask buffer may hold -inf)."""
    for key, value in state.items():
        mine = own.get(key)
        if mine is None or not mine.is_floating_point():
            continue
        if not value.is_floating_point():
            return f"{key} holds {str(value.dtype).removeprefix('torch.')} values, not floats"
        finite = torch.isfinite(value.to(mine.dtype)).all()  # float8 has no isfinite
        if not bool(finite) and bool(torch.isfinite(mine).all()):
            return f"{key} holds NaN or infinite values"
    return None


def load_into(net: nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Load a state dict, cast to the net's dtypes, with a one-line error on mismatch."""
    own = net.state_dict()
    unfit = _unfit_values(state, own)
    if unfit:
        raise ModelError(f"weights do not fit the model: {unfit}")
    cast = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
    try:
        net.load_state_dict(cast, strict=strict)
    except RuntimeError as exc:
        summary = " ".join(str(exc).split())[:300]
        raise ModelError(f"weights do not fit the model: {summary}") from None


