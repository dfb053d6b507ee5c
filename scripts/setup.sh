#!/usr/bin/env bash
# Create .venv/ in the repo root and install the locked packages into it. Idempotent: a second
# run with an unchanged requirements.lock does nothing. torch 2.14.1 / torchvision 0.29.1
# install from this machine's local wheel store when pip is configured for it, else from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"optstudy needs Python 3.11, found {sys.version.split()[0]}"'
stamp=.venv/.optstudy-installed
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
echo "installing the locked packages into .venv/ (first time: several minutes; log: .venv/pip.log)"
pip_install() {
  .venv/bin/python -m pip install --disable-pip-version-check "$@" >>.venv/pip.log 2>&1 \
    || { tail -n 40 .venv/pip.log >&2; echo "pip install $* failed (full log: .venv/pip.log)" >&2; exit 1; }
}
pip_install -r requirements.lock
pip_install --no-deps -e .
.venv/bin/python -c 'import torch, torchvision, mlflow, study' 
echo "$want" > "$stamp"
echo "optstudy environment ready in .venv/ (activate: source .venv/bin/activate)"
