"""Model cards: one small TOML file per model (``wsi_atm/models/cards/``), read and written.

A card holds everything needed to build and feed a model: the timm architecture or hub id,
preprocessing per training mode, how linear-probe embeddings and LoRA heads are formed, the label
convention of its weights, the decision threshold, cross-validated metrics and the weight files.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsi_atm.errors import ModelError
from wsi_atm.files import file_sha256
from wsi_atm.models.schema import validate
from wsi_atm.models.sources import is_hub_id, split_hub_id

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Train-time augmentation and eval-time transform for one mode, then normalisation."""

    train: tuple[dict[str, Any], ...]
    eval: tuple[dict[str, Any], ...]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class LoraSpec:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.3
    target_modules: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")
    # Suffix matching on "proj" also hits the Conv2d ``patch_embed.proj`` (as upstream does).
    adapt_patch_embed: bool = True
    head: str = "token0"  # "token0": Linear applied to tokens, keep CLS; "pooled": timm head


@dataclass(frozen=True)
class EmbeddingSpec:
    method: str = "cls"  # "cls" | "cls+mean" (CLS concat mean of patch tokens)
    patch_start: int = 1  # first patch token index (after CLS and register tokens)
    dim: int = 0


@dataclass(frozen=True)
class WeightFile:
    file: str
    sha256: str = ""
    fold: int | None = None


@dataclass(frozen=True)
class ModelCard:
    name: str
    path: Path
    description: str
    kind: str  # "cnn", "vit", "foundation"
    architecture: str  # timm name or "hf-hub:org/name"
    kwargs: dict[str, Any]
    pretrained: str  # "none", "imagenet", the hub id, or "package:<package>/<file>"
    hub_revision: str
    input_size: int  # crop size the model is fed after preprocessing
    crop_size: int  # crop size cut from the slide
    mpp: float
    trained_mode: str
    preprocess: dict[str, Preprocess]
    lora: LoraSpec
    embedding: EmbeddingSpec
    output: str  # what the weights' sigmoid gives: "p_atypical" or "p_normal" (upstream)
    threshold: float
    status: str  # "trained", "untrained", "external" (weights from elsewhere)
    weights: tuple[WeightFile, ...]
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    # The timm architecture a hub model uses, so it can be described offline (parameter count).
    timm_equivalent: str = ""
    # ``[architecture.hub_model_args]``: the ``model_args`` of the hub's config.json, so that
    # ``timm_equivalent`` + these + ``kwargs`` build the same network without the hub (random init,
    # e.g. to load an upstream checkpoint holding every weight). A cached config.json wins.
    hub_model_args: dict[str, Any] = field(default_factory=dict)
    pretrained_sha256: str = ""  # of a ``package:`` source's file
    # ``[fraction]``: how classify estimates a slide's atypical share (wsi_atm.fraction.estimators).
    fraction: dict[str, Any] = field(default_factory=dict)
    # ``[recipe.MODE]``: training options the benchmark used for this card in that mode
    recipe: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def is_hub(self) -> bool:
        return is_hub_id(self.architecture)

    def weight_paths(self) -> list[Path]:
        return [self.resolve(w.file) for w in self.weights]

    def resolve(self, file: str) -> Path:
        p = Path(file)
        return p if p.is_absolute() else self.path.parent / p

    def preprocess_for(self, mode: str | None = None) -> Preprocess:
        mode = mode or self.trained_mode
        if mode not in self.preprocess:
            raise ModelError(f"model card {self.name!r} has no preprocessing for mode {mode!r}")
        return self.preprocess[mode]


def _preprocess(raw: dict[str, Any]) -> Preprocess:
    return Preprocess(
        train=tuple(raw.get("train", ())),
        eval=tuple(raw.get("eval", ())),
        mean=tuple(raw.get("mean", IMAGENET_MEAN)),
        std=tuple(raw.get("std", IMAGENET_STD)),
    )


def read_card(path: str | Path) -> dict[str, Any]:
    """A card file's TOML as a plain dict, checked against the schema."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model card not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not a valid TOML model card ({exc})") from None
    try:
        validate(raw)
        if "name" not in raw.get("architecture", {}):  # Regression: "(KeyError: 'name')"
            raise ValueError("architecture.name is missing (a timm name or hf-hub:ORG/NAME)")
        _one_revision(raw["architecture"])
    except ValueError as exc:
        raise ModelError(f"{path}: invalid model card ({exc})") from None
    return raw


def _one_revision(arch: dict[str, Any]) -> None:
    """Regression: ``hf-hub:org/name@A`` with ``revision = "B"`` was accepted and B won."""
    name, given = arch["name"], arch.get("revision", "")
    in_name = split_hub_id(name)[1] if isinstance(name, str) and is_hub_id(name) else ""
    if in_name and given and in_name != given:
        raise ValueError(f"architecture.name pins revision {in_name} and architecture.revision "
                         f"says {given}: keep one")


def load_card(path: str | Path) -> ModelCard:
    path = Path(path)
    raw = read_card(path)
    try:
        return _card_from_dict(raw, path)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: invalid model card ({type(exc).__name__}: {exc})") from None


def _card_from_dict(raw: dict[str, Any], path: Path) -> ModelCard:
    arch = raw["architecture"]
    inp = raw.get("input", {})
    decision = raw.get("decision", {})
    output = raw.get("labels", {}).get("output", "p_atypical")
    mode = raw.get("trained_mode", "end-to-end")
    return ModelCard(
        name=raw.get("name", path.stem),
        path=path.resolve(),
        description=raw.get("description", ""),
        kind=raw.get("kind", "cnn"),
        architecture=arch["name"],
        kwargs=dict(arch.get("kwargs", {})),
        pretrained=arch.get("pretrained", "none"),
        hub_revision=arch.get("revision", ""),
        input_size=int(inp.get("model_size", inp.get("crop_size", 128))),
        crop_size=int(inp.get("crop_size", 128)),
        mpp=float(inp.get("mpp", 0.25)),
        trained_mode=mode,
        preprocess={m: _preprocess(v) for m, v in raw.get("preprocess", {}).items()},
        lora=_lora(raw.get("lora", {})),
        embedding=EmbeddingSpec(**raw.get("embedding", {})),
        output=output,
        threshold=float(decision.get("threshold", 0.5)),
        status=raw.get("status", "untrained"),
        weights=tuple(WeightFile(**w) for w in raw.get("weights", [])),
        metrics=dict(raw.get("metrics", {})),
        training=dict(raw.get("training", {})),
        batch_size=int(raw.get("batch_size", 64)),
        timm_equivalent=arch.get("timm_equivalent", ""),
        hub_model_args=dict(arch.get("hub_model_args", {})),
        pretrained_sha256=arch.get("pretrained_sha256", ""),
        fraction=dict(raw.get("fraction", {})),
        recipe={m: dict(v) for m, v in raw.get("recipe", {}).items()},
    )


def _lora(raw: dict[str, Any]) -> LoraSpec:
    targets = tuple(raw.get("target_modules", LoraSpec.target_modules))
    return LoraSpec(**{**raw, "target_modules": targets})


@dataclass(frozen=True)
class LoadedWeights:
    path: str
    sha256: str


def verify_weights(card: ModelCard) -> list[LoadedWeights]:
    """Check each weight file exists and matches the card's sha256 (when the card states one)."""
    if card.status == "untrained" or not card.weights:
        raise ModelError(
            f"model {card.name!r} is untrained (no weights): train it with `wsi-atm train` "
            "or choose a trained model (see `wsi-atm models`)")
    checked: list[LoadedWeights] = []
    for w in card.weights:
        path = card.resolve(w.file)
        if not path.is_file():
            raise ModelError(f"model {card.name!r}: weight file missing: {path}")
        digest = file_sha256(path)  # once per file and process: the ONNX and torch paths both ask
        if w.sha256 and digest != w.sha256:
            raise ModelError(f"model {card.name!r}: {path.name} does not match the card's sha256")
        # Regression: a fold listed twice (or a copy of one) ran as two models: the ensemble's
        # fold count was wrong and the spread between its models, the review rule's, shrank
        twin = next((c for c in checked if c.sha256 == digest), None)
        if twin is not None:
            raise ModelError(f"model {card.name!r}: {path} holds the same weights as {twin.path} "
                             "(a fold listed twice?)")
        checked.append(LoadedWeights(str(path), digest))
    return checked


def atypical_sign(card: ModelCard) -> float:
    """+1 if the weights' sigmoid is P(atypical), -1 if it is P(normal) (upstream)."""
    return -1.0 if card.output == "p_normal" else 1.0
