#!/usr/bin/env bash
# Sets up .venv and runs the test suite (what CI runs). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh
# no __pycache__ or .pytest_cache (pytest.ini) in the checkout: the suite leaves it as it found it
PYTHONDONTWRITEBYTECODE=1 python -m pytest -q tests "$@"
