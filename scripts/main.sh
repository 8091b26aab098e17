#!/usr/bin/env bash
# The main job: set up .venv if needed, then `hf-zpd train --compare_plain_trainer`: all-MiniLM-L6-v2 fine-tuned on tweet
# sentiment with the ZPD curriculum and then with the plain Trainer, ending with both summaries, their comparison and
# the run report (runs/hf-zpd-train/zpd_report/).
# Arguments go to `hf-zpd train`, e.g. `bash scripts/main.sh --num_train_epochs 1` (`--help` lists them all).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec .venv/bin/hf-zpd train --compare_plain_trainer "$@"
