#!/usr/bin/env bash
# Set up .venv, then lint, type-check and run the test suite (tests needing ../shared skip when it is absent).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy  # strict on wsi_atm/, configured in pyproject.toml
.venv/bin/python -m pytest "$@"
