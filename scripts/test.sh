#!/usr/bin/env bash
# Set up .venv/ (if needed) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The UI test drives headless Chromium from Debian's packages; install it once where we can.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the MLflow UI test (once)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/tmp/optstudy-apt.log 2>&1 \
    || echo "could not install chromium (see /tmp/optstudy-apt.log); the UI test will fail" >&2
fi
export PATH="$PWD/.venv/bin:$PATH" MPLBACKEND=Agg
exec .venv/bin/python -m pytest "$@"
