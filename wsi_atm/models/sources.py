"""Hub ids as cards write them: ``hf-hub:org/name[@revision]`` (timm also accepts ``hf_hub:``).

The one place that knows the prefixes; ``card``, ``backbone``, ``hub`` and ``adapters`` ask here.
"""

from __future__ import annotations

HUB_PREFIXES = ("hf-hub:", "hf_hub:")


def is_hub_id(name: str) -> bool:
    return name.startswith(HUB_PREFIXES)


def split_hub_id(name: str) -> tuple[str, str]:
    """``hf_hub:org/name@rev`` → (``org/name``, ``rev``); the revision is ``""`` when absent."""
    for prefix in HUB_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    repo, _, revision = name.partition("@")
    return repo, revision


def normalise_hub_id(name: str) -> str:
    """The canonical ``hf-hub:org/name`` (no revision) of a hub id written either way."""
    return "hf-hub:" + split_hub_id(name)[0]


def timm_hub_name(repo: str, revision: str = "") -> str:
    """The name ``timm.create_model`` takes for a hub repo at an optional revision."""
    return f"hf-hub:{repo}" + (f"@{revision}" if revision else "")
