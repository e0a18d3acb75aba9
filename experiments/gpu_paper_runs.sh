#!/usr/bin/env bash
# The paper-scale runs on a lent GPU, time-boxed and resumable across calls: the paper's BadNets
# schedule (ResNet-18 width 64, 150 epochs, SGD 0.1, x0.1 at 100 and 130), then the paper's REFINE
# recipe on that model for as long as the time allows. Started again on the same (warm) machine,
# each stage resumes from its last epoch; the logs come back in $OUT after every call.
#
#   BUDGET=540 bash experiments/gpu_paper_runs.sh     # on the GPU machine, CIFAR archive in .device_data/
#   SMOKE=1 bash experiments/gpu_paper_runs.sh        # a short CPU check of the script itself
set -u
RUN_ROOT=${RUN_ROOT:-gpu_runs}
BUDGET=${BUDGET:-540}
mkdir -p "$RUN_ROOT"
. "$(dirname "${BASH_SOURCE[0]}")/../benchmarks/gpu_common.sh"

if [ "${SMOKE:-0}" = 1 ]; then
  ATTACK_SIZE="--train-size 1000 --test-size 200 --width 8 --epochs 3 --eval-every 1"
  REFINE_SIZE="--unet-channels 8 --data-fraction 0.02 --test-size 200 --epochs 3 --eval-every 1"
else
  ATTACK_SIZE="--eval-every 10"
  REFINE_SIZE="--eval-every 5"
fi
MODEL="$RUN_ROOT/attack/CIFAR10/ResNet18/BadNets/latest/model.pth"  # the finished run (attack.py points latest at it)

{
  date -u; nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo "no GPU"
  ensure_cifar10 || exit 1
  if [ ! -f "$MODEL" ]; then
    echo "== attack: BadNets, the paper's schedule ($ATTACK_SIZE)"
    timeout "$(left 20)" python attack.py --dataset CIFAR10 --attack BadNets --out "$RUN_ROOT/attack" $ATTACK_SIZE
  fi
  if [ -f "$MODEL" ]; then
    echo "== REFINE, the paper's recipe, until the time is up"
    timeout "$(left 10)" python refine.py --dataset CIFAR10 --attack BadNets --attack-dir "$RUN_ROOT/attack" \
      --out "$RUN_ROOT/refine_res" --run-name paper_seed0 $REFINE_SIZE
  fi
  echo "== call ended after $(( $(date +%s) - start )) s"
} 2>&1 | tr '\r' '\n' | grep -v -E '^\s*$' >> "$OUT/gpu_paper_runs.log"

tar czf "$OUT/runs.tgz" --exclude='*.pth' "$RUN_ROOT"
tail -n 40 "$OUT/gpu_paper_runs.log"
