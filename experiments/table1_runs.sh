#!/usr/bin/env bash
# The runs behind the Table-1 layout (attack x {no defense, REFINE}) with one preset: first attack.py for every
# attack (so that every backdoor is known early), then refine.py for every backdoored model. Resumable: run it
# again and finished runs are reported, unfinished ones resume. LC needs the Benign model of the same preset, so
# list Benign before LC. REFINE is skipped for a model whose backdoor did not take (ASR below MIN_ASR).
#   PRESET=mini ATTACKS="WaNet BATT" bash experiments/table1_runs.sh
#   EXTRA_ATTACK / EXTRA_REFINE: more flags for every attack.py / refine.py call (e.g. smaller sizes)
#   TABLE=0: no table at the end (by default the Table-1 layout of every finished run of the preset, from
#   python -m core.summary attack refine_res --table1 --preset $PRESET --markdown: core/tables.py lays it out)
set -uo pipefail
cd "$(dirname "$0")/.."
PRESET=${PRESET:-mini}
ATTACKS=${ATTACKS:-"BadNets Blended WaNet Physical BATT Adaptive Benign LC"}
DEFEND=${DEFEND:-$ATTACKS}
MIN_ASR=${MIN_ASR:-50}
PY=${PY:-python}
for attack in $ATTACKS; do
  echo "== $(date +%H:%M:%S) attack.py --attack $attack --preset $PRESET"
  $PY attack.py --dataset CIFAR10 --attack "$attack" --preset "$PRESET" ${EXTRA_ATTACK:-} || echo "attack $attack failed"
done
for attack in $DEFEND; do
  [ "$attack" = Benign ] && continue
  asr=$($PY - "$attack" <<'PY'
import json, sys
from pathlib import Path
from core.runlog import read_latest
folder = read_latest(Path("attack/CIFAR10/ResNet18") / sys.argv[1])
print(json.loads((folder / "metrics.json").read_text()).get("final", {}).get("ASR", 0) if folder else 0)
PY
)
  if awk "BEGIN {exit !($asr < $MIN_ASR)}"; then echo "skip REFINE on $attack: ASR $asr < $MIN_ASR"; continue; fi
  echo "== $(date +%H:%M:%S) refine.py --attack $attack --preset $PRESET"
  $PY refine.py --dataset CIFAR10 --attack "$attack" --preset "$PRESET" ${EXTRA_REFINE:-} || echo "refine $attack failed"
done
echo "== $(date +%H:%M:%S) done"
if [ "${TABLE:-1}" = 1 ]; then $PY -m core.summary attack refine_res --table1 --preset "$PRESET" --markdown; fi
