"""Build networks from model cards: timm backbones, heads, linear-probe embeddings, LoRA (peft).

Every network built here maps a normalised float batch (N, 3, H, W) to one logit per image (N,).
What the logit's sigmoid means (P(atypical) or upstream's P(normal)) is the card's ``output``.
"""

from __future__ import annotations

import torch
from torch import nn

from wsi_atm.errors import ModelError
from wsi_atm.models.adapters import build_linear_probe, build_lora
from wsi_atm.models.backbone import create_backbone
from wsi_atm.models.card import ModelCard


class EndToEnd(nn.Module):
    """A timm model with a one-logit classifier, all weights trainable."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(x).reshape(x.shape[0], -1)[:, 0]
        return logits


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
        return build_linear_probe(card, pretrained, **overrides)
    if mode == "lora":
        return build_lora(card, pretrained, **overrides)
    raise ModelError(f"unknown mode {mode!r}")
