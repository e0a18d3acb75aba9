#!/usr/bin/env bash
# One prepared GPU session (about 10 minutes on an H100): throughput benchmarks, a paper-architecture
# BadNets model (ResNet-18 width 64, full CIFAR-10, a short one-cycle schedule instead of 150 epochs),
# the fast REFINE recipe at the paper's UNet width, then the paper's REFINE recipe for as many epochs
# as the remaining time allows (it resumes if started again). Every stage is time-boxed so that the
# logs survive; run folders go under $RUN_ROOT, away from attack/ and refine_res/.
#
#   CIFAR_ARCHIVE=path/to/cifar10-jpeg.tar.gz BUDGET=570 bash benchmarks/gpu_check.sh
#   SMOKE=1 bash benchmarks/gpu_check.sh        # a one-minute CPU check of the script itself
set -u
RUN_ROOT=${RUN_ROOT:-gpu_runs}
BUDGET=${BUDGET:-570}              # seconds for the whole script
mkdir -p "$RUN_ROOT"
. "$(dirname "${BASH_SOURCE[0]}")/gpu_common.sh"

if [ "${SMOKE:-0}" = 1 ]; then      # tiny sizes: checks the commands, not the numbers
  BENCH="--batches 2 --unet-channels 8 --width 8 --batch-size 16"; BENCH_A="--width 8 --images 256"
  ATTACK_SIZE="--train-size 2000 --test-size 500 --width 8 --epochs 2 --eval-every 1"
  FAST_SIZE="--unet-channels 8 --data-fraction 0.04 --test-size 500 --epochs 2"
  PAPER_SIZE="--unet-channels 8 --data-fraction 0.04 --test-size 500 --epochs 2 --eval-every 1"
else
  BENCH=""; BENCH_A="--images 8192"
  ATTACK_SIZE="--epochs 25 --schedule onecycle --eval-every 5"
  FAST_SIZE="--unet-channels 64 --data-fraction 1 --epochs 15"
  PAPER_SIZE="--eval-every 5"
fi

{
  date -u; nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  ensure_cifar10 || exit 1

  echo "== benchmarks"
  python benchmarks/benchmark_attack.py $BENCH_A
  python benchmarks/benchmark_refine.py $BENCH

  echo "== attack: BadNets, ResNet-18 width 64 ($ATTACK_SIZE)"
  timeout "$(left 200)" python attack.py --dataset CIFAR10 --attack BadNets --out "$RUN_ROOT/attack" $ATTACK_SIZE

  echo "== REFINE, fast recipe (mini preset) at UNet 64 on all 50,000 images"
  timeout "$(left 110)" python refine.py --dataset CIFAR10 --attack BadNets --preset mini --eval-every 1 \
    --attack-dir "$RUN_ROOT/attack" --out "$RUN_ROOT/refine_res" --run-name fast_unet64 $FAST_SIZE

  echo "== REFINE, the paper's recipe, until the time is up"
  timeout "$(left 15)" python refine.py --dataset CIFAR10 --attack BadNets \
    --attack-dir "$RUN_ROOT/attack" --out "$RUN_ROOT/refine_res" --run-name paper_seed0 $PAPER_SIZE
  echo "== done after $(( $(date +%s) - start )) s"
} 2>&1 | tr '\r' '\n' | grep -v -E '^\s*$' > "$OUT/gpu_check.log"

tar czf "$OUT/runs.tgz" --exclude='*.pth' "$RUN_ROOT"
tail -n 60 "$OUT/gpu_check.log"
