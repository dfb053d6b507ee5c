"""Run a study: every cell of a grid over seeds, idempotent, resumable, in parallel.

The driver (``study run`` or the MLproject's ``main``) owns one parent MLflow run per study
and dispatches one child run per cell x seed to an executor:

- ``local``: worker processes on this machine (``--workers W``), torch threads per worker so
  that workers x threads = cores (overridable with ``--threads``);
- ``ray``: Ray tasks on a local instance or a cluster (``--ray-address``), logging to a shared
  tracking server.

Resuming: each child is identified by its ``run_key`` (config + data fingerprint). A rerun
skips keys that already have a FINISHED run in the study, marks runs left RUNNING by a killed
driver as KILLED (tag ``interrupted=true``), and runs the rest again, resuming each from its
last per-epoch checkpoint in the work directory. Only one driver per study runs at a time (a
lock in the work directory), so a key is never dispatched twice and never FINISHED twice.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import TrainConfig, run_key
from .grid import Cell, Grid

EXECUTORS = ("local", "ray")


class StudyError(RuntimeError):
    """The study cannot start (another driver holds it, bad tracking set-up...)."""


@dataclass
class RunSpec:
    """One child run to do: a cell, a seed, its config and key."""

    cell: Cell
    cfg: TrainConfig
    run_key: str


@dataclass
class StudySummary:
    study: str
    parent_run_id: str
    total: int
    skipped: int  # already FINISHED before this invocation
    finished: int  # finished by this invocation
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run name, reason)
    interrupted_marked: int = 0  # runs found RUNNING from a dead driver and marked KILLED
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and self.skipped + self.finished == self.total


def plan(grid: Grid, cells: list[Cell], seeds: list[int], fingerprint: str,
         overrides: dict[str, Any]) -> list[RunSpec]:
    """Every (cell, seed) of the study as a RunSpec, cell-major."""
    specs = []
    for cell in cells:
        for seed in seeds:
            cfg = cell.config(seed, **overrides)
            specs.append(RunSpec(cell, cfg, run_key(cfg, fingerprint)))
    return specs


def group_specs(specs: list[RunSpec], seed_batch: str | int, workers: int, device: str) -> list[list[RunSpec]]:
    """Split the runs to do into groups, each trained as one stacked model.

    Runs may share a group where :func:`study.batched.group_fields` agree: the seeds of one
    cell, and of cells that differ only in init or in schedules that give the same learning rate
    at every step (at the lecture's budget, no scheduler and StepLR(step_size=30)).
    ``seed_batch`` is ``"off"`` (one run per group), an int K (at most K runs per group) or
    ``"auto"``: at most :func:`study.batched.auto_group_size` runs per group, split further
    while there are fewer groups than workers, so no worker idles. Groups are as even as
    possible: 30 runs in groups of at most 16 make two groups of 15.
    """
    from .batched import auto_group_size, group_fields

    buckets: dict[str, list[RunSpec]] = {}
    for s in specs:
        buckets.setdefault(repr(sorted(group_fields(s.cfg).items())), []).append(s)
    if seed_batch == "off":
        size = 1
    elif seed_batch == "auto":
        size = min(auto_group_size(device), max((len(v) for v in buckets.values()), default=1))
        while size > 1 and sum(-(-len(v) // size) for v in buckets.values()) < workers:
            size -= 1
    else:
        size = int(seed_batch)
        if size < 1:
            raise StudyError(f"seed_batch={seed_batch!r} is not allowed; use auto, off or a whole number >= 1")
    groups = []
    for v in buckets.values():
        n = -(-len(v) // size)
        bounds = [round(i * len(v) / n) for i in range(n + 1)]
        groups += [v[a:b] for a, b in zip(bounds, bounds[1:])]
    return groups


def default_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def absolute_tracking_uri(uri: str) -> str:
    """Make a relative ``sqlite:///file.db`` absolute, so workers elsewhere find the same file."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


# ---------------------------------------------------------------------------------------
# The worker side: one child run. Plain dicts in and out, so that process pools and Ray can
# ship them.
# ---------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=2)
def _data(data_dir: str | None, cache_dir: str | None):
    from .data import load_cifar10

    return load_cifar10(data_dir, cache_dir=cache_dir)


def execute_run(task: dict) -> dict:
    """Train and log one child run; never raises (a failure is reported in the result)."""
    import mlflow

    from .train import set_threads
    from .tracking import run_cell

    os.environ.pop("MLFLOW_RUN_ID", None)  # never resume the parent by accident
    mlflow.set_tracking_uri(task["tracking_uri"])
    cfg = TrainConfig(**task["config"])
    set_threads(cfg.threads)
    started = time.perf_counter()
    checkpoint = Path(task["checkpoint"])
    try:
        outcome = run_cell(cfg, data=_data(task["data_dir"], task["cache_dir"]),
                           log_model_artifact=task["log_model"], checkpoint=checkpoint,
                           parent_run_id=task["parent_run_id"], experiment_id=task["experiment_id"],
                           extra_tags=task["tags"])
    except Exception as exc:  # the run is already marked FAILED with an `error` tag
        return {"name": cfg.run_name, "run_key": task["run_key"], "status": "FAILED",
                "error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - started}
    if outcome.status == "FINISHED":
        checkpoint.unlink(missing_ok=True)
    r = outcome.result
    return {"name": cfg.run_name, "run_key": outcome.run_key, "run_id": outcome.run_id,
            "status": outcome.status, "error": outcome.error,
            "test_accuracy": r.test_accuracy if r else float("nan"),
            "seconds": time.perf_counter() - started}


def execute_group(task: dict) -> list[dict]:
    """Train a group of runs as one stacked model; one result per run, never raises."""
    import mlflow

    from .train import set_threads
    from .tracking import run_cell_group

    if len(task["configs"]) == 1:
        one = {k: v for k, v in task.items() if k not in ("configs", "run_keys", "tags")}
        return [execute_run({**one, "config": task["configs"][0], "run_key": task["run_keys"][0],
                             "tags": task["tags"][0]})]
    os.environ.pop("MLFLOW_RUN_ID", None)
    mlflow.set_tracking_uri(task["tracking_uri"])
    cfgs = [TrainConfig(**c) for c in task["configs"]]
    set_threads(cfgs[0].threads)
    started = time.perf_counter()
    checkpoint = Path(task["checkpoint"])
    try:
        outcomes = run_cell_group(cfgs, data=_data(task["data_dir"], task["cache_dir"]),
                                  experiment_id=task["experiment_id"], log_model_artifact=task["log_model"],
                                  checkpoint=checkpoint, parent_run_id=task["parent_run_id"],
                                  extra_tags=task["tags"])
    except Exception as exc:  # every run of the group is already marked FAILED
        return [{"name": c.run_name, "run_key": k, "status": "FAILED", "error": f"{type(exc).__name__}: {exc}",
                 "seconds": time.perf_counter() - started} for c, k in zip(cfgs, task["run_keys"])]
    checkpoint.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    return [{"name": c.run_name, "run_key": o.run_key, "run_id": o.run_id, "status": o.status, "error": o.error,
             "test_accuracy": o.result.test_accuracy if o.result else float("nan"), "seconds": seconds}
            for c, o in zip(cfgs, outcomes)]


def _init_worker(env: dict[str, str]) -> None:
    os.environ.update(env)
    os.environ.pop("MLFLOW_RUN_ID", None)


def _run_local(tasks: list[dict], workers: int) -> Iterator[list[dict]]:
    if workers <= 1:
        for t in tasks:
            yield execute_group(t)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    env = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    # spawn: a fresh interpreter per worker (fork would copy torch's thread pools and locks)
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=_init_worker, initargs=(env,)) as pool:
        futures = [pool.submit(execute_group, t) for t in tasks]
        for f in as_completed(futures):
            yield f.result()


def _run_ray(tasks: list[dict], address: str | None, workers: int) -> Iterator[list[dict]]:
    import ray

    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers * max(1, tasks[0]["configs"][0]["threads"] or 1) if tasks else None,
                     include_dashboard=False, log_to_driver=False)
    remote = ray.remote(execute_group)
    pending = [remote.options(num_cpus=t["configs"][0]["threads"] or 1).remote(t) for t in tasks]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            yield ray.get(ref)


# ---------------------------------------------------------------------------------------
# The driver side
# ---------------------------------------------------------------------------------------

def _find_parent(client, experiment_id: str, study: str):
    runs = client.search_runs([experiment_id], f"tags.study_parent = '{study}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def _children(client, experiment_id: str, study: str) -> list:
    out, token = [], None
    while True:
        page = client.search_runs([experiment_id], f"tags.study = '{study}'",
                                  max_results=1000, page_token=token)
        out += page
        token = page.token
        if not token:
            return out


def _describe(study: str, grid: Grid, cells: list[Cell], seeds: list[int], overrides: dict) -> str:
    lines = [f"Study **{study}** from `{grid.path}`: {len(cells)} cells x {len(seeds)} seeds = "
             f"{len(cells) * len(seeds)} runs (seeds {', '.join(map(str, seeds))}).", ""]
    if grid.description:
        lines += [grid.description, ""]
    if overrides:
        lines += ["Overrides: " + ", ".join(f"{k}={v}" for k, v in overrides.items()), ""]
    lines += ["Cells:"] + [f"- `{c.name}`" + (f" ({c.label})" if c.label else "") for c in cells]
    return "\n".join(lines)


def run_study(grid: Grid, cells: list[Cell], *, seeds: list[int], overrides: dict[str, Any],
              study: str | None = None, workers: int = 1, threads: int | None = None,
              device: str = "cpu", executor: str = "local", ray_address: str | None = None,
              experiment: str | None = None, work_dir: str | Path = "study-work",
              data_dir: str | None = None, cache_dir: str | None = None, log_model: bool = True,
              seed_batch: str | int = "off", on_result: Callable[[dict, int, int], None] | None = None) -> StudySummary:
    """Run (or resume) a study and return its summary. See the module docstring.

    Args:
      grid: the loaded grid; ``cells``: the cells of it to run (after filters).
      seeds: the seeds to run each cell with.
      overrides: settings applied to every cell (e.g. ``epochs``, ``train_limit``).
      study: the study's name (default: the grid's name); children are tagged ``study=NAME``.
      workers, threads, device: parallelism; threads default to cores // workers.
      executor: ``local`` or ``ray``; ``ray_address`` for an existing cluster.
      experiment: MLflow experiment name (ignored inside ``mlflow run``, which sets it).
      work_dir: checkpoints and the driver lock live under ``work_dir/<study>``.
      seed_batch: ``off``, ``auto`` or K: train up to K runs as one stacked model
        (:func:`group_specs`); a run's result does not depend on its group (bit for bit on CPU).
      on_result: called as ``on_result(result, done, total)`` after each run, for progress.
    """
    import mlflow
    from filelock import FileLock, Timeout
    from mlflow.tracking import MlflowClient

    if executor not in EXECUTORS:
        raise StudyError(f"executor={executor!r} is not allowed; choose one of: {', '.join(EXECUTORS)}")
    study = study or grid.name
    started = time.perf_counter()
    data = _data(data_dir, cache_dir)  # fails before any MLflow run exists if data are missing
    threads = threads or default_threads(workers)
    overrides = dict(overrides)
    specs = plan(grid, cells, seeds, data.info.fingerprint,
                 {**overrides, "threads": threads, "device": device})

    study_dir = Path(work_dir) / study
    study_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(study_dir / "driver.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise StudyError(f"another `study run` of study {study!r} is running (lock {study_dir / 'driver.lock'}); "
                         "wait for it or stop it first") from None
    try:
        tracking_uri = absolute_tracking_uri(mlflow.get_tracking_uri())
        mlflow.set_tracking_uri(tracking_uri)
        client = MlflowClient(tracking_uri)
        parent_id = os.environ.pop("MLFLOW_RUN_ID", None)  # inside `mlflow run`: its run is the parent
        if parent_id:
            experiment_id = client.get_run(parent_id).info.experiment_id
        else:
            name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "optstudy"
            exp = client.get_experiment_by_name(name)
            experiment_id = exp.experiment_id if exp else client.create_experiment(name)
            parent = _find_parent(client, experiment_id, study)
            if parent is not None:
                parent_id = parent.info.run_id
                client.update_run(parent_id, status="RUNNING")
            else:
                parent_id = client.create_run(experiment_id, run_name=study).info.run_id
        client.set_tag(parent_id, "study_parent", study)
        client.set_tag(parent_id, "mlflow.runName", study)
        client.set_tag(parent_id, "mlflow.note.content", _describe(study, grid, cells, seeds, overrides))
        client.set_tag(parent_id, "grid", str(grid.path))
        client.set_tag(parent_id, "data_fingerprint", data.info.fingerprint)
        resolved = {"study": study, "grid": str(grid.path), "seeds": seeds, "overrides": overrides,
                    "workers": workers, "threads": threads, "device": device, "executor": executor,
                    "seed_batch": seed_batch,
                    "data": asdict(data.info),
                    "cells": [{"cell": c.name, **c.settings,
                               **({"reported_accuracy": c.reported_accuracy} if c.reported_accuracy is not None else {}),
                               **({"label": c.label} if c.label else {})} for c in cells]}
        client.log_text(parent_id, yaml.safe_dump(resolved, sort_keys=False), "study/resolved.yaml")
        client.log_artifact(parent_id, str(grid.path), "study")

        # What is already there: skip FINISHED keys, mark orphans of a killed driver.
        finished_keys, marked = set(), 0
        for r in _children(client, experiment_id, study):
            key = r.data.tags.get("run_key")
            if r.info.status == "FINISHED":
                finished_keys.add(key)
            elif r.info.status == "RUNNING":  # we hold the study lock: nobody is running it
                client.set_tag(r.info.run_id, "interrupted", "true")
                client.set_terminated(r.info.run_id, status="KILLED")
                marked += 1
        todo = [s for s in specs if s.run_key not in finished_keys]
        summary = StudySummary(study, parent_id, total=len(specs), skipped=len(specs) - len(todo),
                               finished=0, interrupted_marked=marked)

        def tags(spec: RunSpec) -> dict[str, str]:
            return {"study": study, "grid": grid.name,
                    **({"reported_accuracy": str(spec.cell.reported_accuracy)}
                       if spec.cell.reported_accuracy is not None else {}),
                    **({"cell_label": spec.cell.label} if spec.cell.label else {})}

        def checkpoint(group: list[RunSpec]) -> str:
            name = group[0].run_key if len(group) == 1 else \
                "group-" + hashlib.sha256("|".join(s.run_key for s in group).encode()).hexdigest()[:20]
            return str((study_dir / "checkpoints" / f"{name}.pt").resolve())

        tasks = [{
            "configs": [asdict(s.cfg) for s in group], "run_keys": [s.run_key for s in group],
            "tracking_uri": tracking_uri, "experiment_id": experiment_id, "parent_run_id": parent_id,
            "checkpoint": checkpoint(group), "data_dir": data_dir, "cache_dir": cache_dir,
            "log_model": log_model, "tags": [tags(s) for s in group],  # a group may hold several cells
        } for group in sorted(group_specs(todo, seed_batch, workers, device), key=len, reverse=True)]
        # largest groups first: the workers finish together instead of one waiting on the last
        results = (_run_ray(tasks, ray_address, workers) if executor == "ray"
                   else _run_local(tasks, workers))
        done = 0
        for group_results in results:
            for res in group_results:
                done += 1
                if res["status"] == "FINISHED":
                    summary.finished += 1
                else:
                    summary.failed.append((res["name"], res.get("error") or res["status"]))
                if on_result:
                    on_result(res, done, len(todo))
        summary.seconds = time.perf_counter() - started
        client.log_metric(parent_id, "runs_finished", summary.skipped + summary.finished)
        client.log_metric(parent_id, "runs_failed", len(summary.failed))
        client.set_terminated(parent_id, status="FINISHED" if summary.ok else "FAILED")
        return summary
    except BaseException:
        if "parent_id" in locals() and parent_id:
            try:
                MlflowClient().set_terminated(parent_id, status="KILLED" if sys.exc_info()[0] is KeyboardInterrupt else "FAILED")
            except Exception:
                pass
        raise
    finally:
        lock.release()
