"""The MLproject: every declared parameter is wired through, and `mlflow run` works locally."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, all_runs


def entry_points():
    return yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]


@pytest.mark.parametrize("name", sorted(entry_points()))
def test_every_parameter_is_passed_through(name):
    ep = entry_points()[name]
    used = set(re.findall(r"\{(\w+)\}", ep["command"]))
    assert used == set(ep.get("parameters", {})), f"entry point {name}: declared vs used differ"


def test_train_parameters_match_cli_options():
    from study.cli import main

    options = {p.name for p in main.commands["train"].params}
    assert set(entry_points()["train"]["parameters"]) <= options


def test_mlflow_run_train_logs_into_its_own_run(tmp_path, mini_dir):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, OPTSTUDY_CACHE_DIR=str(tmp_path / "cache"),
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "train", "--env-manager", "local",
           "-P", "optimizer=adam", "-P", "bn=true", "-P", "seed=2", "-P", "epochs=1",
           "-P", "train_limit=120", "-P", "test_limit=40", "-P", f"data_dir={mini_dir}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = all_runs(uri)  # the run `mlflow run` created, and no second one
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "adam-bn-default-none-s2"
    assert run.data.params["seed"] == "2" and run.data.params["train_limit"] == "120"
    assert run.data.tags["mlflow.project.entryPoint"] == "train"
    assert "final_test_accuracy" in run.data.metrics
