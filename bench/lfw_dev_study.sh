#!/usr/bin/env bash
# The lfw-dev study (issue 19: does the face proxy rank architectures, and does the search beat random search at
# equal cost?), every step in order and every step resumable: run it again and it continues where it stopped, a
# finished step costing nothing. About 10 CPU-hours on 2 cores; WORKERS trainings at once.
#
#   bash bench/lfw_dev_study.sh                       # FACE_SOURCE=../shared/data/lfw-dev/images, WORKERS=2
#   FACE_SOURCE=/data/lfw-dev/images WORKERS=8 bash bench/lfw_dev_study.sh
#
# The face source's absolute path is part of each run's settings: keep it the same from one call to the next.
set -euo pipefail
cd "$(dirname "$0")/.."
SOURCE=$(cd "${FACE_SOURCE:-../shared/data/lfw-dev/images}" && pwd)
WORKERS=${WORKERS:-2}
CONFIG=configs/search/faces-lfw-dev.yaml
OUT=bench/results
PY=${PYTHON:-python}
FACENAS=("$PY" -m facenas.cli.main)
ONE_THREAD=(--set faces.train.threads=1)  # each worker on its own core: WORKERS trainings side by side

# 1. fidelity of the 3-epoch proxy against 20 epochs: 12 architectures over the whole space, then 8 of equal size
"${FACENAS[@]}" fidelity -c $CONFIG --face-source "$SOURCE" --archs 12 --seed 0 --proxy-epochs 3 --long-epochs 20 \
  --workers "$WORKERS" "${ONE_THREAD[@]}" --out $OUT/fidelity-lfw-dev-recipe2
"${FACENAS[@]}" fidelity -c $CONFIG --face-source "$SOURCE" --archs 8 --seed 0 --params 100000 --proxy-epochs 3 \
  --long-epochs 20 --workers "$WORKERS" "${ONE_THREAD[@]}" --out $OUT/fidelity-lfw-dev-recipe2-100k
# 2. the score's noise at the budgets the search compares architectures at
"${FACENAS[@]}" noise -c $CONFIG --face-source "$SOURCE" --seeds 5 --search-budget --workers "$WORKERS" \
  "${ONE_THREAD[@]}" --json $OUT/noise-faces-lfw-dev-search-budget.json
# ... and at the compare budget: are the 20-epoch differences between architectures (std 0.46 over the space, 0.14
#     at equal size, step 1) larger than a seed's?
"${FACENAS[@]}" noise -c $CONFIG --face-source "$SOURCE" --seeds 5 --epochs 20 --workers "$WORKERS" \
  "${ONE_THREAD[@]}" --json $OUT/noise-faces-lfw-dev-20epochs.json
# 3. the search, then random search at the compute it spent
"${FACENAS[@]}" search -c $CONFIG --face-source "$SOURCE" --out $OUT/search-faces-lfw-dev-recipe2 --resume \
  --workers "$WORKERS" "${ONE_THREAD[@]}"
"${FACENAS[@]}" search -c $CONFIG --face-source "$SOURCE" --strategy random \
  --budget-from $OUT/search-faces-lfw-dev-recipe2 --out $OUT/random-search-faces-lfw-dev-recipe2 --resume \
  --workers "$WORKERS" "${ONE_THREAD[@]}"
# 4. on the people nobody saw, 3 seeds each: the result, random search's, random nets of its size, MobileFaceNet and
#    iResNet-18 at its size, and the accuracy-against-size curve (1 seed a point; its x1 points are the comparison's
#    3 seeds, whose spread is the curve's noise band)
"$PY" bench/face_compare.py --arch $OUT/search-faces-lfw-dev-recipe2/best_arch.json \
  --random-search $OUT/random-search-faces-lfw-dev-recipe2/best_arch.json --seeds 3 --random 3 \
  --baselines mobilefacenet,iresnet18 --size-curve 0.25,0.5,1,2,4 --size-curve-seeds 1 --jobs "$WORKERS" --threads 1 \
  -c configs/train/faces-lfw-dev-compare.yaml --face-source "$SOURCE" --runs runs/compare-lfw-dev-study \
  --out $OUT/face_compare-lfw-dev-study.json
