#!/usr/bin/env bash
# The GPU checks in one short script, for the day a CUDA machine is at hand (CI and the dev machines have none).
#
#   bash bench/gpu_check.sh [--dry-run] [--out DIR] [--python PY] [--quick]
#
# 1. the training and parallel-search tests on the GPU machine (its torch build, its NCCL, its cores);
# 2. proxy trainer throughput on the GPU: fp32, fp16 (AMP) and fp16 + channels-last, each beside the authors'-style
#    DataLoader loop and the bare forward/backward limit (bench/proxy_throughput.py);
# 3. face training steps per second streaming a RecordIO with 0/4/8 DataLoader workers, and the bare limit
#    (bench/face_steps.py), eager and with torch.compile;
# 4. a 2-process DDP run of `facenas train --gpus 2` (NCCL, two GPUs), then its checkpoint reloaded on one process
#    (on one GPU: the gloo DDP tests instead; NCCL cannot put two ranks on one GPU);
# 5. a parallel search with one worker per GPU (`--workers N --device auto`: candidates placed on cuda:0..N-1).
# Every step has a time limit, runs even when an earlier one failed, and its status goes into DIR/gpu_check.json
# beside each step's own JSON and log. --dry-run prints the commands and runs nothing; --quick shortens each step.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$here/bench/results/gpu"
python="${PYTHON:-}"
dry=0
quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --quick) quick=1 ;;
    --out) out="$2"; shift ;;
    --python) python="$2"; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$python" ]; then
  if [ -x "$here/.venv/bin/python" ]; then python="$here/.venv/bin/python"; else python="python3"; fi
fi
cd "$here"

gpus=0
if [ "$dry" -eq 0 ]; then
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check.sh: no NVIDIA GPU here (nvidia-smi finds none); --dry-run shows what would run" >&2
    exit 3
  fi
  gpus=$("$python" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')
  if [ "$gpus" -lt 1 ]; then
    echo "gpu_check.sh: torch in $python sees no CUDA device (a CPU-only build?)" >&2
    exit 3
  fi
  mkdir -p "$out"
else
  gpus="${GPUS:-2}"  # what a dry run assumes; GPUS=1 shows the one-GPU plan
fi

if [ "$quick" -eq 1 ]; then steps=20; repeats=1; models="16x10"; else steps=60; repeats=2; models="8x6,16x10,32x12"; fi
runs="$here/runs/gpu-check"  # run directories stay out of the results folder
status_file="$out/steps.tsv"
[ "$dry" -eq 0 ] && : > "$status_file"

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log, record the status
  local name="$1" limit="$2"; shift 2
  if [ "$dry" -eq 1 ]; then
    printf '[%s] (limit %ss)\n  %s\n' "$name" "$limit" "$*"
    return 0
  fi
  echo "== $name"
  local began=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - began))" >> "$status_file"
  tail -n 5 "$out/$name.log"
  [ "$rc" -eq 0 ] || echo "   -> $name failed (exit $rc), see $out/$name.log"
}

face_cfg="configs/train/faces-synthetic.yaml"

step tests 600 "$python" -m pytest -q -p no:cacheprovider tests/train tests/search/test_parallel.py

for variant in "fp32 off" "fp16 off" "fp16 on"; do
  set -- $variant
  step "proxy_throughput-$1-cl$2" 900 "$python" bench/proxy_throughput.py --device cuda --precision "$1" \
    --channels-last "$2" --models "$models" --repeats "$repeats" --out "$out/proxy_throughput-$1-cl$2.json"
done

step face_steps 900 "$python" bench/face_steps.py --device cuda --workers 0,4,8 --steps "$steps" --batch-size 128 \
  --out "$runs/face-steps" --results "$out/face_steps.json"
step face_steps-compile 900 "$python" bench/face_steps.py --device cuda --workers 8 --steps "$steps" \
  --batch-size 128 --compile default --out "$runs/face-steps" --results "$out/face_steps-compile.json"

if [ "$gpus" -ge 2 ]; then
  step ddp_train 900 "$python" -m facenas.cli.main train -c "$face_cfg" --backbone mobilefacenet --gpus 2 \
    --epochs 2 --out "$runs/ddp" --set faces.train.checkpoint_every_steps=20
  step ddp_reload_1gpu 900 "$python" -m facenas.cli.main train -c "$face_cfg" --backbone mobilefacenet \
    --epochs 2 --out "$runs/ddp" --resume
  step parallel_search 900 "$python" -m facenas.cli.main search -c configs/search/digits.yaml --workers "$gpus" \
    --device auto --out "$runs/search-gpus"
else
  step ddp_gloo_tests 600 "$python" -m pytest -q -p no:cacheprovider tests/train/test_ddp.py
  step parallel_search 900 "$python" -m facenas.cli.main search -c configs/search/digits.yaml --workers 2 \
    --device cuda:0 --out "$runs/search-gpus"
fi

if [ "$dry" -eq 0 ]; then
  "$python" - "$out" "$gpus" <<'EOF'
import json, platform, sys, time
from pathlib import Path
import torch
out = Path(sys.argv[1])
steps = [dict(zip(("step", "exit", "seconds"), line.split("\t"))) for line in (out / "steps.tsv").read_text().splitlines()]
results = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json") if p.name != "gpu_check.json"}
summary = {"benchmark": "gpu_check", "gpus": int(sys.argv[2]), "gpu": torch.cuda.get_device_name(0),
           "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "steps": steps, "failed": [s["step"] for s in steps if s["exit"] != "0"], "results": results,
           "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"wrote {out / 'gpu_check.json'}; failed steps: {summary['failed'] or 'none'}")
EOF
fi
