#!/usr/bin/env bash
# `make test`: lint, then the whole suite (unit, integration, faults). Integration fixtures
# start the embedded services they need on random ports and stop them afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
# The dashboard's browser test needs Debian's chromium; quick when it is already installed.
bash scripts/ensure_chromium.sh
.venv/bin/pytest -q "$@"
