"""The study runner end to end: idempotence, resume after SIGKILL, parallel = sequential,
failures that do not stop the study, a real tracking server, Ray, and the MLproject's main."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from study.cli import main
from tests.conftest import REPO, all_runs, mlflow_server, subprocess_env

pytestmark = pytest.mark.slow


def write_grid(tmp_path: Path, *, epochs=1, train_limit=120, extra_cells="") -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(textwrap.dedent(f"""
        name: tiny
        seeds: 2
        fixed: {{epochs: {epochs}, train_limit: {train_limit}, test_limit: 40, log_every: 10}}
        factors:
          optimizer: [sgd, adam]
          bn: [false, true]
    """) + extra_cells)
    return p


def study_args(grid: Path, mini_dir: Path, cache: Path, *extra: str) -> list[str]:
    return ["run", str(grid), "--data-dir", str(mini_dir), "--cache-dir", str(cache),
            "--no-log-model", "--quiet", *extra]


def children(uri: str, study: str = "tiny"):
    return [r for r in all_runs(uri) if r.data.tags.get("study") == study]


def by_key(runs):
    return {r.data.tags["run_key"]: r for r in runs if r.info.status == "FINISHED"}


def test_study_is_idempotent_and_adds_only_what_is_new(tracking, tmp_path, mini_dir, session_cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = write_grid(tmp_path)
    res = CliRunner().invoke(main, study_args(grid, mini_dir, session_cache, "--threads", "1"))
    assert res.exit_code == 0, res.output
    kids = children(tracking)
    assert len(kids) == 8 and {r.info.status for r in kids} == {"FINISHED"}
    parents = [r for r in all_runs(tracking) if r.data.tags.get("study_parent") == "tiny"]
    assert len(parents) == 1
    parent = parents[0]
    assert {r.data.tags["mlflow.parentRunId"] for r in kids} == {parent.info.run_id}
    assert "4 cells x 2 seeds = 8 runs" in parent.data.tags["mlflow.note.content"]
    arts = {a.path for a in MlflowClient(tracking).list_artifacts(parent.info.run_id, "study")}
    assert arts == {"study/resolved.yaml", "study/tiny.yaml"}
    assert sorted(r.info.run_name for r in kids)[:2] == ["adam-bn-default-none-s0", "adam-bn-default-none-s1"]

    again = CliRunner().invoke(main, study_args(grid, mini_dir, session_cache, "--threads", "1"))
    assert again.exit_code == 0 and "8 already done, 0 now" in again.output
    assert len(children(tracking)) == 8

    more = CliRunner().invoke(main, study_args(grid, mini_dir, session_cache, "--threads", "1",
                                               "--seeds", "3", "--optimizer", "adam"))
    assert more.exit_code == 0 and "4 already done, 2 now" in more.output
    kids = children(tracking)
    assert len(kids) == 10 and max(Counter(r.data.tags["run_key"] for r in kids).values()) == 1


def test_a_diverging_run_does_not_stop_the_study(tracking, tmp_path, mini_dir, session_cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = write_grid(tmp_path, extra_cells="cells:\n  - {optimizer: sgd, lr: 1000000.0}\n")
    res = CliRunner().invoke(main, study_args(grid, mini_dir, session_cache, "--threads", "1", "--seeds", "1"))
    assert res.exit_code == 1
    assert "FAILED sgd-nobn-default-none-s0: diverged at step" in res.output
    assert "4/5 runs FINISHED" in res.output
    statuses = Counter(r.info.status for r in children(tracking))
    assert statuses == {"FINISHED": 4, "FAILED": 1}


def _env(uri: str, tmp_path: Path) -> dict:
    return subprocess_env(uri)


def test_sigkill_midway_then_rerun_completes_each_key_once_with_uninterrupted_results(
        tmp_path, mini_dir, session_cache):
    grid = write_grid(tmp_path, epochs=3, train_limit=300)
    # Reference: the same study, sequential and uninterrupted, in its own store.
    ref_uri = f"sqlite:///{tmp_path / 'ref.db'}"
    ref = subprocess.run([sys.executable, "-m", "study.cli", *study_args(grid, mini_dir, session_cache,
                          "--threads", "1", "--work-dir", str(tmp_path / "w-ref"))],
                         env=_env(ref_uri, tmp_path), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr[-2000:]

    uri = f"sqlite:///{tmp_path / 'killed.db'}"
    MlflowClient(uri).search_experiments()  # create the store now: polling must not race its creation
    cmd = [sys.executable, "-m", "study.cli", *study_args(grid, mini_dir, session_cache, "--threads", "1",
           "--workers", "2", "--work-dir", str(tmp_path / "w"))]
    proc = subprocess.Popen(cmd, env=_env(uri, tmp_path), cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_dir = tmp_path / "w" / "tiny" / "checkpoints"
    deadline = time.time() + 300
    # half-way: some runs finished and at least one has an epoch checkpoint mid-run
    while time.time() < deadline:
        done = [r for r in children(uri) if r.info.status == "FINISHED"]
        if len(done) >= 2 and ckpt_dir.is_dir() and any(ckpt_dir.glob("*.pt")):
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = Counter(r.info.status for r in children(uri))
    assert before["RUNNING"] >= 1 and before["FINISHED"] < 8

    res = subprocess.run(cmd, env=_env(uri, tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    kids = children(uri)
    statuses = Counter(r.info.status for r in kids)
    assert statuses["FINISHED"] == 8 and statuses["RUNNING"] == 0
    assert statuses["KILLED"] == before["RUNNING"]
    assert all(r.data.tags.get("interrupted") == "true" for r in kids if r.info.status == "KILLED")
    finished = [r for r in kids if r.info.status == "FINISHED"]
    assert len({r.data.tags["run_key"] for r in finished}) == 8
    assert any("resumed_from_epoch" in r.data.tags for r in finished)
    # same results as the uninterrupted sequential study, run for run
    ref_runs, got = by_key(children(ref_uri)), by_key(finished)
    assert set(ref_runs) == set(got)
    for key, r in got.items():
        assert r.data.metrics["final_test_accuracy"] == ref_runs[key].data.metrics["final_test_accuracy"]
        assert r.data.metrics["final_test_loss"] == ref_runs[key].data.metrics["final_test_loss"]
    assert not any(ckpt_dir.glob("*.pt"))  # finished runs clean up their checkpoints


def test_parallel_workers_against_a_real_mlflow_server(tmp_path, mini_dir, session_cache):
    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path,
                       "--artifacts-destination", str(tmp_path / "artifacts")) as uri:
        grid = write_grid(tmp_path)
        cmd = [sys.executable, "-m", "study.cli", "run", str(grid), "--data-dir", str(mini_dir),
               "--cache-dir", str(session_cache), "--workers", "2", "--quiet", "--tracking-uri", uri,
               "--work-dir", str(tmp_path / "w")]  # models logged: artifacts go through the server
        res = subprocess.run(cmd, env=_env(uri, tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        assert "locked" not in res.stderr
        kids = children(uri)
        assert len(kids) == 8 and {r.info.status for r in kids} == {"FINISHED"}
        assert len({r.data.tags["run_key"] for r in kids}) == 8
        assert all(r.outputs.model_outputs for r in kids)


def test_ray_executor_on_a_local_instance(tracking, tmp_path, mini_dir, session_cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = write_grid(tmp_path)
    res = subprocess.run([sys.executable, "-m", "study.cli", *study_args(grid, mini_dir, session_cache,
                          "--executor", "ray", "--workers", "2", "--threads", "1", "--seeds", "1")],
                         env=_env(tracking, tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    kids = children(tracking)
    assert len(kids) == 4 and {r.info.status for r in kids} == {"FINISHED"}


def test_mlproject_main_runs_filtered_cells_as_children_of_its_run(tmp_path, mini_dir):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = _env(uri, tmp_path)
    env["OPTSTUDY_CACHE_DIR"] = str(tmp_path / "cache")
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local",
           "-P", f"grid={REPO / 'experiments' / 'factorial.yaml'}", "-P", "optimizer=adam", "-P", "bn=true",
           "-P", "init=kaiming", "-P", "scheduler=step,none", "-P", "seeds=2", "-P", "epochs=1",
           "-P", "train_limit=100", "-P", "test_limit=40", "-P", f"data_dir={mini_dir}"]
    res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = all_runs(uri)
    (parent,) = [r for r in runs if r.data.tags.get("mlflow.project.entryPoint") == "main"]
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in kids) == ["adam-bn-kaiming-none-s0", "adam-bn-kaiming-none-s1",
                                                      "adam-bn-kaiming-step-s0", "adam-bn-kaiming-step-s1"]
    assert {r.info.status for r in kids} == {"FINISHED"} and parent.info.status == "FINISHED"
    assert len(runs) == 5  # the parent and its children, nothing else


def test_seed_batched_study_equals_one_run_per_seed(tracking, tmp_path, mini_dir, session_cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = write_grid(tmp_path, epochs=2)
    results = {}
    for mode in ("off", "2"):
        uri = f"sqlite:///{tmp_path / f'{mode}.db'}"
        res = CliRunner().invoke(main, study_args(grid, mini_dir, session_cache, "--threads", "1", "--tracking-uri", uri,
                                                  "--seed-batch", mode, "--work-dir", str(tmp_path / mode)))
        assert res.exit_code == 0, res.output
        runs = children(uri)
        assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}
        assert {r.data.tags.get("seed_batch") for r in runs} == ({None} if mode == "off" else {"2"})
        results[mode] = by_key(runs)
    assert set(results["off"]) == set(results["2"])
    client_off = MlflowClient(f"sqlite:///{tmp_path / 'off.db'}")
    client_b = MlflowClient(f"sqlite:///{tmp_path / '2.db'}")
    for key, r in results["off"].items():
        b = results["2"][key]
        for m in ("final_test_accuracy", "final_test_loss", "final_train_loss"):
            assert r.data.metrics[m] == b.data.metrics[m], (key, m)
        hist = lambda c, run: [(x.step, x.value) for x in c.get_metric_history(run.info.run_id, "train_loss")]  # noqa: E731
        assert hist(client_off, r) == hist(client_b, b)


def test_grouping_of_seeds(mini_data):
    from study.grid import load_grid
    from study.runner import StudyError, group_specs, plan

    g = load_grid(REPO / "experiments" / "smoke.yaml")
    specs = plan(g, g.cells, [0, 1, 2, 3], mini_data.info.fingerprint, {})
    assert [len(x) for x in group_specs(specs, "off", 2, "cpu")] == [1] * 16
    auto = group_specs(specs, "auto", 2, "cpu")
    assert [len(x) for x in auto] == [4] * 4
    assert all(len({s.cfg.cell for s in grp}) == 1 for grp in auto)  # a group is one cell
    assert sorted(s.run_key for grp in auto for s in grp) == sorted(s.run_key for s in specs)
    # fewer cells than workers: auto splits the seeds so that every worker has a group
    one_cell = [s for s in specs if s.cfg.cell == specs[0].cfg.cell]
    assert [len(x) for x in group_specs(one_cell, "auto", 2, "cpu")] == [2, 2]
    assert [len(x) for x in group_specs(specs, 3, 1, "cpu")] == [2, 2] * 4  # at most 3, evenly
    with pytest.raises(StudyError, match="seed_batch=0"):
        group_specs(specs, 0, 1, "cpu")


def test_grouping_of_the_factorial(mini_data):
    """Cells that differ in init, or in schedules that train alike, share groups of at most 16."""
    from study.batched import check_batchable, group_fields
    from study.grid import load_grid
    from study.runner import group_specs, plan

    g = load_grid(REPO / "experiments" / "factorial.yaml")
    specs = plan(g, g.cells, list(range(5)), mini_data.info.fingerprint, {})
    groups = group_specs(specs, "auto", 2, "cpu")
    # per optimizer x BN: {none, step(30)} x 3 inits x 5 seeds = 30 -> 15 + 15; exponential: 15
    assert len(groups) == 8 * 3 and {len(grp) for grp in groups} == {15}
    assert sorted(s.run_key for grp in groups for s in grp) == sorted(s.run_key for s in specs)
    for grp in groups:
        check_batchable([s.cfg for s in grp])
        scheds = {s.cfg.scheduler for s in grp}
        assert scheds <= {"none", "step"} or scheds == {"exponential"}
        assert len({(s.cfg.optimizer, s.cfg.bn) for s in grp}) == 1
    assert any(len({s.cfg.init for s in grp}) > 1 for grp in groups)
    assert [len(x) for x in group_specs(specs, "auto", 2, "cuda")] == [30, 15] * 8
    with_interval = plan(g, g.cells, [0], mini_data.info.fingerprint, {"scheduler_interval": "batch"})
    # per batch, before the data are known, StepLR and no scheduler are kept apart
    assert {len(x) for x in group_specs(with_interval, "auto", 1, "cpu")} == {3}
    assert len({repr(group_fields(s.cfg)) for s in with_interval}) == 24


def test_a_group_of_several_cells_tags_each_run_with_its_own_cell(tracking, tmp_path, mini_dir, session_cache,
                                                                 monkeypatch):
    """Cells differing only in init train as one group; labels and reported accuracies are each
    run's own, and the group's results are those of runs trained one at a time."""
    monkeypatch.chdir(tmp_path)
    grid = tmp_path / "labels.yaml"
    grid.write_text(textwrap.dedent("""
        name: labels
        seeds: 2
        fixed: {epochs: 1, train_limit: 80, test_limit: 40, log_every: 10}
        cells:
          - {optimizer: adam, bn: true, init: default, label: "Adam+BN", reported_accuracy: 53}
          - {optimizer: adam, bn: true, init: kaiming, label: "+Kaiming", reported_accuracy: 52}
    """))
    results = {}
    for mode in ("auto", "off"):
        uri = f"sqlite:///{tmp_path / f'{mode}.db'}"
        res = CliRunner().invoke(main, study_args(grid, mini_dir, session_cache, "--threads", "1", "--workers", "1",
                                                  "--tracking-uri", uri, "--seed-batch", mode,
                                                  "--work-dir", str(tmp_path / mode)))
        assert res.exit_code == 0, res.output
        runs = children(uri, "labels")
        assert len(runs) == 4
        for r in runs:
            kaiming = r.data.tags["init"] == "kaiming"
            assert r.data.tags["cell_label"] == ("+Kaiming" if kaiming else "Adam+BN")
            assert r.data.tags["reported_accuracy"] == ("52" if kaiming else "53")
        assert {r.data.tags.get("seed_batch") for r in runs} == ({"4"} if mode == "auto" else {None})
        results[mode] = {k: r.data.metrics["final_test_accuracy"] for k, r in by_key(runs).items()}
    assert results["auto"] == results["off"]
