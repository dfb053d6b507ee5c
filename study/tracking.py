"""One cell and seed as one complete MLflow run: params, tags, dataset, curves, model.

Everything that can fail before training (bad config, missing data) fails before a run is
created, so a mistake never leaves a half-logged run behind. Inside ``mlflow run`` the cell
logs into the run that ``mlflow run`` created (``MLFLOW_RUN_ID``), never a second one.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import torch
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from .config import TrainConfig, run_key
from .data import Cifar10, DataInfo, load_cifar10, prepare
from .train import TrainResult, set_threads, train

REPO_ROOT = Path(__file__).resolve().parent.parent
MLFLOW_BATCH = 1000  # MLflow accepts at most 1000 metrics per log_batch call


@dataclass
class RunOutcome:
    run_id: str
    run_key: str
    status: str  # "FINISHED" or "FAILED"
    result: TrainResult | None
    error: str | None = None


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, str]:
    """The git commit of the code that ran, and whether the work tree had changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    return {"git_commit": commit, "git_dirty": str(dirty).lower()}


def run_tags(cfg: TrainConfig, info: DataInfo, key: str, threads: int) -> dict[str, str]:
    """Tags that make a run findable in the UI (``tags.optimizer = 'adam'``) and by the runner."""
    return {
        "run_key": key, "cell": cfg.cell, "seed": str(cfg.seed),
        "optimizer": cfg.optimizer, "bn": str(cfg.bn).lower(), "init": cfg.init,
        "scheduler": cfg.scheduler, "scheduler_interval": cfg.effective_interval,
        "data_layout": info.layout, "data_path": info.path, "data_fingerprint": info.fingerprint,
        "data_encoding": info.encoding, "torch_version": torch.__version__, "device": cfg.device,
        "torch_threads": str(threads), "python_version": platform.python_version(),
        **code_version(),
    }


def run_params(cfg: TrainConfig) -> dict[str, str]:
    """The whole config as MLflow params (bools as true/false, unset values as "")."""
    params = {k: ("" if v is None else str(v).lower() if isinstance(v, bool) else v)
              for k, v in asdict(cfg).items()}
    params["resolved_init_seed"] = cfg.resolved_init_seed
    params["resolved_data_seed"] = cfg.resolved_data_seed
    return params


def log_dataset(client: MlflowClient, run_id: str, info: DataInfo, n_train: int, n_test: int) -> None:
    """Record the data as MLflow dataset inputs (the run's 'Datasets' panel): train and test."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for split, context, n in (("train", "training", n_train), ("test", "testing", n_test)):
        ds = MetaDataset(LocalArtifactDatasetSource(f"{info.path}/{split}"),
                         name=f"cifar10-{info.encoding}-{split}", digest=info.fingerprint[:16])
        tags = {"mlflow.data.context": context, "examples": str(n), "layout": info.layout,
                "fingerprint": info.fingerprint}
        inputs.append(DatasetInput(ds._to_mlflow_entity(), [InputTag(k, v) for k, v in tags.items()]))
    for attempt in range(5):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except mlflow.exceptions.MlflowException as exc:
            # Two workers registering the same dataset at once race on MLflow's unique
            # (experiment, name, digest) row; the loser finds the row on the next try.
            if "UNIQUE constraint" not in str(exc) and "Duplicate entry" not in str(exc) or attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))


class _MetricBuffer:
    """Collect metrics and write them in batches: a few database writes per epoch, not per point."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client, self.run_id, self.pending = client, run_id, []

    def __call__(self, name: str, value: float, step: int) -> None:
        self.pending.append(Metric(name, value, int(time.time() * 1000), step))
        if name == "epoch_seconds":  # the last metric of each epoch: flush, so the UI is live
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self.pending), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, metrics=self.pending[i:i + MLFLOW_BATCH])
        self.pending = []


def log_model(model: torch.nn.Module) -> None:
    """Log the trained model with a signature and input example, and explicit requirements
    (inferring them would import-scan the environment and cost more than a short run)."""
    import mlflow.pytorch
    import numpy as np
    from mlflow.models import infer_signature

    model = model.cpu().eval()
    example = np.zeros((2, 3, 32, 32), dtype=np.float32)  # batch 2: export keeps the batch dim dynamic
    with torch.inference_mode():
        out = model(torch.from_numpy(example)).numpy()
    mlflow.pytorch.log_model(model, name="model", signature=infer_signature(example, out),
                             input_example=example, pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])


def run_cell(cfg: TrainConfig, *, data: Cifar10 | None = None, data_dir: str | Path | None = None,
             cache_dir: str | Path | None = None, log_model_artifact: bool = True,
             checkpoint: Path | None = None, parent_run_id: str | None = None,
             experiment_id: str | None = None, extra_tags: dict[str, str] | None = None,
             progress: bool = False) -> RunOutcome:
    """Train one cell for one seed inside an MLflow run and log everything about it.

    Args:
      cfg: the run's settings (already validated by :class:`TrainConfig`).
      data: decoded CIFAR-10; loaded from ``data_dir`` / ``cache_dir`` when not given. Loading
        happens before the run is created, so missing data leaves no run behind.
      log_model_artifact: log the trained model with ``mlflow.pytorch``.
      checkpoint: per-epoch checkpoint file to resume from and to write (see :func:`train`).
      parent_run_id: make this a nested child of that run (a study's parent run).
      experiment_id: the experiment to log to (default: the active one).
      extra_tags: more tags (e.g. the study's name).
      progress: show a progress bar.

    Returns:
      A :class:`RunOutcome`. A diverged run ends with status FAILED and tags
      ``diverged=true`` and ``diverged_step``; an exception marks the run FAILED (KILLED on
      Ctrl-C) and is re-raised.
    """
    if data is None:
        data = load_cifar10(data_dir, cache_dir=cache_dir)
    threads = set_threads(cfg.threads)
    prepared = prepare(data, train_limit=cfg.train_limit, test_limit=cfg.test_limit,
                       subset_seed=cfg.subset_seed, device=cfg.device)
    key = run_key(cfg, data.info.fingerprint)
    tags = {**run_tags(cfg, data.info, key, threads), **(extra_tags or {})}

    client = MlflowClient()
    active = mlflow.active_run()
    run = mlflow.start_run(run_name=cfg.run_name, experiment_id=experiment_id,
                           parent_run_id=parent_run_id, nested=active is not None and parent_run_id is None,
                           tags=tags, description=_description(cfg, data.info))
    run_id = run.info.run_id
    try:
        # `mlflow run` created this run without our name: give it the readable one.
        mlflow.set_tag("mlflow.runName", cfg.run_name)
        _log_inputs(client, run_id, cfg, data.info, prepared)
        result = train(cfg, prepared, sink=_MetricBuffer(client, run_id), checkpoint=checkpoint,
                       run_key=key, progress=progress)
        outcome = _finish(client, run_id, key, cfg, result, log_model_artifact)
        mlflow.end_run(status=outcome.status)
        return outcome
    except KeyboardInterrupt:
        mlflow.set_tag("interrupted", "true")
        mlflow.end_run(status="KILLED")
        raise
    except BaseException as exc:
        try:
            mlflow.set_tag("error", f"{type(exc).__name__}: {exc}"[:5000])
        finally:
            mlflow.end_run(status="FAILED")
        raise


def run_cell_group(cfgs: list[TrainConfig], *, data: Cifar10, experiment_id: str,
                   log_model_artifact: bool = True, checkpoint: Path | None = None,
                   parent_run_id: str | None = None,
                   extra_tags: list[dict[str, str]] | None = None) -> list[RunOutcome]:
    """Train K runs as one stacked model (:func:`study.batched.train_batched`), each logged as
    its own complete MLflow run, exactly as :func:`run_cell` logs it.

    Runs are tagged ``seed_batch=K`` (not part of the run key: a run's result does not depend on
    its group). An exception marks every run of the group FAILED (KILLED on Ctrl-C) and is
    re-raised. ``extra_tags``: more tags for each run, one dict per config.
    """
    from mlflow.tracking.context.registry import resolve_tags

    from .batched import train_batched

    threads = set_threads(cfgs[0].threads)
    prepared = prepare(data, train_limit=cfgs[0].train_limit, test_limit=cfgs[0].test_limit,
                       subset_seed=cfgs[0].subset_seed, device=cfgs[0].device)
    client = MlflowClient()
    keys = [run_key(c, data.info.fingerprint) for c in cfgs]
    run_ids: list[str] = []
    try:
        for cfg, key, more in zip(cfgs, keys, extra_tags or [{}] * len(cfgs)):
            tags = {**run_tags(cfg, data.info, key, threads), **more,
                    "seed_batch": str(len(cfgs)), "mlflow.runName": cfg.run_name,
                    "mlflow.note.content": _description(cfg, data.info)}
            if parent_run_id:
                tags["mlflow.parentRunId"] = parent_run_id
            run = client.create_run(experiment_id, run_name=cfg.run_name, tags=resolve_tags(tags))
            run_ids.append(run.info.run_id)
            _log_inputs(client, run.info.run_id, cfg, data.info, prepared)
        buffers = [_MetricBuffer(client, rid) for rid in run_ids]
        results = train_batched(cfgs, prepared, sinks=buffers, checkpoint=checkpoint, run_keys=keys)
        outcomes = []
        for buf, rid, key, cfg, result in zip(buffers, run_ids, keys, cfgs, results):
            buf.flush()
            outcome = _finish(client, rid, key, cfg, result, log_model_artifact)
            client.set_terminated(rid, status=outcome.status)
            outcomes.append(outcome)
        return outcomes
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        for rid in run_ids:
            try:
                client.set_tag(rid, "interrupted" if status == "KILLED" else "error",
                               "true" if status == "KILLED" else f"{type(exc).__name__}: {exc}"[:5000])
                client.set_terminated(rid, status=status)
            except Exception:
                pass
        raise


def _log_inputs(client: MlflowClient, run_id: str, cfg: TrainConfig, info: DataInfo, prepared) -> None:
    """Params and dataset inputs of a run that has just been created."""
    # `mlflow run` has already logged its -P values (MLflow forbids changing a param); they
    # say the same as ours, so ours fill in only the rest.
    already = client.get_run(run_id).data.params
    from mlflow.entities import Param

    params = [Param(k, str(v)) for k, v in run_params(cfg).items() if k not in already]
    for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=params[i:i + 100])
    log_dataset(client, run_id, info, len(prepared.train_y), len(prepared.test_y))


def _finish(client: MlflowClient, run_id: str, key: str, cfg: TrainConfig, result: TrainResult,
            log_model_artifact: bool) -> RunOutcome:
    """Log a trained run's summary, tags and model; return its outcome (status not yet set)."""
    summary = {
        "train_seconds": result.train_seconds, "steps_per_second": result.steps_per_second,
        "examples_per_second": result.steps_per_second * cfg.batch_size,
        "steps": result.steps, "epochs_completed": result.epochs_completed,
    }
    if not result.diverged:
        summary.update(final_test_accuracy=result.test_accuracy, final_test_loss=result.test_loss,
                       final_train_loss=result.final_train_loss)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, result.steps) for k, v in summary.items()])
    if result.resumed_from_epoch:
        client.set_tag(run_id, "resumed_from_epoch", str(result.resumed_from_epoch))
    if result.diverged:
        client.set_tag(run_id, "diverged", "true")
        client.set_tag(run_id, "diverged_step", str(result.diverged_step))
        return RunOutcome(run_id, key, "FAILED", result, f"diverged at step {result.diverged_step}")
    client.set_tag(run_id, "diverged", "false")
    if log_model_artifact and result.model is not None:
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            log_model(result.model)
        else:
            with mlflow.start_run(run_id=run_id, nested=active is not None):
                log_model(result.model)
    return RunOutcome(run_id, key, "FINISHED", result)


def _description(cfg: TrainConfig, info: DataInfo) -> str:
    return (f"Cell `{cfg.cell}`, seed {cfg.seed}: {cfg.optimizer}, "
            f"{'CNNWithBN' if cfg.bn else 'CNN'}, init {cfg.init}, scheduler {cfg.scheduler} "
            f"(stepped: {cfg.effective_interval}), lr {cfg.lr}, batch {cfg.batch_size}, "
            f"{cfg.epochs} epochs, on CIFAR-10 ({info.layout}, {info.encoding}, "
            f"fingerprint {info.fingerprint[:12]}).")


def configure_tracking(tracking_uri: str | None) -> None:
    """Use ``tracking_uri`` if given (else ``MLFLOW_TRACKING_URI``, else MLflow's default)."""
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
