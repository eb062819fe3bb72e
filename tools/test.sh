#!/usr/bin/env bash
# Set up the environment if needed, then run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
exec "${FACENAS_VENV:-.venv}/bin/python" -m pytest -q "$@"
