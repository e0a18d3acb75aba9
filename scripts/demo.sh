#!/usr/bin/env bash
# The quick-start demo: sets up .venv, trains a BadNets-backdoored ResNet-18 (mini preset), defends it with
# REFINE (mini preset) and prints BA/ASR before and after. Without a full CIFAR-10 in data/ it runs on the
# embedded sample (about 14 minutes on 2 CPU cores). Run it again to reuse the finished runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh
start=$(date +%s)
python attack.py --dataset CIFAR10 --attack BadNets --preset mini "$@"
python refine.py --dataset CIFAR10 --attack BadNets --preset mini "$@"
python -m core.summary refine_res/CIFAR10/ResNet18/BadNets --latest
echo "demo: done in $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s (set-up excluded)"
