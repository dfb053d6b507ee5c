#!/usr/bin/env bash
# Set up .venv/ (if needed) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" MPLBACKEND=Agg
exec .venv/bin/python -m pytest "$@"
