#!/usr/bin/env bash
# Creates .venv (once) and installs the requirements into it (again only when requirements.txt changed).
# Sourced by demo.sh and test.sh. PyTorch: the CPU-only build when no NVIDIA GPU is present and its
# package index can be reached (a few hundred MB instead of the ~5 GB CUDA build); the default build otherwise.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
stamp=".venv/.installed-$(sha256sum requirements.txt | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  python -m pip install -q --upgrade pip
  cpu_index=https://download.pytorch.org/whl/cpu
  if ! python -c "import torch, torchvision" 2>/dev/null; then
    if ! nvidia-smi -L >/dev/null 2>&1 && python - "$cpu_index" <<'PY' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/", timeout=5)
PY
    then
      echo "setup: no NVIDIA GPU found: installing the CPU-only PyTorch"
      python -m pip install -q --index-url "$cpu_index" torch torchvision
    else
      echo "setup: installing PyTorch (the default build; it runs on the CPU too)"
      python -m pip install -q torch torchvision
    fi
  fi
  python -m pip install -q -r requirements.txt
  rm -f .venv/.installed-*
  touch "$stamp"
fi
