#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite (configured in pyproject.toml). Arguments go to pytest, e.g.
# `bash scripts/test.sh -m "not slow"`. Exits non-zero when a test fails or when no test is collected.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec .venv/bin/python -m pytest "$@"
