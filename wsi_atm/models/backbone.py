"""Create a backbone network from a model card: timm, a hub id (offline cache), or ImageNet
weights shipped inside an installed Python package."""

from __future__ import annotations

from typing import Any

import timm
from torch import nn

from wsi_atm.errors import ModelError
from wsi_atm.models.card import ModelCard
from wsi_atm.models.hub import create_hub_backbone
from wsi_atm.models.package_weights import is_package_source, load_package_weights


def timm_name(card: ModelCard) -> str:
    """timm accepts ``hf-hub:`` and ``hf_hub:``; normalise to the former."""
    arch = card.architecture
    return "hf-hub:" + arch[len("hf_hub:"):] if arch.startswith("hf_hub:") else arch


# Any, not nn.Module: timm networks carry architecture-specific members (num_features,
# forward_features, reset_classifier, default_cfg) that nn.Module's __getattr__ types as Tensor.
def create_backbone(card: ModelCard, pretrained: bool = False, **overrides: object) -> Any:
    kwargs = {**card.kwargs, **overrides}
    _resolve_layer_names(kwargs)
    if card.is_hub:  # offline cache, gated repos, token and one-line errors: see wsi_atm.hub
        return create_hub_backbone(card, pretrained, **kwargs)
    from_package = pretrained and is_package_source(card.pretrained)
    try:
        net: Any = timm.create_model(timm_name(card), pretrained=pretrained and not from_package,
                                **kwargs)
    except RuntimeError as exc:
        raise ModelError(f"cannot build {card.name} ({timm_name(card)}): {exc}") from None
    if from_package:
        head = net.default_cfg.get("classifier", "classifier")
        load_package_weights(net, card.pretrained, card.pretrained_sha256, head)
    return net


def _resolve_layer_names(kwargs: dict[str, Any]) -> None:
    """Cards name layers as strings (``mlp_layer = "SwiGLUPacked"``); timm wants the classes."""
    from timm.layers import SwiGLUPacked  # type: ignore[attr-defined]  # not in __all__

    named = {"SwiGLUPacked": SwiGLUPacked, "SiLU": nn.SiLU, "GELU": nn.GELU}
    for key in ("mlp_layer", "act_layer"):
        if isinstance(kwargs.get(key), str):
            if kwargs[key] not in named:
                raise ModelError(f"unknown {key} {kwargs[key]!r}")
            kwargs[key] = named[kwargs[key]]
