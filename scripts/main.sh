#!/usr/bin/env bash
# Set up .venv/ (if needed) and run the MLproject's main entry point on the full data.
# Extra arguments are passed to `mlflow run` (e.g. -P optimizer=adam -P seeds=2).
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
mlflow run . --env-manager local -P grid=experiments/lecture.yaml -P workers=2 "$@"
echo
echo "Results are in MLflow's store ${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlflow.db}."
echo "Browse them with:  .venv/bin/mlflow ui --backend-store-uri ${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlflow.db}  (then open http://127.0.0.1:5000)"
