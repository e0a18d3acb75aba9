#!/usr/bin/env bash
# Sets up .venv and runs the test suite (what CI runs). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh
python -m pytest -q tests "$@"
