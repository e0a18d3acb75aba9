#!/usr/bin/env bash
# Issue 23's mini-REFINE search on 2 CPU cores: REFINE variants on one BadNets mini model, one after another,
# each run's log in $OUT and its run folder under refine_res/frontier/ (metrics.json, log.txt).
#   bash experiments/refine_mini_frontier.sh screen   # short runs: 2 epochs x 20,000 images, 2,000 test images
#   bash experiments/refine_mini_frontier.sh screen2  # the same budget: distillation's lr, schedule, epochs, width
#   bash experiments/refine_mini_frontier.sh full "--loss distill" ...   # full mini-budget runs of the given flags
# Variants differ only in the flags listed; everything else is `refine.py --preset mini`. Finished runs are
# recognised by refine.py itself (same settings -> same folder), so a rerun skips them.
set -u
OUT=${OUT:-results/cpu-refine-mini-2026-11-29}
ATTACK=${ATTACK:-BadNets}
mkdir -p "$OUT"
run() {  # $1: log name, rest: flags
  local name=$1; shift
  echo "== $(date -u +%H:%M:%S) refine.py --attack $ATTACK --preset mini $*" | tee -a "$OUT/$name.log"
  local start=$SECONDS
  python refine.py --dataset CIFAR10 --attack "$ATTACK" --preset mini --out refine_res/frontier "$@" \
    >> "$OUT/$name.log" 2>&1
  echo "== rc $? after $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s" | tee -a "$OUT/$name.log"
}
mode=${1:-screen}; shift || true
if [ "$mode" = screen ]; then
  short=(--epochs 2 --data-fraction 0.4 --test-size 2000 --eval-every 100 --compile false)
  run screen_ce "${short[@]}"
  run screen_distill "${short[@]}" --loss distill
  run screen_ce_normalized "${short[@]}" --unet-input normalized
  run screen_distill_normalized "${short[@]}" --loss distill --unet-input normalized
elif [ "$mode" = screen2 ]; then  # distillation's neighbours at the same 40,000 images
  short=(--epochs 2 --data-fraction 0.4 --test-size 2000 --eval-every 100 --compile false --loss distill)
  run screen_distill_lr0.01 "${short[@]}" --lr 0.01
  run screen_distill_lr0.0025 "${short[@]}" --lr 0.0025
  run screen_distill_4x0.2 "${short[@]/0.4/0.2}" --epochs 4
  run screen_distill_cosine "${short[@]}" --schedule cosine
  run screen_distill_unet24 "${short[@]}" --unet-channels 24
else
  for flags in "$@"; do
    # shellcheck disable=SC2086
    run "full_${ATTACK}_$(echo "$flags" | tr -s -c 'a-zA-Z0-9.\n' '_' | sed 's/^_*//')" $flags
  done
fi
