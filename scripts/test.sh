#!/usr/bin/env bash
# `make test`: lint, then the whole suite (unit, integration, faults). Integration fixtures
# start the embedded services they need on random ports and stop them afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
# The dashboard's browser test needs Debian's chromium; quick when it is already installed.
bash scripts/ensure_chromium.sh
if [ "$#" -gt 0 ]; then
    exec .venv/bin/pytest -q "$@"
fi
# Tests that load OpenVINO into the test process run in a process of their own: loaded into the
# one that has run the rest of the suite (torch, librdkafka, forked loaders), it crashed with
# SIGSEGV in full runs (never in the same tests run apart). The product never mixes them in one
# process: Triton's python models load OpenVINO without torch, `steel train` never loads it.
.venv/bin/pytest -q -m "not openvino" --durations=15
.venv/bin/pytest -q -m openvino
