"""Hub ids as cards write them: ``hf-hub:org/name[@revision]`` (timm also accepts ``hf_hub:``).

The one place that knows the prefixes; ``card``, ``backbone``, ``hub`` and ``adapters`` ask here.
Also where a hub model sits in the local cache, without importing torch or timm (a batch's
resume key asks).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

HUB_PREFIXES = ("hf-hub:", "hf_hub:")


def is_hub_id(name: str) -> bool:
    return name.startswith(HUB_PREFIXES)


# ORG and NAME as the Hub allows them (huggingface_hub's validate_repo_id): letters, digits,
# '_', '-' and '.', neither '-' nor '.' first or last, no '--' or '..', at most 96 characters
_HUB_NAME = re.compile(r"\w(?:[\w.-]{0,94}\w)?", re.ASCII)


def is_valid_hub_id(name: str) -> bool:
    """``hf-hub:[ORG/]NAME[@REVISION]`` with an ORG/NAME the Hub accepts (no path in it)."""
    parts = split_hub_id(name)[0].split("/")
    return is_hub_id(name) and len(parts) <= 2 and all(
        _HUB_NAME.fullmatch(p) and "--" not in p and ".." not in p for p in parts)


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


def hub_cache_dir() -> Path:
    """The hub cache as the environment names it now (``HF_HUB_CACHE``, then ``HF_HOME``/hub)."""
    from huggingface_hub import constants

    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def cached_file(model_id: str, filename: str, revision: str = "") -> Path | None:
    """The cached path of one file of a hub repo (no network), or None."""
    from huggingface_hub import try_to_load_from_cache

    repo, rev = split_hub_id(model_id)
    found = try_to_load_from_cache(
        repo, filename, cache_dir=str(hub_cache_dir()), revision=revision or rev or None)
    return Path(found) if isinstance(found, str) else None


def cached_revision(model_id: str, revision: str = "") -> str:
    """The commit of the cached snapshot (``main`` or ``revision``); ``""`` when not cached."""
    path = cached_file(model_id, "config.json", revision)
    return path.parent.name if path is not None else ""
