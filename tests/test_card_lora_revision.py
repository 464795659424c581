"""A LoRA checkpoint's base revision is checked against the revision the card pins, wherever
the card pins it."""

from __future__ import annotations

import dataclasses

import pytest

from wsi_atm.errors import ModelError
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
