#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh clone, then run lint, types and every test.
# Usage: bash scripts/test.sh [extra pytest args]
#   bash scripts/test.sh                    the whole suite, slow tests included (what CI runs)
#   bash scripts/test.sh -m "not slow"      the quick loop: skips tests marked slow (see pyproject's markers)
#   bash scripts/test.sh tests/test_cli.py  one module
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
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
  # pytest's "no tests collected": a typo in a path or -k/-m expression must not read as a pass.
  echo "error: pytest collected no tests (exit 5) for: ${*:-the default test paths}" >&2
fi
exit "$status"
