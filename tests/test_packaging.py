"""A plain (non-editable) install carries every module, the model cards and the default weights."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from wsi_atm.models.registry import find_card

REPO = Path(__file__).resolve().parents[1]

CHECK = """
import importlib, pkgutil, sys
import wsi_atm
from wsi_atm.models.registry import find_card, list_cards, registry_dir
assert wsi_atm.__file__.startswith(sys.argv[1]), wsi_atm.__file__
for mod in pkgutil.walk_packages(wsi_atm.__path__, "wsi_atm."):
    if not mod.name.endswith("__main__"):
        importlib.import_module(mod.name)
default = find_card(None)
missing = [str(p) for p in default.weight_paths() if not p.is_file()]
assert not missing, missing
print(len(list_cards()), default.status, len(default.weights), registry_dir())
"""


def clean_copy(dest: Path) -> Path:
    """The package's sources without build leftovers: a build in the repo itself took a stale
    ``build/lib`` module (a crops.py long since a package) into the wheel."""
    keep = ("pyproject.toml", "README.md", "LICENSE", "wsi_atm")
    dest.mkdir(parents=True)
    for name in keep:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.is_file():
            shutil.copy2(src, dest / name)
    return dest


def test_wheel_install_finds_cards_and_default_weights(tmp_path):
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    source = clean_copy(tmp_path / "src")
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(source)], check=True, capture_output=True)
    wheel = next(wheels.glob("wsi_atm-*.whl"))
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith("licenses/LICENSE") or n.endswith("/LICENSE") for n in names)
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", CHECK, str(target)], env=env, cwd=tmp_path,
                         check=True, capture_output=True, text=True).stdout.split()
    n_cards = len(list((REPO / "wsi_atm" / "models" / "cards").glob("*.toml")))
    assert int(out[0]) == n_cards
    assert out[3].startswith(str(target))
    if out[1] == "trained":  # every weight file the source card names came with the wheel
        assert int(out[2]) == len(find_card(None).weights) >= 1
    assert (target / "wsi_atm" / "py.typed").is_file()  # type information ships (PEP 561)
