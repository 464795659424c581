"""Create a backbone network from a model card: timm, a hub id (offline cache), or ImageNet
weights shipped inside an installed Python package."""

from __future__ import annotations

from typing import Any

import timm
from torch import nn

from wsi_atm.errors import ModelError
from wsi_atm.models.card import ModelCard
from wsi_atm.models.hub import create_hub_backbone, create_model, timm_eval_preprocess
from wsi_atm.models.package_weights import is_package_source, load_package_weights
from wsi_atm.models.sources import split_hub_id, timm_hub_name


def timm_name(card: ModelCard) -> str:
    """The card's architecture as timm names it (a hub id with the ``hf-hub:`` prefix)."""
    return timm_hub_name(*split_hub_id(card.architecture)) if card.is_hub else card.architecture


def _cannot_build(card: ModelCard, exc: Exception) -> ModelError:
    """The card's network cannot be built as it says (a kwarg its architecture lacks, …)."""
    return ModelError(f"cannot build {card.name} ({timm_name(card)}): {exc}")


# Any, not nn.Module: timm networks carry architecture-specific members (num_features,
# forward_features, reset_classifier, default_cfg) that nn.Module's __getattr__ types as Tensor.
def create_backbone(card: ModelCard, pretrained: bool = False, **overrides: object) -> Any:
    kwargs = {**card.kwargs, **overrides}
    _resolve_layer_names(kwargs)
    if card.is_hub:  # offline cache, gated repos, token and one-line errors: see wsi_atm.models.hub
        try:
            return create_hub_backbone(card, pretrained, **kwargs)
        except TypeError as exc:  # a card kwarg the architecture lacks: not a hub error
            raise _cannot_build(card, exc) from None
    from_package = pretrained and is_package_source(card.pretrained)
    try:
        net: Any = timm.create_model(timm_name(card), pretrained=pretrained and not from_package,
                                **kwargs)
    except (RuntimeError, TypeError) as exc:  # TypeError: a kwarg the architecture lacks
        raise _cannot_build(card, exc) from None
    except Exception as exc:  # timm fetching its own pretrained weights: offline, no network
        if not pretrained:  # the card's kwargs (global_pool = 5 was an internal error)
            raise _cannot_build(card, exc) from None
        raise ModelError(f"cannot fetch {card.name}'s pretrained weights ({timm_name(card)}): "
                         f"{' '.join(str(exc).split())[:300]}; train with --no-pretrained, or "
                         "fill the Hugging Face cache on a connected machine") from None
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


def preprocess_differences(card: ModelCard) -> list[str]:
    """Where the card's eval preprocessing differs from the hub model's own pretrained_cfg
    (random weights: only the hub config is read). Empty when they agree."""
    if not card.is_hub:
        raise ModelError(f"{card.name}: not a hub model; its preprocessing is the card's own")
    # the hub's own config.json (cached, or fetched): the card's offline description
    # (timm_equivalent) carries timm's defaults for that architecture, not the model's, and
    # compared with it the check reported differences that are not there
    kwargs = dict(card.kwargs)
    _resolve_layer_names(kwargs)
    try:
        theirs = timm_eval_preprocess(create_model(
            card.architecture, pretrained=False, revision=card.hub_revision, **kwargs))
    except TypeError as exc:  # a card kwarg the architecture lacks: the card's fault
        raise _cannot_build(card, exc) from None
    mine = card.preprocess_for("linear-probe")
    out = []
    if tuple(mine.eval) != tuple(theirs.eval):
        out.append(f"eval ops: card {list(mine.eval)}, timm {list(theirs.eval)}")
    for what, a, b in (("mean", mine.mean, theirs.mean), ("std", mine.std, theirs.std)):
        if any(abs(x - y) > 1e-6 for x, y in zip(a, b, strict=True)):
            out.append(f"{what}: card {tuple(a)}, timm {tuple(b)}")
    return out
