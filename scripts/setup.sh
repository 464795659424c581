#!/usr/bin/env bash
# Create or update the project's virtual environment in .venv (idempotent).
# torch resolves to a CPU-capable 2.14.1 build from the machine's wheel cache where one exists.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.wsi-atm-installed
want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install --quiet -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import wsi_atm, torch, timm, peft, openslide, tiffslide" \
    || { echo "setup failed: see pip's messages above" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
