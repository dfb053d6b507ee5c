"""The training loop for one cell and seed. No MLflow in here: see :mod:`study.tracking`.

The loop reads top to bottom: schedule, forward, backward, step, log, evaluate, checkpoint.
Data are preloaded float tensors; each epoch draws one permutation from the run's data
generator and slices batches from the permuted copy, so no per-sample work happens in the loop.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .config import TrainConfig
from .data import Prepared
from .models import build_model
from .optim import make_optimizer, scheduled_lr

# sink(name, value, step): where metrics go as they are produced (MLflow, a list, nothing).
MetricSink = Callable[[str, float, int], None]


@dataclass
class TrainResult:
    """What one run produced."""

    test_accuracy: float  # percent, after the last completed epoch (nan if none completed)
    test_loss: float
    final_train_loss: float  # mean train loss over the last epoch
    diverged: bool
    diverged_step: int | None  # global batch index of the first non-finite loss
    steps: int  # optimizer steps taken (global batch index of the last step + 1)
    epochs_completed: int
    train_seconds: float  # time spent in training steps (evaluation excluded)
    steps_per_second: float
    history: list[tuple[str, float, int]] = field(default_factory=list)  # (name, value, step)
    resumed_from_epoch: int = 0
    model: torch.nn.Module | None = None


def set_threads(threads: int | None) -> int:
    """Fix torch's intra-op thread count (bit-reproducibility on CPU depends on it)."""
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def set_deterministic(device: torch.device) -> None:
    """On CUDA, make cuDNN pick deterministic algorithms (and not benchmark-select them): the
    same config and seed then give the same result on the same GPU, as on CPU. Like
    :func:`set_threads`, this sets process-wide state and leaves it set."""
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


@torch.inference_mode()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 1000) -> tuple[float, float]:
    """(accuracy in percent, mean cross-entropy) of ``model`` on (x, y), in large batches."""
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for i in range(0, len(y), batch_size):
        out = model(x[i:i + batch_size])
        loss_sum += F.cross_entropy(out, y[i:i + batch_size], reduction="sum").item()
        correct += (out.argmax(1) == y[i:i + batch_size]).sum().item()
    model.train(was_training)
    return 100.0 * correct / len(y), loss_sum / len(y)


def batch_bounds(n: int, batch_size: int, *, bn: bool) -> list[tuple[int, int]]:
    """(start, stop) of each batch of an epoch. Like DataLoader(drop_last=False), except that
    a final batch of a single example is dropped for BatchNorm models, which cannot train on it."""
    bounds = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    if bn and bounds and bounds[-1][1] - bounds[-1][0] == 1:
        bounds.pop()
    return bounds


def epoch_batches(n_train: int, cfg: TrainConfig) -> list[tuple[int, int]]:
    """:func:`batch_bounds` for a config, or ValueError if the data make no batch to train on."""
    bounds = batch_bounds(n_train, cfg.batch_size, bn=cfg.bn)
    if not bounds:
        raise ValueError(f"{n_train} training example(s) make no batch a "
                         f"{'BatchNorm ' if cfg.bn else ''}model can train on; use more data")
    return bounds


def save_checkpoint(path: Path, state: dict) -> None:
    """Write a checkpoint atomically: a crash mid-write leaves the previous one intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path | None, run_key: str) -> dict | None:
    """The checkpoint at ``path`` if it exists, is readable and belongs to ``run_key``."""
    if path is None or not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        return None  # a damaged checkpoint is ignored: the run starts from scratch
    return state if state.get("run_key") == run_key else None


def train(cfg: TrainConfig, data: Prepared, *, sink: MetricSink | None = None,
          checkpoint: Path | None = None, run_key: str = "", progress: bool = False) -> TrainResult:
    """Train one cell for one seed and evaluate it after every epoch.

    Args:
      cfg: the run's settings.
      data: preloaded, normalized tensors on ``cfg.device``.
      sink: receives every metric as it is produced (``train_loss`` every ``cfg.log_every``
        batches at the global batch index; ``test_accuracy``, ``test_loss``, ``lr``,
        ``epoch_seconds``, ``train_loss_epoch`` per epoch at the epoch number, 1-based).
      checkpoint: a file to save a checkpoint to after each epoch and to resume from; a
        resumed run re-emits the metrics of the epochs it skips, so its history is complete.
      run_key: stored in the checkpoint; a checkpoint of another key is never resumed.
      progress: show a progress bar on the console.

    Returns:
      A :class:`TrainResult`. Same config and seed give bit-identical results on CPU for a
      fixed thread count.

    With ``cfg.kernels == "fast"`` the run trains as a group of one in the stacked model of
    :func:`study.batched.train_batched`, so that it computes exactly what it would in any
    seed-batched group; with ``"reference"``, the lecture's model classes train here.
    """
    if cfg.kernels == "fast":
        from .batched import train_batched

        return train_batched([cfg], data, sinks=[sink], checkpoint=checkpoint, run_keys=[run_key],
                             progress=progress)[0]
    set_threads(cfg.threads)
    device = torch.device(cfg.device)
    set_deterministic(device)
    history: list[tuple[str, float, int]] = []

    def emit(name: str, value: float, step: int) -> None:
        history.append((name, float(value), int(step)))
        if sink is not None:
            sink(name, float(value), int(step))

    model = build_model(bn=cfg.bn, init=cfg.init, init_seed=cfg.resolved_init_seed).to(device)
    opt = make_optimizer(cfg.optimizer, model.parameters(), lr=cfg.lr, beta1=cfg.beta1,
                         beta2=cfg.beta2, eps=cfg.eps)
    data_gen = torch.Generator().manual_seed(cfg.resolved_data_seed)  # batch order only
    n_train = len(data.train_y)
    bounds = epoch_batches(n_train, cfg)
    sched_steps = 0  # scheduler steps taken so far
    start_epoch, global_step = 0, 0
    test_acc = test_loss = epoch_loss = float("nan")

    state = load_checkpoint(checkpoint, run_key)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        data_gen.set_state(state["data_gen"])
        sched_steps, start_epoch, global_step = state["sched_steps"], state["epoch"], state["global_step"]
        test_acc, test_loss, epoch_loss = state["test_accuracy"], state["test_loss"], state["train_loss_epoch"]
        for name, value, step in state["history"]:
            emit(name, value, step)

    bar = _progress_bar(progress, total=cfg.epochs * len(bounds), done=start_epoch * len(bounds),
                        label=cfg.run_name)
    diverged_step: int | None = None
    train_seconds = 0.0
    steps_this_session = 0
    epochs_completed = start_epoch
    model.train()
    with bar or nullcontext():
        for epoch in range(start_epoch, cfg.epochs):
            t_epoch = time.perf_counter()
            perm = torch.randperm(n_train, generator=data_gen).to(device)
            xs, ys = data.train_x[perm], data.train_y[perm]
            running, running_n, epoch_sum = 0.0, 0, 0.0
            for start, stop in bounds:
                # schedule: the lr in effect for this step
                opt.lr = scheduled_lr(cfg.scheduler, cfg.lr, sched_steps,
                                      step_size=cfg.step_size, gamma=cfg.gamma)
                # forward
                opt.zero_grad()
                loss = F.cross_entropy(model(xs[start:stop]), ys[start:stop])
                # backward
                loss.backward()
                # step
                opt.step()
                if cfg.effective_interval == "batch":
                    sched_steps += 1
                # log
                value = loss.item()
                if not math.isfinite(value):
                    diverged_step = global_step
                    break
                running += value
                running_n += 1
                epoch_sum += value
                global_step += 1
                steps_this_session += 1
                if running_n == cfg.log_every:
                    emit("train_loss", running / running_n, global_step - 1)
                    running, running_n = 0.0, 0
                if bar is not None:
                    bar.advance()
            train_seconds += time.perf_counter() - t_epoch
            if diverged_step is not None:
                emit("diverged_step", diverged_step, diverged_step)
                break
            if running_n:
                emit("train_loss", running / running_n, global_step - 1)
            # evaluate
            epoch_loss = epoch_sum / len(bounds)
            lr_used = opt.lr
            if cfg.effective_interval == "epoch":
                sched_steps += 1
            test_acc, test_loss = evaluate(model, data.test_x, data.test_y)
            emit("train_loss_epoch", epoch_loss, epoch + 1)
            emit("test_accuracy", test_acc, epoch + 1)
            emit("test_loss", test_loss, epoch + 1)
            emit("lr", lr_used, epoch + 1)
            emit("epoch_seconds", time.perf_counter() - t_epoch, epoch + 1)
            epochs_completed = epoch + 1
            # checkpoint
            if checkpoint is not None:
                save_checkpoint(Path(checkpoint), {
                    "run_key": run_key, "epoch": epoch + 1, "global_step": global_step,
                    "sched_steps": sched_steps, "model": model.state_dict(),
                    "optimizer": opt.state_dict(), "data_gen": data_gen.get_state(),
                    "history": history, "test_accuracy": test_acc, "test_loss": test_loss,
                    "train_loss_epoch": epoch_loss,
                })
    return TrainResult(
        test_accuracy=test_acc if diverged_step is None else float("nan"),
        test_loss=test_loss if diverged_step is None else float("nan"),
        final_train_loss=epoch_loss, diverged=diverged_step is not None,
        diverged_step=diverged_step, steps=global_step, epochs_completed=epochs_completed,
        train_seconds=train_seconds,
        steps_per_second=steps_this_session / train_seconds if train_seconds > 0 else float("nan"),
        history=history, resumed_from_epoch=start_epoch, model=model,
    )


class _Bar:
    def __init__(self, total: int, done: int, label: str) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeRemainingColumn)

        self._progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                                  TimeRemainingColumn(), transient=True)
        self._task = self._progress.add_task(label, total=total, completed=done)
        self._pending = 0

    def __enter__(self):
        self._progress.start()
        return self

    def __exit__(self, *exc):
        self._progress.stop()

    def advance(self) -> None:
        self._pending += 1
        if self._pending == 200:  # refreshing per batch would cost more than the batch
            self._progress.advance(self._task, self._pending)
            self._pending = 0


def _progress_bar(enabled: bool, *, total: int, done: int, label: str) -> _Bar | None:
    import sys

    if not enabled or not sys.stderr.isatty():
        return None
    return _Bar(total, done, label)
