#!/usr/bin/env bash
# The deployment-aware search on lfw-dev (issue 20, Must-show 2), every step resumable: a search held to a latency
# budget on onnxruntime (1 thread, batch 1), then its result against random nets drawn inside the same budget and
# MobileFaceNet, trained identically (3 seeds) and timed on the same clock, on the people nobody saw.
#
#   bash bench/latency_study.sh                      # BUDGET_MS=0.3, FACE_SOURCE=../shared/data/lfw-dev/images
#
# The budget binds: 0.3 ms lies below the unconstrained search's depth-phase pick (D8 C16, 0.35 ms on one core of
# the 2-core machine these figures come from) and far below MobileFaceNet at the unconstrained result's size
# (22,352 parameters, 0.82 ms; `facenas arch latency` prints both). The search runs serially (one training at a
# time, on both cores): latency is measured in the search's process, and a training beside it would slow the clock.
# The comparison's trainings may run two at a time; the timings come after them, on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
SOURCE=$(cd "${FACE_SOURCE:-../shared/data/lfw-dev/images}" && pwd)
BUDGET_MS=${BUDGET_MS:-0.3}
OUT=bench/results
RUN=$OUT/search-faces-lfw-dev-${BUDGET_MS}ms
PY=${PYTHON:-python}
FACENAS=("$PY" -m facenas.cli.main)
BUDGET=(--set "search.constraints.max_latency_ms=$BUDGET_MS")

# 1. what the budget means: MobileFaceNet at the unconstrained result's size, and that result, on the same clock
"${FACENAS[@]}" arch latency --backbone mobilefacenet --backbone-params 22352 -c configs/search/faces-lfw-dev.yaml
"${FACENAS[@]}" arch latency $OUT/search-faces-lfw-dev-recipe2/best_arch.json -c configs/search/faces-lfw-dev.yaml
# 2. the search under the budget
"${FACENAS[@]}" search -c configs/search/faces-lfw-dev.yaml --face-source "$SOURCE" --out "$RUN" --resume \
  --workers 1 --set faces.train.threads=2 "${BUDGET[@]}"
"${FACENAS[@]}" report "$RUN"
# 3. on the test people, 3 seeds each, with every model's latency: the result, 3 random nets drawn inside the
#    budget at any size (as random search draws), and MobileFaceNet at the result's size (no width of it reaches
#    the budget)
"$PY" bench/face_compare.py --arch "$RUN/best_arch.json" --seeds 3 --random 3 --random-size budget \
  --baselines mobilefacenet --latency -c configs/train/faces-lfw-dev-compare.yaml --face-source "$SOURCE" \
  "${BUDGET[@]}" --jobs 2 --threads 1 \
  --runs "runs/compare-lfw-dev-${BUDGET_MS}ms" --out "$OUT/face_compare-lfw-dev-${BUDGET_MS}ms.json"
