"""A LoRA checkpoint's base revision is checked against the revision the card pins, wherever
the card pins it."""

from __future__ import annotations

import dataclasses
import warnings

import pytest

from wsi_atm.errors import ModelError
from wsi_atm.models import adapters
from wsi_atm.models.adapters import check_lora_metadata, lora_metadata, pinned_revision
from wsi_atm.models.registry import find_card


@pytest.mark.parametrize(("architecture", "revision"), [
    ("hf-hub:paige-ai/Virchow2@" + "b" * 40, ""),  # Regression: the id's revision was ignored
    ("hf-hub:paige-ai/Virchow2", "b" * 40),
])
def test_adapters_of_another_revision_are_refused(architecture, revision):
    card = dataclasses.replace(find_card("virchow2"), architecture=architecture,
                               hub_revision=revision)
    assert pinned_revision(card) == "b" * 40
    assert lora_metadata(card)["base_revision"] == "b" * 40
    meta = lora_metadata(card) | {"base_revision": "a" * 40}
    with pytest.raises(ModelError, match=f"revision {'a' * 40}, but .* pins {'b' * 40}"):
        check_lora_metadata(meta, card, "x.safetensors")
    check_lora_metadata(lora_metadata(card), card)


def _with(card, alpha=None, output=None):
    lora = dataclasses.replace(card.lora, alpha=alpha) if alpha is not None else card.lora
    return dataclasses.replace(card, lora=lora, output=output or card.output)


@pytest.mark.parametrize(("change", "message"), [
    ({"alpha": 32}, "lora_alpha = 16 in the checkpoint, 32 in card"),
    ({"output": "p_atypical"}, "sigmoid is p_normal, but card .* 'p_atypical'"),
])
def test_adapters_of_another_alpha_or_output_are_refused(change, message):
    """Regression: the metadata recorded lora_alpha and output but loading ignored them, so a
    card with another alpha scaled the adapters wrongly and one with the other output reported
    P(normal) as P(atypical), silently."""
    card = find_card("virchow2")
    meta = lora_metadata(card)
    with pytest.raises(ModelError, match=message):
        check_lora_metadata(meta, _with(card, **change), "x.safetensors")
    check_lora_metadata(meta, _with(card, alpha=16.0))  # 16 and 16.0 are the same scale


def test_adapters_on_an_unpinned_base_that_moved_since_training_are_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: a card pinning no revision ran adapters trained on snapshot a... on whatever
    # snapshot the cache's main named now, without a word
    card = dataclasses.replace(find_card("virchow2"), architecture="hf-hub:paige-ai/Virchow2",
                               hub_revision="")
    meta = lora_metadata(card) | {"base_revision": "a" * 40}
    monkeypatch.setattr(adapters, "cached_revision", lambda model_id, revision="": "c" * 40)
    with pytest.warns(UserWarning, match=f"revision {'a' * 40}, but the cached snapshot is "
                                         f"{'c' * 40}.*pin revision"):
        adapters.warn_if_base_moved(meta, card)
    with warnings.catch_warnings(record=True) as said:  # five fold files: said once
        warnings.simplefilter("default")
        for _ in range(5):
            adapters.warn_if_base_moved(meta, card)
    assert len(said) == 1
    monkeypatch.setattr(adapters, "cached_revision", lambda model_id, revision="": "a" * 40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adapters.warn_if_base_moved(meta, card)
        pinned = dataclasses.replace(card, hub_revision="b" * 40)  # pinned: refused elsewhere
        adapters.warn_if_base_moved(meta, pinned)
