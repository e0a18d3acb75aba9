#!/usr/bin/env bash
# Issue 11's mini-preset runs that are too long for a 2-core CPU session, on a lent GPU, time-boxed: the
# attacks of $ATTACKS, then REFINE's mini preset on each model whose backdoor took (experiments/table1_runs.sh),
# then, in the time left, the attacks of $MORE_ATTACKS and REFINE on them. Run folders land under attack/ and
# refine_res/ of the device's checkout; they come back (without weights) in $OUT/runs.tgz with the log.
#
#   BUDGET=540 bash experiments/gpu_table1_mini.sh      # on the GPU machine, CIFAR archive in .device_data/
#   SMOKE=1 BUDGET=300 bash experiments/gpu_table1_mini.sh   # tiny sizes: checks the script, not the numbers
set -u
cd "$(dirname "$0")/.."
BUDGET=${BUDGET:-540}
ATTACKS=${ATTACKS:-"Physical Adaptive"}
MORE_ATTACKS=${MORE_ATTACKS:-"Benign LC"}
. benchmarks/gpu_common.sh  # the cd above made the repository root the working folder
if [ "${SMOKE:-0}" = 1 ]; then
  export EXTRA_ATTACK="--train-size 500 --test-size 200 --epochs 1 --eval-every 1"
  export EXTRA_REFINE="--data-fraction 0.01 --test-size 200 --epochs 1 --eval-every 1 --compile false"
  export MIN_ASR=0
fi
{
  date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU"
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  ensure_cifar10 || exit 1
  echo "== stage 1: $ATTACKS"
  ATTACKS="$ATTACKS" TABLE=0 timeout "$(left 30)" bash experiments/table1_runs.sh
  if [ "$(left 0)" -gt 120 ]; then
    echo "== stage 2: $MORE_ATTACKS ($(left 0) s left)"
    ATTACKS="$MORE_ATTACKS" TABLE=0 timeout "$(left 30)" bash experiments/table1_runs.sh
  fi
  python -m core.summary attack refine_res --table1 --preset mini --markdown || true
  echo "== call ended after $(( $(date +%s) - start )) s"
} 2>&1 | tr '\r' '\n' | grep -v -E '^\s*$' >> "$OUT/gpu_table1_mini.log"
tar czf "$OUT/runs.tgz" --exclude='*.pth' --exclude='*.pt' attack refine_res 2>/dev/null
tail -n 60 "$OUT/gpu_table1_mini.log"
