#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment: torch and torchvision first, pinned, so that pip never
# swaps the build already present for another; then facenas itself with its test extras.
# Re-running is quick: nothing is installed when pyproject.toml and this script are unchanged.
#   FACENAS_VENV   where the environment lives (default .venv)
#   PYTHON         interpreter to create it with (default python3)
#   TORCH_SPEC     torch/torchvision requirement (default: the pair this project is tested with)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${FACENAS_VENV:-.venv}"
python="${PYTHON:-python3}"
if [ -z "${TORCH_SPEC:-}" ]; then
  case "$(uname -m)" in
    aarch64|arm64) TORCH_SPEC="torch==2.9.1 torchvision==0.24.1" ;;
    *) TORCH_SPEC="torch==2.14.1 torchvision==0.29.1" ;;
  esac
fi
stamp="$venv/.facenas-installed"
want="$(cat pyproject.toml tools/setup_env.sh | sha256sum | cut -d' ' -f1) $TORCH_SPEC"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c "import facenas, torch" 2>/dev/null; then
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv" >&2
  "$python" -m venv "$venv"
fi
echo "installing $TORCH_SPEC" >&2
# shellcheck disable=SC2086
"$venv/bin/python" -m pip install -q --disable-pip-version-check $TORCH_SPEC 2>&1 | grep -v "is ignored" >&2 || true
"$venv/bin/python" -c "import torch, torchvision" || { echo "torch/torchvision did not install" >&2; exit 1; }
echo "installing facenas and its dependencies" >&2
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "is ignored" >&2 || true
"$venv/bin/python" -c "import facenas.cli.main, timm, cv2, albumentations, onnxruntime, pytest" \
  || { echo "facenas did not install" >&2; exit 1; }
echo "$want" > "$stamp"
