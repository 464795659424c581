"""A readable view of the model registry for ``wsi-atm models``."""

from __future__ import annotations

import torch

from wsi_atm.cards import DEFAULT_MODEL, ModelCard, list_cards
from wsi_atm.errors import ModelError


def count_parameters(card: ModelCard) -> int | None:
    """Parameters of the card's architecture, built on the meta device (no memory, no download).

    Hub models are built from the card's ``timm_equivalent`` and ``hub_model_args``; a card
    that names neither gives None (unknown) rather than a guess.
    """
    from wsi_atm.nets import create_backbone

    if card.is_hub and not card.timm_equivalent:
        return None
    try:
        with torch.device("meta"):
            model = create_backbone(card, num_classes=1)
    except (RuntimeError, TypeError, ValueError, ModelError):
        return None
    return sum(p.numel() for p in model.parameters())


def weights_column(card: ModelCard) -> str:
    if not card.weights:
        return "none (untrained)" if card.status == "untrained" else "none bundled"
    present = [p for p in card.weight_paths() if p.is_file()]
    verified = "verified sha256" if all(w.sha256 for w in card.weights) else "unverified"
    where = "bundled" if card.status == "trained" else card.pretrained
    return f"{len(present)}/{len(card.weights)} files present ({where}, {verified})"


def describe_cards() -> list[dict]:
    rows = []
    for card in list_cards():
        rows.append({
            "name": card.name + (" (default)" if card.name == DEFAULT_MODEL else ""),
            "kind": card.kind, "architecture": card.architecture,
            "parameters": count_parameters(card), "trained_mode": card.trained_mode,
            "status": card.status, "weights": weights_column(card),
            "source": card.pretrained, "description": card.description,
        })
    return rows
