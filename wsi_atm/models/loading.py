"""Checkpoints of the AMi-Br benchmark's own code, converted to wsi-atm's nets, and the label rule.

Upstream saved ``torch.save(model.state_dict(), f"{model}_lora_fold_{k}_best.pth")`` for
k = 1..5 (wsi-atm counts folds from 0):

- LoRA: the state dict of a peft ``PeftModel``: every weight (frozen base included), keys
  ``base_model.model.<timm key>``, adapters ``...qkv.lora_A.default.weight``, wrapped base layers
  ``...qkv.base_layer.weight`` (plain ``...qkv.weight`` before peft 0.7), the trained head
  ``base_model.model.head.modules_to_save.default.*``;
- end-to-end: a wrapper with the timm model at ``model.`` (Swin-B: head at ``classifier.1.``);
- linear probe: only the head, ``classifier.weight`` / ``classifier.bias``.

Files are read by :func:`wsi_atm.models.weight_files.load_weights`: safetensors, or
``torch.load`` with ``weights_only=True``; a checkpoint that needs to unpickle arbitrary objects
is refused with a :class:`ModelError`, never executed.

Label convention. Upstream trained with Atypical = 0, Normal = 1, so the sigmoid of its logit is
P(normal); cards for such weights say ``[labels] output = "p_normal"``. wsi-atm always reports
P(atypical). The conversion happens in one place, :func:`p_atypical_from_logits`
(P(atypical) = sigmoid(sign * logit), sign = -1 for ``p_normal``, i.e. 1 - sigmoid(logit));
the nets themselves keep the weights' own convention.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsi_atm.errors import ModelError
from wsi_atm.models.adapters import (
    LinearProbe,
    LoraNet,
    MergedLoraNet,
    check_lora_metadata,
    is_adapter_key,
    merge_for_inference,
    read_lora_metadata,
    warn_if_base_moved,
)
from wsi_atm.models.card import ModelCard, atypical_sign
from wsi_atm.models.nets import build_net
from wsi_atm.models.weight_files import load_into, load_weights

_FOLD = re.compile(r"_fold_(\d+)_best\.pth$")
_PEFT_PREFIX = "base_model.model."
# Upstream wrapper layouts → wsi-atm keys, tried in order (the first that the net has wins).
_RENAMES = (
    ("classifier.1.", "model.head.fc."),  # Swin-B: Sequential(Flatten, Linear) on pooled features
    ("classifier.", "head."),  # linear probes: nn.Linear(D, 1) named classifier
    ("", "model."),  # the timm model at .model (ViT-L, EfficientNetV2-M)
)


# --------------------------------------------------------------------------- label convention
def atypical_logits(logits: torch.Tensor, card: ModelCard) -> torch.Tensor:
    """Logits whose sigmoid is P(atypical), whatever the card's convention."""
    return atypical_sign(card) * logits.float()


def p_atypical_from_logits(logits: torch.Tensor, card: ModelCard) -> torch.Tensor:
    """P(atypical) from a net's raw logits: ``1 - sigmoid(logit)`` for ``output = "p_normal"``."""
    return torch.sigmoid(atypical_logits(logits, card))


# -------------------------------------------------------------------------------- conversion
def upstream_fold(path: str | Path) -> int | None:
    """The fold k of ``<model>_lora_fold_<k>_best.pth`` as upstream numbered it (1..5)."""
    m = _FOLD.search(Path(path).name)
    return int(m.group(1)) if m else None


def _strip_data_parallel(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _peft_state(state: dict[str, torch.Tensor], own: dict[str, Any]) -> dict[str, torch.Tensor]:
    where = next((k for k in own if _PEFT_PREFIX in k), None)
    if where is None:
        raise ModelError("this is a LoRA (peft) checkpoint: build the net in mode 'lora'")
    prefix = where[: where.index(_PEFT_PREFIX)]  # "model." in a LoraNet
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        mine = prefix + key
        if mine not in own:  # peft < 0.7 wrote wrapped layers without ".base_layer."
            alt = re.sub(r"\.(weight|bias)$", r".base_layer.\1", mine)
            mine = alt if alt in own else mine
        out[mine] = value
    for key in own:  # the untrained original of a modules_to_save head, when not stored
        if ".original_module." in key and key not in out:
            trained = key.replace(".original_module.", ".modules_to_save.default.")
            if trained in out:
                out[key] = out[trained]
    return out


def convert_state(state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an upstream (or wsi-atm) state dict's keys to ``net``'s; unknown keys stay as
    they are (and are reported by :func:`load_checkpoint`)."""
    own = net.state_dict()
    state = _strip_data_parallel(state)
    if any(k.startswith(_PEFT_PREFIX) for k in state):
        return _peft_state(state, own)
    out = {}
    for key, value in state.items():
        mine = key
        if key not in own:
            for old, new in _RENAMES:
                if key.startswith(old) and new + key[len(old):] in own:
                    mine = new + key[len(old):]
                    break
        out[mine] = value
    return out


def _required(net: nn.Module, key: str) -> bool:
    """Keys a checkpoint must hold: adapters + head for LoRA, the head for a linear probe,
    everything for an end-to-end net (the rest may come from the pretrained backbone)."""
    if isinstance(net, LoraNet) and not isinstance(net, MergedLoraNet):
        return is_adapter_key(key)
    if isinstance(net, LinearProbe):
        return key.startswith("head.")
    return True


def _head_or_adapter_key(key: str) -> bool:
    return (is_adapter_key(key) or ".original_module." in key
            or key.startswith(("classifier.", "head.")))


def holds_backbone(state: dict[str, torch.Tensor]) -> bool:
    """Whether a checkpoint carries backbone weights (upstream LoRA and end-to-end files do),
    or only adapters / a head (wsi-atm LoRA, linear probes), which need the pretrained model."""
    return any(not _head_or_adapter_key(k) for k in _strip_data_parallel(state))


def _load_state(net: nn.Module, state: dict[str, torch.Tensor], name: str) -> bool:
    state = convert_state(state, net)
    own = net.state_dict()
    unexpected = sorted(k for k in state if k not in own)
    if unexpected:
        raise ModelError(f"{name}: {len(unexpected)} tensors do not fit the "
                         f"{type(net).__name__} net (e.g. {unexpected[0]})")
    missing = sorted(k for k in own if k not in state)
    required = [k for k in missing if _required(net, k)]
    if required:
        raise ModelError(f"{name}: {len(required)} required tensors missing "
                         f"(e.g. {required[0]})")
    load_into(net, state, strict=False)
    return not missing


def _read(path: Path, card: ModelCard | None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The file's tensors and (a wsi-atm safetensors file read for a card) its checked
    metadata; ``{}`` otherwise."""
    meta: dict[str, str] = {}
    if card is not None and path.suffix == ".safetensors":
        meta = read_lora_metadata(path)
        check_lora_metadata(meta, card, path)
    return load_weights(path), meta


def load_checkpoint(net: nn.Module, path: str | Path, card: ModelCard | None = None) -> bool:
    """Load a checkpoint (upstream .pth or wsi-atm safetensors) into a built net.

    Returns True when the file held every weight of the net (so the backbone's pretrained
    weights were not needed), False when it held only adapters / head. Raises ModelError when
    tensors do not fit the net, required ones are missing, or the file needs unpickling.
    """
    path = Path(path)
    return _load_state(net, _read(path, card)[0], path.name)


def build_from_checkpoint(
    card: ModelCard, path: str | Path, mode: str | None = None, merge: bool = True,
    **overrides: Any,
) -> nn.Module:
    """The inference net for one weight file, in eval mode: built without the hub when the file
    holds the backbone (upstream LoRA / end-to-end), else on the card's pretrained weights;
    keys converted and checked; LoRA adapters merged (``merge``). The file is read once."""
    path = Path(path)
    state, meta = _read(path, card)
    pretrained = not holds_backbone(state) and card.pretrained != "none"
    if pretrained:  # adapters or a head on the hub's weights
        warn_if_base_moved(meta, card)
    net = build_net(card, mode or card.trained_mode, pretrained=pretrained, **overrides)
    _load_state(net, state, path.name)
    del state
    if merge:
        net = merge_for_inference(net)
    return net.eval()


def load_upstream(
    card: ModelCard, path: str | Path, mode: str | None = None, pretrained: bool = False,
    **overrides: Any,
) -> nn.Module:
    """Build ``card``'s net for ``mode`` and load an upstream fold checkpoint into it.

    Upstream LoRA and end-to-end checkpoints hold every weight, so ``pretrained=False`` (no hub
    download) is enough; a linear probe's holds only the head: pass ``pretrained=True`` for the
    frozen backbone. The net's logits keep the card's convention (see
    :func:`p_atypical_from_logits`).
    """
    net = build_net(card, mode, pretrained=pretrained, **overrides)
    load_checkpoint(net, path, card)
    return net
