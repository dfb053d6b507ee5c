#!/usr/bin/env bash
# Set up .venv/ (if needed), run the lecture's study through the MLproject's main entry point
# (11 cells x 5 seeds on the full data, resumable: run it again to continue), then render its
# report. Extra arguments go to `mlflow run` (e.g. -P seeds=2 -P epochs=1 -P workers=1).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
if [ -z "${CIFAR10_DIR:-}" ] && [ ! -d data ]; then
  echo "Set CIFAR10_DIR to a CIFAR-10 folder (torchvision's cifar-10-batches-py or ImageFolder train/ test/)," >&2
  echo "e.g. CIFAR10_DIR=../shared/data/cifar10-jpeg $0" >&2
  exit 2
fi
export CIFAR10_DIR="${CIFAR10_DIR:-data}"
store="${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlflow.db}"
export MLFLOW_TRACKING_URI="$store"
mlflow run . --env-manager local -P grid=experiments/lecture.yaml -P workers=2 "$@"
study report --study lecture --out reports/lecture
echo
echo "Open the report:  reports/lecture/report.html"
echo "Browse the runs:  .venv/bin/mlflow ui --backend-store-uri $store   (then http://127.0.0.1:5000)"
