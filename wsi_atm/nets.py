"""Build networks from model cards: timm backbones, heads, linear-probe embeddings, LoRA (peft).

Every network built here maps a normalised float batch (N, 3, H, W) to one logit per image (N,).
What the logit's sigmoid means (P(atypical) or upstream's P(normal)) is the card's ``output``.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from wsi_atm.cards import ModelCard
from wsi_atm.errors import ModelError
from wsi_atm.package_weights import is_package_source, load_package_weights


def timm_name(card: ModelCard) -> str:
    """timm accepts ``hf-hub:`` and ``hf_hub:``; normalise to the former."""
    arch = card.architecture
    return "hf-hub:" + arch[len("hf_hub:"):] if arch.startswith("hf_hub:") else arch


def create_backbone(card: ModelCard, pretrained: bool = False, **overrides: object) -> nn.Module:
    kwargs = {**card.kwargs, **overrides}
    _resolve_layer_names(kwargs)
    if card.is_hub:  # offline cache, gated repos, token and one-line errors: see wsi_atm.hub
        from wsi_atm.hub import create_hub_backbone

        return create_hub_backbone(card, pretrained, **kwargs)
    from_package = pretrained and is_package_source(card.pretrained)
    try:
        net = timm.create_model(timm_name(card), pretrained=pretrained and not from_package,
                                **kwargs)
    except RuntimeError as exc:
        raise ModelError(f"cannot build {card.name} ({timm_name(card)}): {exc}") from None
    if from_package:
        head = net.default_cfg.get("classifier", "classifier")
        load_package_weights(net, card.pretrained, card.pretrained_sha256, head)
    return net


def _resolve_layer_names(kwargs: dict) -> None:
    """Cards name layers as strings (``mlp_layer = "SwiGLUPacked"``); timm wants the classes."""
    from timm.layers import SwiGLUPacked

    named = {"SwiGLUPacked": SwiGLUPacked, "SiLU": nn.SiLU, "GELU": nn.GELU}
    for key in ("mlp_layer", "act_layer"):
        if isinstance(kwargs.get(key), str):
            if kwargs[key] not in named:
                raise ModelError(f"unknown {key} {kwargs[key]!r}")
            kwargs[key] = named[kwargs[key]]


class EndToEnd(nn.Module):
    """A timm model with a one-logit classifier, all weights trainable."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).reshape(x.shape[0], -1)[:, 0]


def build_end_to_end(card: ModelCard, pretrained: bool = False, **overrides: object) -> EndToEnd:
    return EndToEnd(create_backbone(card, pretrained=pretrained, num_classes=1, **overrides))


def build_net(
    card: ModelCard, mode: str | None = None, pretrained: bool = False, **overrides: object
) -> nn.Module:
    """The network for ``mode`` (default: the mode the card's weights were trained in).

    ``overrides`` replace the card's timm kwargs (e.g. ``depth=2, embed_dim=64`` to build a
    shrunken model of the same family in tests).
    """
    mode = mode or card.trained_mode
    if mode == "end-to-end":
        return build_end_to_end(card, pretrained, **overrides)
    if mode == "linear-probe":
        from wsi_atm.adapters import build_linear_probe

        return build_linear_probe(card, pretrained, **overrides)
    if mode == "lora":
        from wsi_atm.adapters import build_lora

        return build_lora(card, pretrained, **overrides)
    raise ModelError(f"unknown mode {mode!r}")
