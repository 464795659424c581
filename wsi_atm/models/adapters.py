"""Adapting a pretrained backbone: linear probes on frozen embeddings, and LoRA (peft).

Both map a normalised float batch (N, 3, H, W) to one logit per image (N,), like every net that
:func:`wsi_atm.models.nets.build_net` returns.

Linear probe (``[embedding]`` of the card): the backbone, built with ``num_classes=0``, is frozen
and always in eval mode. ``method = "cls"`` embeds an image as its CLS token (token 0; for CNNs
and Swin the pooled output), ``"cls+mean"`` as concat(CLS, mean of tokens[:, patch_start:]),
where ``patch_start`` skips CLS and register tokens (Virchow 1, Virchow2 5). The head is
``nn.Linear(dim, 1)``; training can compute ``net.embed(x)`` once and fit ``net.head`` on it.

LoRA (``[lora]`` of the card), as in the benchmark: ``LoraConfig(r, lora_alpha, target_modules,
lora_dropout, bias="none", modules_to_save=["head"])`` + ``get_peft_model``. peft matches target
names by suffix, so ``"proj"`` also adapts the patch-embedding Conv2d ``patch_embed.proj`` (as
upstream did); ``adapt_patch_embed = false`` excludes it. The one-logit head attaches per
``[lora] head``:

- ``"token0"`` (Virchow, Virchow2): ``reset_classifier(num_classes=1)``; with the hub config's
  ``global_pool = ""`` timm applies that Linear to every token and the net keeps token 0 (CLS);
- ``"pooled"`` (UNI, UNI2-h, Prov-GigaPath): built with ``num_classes=1`` (timm's pooled head);
- ``"replace"`` (H-optimus-0/-1): built with ``num_classes=0``, then ``head = Linear(D, 1)``.

A LoRA checkpoint holds only adapters and the head (:func:`lora_state`, :func:`save_lora`), or,
when trained without the card's pretrained weights, every weight (the random base model cannot
be rebuilt; loading then skips the hub, as for upstream checkpoints). Its safetensors metadata
records the base model's hub id and revision, which loading checks
(``wsi_atm.models.loading.load_checkpoint``). :func:`merge_for_inference` folds the adapters
into the base weights.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsi_atm.errors import ModelError
from wsi_atm.models.backbone import create_backbone
from wsi_atm.models.card import ModelCard
from wsi_atm.models.schema import EMBEDDING_METHODS as EMBEDDINGS
from wsi_atm.models.schema import LORA_HEADS
from wsi_atm.models.sources import cached_revision, is_hub_id, normalise_hub_id, split_hub_id
from wsi_atm.models.weight_files import save_safetensors

LORA_FORMAT = "wsi-atm-lora/1"


# ------------------------------------------------------------------------------- linear probe
class LinearProbe(nn.Module):
    """A frozen backbone's embedding and a trainable ``nn.Linear(dim, 1)`` head."""

    def __init__(self, backbone: Any, method: str, patch_start: int, dim: int) -> None:
        super().__init__()
        self.backbone = backbone.eval()
        self.backbone.requires_grad_(False)
        self.method, self.patch_start, self.dim = method, patch_start, dim
        self.head = nn.Linear(dim, 1)

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.backbone.eval()  # frozen: no dropout / drop-path, ever
        return self

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, dim) embedding the head is fitted on."""
        if self.method == "cls":
            out = self.backbone(x)
            if out.ndim == 3:  # all tokens (global_pool = ""): CLS is token 0
                out = out[:, 0]
        else:
            tokens = self.backbone.forward_features(x)
            if tokens.ndim != 3:
                raise ModelError("embedding 'cls+mean' needs a token backbone (a ViT)")
            out = torch.cat([tokens[:, 0], tokens[:, self.patch_start:].mean(1)], dim=-1)
        flat: torch.Tensor = out.reshape(x.shape[0], -1)
        return flat

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Logits (N,) from precomputed embeddings (N, dim)."""
        logits: torch.Tensor = self.head(embeddings)[:, 0]
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.embed(x))


def build_linear_probe(card: ModelCard, pretrained: bool = False, **overrides: Any) -> LinearProbe:
    spec = card.embedding
    if spec.method not in EMBEDDINGS:
        raise ModelError(f"{card.name}: embedding.method must be one of {EMBEDDINGS}, "
                         f"not {spec.method!r}")
    backbone = create_backbone(card, pretrained=pretrained, num_classes=0, **overrides)
    dim = int(backbone.num_features) * (2 if spec.method == "cls+mean" else 1)
    if spec.method == "cls+mean":
        prefix = getattr(backbone, "num_prefix_tokens", None)
        if prefix is not None and prefix != spec.patch_start:
            raise ModelError(f"{card.name}: embedding.patch_start = {spec.patch_start}, but the "
                             f"backbone has {prefix} prefix tokens (CLS + registers)")
    if spec.dim and spec.dim != dim and not overrides:
        raise ModelError(f"{card.name}: embedding.dim = {spec.dim}, but the backbone gives {dim}")
    return LinearProbe(backbone, spec.method, spec.patch_start, dim)


# ----------------------------------------------------------------------------------------- LoRA
def _one_logit(out: torch.Tensor, n: int) -> torch.Tensor:
    if out.ndim == 3:  # head applied to every token ("token0"): keep the CLS token's logit
        out = out[:, 0]
    return out.reshape(n, -1)[:, 0]


class LoraNet(nn.Module):
    """A peft LoRA model (``.model``, a PeftModel) giving one logit per image."""

    def __init__(self, model: nn.Module, head: str) -> None:
        super().__init__()
        self.model: Any = model  # a PeftModel (untyped)
        self.head_mode = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _one_logit(self.model(x), x.shape[0])


class MergedLoraNet(LoraNet):
    """A LoRA net with its adapters merged into the base weights: plain timm, no LoRA overhead
    (``.model`` is the timm model itself, not a PeftModel)."""


def lora_targets(card: ModelCard) -> list[str] | str:
    """peft ``target_modules``: the card's names (suffix matching, so ``proj`` also hits
    ``patch_embed.proj``), or, with ``adapt_patch_embed = false``, a regex excluding it."""
    names = list(card.lora.target_modules)
    if card.lora.adapt_patch_embed:
        return names
    alternatives = "|".join(re.escape(n) for n in names)
    return rf"(?!(?:.*\.)?patch_embed\.proj$)(?:.*\.)?(?:{alternatives})"


def build_lora(card: ModelCard, pretrained: bool = False, **overrides: Any) -> LoraNet:
    from peft import LoraConfig, get_peft_model

    spec = card.lora
    if spec.head == "token0":
        backbone = create_backbone(card, pretrained=pretrained, **overrides)
        backbone.reset_classifier(num_classes=1)
    elif spec.head == "pooled":
        backbone = create_backbone(card, pretrained=pretrained, num_classes=1, **overrides)
    elif spec.head == "replace":
        backbone = create_backbone(card, pretrained=pretrained, num_classes=0, **overrides)
        backbone.head = nn.Linear(backbone.num_features, 1)
    else:
        raise ModelError(f"{card.name}: lora.head must be one of {LORA_HEADS}, not {spec.head!r}")
    config = LoraConfig(
        r=spec.r, lora_alpha=spec.alpha, target_modules=lora_targets(card),
        lora_dropout=spec.dropout, bias="none", modules_to_save=["head"],
    )
    try:
        model = get_peft_model(backbone, config)
    except ValueError as exc:
        raise ModelError(f"{card.name}: LoRA cannot be applied ({exc})") from None
    return LoraNet(model, spec.head)


def merge_for_inference(net: nn.Module) -> nn.Module:
    """Fold LoRA adapters into the base weights (``merge_and_unload``); other nets unchanged.

    The LoRA net is consumed: its base model is modified in place.
    """
    if not isinstance(net, LoraNet) or isinstance(net, MergedLoraNet):
        return net
    merged = MergedLoraNet(net.model.merge_and_unload(), net.head_mode)
    return merged.train(net.training)


def is_adapter_key(key: str) -> bool:
    """A LoRA adapter or the trained head copy peft keeps (``modules_to_save``)."""
    return ".lora_" in key or ".modules_to_save." in key


def lora_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """Only the LoRA adapters and the trained head copy (megabytes, not the 2.5 GB backbone)."""
    return {k: v.detach() for k, v in net.state_dict().items() if is_adapter_key(k)}


def base_model_id(card: ModelCard) -> str:
    """What the adapters were trained on: the normalised hub id, or the timm architecture."""
    return normalise_hub_id(card.architecture) if is_hub_id(card.architecture) \
        else card.architecture


def pinned_revision(card: ModelCard) -> str:
    """The base model's revision the card pins: ``[architecture] revision``, else the one in
    a hub id ``hf-hub:org/name@rev``; ``""`` when none is pinned."""
    if card.hub_revision or not is_hub_id(card.architecture):
        return card.hub_revision
    return split_hub_id(card.architecture)[1]


def lora_metadata(card: ModelCard) -> dict[str, str]:
    """safetensors metadata of a LoRA checkpoint (strings only)."""
    revision = pinned_revision(card)
    if not revision and is_hub_id(card.architecture):
        revision = cached_revision(card.architecture)  # the snapshot actually used, if cached
    spec = card.lora
    return {
        "format": LORA_FORMAT,
        "model": card.name,
        "base_model": base_model_id(card),
        "base_revision": revision,
        "r": str(spec.r),
        "lora_alpha": str(spec.alpha),
        "lora_dropout": str(spec.dropout),
        "target_modules": json.dumps(list(spec.target_modules)),
        "adapt_patch_embed": json.dumps(spec.adapt_patch_embed),
        "head": spec.head,
        "output": card.output,
    }


def save_lora(net: nn.Module, card: ModelCard, path: Path, half: bool = False,
              full: bool = False) -> dict[str, str]:
    """Write :func:`lora_state` (``full``: every weight, for a base model that is not the
    card's pretrained one) as safetensors with :func:`lora_metadata`; returns the metadata."""
    meta = lora_metadata(card)
    state = {k: v.detach() for k, v in net.state_dict().items()} if full else lora_state(net)
    save_safetensors(state, Path(path), half=half, metadata=meta)
    return meta


def read_lora_metadata(path: Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{path}: not a valid safetensors file ({exc})") from None


def check_lora_metadata(meta: dict[str, str], card: ModelCard, path: Path | str = "") -> None:
    """Refuse adapters trained on another base model, revision or LoRA layout than the card's."""
    where = f"{path}: " if path else ""
    if not meta.get("base_model"):
        return  # a bare adapter state (e.g. a training checkpoint): shapes are checked on load
    expected = base_model_id(card)
    if meta["base_model"] != expected:
        raise ModelError(f"{where}adapters were trained on {meta['base_model']}, "
                         f"but {card.name} uses {expected}")
    pinned = pinned_revision(card)
    if meta.get("base_revision") and pinned and meta["base_revision"] != pinned:
        raise ModelError(f"{where}adapters were trained on revision {meta['base_revision']}, "
                         f"but {card.name} pins {pinned}")
    spec = card.lora
    mine = {"r": str(spec.r), "head": spec.head,
            "adapt_patch_embed": json.dumps(spec.adapt_patch_embed)}
    for key, value in mine.items():
        if key in meta and meta[key] != value:
            raise ModelError(f"{where}LoRA {key} = {meta[key]} in the checkpoint, "
                             f"{value} in card {card.name}")
    # Regression: another alpha (the adapters' scale) or output (which class the sigmoid
    # means) loaded silently: shifted logits, or P(normal) reported as P(atypical)
    if "lora_alpha" in meta and _number(meta["lora_alpha"]) != float(spec.alpha):
        raise ModelError(f"{where}LoRA lora_alpha = {meta['lora_alpha']} in the checkpoint, "
                         f"{spec.alpha} in card {card.name}")
    if meta.get("output") and meta["output"] != card.output:
        raise ModelError(f"{where}the checkpoint's sigmoid is {meta['output']}, but card "
                         f"{card.name} says [labels] output = {card.output!r}")


def warn_if_base_moved(meta: dict[str, str], card: ModelCard) -> None:
    """Adapters trained on one snapshot of a base model the card does not pin, about to run on
    another: the hub's ``main`` moved since training (often a README edit, sometimes new
    weights, which would put every probability off). Said, since only the user can tell."""
    trained_on = meta.get("base_revision", "")
    if not trained_on or pinned_revision(card) or not is_hub_id(card.architecture):
        return
    cached = cached_revision(card.architecture)
    if cached and cached != trained_on:
        # the same words for every fold file: Python's warning filter says it once a card
        warnings.warn(
            f"{card.name}: adapters were trained on {card.architecture} revision "
            f"{trained_on}, but the cached snapshot is {cached}; if its weights differ, the "
            f"probabilities are off: pin revision = \"{trained_on}\" in [architecture] of "
            "its card", stacklevel=2)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
