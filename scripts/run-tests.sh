#!/usr/bin/env bash
# Set up .venv, then lint and run the test suite (tests needing ../shared skip when it is absent).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
