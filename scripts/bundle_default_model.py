"""Copy a finished training run into the registry as the bundled default model.

    .venv/bin/python scripts/bundle_default_model.py RUN_DIR [--name wsi-atm-default]

Writes models/<name>.toml (the run's card, renamed, with the training command recorded) and
models/<name>/fold_<k>.safetensors, with sha256 checksums re-computed on the copies.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

from wsi_atm.cards import load_card, sha256_file

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--name", default="wsi-atm-default")
    ap.add_argument("--command", default="", help="the exact training command, for the record")
    args = ap.parse_args()
    card = load_card(args.run_dir / "card.toml")
    dest = REPO / "models" / args.name
    dest.mkdir(parents=True, exist_ok=True)
    text = (args.run_dir / "card.toml").read_text(encoding="utf-8")
    text = re.sub(r'(?m)^name = ".*"$', f'name = "{args.name}"', text, count=1)
    head, _, _ = text.partition("\n[[weights]]")
    blocks = []
    for w in card.weights:
        target = dest / f"fold_{w.fold}.safetensors"
        shutil.copyfile(card.resolve(w.file), target)
        blocks.append(f'[[weights]]\nfile = "{args.name}/{target.name}"\n'
                      f'sha256 = "{sha256_file(target)}"\nfold = {w.fold}\n')
    preamble = (f"# The bundled default model, trained by wsi-atm itself on the AMi-Br training "
                f"split.\n# Training command:\n#   {args.command}\n" if args.command else "")
    out = REPO / "models" / f"{args.name}.toml"
    out.write_text(preamble + head.rstrip() + "\n\n" + "\n".join(blocks), encoding="utf-8")
    print(f"wrote {out} and {len(blocks)} weight files in {dest}")


if __name__ == "__main__":
    main()
