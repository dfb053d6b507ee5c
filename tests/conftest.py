"""Shared fixtures: the bundled real CIFAR-10 subset, a private cache and MLflow store per test."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

MINI = Path(__file__).parent / "data" / "cifar10-mini"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Batches of 4 on a small CNN: one intra-op thread is faster, bit-reproducible across
    machines, and immune to a busy machine (subprocesses get --threads 1 where it matters)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def mini_dir() -> Path:
    return MINI


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def mini_data(session_cache):
    from study.data import load_cifar10

    return load_cifar10(MINI, cache_dir=session_cache)


@pytest.fixture(scope="session")
def mini_prepared(mini_data):
    from study.data import prepare

    return prepare(mini_data, train_limit=None, test_limit=None, subset_seed=0)


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """A fresh MLflow store (SQLite, MLflow's default kind) in this test's tmp dir."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    # mlflow.set_experiment() exports MLFLOW_EXPERIMENT_ID for subprocesses: never let it leak
    # into another test's store.
    import mlflow.tracking.fluent as fluent

    fluent._active_experiment_id = None
    for var in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        os.environ.pop(var, None)


def all_runs(uri: str):
    """Every run in every experiment of a store, as Run objects."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, max_results=5000) if exps else []


def subprocess_env(uri: str) -> dict:
    """The environment for a `study`/`mlflow` subprocess logging to ``uri``: this interpreter's
    scripts on PATH, and no MLflow run or experiment inherited from the test process."""
    import sys

    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(var, None)
    return env


@contextlib.contextmanager
def mlflow_server(backend_uri: str, cwd: Path, *extra: str):
    """A real `mlflow server` on a free loopback port; yields its URL, stops it afterwards."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", backend_uri, "--workers", "1", *extra],
                            cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=subprocess_env(backend_uri))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, "mlflow server did not start"
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
