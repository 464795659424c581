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
