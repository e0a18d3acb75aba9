#!/usr/bin/env bash
# The refactor check of issue 21: a small attack run (BadNets and Physical, with its per-batch hook) and a small
# REFINE run on the CPU, written under OUT; run it on two checkouts and compare the weights with
# experiments/identity_compare.py. Usage: bash experiments/identity_runs.sh CHECKOUT OUT DATA_ROOT
set -euo pipefail
checkout=$1; out=$2; data=$3
py=${PYTHON:-python}
cd "$checkout"
common=(--preset mini --test-size 500 --data-root "$data" --device cpu --seed 0)
for attack in BadNets Physical; do
  $py attack.py --attack $attack "${common[@]}" --train-size 2000 --epochs 2 --width 8 --eval-every 2 --out "$out/attack"
done
$py refine.py --attack BadNets "${common[@]}" --attack-dir "$out/attack" --epochs 1 --data-fraction 0.1 \
  --unet-channels 8 --compile false --out "$out/refine_res"
