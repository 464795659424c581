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
  # pip's own status, not grep's: a failed install must not be stamped as done
  status=0
  .venv/bin/python -m pip install --quiet -e '.[dev]' > .venv/pip.log 2>&1 || status=$?
  grep -v "^WARNING: Location" .venv/pip.log >&2 || true
  if [ "$status" -ne 0 ]; then
    echo "setup failed: pip install exited $status (see its messages above)" >&2
    exit 1
  fi
  .venv/bin/python -c "import wsi_atm, torch, timm, peft, openslide, tiffslide" \
    || { echo "setup failed: see pip's messages above" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
