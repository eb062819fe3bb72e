#!/usr/bin/env bash
# Set up the environment if needed, then run the main job on the embedded default data (`facenas demo`):
# a face search on synthetic faces, final training of what it finds, LFW-protocol evaluation on held-out
# synthetic identities, and a summary. Re-running resumes the same run directory, so a finished demo completes
# at once. Extra arguments go to `facenas demo` (e.g. --out DIR, --fresh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
exec "${FACENAS_VENV:-.venv}/bin/facenas" demo "$@"
