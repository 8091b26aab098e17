#!/usr/bin/env bash
# The main job: set up .venv if needed, then fine-tune all-MiniLM-L6-v2 on tweet sentiment with ZPDTrainer.
# Arguments go to examples/classification.py, e.g. `bash scripts/main.sh --num_train_epochs 1`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec .venv/bin/python examples/classification.py "$@"
