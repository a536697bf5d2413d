#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh clone, then run lint, types and tests.
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch is pinned: 2.13.0 is a CPU build; an unpinned torch pulls a multi-GB CUDA build.
.venv/bin/python -m pip install -q -c scripts/constraints-test.txt -e '.[test,torch,keras,lightning,transformers,dask,mp4]'

# Debian's chromium for the MLflow UI browser tests (Playwright drives it; no browser download).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; browser tests will be skipped" >&2
fi

export KERAS_BACKEND=torch
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
