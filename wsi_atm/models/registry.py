"""The registry of bundled model cards: find a card by name or path, list them, describe them."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from wsi_atm.errors import ModelError
from wsi_atm.files import file_sha256
from wsi_atm.models.card import ModelCard, load_card

DEFAULT_MODEL = "wsi-atm-default"


def registry_dir() -> Path:
    """The folder of bundled cards (``wsi_atm/models/cards/``, package data)."""
    return Path(str(resources.files("wsi_atm.models") / "cards"))


def list_cards() -> list[ModelCard]:
    return [load_card(p) for p in sorted(registry_dir().glob("*.toml"))]


def find_card(name_or_path: str | Path | None) -> ModelCard:
    """A bundled card by name, or a card file by path; ``None`` gives the default model.

    A bare name (no ``/``, no ``.toml``) always means a bundled card, so a local folder that
    happens to share a card's name never shadows it; pass ``./name`` to mean the folder.
    """
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or is_path(text):
        path = Path(name_or_path)
        return load_card(path / "card.toml" if path.is_dir() else path)
    candidate = registry_dir() / f"{text}.toml"
    if candidate.is_file():
        return load_card(candidate)
    names = ", ".join(c.stem for c in sorted(registry_dir().glob("*.toml")))
    hint = f" (for the local {text!r}, pass ./{text})" if Path(text).exists() else ""
    raise ModelError(f"unknown model {text!r}{hint}; bundled models: {names}")


def is_path(text: str) -> bool:
    """How a model argument is read: a path if it says so, otherwise a bundled card's name."""
    return "/" in text or "\\" in text or text.endswith(".toml") or text.startswith(".")


def count_parameters(card: ModelCard) -> int | None:
    """Parameters of the card's architecture, built on the meta device (no memory, no download).

    Hub models are built from the card's ``timm_equivalent`` and ``hub_model_args``; a card
    that names neither gives None (unknown) rather than a guess.
    """
    import torch  # only `wsi-atm models` pays for torch; finding a card stays light

    from wsi_atm.models.backbone import create_backbone

    if card.is_hub and not card.timm_equivalent:
        return None
    try:
        with torch.device("meta"):
            model = create_backbone(card, num_classes=1)
    except (RuntimeError, TypeError, ValueError, ModelError):
        return None
    return int(sum(p.numel() for p in model.parameters()))


def weights_column(card: ModelCard) -> str:
    if not card.weights:
        return "none (untrained)" if card.status == "untrained" else "none bundled"
    present = [p for p in card.weight_paths() if p.is_file()]
    verified = "verified sha256" if all(w.sha256 for w in card.weights) else "unverified"
    # Regression: "verified sha256" only meant the card states one; a damaged or replaced file
    # was listed so too (only files the card pins are hashed: external folds can be gigabytes)
    wrong = [p.name for w, p in zip(card.weights, card.weight_paths(), strict=True)
             if w.sha256 and p.is_file() and file_sha256(p) != w.sha256]
    if wrong:
        verified = f"sha256 MISMATCH: {', '.join(wrong)}"
    where = "bundled" if card.status == "trained" else card.pretrained
    return f"{len(present)}/{len(card.weights)} files present ({where}, {verified})"


def describe_cards() -> list[dict[str, Any]]:
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
