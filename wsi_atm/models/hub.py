"""Hugging Face Hub models through timm: the local cache, offline mode, gated repos, clear errors.

The foundation models of the benchmark live on the Hub (``hf-hub:paige-ai/Virchow2``; timm also
accepts ``hf_hub:``), most of them gated. Everything that touches the Hub goes through
:func:`create_model`, which reads the environment at call time (not at import, as
``huggingface_hub`` does), so a long-lived process or a test can change it:

- ``HF_HUB_CACHE`` (or ``HF_HOME``/hub): the cache, laid out as
  ``models--org--name/{refs/main, snapshots/<commit>/config.json, .../model.safetensors}``;
- ``HF_HUB_OFFLINE=1``: never touch the network; use the cache or fail with a :class:`ModelError`;
- ``HF_TOKEN``: the token for gated repositories (read by ``huggingface_hub`` itself).

Any Hub failure becomes a one-line :class:`ModelError` that says what to do. Weights are read
by timm from ``model.safetensors`` or, failing that, ``pytorch_model.bin`` with
``weights_only=True``; no pickled objects are ever executed.

Without pretrained weights a hub card can also be built offline from its
``[architecture] timm_equivalent`` and ``[architecture.hub_model_args]`` (:func:`build_offline`),
e.g. to load an upstream LoRA fold checkpoint, which holds every weight of the network.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import timm
from torch import nn

from wsi_atm.errors import ModelError
from wsi_atm.models.card import ModelCard, Preprocess
from wsi_atm.models.sources import cached_file as cached_file
from wsi_atm.models.sources import cached_revision as cached_revision
from wsi_atm.models.sources import hub_cache_dir as hub_cache_dir
from wsi_atm.models.sources import split_hub_id, timm_hub_name

_TRUE = {"1", "true", "yes", "on", "y", "t"}


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now; if unset, as huggingface_hub
    saw it at import."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    if env.strip():
        return env.strip().lower() in _TRUE
    return bool(constants.HF_HUB_OFFLINE)


@contextmanager
def _offline(offline: bool) -> Iterator[None]:
    """huggingface_hub reads HF_HUB_OFFLINE once, at import; honour the value set since
    (process-wide for the duration of the call, then restored)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def create_model(
    model_id: str, pretrained: bool = False, revision: str = "", **kwargs: Any
) -> nn.Module:
    """``timm.create_model("hf-hub:org/name[@rev]", ...)`` with the cache, offline mode and token
    taken from the environment now, and every Hub failure turned into a one-line ModelError."""
    repo, rev = split_hub_id(model_id)
    rev = revision or rev
    name = timm_hub_name(repo, rev)
    cache = hub_cache_dir()
    offline = hub_offline()
    if offline and cached_file(repo, "config.json", rev) is None:
        raise ModelError(
            f"{repo}{'@' + rev if rev else ''} is not in the Hugging Face cache at {cache} and "
            "HF_HUB_OFFLINE is set: download it once with network access, or point HF_HOME / "
            "HF_HUB_CACHE at a cache that holds it")
    try:
        with _offline(offline):
            return timm.create_model(name, pretrained=pretrained, cache_dir=cache, **kwargs)
    except Exception as exc:
        error = _hub_error(repo, rev, exc, offline, cache)
        if error is None:
            raise
        raise error from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _hub_error(
    repo: str, rev: str, exc: Exception, offline: bool, cache: Path
) -> ModelError | None:
    """A one-line ModelError for Hub failures; None for anything else (re-raised unchanged)."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    has_token = bool(get_token())
    page = f"https://huggingface.co/{repo}"
    if isinstance(exc, GatedRepoError):
        if not has_token:
            return ModelError(f"{repo} is a gated model: accept its terms at {page} and set "
                              "HF_TOKEN to a token of that account")
        return ModelError(f"{repo} is a gated model and the token in HF_TOKEN has no access to "
                          f"it: accept its terms at {page} with that account")
    if isinstance(exc, RevisionNotFoundError):
        return ModelError(f"{repo}: revision {rev!r} not found on the Hub")
    if isinstance(exc, RepositoryNotFoundError):
        hint = "set HF_TOKEN if it is private or gated" if not has_token else \
            "check that the token in HF_TOKEN can read it"
        return ModelError(f"{repo}: repository not found or not accessible on the Hub ({hint})")
    if isinstance(exc, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        if offline:
            return ModelError(f"{repo}: files missing from the Hugging Face cache at {cache} "
                              "(HF_HUB_OFFLINE is set; the weights were perhaps never downloaded)")
        return ModelError(f"{repo}: cannot reach the Hugging Face Hub and the files are not in "
                          f"the cache at {cache} ({_first_line(exc)})")
    if isinstance(exc, EntryNotFoundError):
        return ModelError(f"{repo}: a file timm needs is not in the repository "
                          f"({_first_line(exc)})")
    if isinstance(exc, HfHubHTTPError):
        return ModelError(f"{repo}: Hugging Face Hub request failed ({_first_line(exc)})")
    if isinstance(exc, RuntimeError) and "Unknown model" in str(exc):
        return ModelError(f"{repo}: its config.json names an architecture this timm "
                          f"({timm.__version__}) does not know: {_first_line(exc)}")
    return None


def build_offline(card: ModelCard, **kwargs: Any) -> nn.Module:
    """The card's hub architecture with random weights, built without the Hub: timm's
    ``timm_equivalent`` with the hub config's ``model_args`` under the card's kwargs."""
    if not card.timm_equivalent:
        raise ModelError(f"{card.name}: no [architecture] timm_equivalent to build "
                         f"{card.architecture} without the Hub")
    args = {**card.hub_model_args, **kwargs}
    try:
        return timm.create_model(card.timm_equivalent, pretrained=False, **args)
    except (RuntimeError, TypeError) as exc:  # TypeError: a kwarg the architecture lacks
        raise ModelError(f"cannot build {card.name} ({card.timm_equivalent}): "
                         f"{_first_line(exc)}") from None


def create_hub_backbone(card: ModelCard, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """The backbone of a hub card (``kwargs`` already resolved to timm classes).

    With pretrained weights: the Hub (or its cache). Without: the cached config.json when there
    is one, else the card's offline description, so no network is needed for random init.
    """
    repo, rev = split_hub_id(card.architecture)
    rev = card.hub_revision or rev
    if not pretrained and card.timm_equivalent and cached_file(repo, "config.json", rev) is None:
        return build_offline(card, **kwargs)
    return create_model(card.architecture, pretrained=pretrained, revision=rev, **kwargs)


def timm_eval_preprocess(model: nn.Module) -> Preprocess:
    """timm's eval transform for a model (``resolve_data_config`` + ``create_transform``, as the
    benchmark's linear probes use it) written as card ops: Resize(floor(size / crop_pct)) with
    the model's interpolation, CenterCrop(size), the model's mean/std. ``wsi-atm models
    --check-preprocess CARD`` compares a card with it once the model is cached."""
    from timm.data import resolve_data_config  # type: ignore[attr-defined]  # not in __all__

    cfg = resolve_data_config(dict(getattr(model, "pretrained_cfg", {})), model=model)
    height, width = cfg["input_size"][-2:]
    if height != width:
        raise ModelError(f"non-square input size {cfg['input_size']} is not supported")
    if cfg.get("crop_mode", "center") not in ("center", None):
        raise ModelError(f"timm crop_mode {cfg['crop_mode']!r} has no card equivalent")
    crop_pct = cfg.get("crop_pct") or 0.875
    ops = (
        {"op": "resize", "size": math.floor(height / crop_pct),
         "interpolation": cfg.get("interpolation", "bilinear")},
        {"op": "center_crop", "size": height},
    )
    return Preprocess(train=ops, eval=ops, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))

