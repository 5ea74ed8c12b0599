#!/usr/bin/env bash
# `make demo`: the product's tour (scripts/demo.py). DEMO_SECONDS=N stops it cleanly after N seconds
# (0 = run until Ctrl-C). exec: the demo is make's child, so it can see make take SIGINT.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${VENV:-.venv}/bin/python" scripts/demo.py
