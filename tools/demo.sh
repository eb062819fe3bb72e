#!/usr/bin/env bash
# Set up the environment if needed, then run the main job on the embedded default data:
# a four-phase search on scikit-learn's digits, then final training of the architecture it found.
# Re-running resumes the same run directory, so a finished demo completes at once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
facenas="${FACENAS_VENV:-.venv}/bin/facenas"
out="${FACENAS_DEMO_OUT:-runs/demo-digits}"
"$facenas" search --config configs/search/digits.yaml --out "$out" --resume "$@"
"$facenas" train-final --arch "$out/best_arch.json" --config configs/search/digits.yaml --out "$out" --resume
