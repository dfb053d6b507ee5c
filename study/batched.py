"""Seed-batched training: K runs trained as one stacked model.

The seeds of a cell share everything but their initial weights and their batch order, so K of
them can run as one model whose every layer holds K independent copies side by side
(:class:`StackedCNN`). So can the seeds of cells that differ only in init, or in schedules that
give the same learning rate at every step (:func:`check_batchable`).

- linear layers are batched matmuls with weights (K, out, in) on activations (K, B, in);
- convolutions and BatchNorms hold K*C channels, seed k's C channels side by side. With the
  ``reference`` kernels they run as K ordinary calls: the very kernels of the ordinary model,
  so that every seed's result is bit for bit what :func:`study.train.train` gives. With the
  ``fast`` kernels (the default) they run as one grouped channels-last convolution and one
  BatchNorm call per layer, equal to the reference up to float rounding, and laid out so that
  a seed's result never depends on which seeds share its group or where it sits in it. Either
  way each seed's batch statistics and running statistics are its own;
- ReLU and max-pooling run once over all seeds;
- the loss is the sum over seeds of each seed's mean cross-entropy, so the gradient of seed k's
  weights is seed k's own gradient; the optimizer is :func:`study.optim.make_optimizer` on the
  stacked parameters (every rule there is element-wise with scalars the seeds share, so
  stacking K tensors applies each seed's own update, bit for bit).

One step of the stacked model replaces K tiny batch-4 steps: on a GPU it launches about as many
kernels as one of them; on a CPU it cuts the per-step Python, dispatch and optimizer overhead
and lets oneDNN's grouped convolutions work on K times wider layers
(``benchmarks/bench_batched.py``, :func:`auto_group_size`).

Every stacked tensor is seed-major along its first dim, so ``t.view(K, -1)[k]`` is seed k's part
of any parameter, buffer or optimizer state: that one rule builds, splits and retires seeds.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import TrainConfig
from .data import Prepared
from .models import CNNWithBN, build_model
from .optim import ManualAdam, make_optimizer, scheduled_lr
from .train import (MetricSink, TrainResult, _progress_bar, epoch_batches, load_checkpoint,
                    save_checkpoint, set_deterministic, set_threads)

# The fields in which the runs of one batched group may differ: each run has its own seeds and
# its own initial weights. The schedule fields may differ too where the learning rate comes out
# the same at every step (`lr_signature`): at the lecture's 2 epochs, StepLR(step_size=30)
# stepped per epoch never decays, so it trains exactly as no scheduler does.
SEED_FIELDS = ("seed", "init_seed", "data_seed")
MEMBER_FIELDS = SEED_FIELDS + ("init",)
SCHEDULE_FIELDS = ("scheduler", "scheduler_interval", "step_size", "gamma", "lr")


# ---------------------------------------------------------------------------------------
# The stacked model
# ---------------------------------------------------------------------------------------

class _StackedConv2d(nn.Module):
    """K ``Conv2d(c_in, c_out, size)`` side by side: weight (K*c_out, c_in, size, size), the
    layout of ``Conv2d(K*c_in, K*c_out, size, groups=K)``."""

    def __init__(self, k: int, c_in: int, c_out: int, size: int) -> None:
        super().__init__()
        self.k = k
        self.weight = nn.Parameter(torch.zeros(k * c_out, c_in, size, size))
        self.bias = nn.Parameter(torch.zeros(k * c_out))

    def grouped(self, x: torch.Tensor) -> torch.Tensor:
        """One grouped convolution: (B, K*c_in, H, W) -> (B, K*c_out, H', W')."""
        return F.conv2d(x, self.weight, self.bias, groups=self.k)

    def per_seed(self, xs: torch.Tensor) -> torch.Tensor:
        """K ordinary convolutions, the very calls of ``nn.Conv2d``: (K, B, c_in, H, W) ->
        (K, B, c_out, H', W')."""
        return torch.stack([F.conv2d(x, w, b) for x, w, b in
                            zip(xs, self.weight.chunk(self.k), self.bias.chunk(self.k))])


class _StackedLinear(nn.Module):
    """K ``Linear(n_in, n_out)`` side by side: weight (K, n_out, n_in), bias (K, n_out)."""

    def __init__(self, k: int, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(k, n_out, n_in))
        self.bias = nn.Parameter(torch.zeros(k, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (K, B, n_in) -> (K, B, n_out)
        # on CPU bitwise what F.linear (addmm) gives for each seed
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


def _bn_per_seed(bn: nn.modules.batchnorm._BatchNorm, xs: torch.Tensor) -> torch.Tensor:
    """BatchNorm over K*C channels run as K ordinary calls, each on one seed's (B, C, ...) batch
    with views of its C channels' weights and running statistics (updated in place)."""
    if bn.training:
        bn.num_batches_tracked.add_(1)  # as nn.BatchNorm's forward does
    k = xs.shape[0]
    chunks = zip(bn.weight.chunk(k), bn.bias.chunk(k), bn.running_mean.chunk(k), bn.running_var.chunk(k))
    return torch.stack([F.batch_norm(x, mean, var, w, b, bn.training, bn.momentum, bn.eps)
                        for x, (w, b, mean, var) in zip(xs, chunks)])


def _bn_planes(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm over K*C channels in one call, laid out so that each channel is reduced on
    its own: (B, K*C, H, W) in any memory layout -> NCHW; (K, B, F) -> (1, K*F, B, 1), the
    batch as a column per feature.

    The channels-last kernels (which torch also uses for (N, F) inputs) vectorize across
    channels and treat the last few channels of the tensor, a vector's remainder, differently:
    a seed's result would then depend on its place in the group. The NCHW kernel reduces each
    channel's plane separately, the same wherever the channel is."""
    if bn.training:
        bn.num_batches_tracked.add_(1)  # as nn.BatchNorm's forward does
    planes = x.contiguous() if x.dim() == 4 else x.permute(0, 2, 1).reshape(1, -1, x.shape[1], 1)
    y = F.batch_norm(planes, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.training,
                     bn.momentum, bn.eps)
    return y if x.dim() == 4 else y.view(x.shape[0], x.shape[2], x.shape[1]).permute(0, 2, 1)


class StackedCNN(nn.Module):
    """K copies of the lecture's CNN (``bn=False``) or CNNWithBN (``bn=True``), one per seed.

    Its state dict has the ordinary model's keys; every tensor but the shared
    ``num_batches_tracked`` is seed-major along dim 0 (see :meth:`seed_part`). Parameters are
    zeros until loaded: build it with :meth:`from_models`.

    Two ways to run the convolutions and BatchNorms, on the same weights:

    - ``grouped=False`` (the reference kernels): K ordinary calls each, the very calls of
      CNN/CNNWithBN, so that on CPU every seed computes bit for bit what its own model would
      (oneDNN's grouped convolution and the channel-vectorized BatchNorm1d kernel round
      differently); ReLU, pooling, the linear layers, the loss and the optimizer run once for
      all seeds.
    - ``grouped=True`` (the fast kernels): one grouped channels-last convolution and one
      BatchNorm call over K*C channels per layer, equal to the ordinary model up to float
      rounding; each seed's result is the same at any place in any group of two or more.

    Input: seed k's batch at ``x[k]``, (K, B, 3, 32, 32). Output: logits (K, B, 10).
    """

    def __init__(self, k: int, bn: bool, *, grouped: bool = False) -> None:
        super().__init__()
        self.k, self.bn, self.grouped = k, bn, grouped
        self.conv1 = _StackedConv2d(k, 3, 6, 5)
        self.conv2 = _StackedConv2d(k, 6, 16, 5)
        self.fc1 = _StackedLinear(k, 16 * 5 * 5, 120)
        self.fc2 = _StackedLinear(k, 120, 84)
        self.fc3 = _StackedLinear(k, 84, 10)
        if bn:
            self.bn1 = nn.BatchNorm2d(k * 6)
            self.bn2 = nn.BatchNorm2d(k * 16)
            self.bn3 = nn.BatchNorm1d(k * 120)
            self.bn4 = nn.BatchNorm1d(k * 84)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, b = x.shape[:2]
        if self.grouped:  # (B, K*C, H, W): seed k's channels side by side
            # channels-last for the convolutions (oneDNN's fastest grouped kernels here)
            h = x.permute(1, 3, 4, 0, 2).reshape(b, 32, 32, k * 3).permute(0, 3, 1, 2)
            h = self.conv1.grouped(h)
            h = _bn_planes(self.bn1, h) if self.bn else h
            # max-pool then ReLU: the same values as ReLU then max-pool (ReLU is monotone)
            # on a quarter of the elements
            h = F.relu(F.max_pool2d(h, 2, 2)).contiguous(memory_format=torch.channels_last)
            h = self.conv2.grouped(h)
            h = _bn_planes(self.bn2, h) if self.bn else h
            h = F.relu(F.max_pool2d(h, 2, 2))
            h = h.reshape(b, k, 16 * 5 * 5).transpose(0, 1)
        else:  # (K, B, C, H, W): seed k's batch at h[k]
            h = self.conv1.per_seed(x)
            h = _bn_per_seed(self.bn1, h) if self.bn else h
            h = F.max_pool2d(F.relu(h).flatten(0, 1), 2, 2).view(k, b, 6, 14, 14)
            h = self.conv2.per_seed(h)
            h = _bn_per_seed(self.bn2, h) if self.bn else h
            h = F.max_pool2d(F.relu(h).flatten(0, 1), 2, 2).view(k, b, 16 * 5 * 5)
        # (K, B, 400): each seed's x.view(-1, 16 * 5 * 5)
        bn1d = _bn_planes if self.grouped else _bn_per_seed
        h = self.fc1(h)
        h = F.relu(bn1d(self.bn3, h) if self.bn else h)
        h = self.fc2(h)
        h = F.relu(bn1d(self.bn4, h) if self.bn else h)
        return self.fc3(h)

    def seed_part(self, t: torch.Tensor, i: int) -> torch.Tensor:
        """Seed ``i``'s part of a stacked tensor (a view, flattened); a 0-dim tensor is shared."""
        return t if t.dim() == 0 else t.view(self.k, -1)[i]

    @classmethod
    def from_models(cls, models: list[nn.Module], *, grouped: bool = False) -> "StackedCNN":
        """Stack K ordinary CNNs (or K CNNWithBNs), seed i = ``models[i]``."""
        bn = isinstance(models[0], CNNWithBN)
        if any(isinstance(m, CNNWithBN) != bn for m in models):
            raise ValueError("cannot stack CNN and CNNWithBN models together")
        stacked = cls(len(models), bn, grouped=grouped)
        sds = [m.state_dict() for m in models]
        stacked.load_state_dict({
            name: sds[0][name] if t.dim() == 0  # num_batches_tracked: equal in fresh models
            else torch.stack([sd[name].reshape(-1) for sd in sds]).view(t.shape)
            for name, t in stacked.state_dict().items()})
        return stacked.to(sds[0]["conv1.weight"].device)

    def unstack(self, i: int) -> nn.Module:
        """Seed ``i``'s ordinary CNN / CNNWithBN (a copy), with its weights and BN statistics."""
        if not 0 <= i < self.k:
            raise IndexError(f"seed index {i} is out of range for {self.k} stacked seeds")
        model = build_model(bn=self.bn, init="default", init_seed=0)  # forks the RNG
        like = model.state_dict()
        model.load_state_dict({name: self.seed_part(t, i).reshape(like[name].shape)
                               for name, t in self.state_dict().items()})
        return model.to(self.conv1.weight.device).train(self.training)

    @torch.no_grad()
    def retire_seed(self, i: int, optimizer) -> None:
        """Zero seed ``i``'s weights and optimizer state (running variance 1): with zero inputs
        and a zero loss weight, a seed whose loss went non-finite then stays finite and still."""
        for name, t in self.state_dict().items():
            if t.dim():
                self.seed_part(t, i).fill_(1.0 if name.endswith("running_var") else 0.0)
        for t in _optimizer_state_tensors(optimizer):
            self.seed_part(t, i).zero_()


def _optimizer_state_tensors(opt) -> list[torch.Tensor]:
    """The per-element state tensors of a :func:`study.optim.make_optimizer` optimizer."""
    if isinstance(opt, ManualAdam):
        return opt.m + opt.v
    inner = getattr(opt, "opt", None)  # torch.optim behind _TorchOptim
    if inner is None:
        return []  # ManualSGD: no state
    return [v for st in inner.state.values() for v in st.values()
            if torch.is_tensor(v) and v.dim() > 0]


@torch.inference_mode()
def evaluate_stacked(model: StackedCNN, x: torch.Tensor, y: torch.Tensor,
                     batch_size: int = 1000) -> list[tuple[float, float]]:
    """(accuracy in percent, mean cross-entropy) of each seed on (x, y), as
    :func:`study.train.evaluate` computes them, all K seeds in one pass per batch."""
    was_training = model.training
    model.eval()
    k = model.k
    correct = torch.zeros(k, dtype=torch.long, device=y.device)
    loss_sums = [0.0] * k
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        out = model(xb.expand(k, *xb.shape))  # every seed sees the same batch: (K, n, 10)
        # one call per seed: the summation order of evaluate()'s, accumulated as Python floats
        sums = torch.stack([F.cross_entropy(o, yb, reduction="sum") for o in out]).tolist()
        loss_sums = [a + b for a, b in zip(loss_sums, sums)]
        correct += (out.argmax(2) == yb).sum(1)
    model.train(was_training)
    return [(100.0 * c / len(y), s / len(y)) for c, s in zip(correct.tolist(), loss_sums)]


def seed_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each seed's mean cross-entropy, (K, B, 10) and (K, B) -> (K,), differentiable.

    The gradient is exactly that of ``F.cross_entropy`` per seed. On CPU the values are too:
    for B <= 16 the row sums follow the order of aten's nll_loss (its cascade sum adds
    element 0 last); plain ``mean`` would differ in the last bit now and then.
    """
    k, b = targets.shape
    per_example = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(k, b)
    if logits.device.type != "cpu" or b == 1 or b > 16:
        return per_example.mean(1)
    total = per_example[:, 1]
    for j in range(2, b):
        total = total + per_example[:, j]
    return (total + per_example[:, 0]) / b


# ---------------------------------------------------------------------------------------
# When to batch
# ---------------------------------------------------------------------------------------

def auto_group_size(device: str) -> int:
    """The most runs ``--seed-batch auto`` puts in one batched group on ``device``.

    CPU (fast kernels, 1 thread, `benchmarks/bench_batched.py`): model-steps/s grows up to
    about 15 runs per group and falls beyond, as the group's tensors outgrow the caches.
    CUDA: a batch-4 step is bound by kernel launches, which a group shares; 64 runs keep the
    per-step work small next to what a GPU does at once.
    """
    return 64 if device == "cuda" else 16


def lr_signature(cfg: TrainConfig, steps_per_epoch: int | None = None) -> tuple:
    """What a config's learning-rate schedule does, in a form that compares equal exactly when
    two configs use the same lr at every step.

    Without ``steps_per_epoch`` (the runner's grouping, before any data is read), schedules
    stepped per batch compare by their settings, which can only keep apart runs that train
    alike; with it, they compare step for step.
    """
    def lr_at(steps_taken: int) -> float:
        return scheduled_lr(cfg.scheduler, cfg.lr, steps_taken, step_size=cfg.step_size, gamma=cfg.gamma)

    interval = cfg.effective_interval
    if interval == "never":
        rates = [cfg.lr]
    elif interval == "epoch":
        rates = [lr_at(e) for e in range(cfg.epochs)]
    elif steps_per_epoch is None:
        return ("per batch", cfg.scheduler, cfg.lr, cfg.step_size, cfg.gamma)
    else:
        rates = [lr_at(s) for s in range(cfg.epochs * steps_per_epoch)]
    if all(r == rates[0] for r in rates):
        return ("constant", rates[0])
    return (f"per {interval}", tuple(rates))


def group_fields(cfg: TrainConfig, steps_per_epoch: int | None = None) -> dict:
    """What the runs of one batched group must share: every setting but :data:`MEMBER_FIELDS`
    and the schedule settings, plus the schedule's :func:`lr_signature`."""
    d = {k: v for k, v in asdict(cfg).items() if k not in MEMBER_FIELDS + SCHEDULE_FIELDS}
    d["lr schedule"] = lr_signature(cfg, steps_per_epoch)
    return d


def check_batchable(cfgs: list[TrainConfig], steps_per_epoch: int | None = None) -> None:
    """Raise ValueError unless the configs can train as one group (:func:`group_fields`)."""
    if not cfgs:
        raise ValueError("train_batched needs at least one config")
    first = group_fields(cfgs[0], steps_per_epoch)
    for j, cfg in enumerate(cfgs[1:], start=1):
        for name, value in group_fields(cfg, steps_per_epoch).items():
            if value != first[name]:
                shown = (lambda c: {f: getattr(c, f) for f in SCHEDULE_FIELDS}) if name == "lr schedule" \
                    else (lambda c: getattr(c, name))
                raise ValueError(
                    f"cfgs differ in {name}: {shown(cfgs[0])!r} (cfgs[0]) vs {shown(cfg)!r} "
                    f"(cfgs[{j}]); the runs of a batched group may differ only in "
                    f"{', '.join(MEMBER_FIELDS)} and in schedule settings that give the same "
                    "learning rate at every step")


@contextmanager
def flushed_denormals(enabled: bool) -> Iterator[None]:
    """Flush denormal floats to zero on this thread's CPU while training (then restore torch's
    default, off). Adam's second moments drift into the denormal range, where this CPU's
    arithmetic takes a slow path: flushing cut the fast kernels' Adam step by about a third."""
    if not enabled or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


# ---------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------

@dataclass(eq=False)  # compared by identity
class _SeedRun:
    """One seed's bookkeeping: what train() keeps in local variables for its one run."""

    sink: MetricSink | None
    history: list[tuple[str, float, int]] = field(default_factory=list)
    steps: int = 0  # steps taken without a non-finite loss (train()'s global_step)
    diverged_step: int | None = None
    test_accuracy: float = float("nan")
    test_loss: float = float("nan")
    train_loss_epoch: float = float("nan")
    epochs_completed: int = 0
    model_state: dict | None = None  # the model as it was when its loss went non-finite
    # this session only
    train_seconds: float = 0.0
    steps_this_session: int = 0
    running: float = 0.0
    running_n: int = 0
    epoch_sum: float = 0.0

    @property
    def alive(self) -> bool:
        return self.diverged_step is None

    def emit(self, name: str, value: float, step: int) -> None:
        self.history.append((name, float(value), int(step)))
        if self.sink is not None:
            self.sink(name, float(value), int(step))

    def saved(self) -> dict:
        return {"history": self.history, "steps": self.steps, "diverged_step": self.diverged_step,
                "test_accuracy": self.test_accuracy, "test_loss": self.test_loss,
                "train_loss_epoch": self.train_loss_epoch,
                "epochs_completed": self.epochs_completed, "model_state": self.model_state}

    def restore(self, saved: dict) -> None:
        for name, value, step in saved["history"]:
            self.emit(name, value, step)
        for key in ("steps", "diverged_step", "test_accuracy", "test_loss", "train_loss_epoch",
                    "epochs_completed", "model_state"):
            setattr(self, key, saved[key])


def _group_key(run_keys: list[str]) -> str:
    return "batched:" + "|".join(run_keys)


def train_batched(cfgs: list[TrainConfig], data: Prepared, *,
                  sinks: list[MetricSink | None] | None = None, checkpoint: Path | None = None,
                  run_keys: list[str] | None = None, sync_every: int | None = None,
                  progress: bool = False) -> list[TrainResult]:
    """Train K runs as one stacked model; per run, what :func:`study.train.train` gives for its
    config with ``kernels="reference"`` bit for bit (on CPU), with ``kernels="fast"`` within
    float rounding per step.

    With the fast kernels a run's result does not depend on which other runs share its group
    (tests check it bit for bit on CPU); a run alone is padded with a copy of itself, because a
    single convolution group runs other oneDNN kernels than several.

    Args:
      cfgs: K configs that differ only in :data:`MEMBER_FIELDS` and in schedules that give the
        same lr at every step (:func:`check_batchable`): the seeds of one cell, or of cells that
        differ in init only. Run k starts from ``build_model(bn, cfgs[k].init,
        init_seed=cfgs[k].resolved_init_seed)`` and draws its batch order from its own
        generator, as train() would.
      data: preloaded, normalized tensors on the cells' device.
      sinks: one metric sink (or None) per config; each receives exactly the metrics, steps and
        order that train() emits for that config.
      checkpoint: a file for the whole group's checkpoint, written atomically after each epoch
        and resumed from; a resumed group re-emits the skipped epochs' metrics.
      run_keys: one run key per config; the checkpoint holds their list, and a checkpoint of
        another list is never resumed.
      sync_every: steps between reads of the K losses (the only host-device syncs in the loop).
        Default 1 on CPU (free there); 50 on CUDA, so the GPU queue never drains. Logged values
        and divergence steps do not depend on it; a diverged run's returned model is its state
        when the divergence was read, which is exactly train()'s only at 1.
      progress: show a progress bar on the console (a terminal only).

    Returns:
      One :class:`TrainResult` per config, in order, with ``model`` = that run's unstacked
      model. A run whose loss goes non-finite is diverged at that step (NaN test metrics, a
      ``diverged_step`` metric) and retired: its weights are zeroed and its loss masked out, and
      the others go on. ``train_seconds`` and ``epoch_seconds`` are the group's wall-clock.

    Raises:
      ValueError: the configs cannot share a group (the message names the differing field),
        ``sinks`` / ``run_keys`` have another length, or the data make no batch.
    """
    cfgs = list(cfgs)
    k = len(cfgs)
    sinks = list(sinks) if sinks is not None else [None] * k
    run_keys = list(run_keys) if run_keys is not None else [""] * k
    if len(sinks) != k or len(run_keys) != k:
        raise ValueError(f"got {k} cfgs, {len(sinks)} sinks and {len(run_keys)} run_keys; "
                         "give one of each per config")
    if k == 0:
        raise ValueError("train_batched needs at least one config")
    cfg = cfgs[0]
    bounds = epoch_batches(len(data.train_y), cfg)
    check_batchable(cfgs, len(bounds))
    fast = cfg.kernels == "fast"
    if fast and k == 1:
        padded = train_batched(cfgs * 2, data, sinks=[sinks[0], None], checkpoint=checkpoint,
                               run_keys=run_keys * 2, sync_every=sync_every, progress=progress)
        return padded[:1]
    set_threads(cfg.threads)
    device = torch.device(cfg.device)
    set_deterministic(device)
    with flushed_denormals(fast and device.type == "cpu"):
        return _train_group(cfgs, data, sinks, checkpoint, run_keys, bounds, fast, device,
                            sync_every or (1 if device.type == "cpu" else 50), progress)


def _train_group(cfgs: list[TrainConfig], data: Prepared, sinks: list, checkpoint: Path | None,
                 run_keys: list[str], bounds: list[tuple[int, int]], fast: bool,
                 device: torch.device, sync_every: int, progress: bool) -> list[TrainResult]:
    """train_batched's loop, for checked arguments."""
    cfg, k = cfgs[0], len(cfgs)
    seeds = [_SeedRun(sink) for sink in sinks]
    model = StackedCNN.from_models([build_model(bn=c.bn, init=c.init, init_seed=c.resolved_init_seed)
                                    for c in cfgs], grouped=fast).to(device)
    opt = make_optimizer(cfg.optimizer, model.parameters(), lr=cfg.lr, beta1=cfg.beta1,
                         beta2=cfg.beta2, eps=cfg.eps)
    data_gens = [torch.Generator().manual_seed(c.resolved_data_seed) for c in cfgs]  # batch order
    n_train = len(data.train_y)
    sched_steps, start_epoch, global_step = 0, 0, 0

    group_key = _group_key(run_keys)
    state = load_checkpoint(checkpoint, group_key)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        for gen, gen_state in zip(data_gens, state["data_gens"]):
            gen.set_state(gen_state)
        sched_steps, start_epoch, global_step = state["sched_steps"], state["epoch"], state["global_step"]
        for seed, saved in zip(seeds, state["seeds"]):
            seed.restore(saved)
    # Retired (diverged) seeds: their weights are zeroed, their inputs zeroed and their loss
    # weight is 0, so they stay finite and still while the others train.
    live = torch.tensor([float(s.alive) for s in seeds], device=device)  # loss weights
    retired = torch.tensor([i for i, s in enumerate(seeds) if not s.alive], dtype=torch.long,
                           device=device)

    def read_losses(pending: list[torch.Tensor], first_step: int) -> list[int]:
        """Log the losses of steps first_step, first_step+1, ...; return newly diverged seeds."""
        rows = (pending[0].unsqueeze(0) if len(pending) == 1 else torch.stack(pending)).tolist()
        newly = []
        for j, row in enumerate(rows):
            step = first_step + j
            for i, (seed, value) in enumerate(zip(seeds, row)):
                if not seed.alive:
                    continue
                if not math.isfinite(value):
                    seed.diverged_step = step
                    newly.append(i)
                    continue
                seed.running += value
                seed.running_n += 1
                seed.epoch_sum += value
                seed.steps = step + 1
                seed.steps_this_session += 1
                if seed.running_n == cfg.log_every:
                    seed.emit("train_loss", seed.running / seed.running_n, step)
                    seed.running, seed.running_n = 0.0, 0
        return newly

    def retire(newly: list[int]) -> None:
        nonlocal retired
        for i in newly:
            seeds[i].model_state = {n: t.clone() for n, t in model.unstack(i).state_dict().items()}
            seeds[i].emit("diverged_step", seeds[i].diverged_step, seeds[i].diverged_step)
            model.retire_seed(i, opt)
            live[i] = 0.0
        if newly:
            retired = torch.tensor([i for i, s in enumerate(seeds) if not s.alive],
                                   dtype=torch.long, device=device)

    names = {c.run_name for c in cfgs}
    bar = _progress_bar(progress, total=cfg.epochs * len(bounds), done=start_epoch * len(bounds),
                        label=names.pop() if len(names) == 1 else f"{k} runs")
    model.train()
    with bar or nullcontext():
        for epoch in range(start_epoch, cfg.epochs):
            if not any(s.alive for s in seeds):
                break
            t_epoch = time.perf_counter()
            in_epoch = [s for s in seeds if s.alive]
            for s in in_epoch:
                s.running, s.running_n, s.epoch_sum = 0.0, 0, 0.0
            perms = torch.stack([torch.randperm(n_train, generator=g) for g in data_gens]).to(device)
            pending: list[torch.Tensor] = []
            first_pending = global_step
            for start, stop in bounds:
                # schedule: the lr in effect for this step, shared by the cell's seeds
                opt.lr = scheduled_lr(cfg.scheduler, cfg.lr, sched_steps,
                                      step_size=cfg.step_size, gamma=cfg.gamma)
                # forward: seed k's batch is data[perms[k, start:stop]]
                idx = perms[:, start:stop]  # (K, B)
                x = data.train_x[idx]  # (K, B, 3, 32, 32)
                if len(retired):
                    x.index_fill_(0, retired, 0.0)
                opt.zero_grad()
                losses = seed_losses(model(x), data.train_y[idx])
                # backward: d(sum)/d(seed k's weights) = seed k's own gradient
                (losses.sum() if not len(retired) else (losses * live).sum()).backward()
                # step
                opt.step()
                if cfg.effective_interval == "batch":
                    sched_steps += 1
                global_step += 1
                # log
                pending.append(losses.detach())
                if len(pending) == sync_every:
                    retire(read_losses(pending, first_pending))
                    pending, first_pending = [], global_step
                    if not any(s.alive for s in seeds):
                        break
            if pending:
                retire(read_losses(pending, first_pending))
            elapsed = time.perf_counter() - t_epoch
            for s in in_epoch:
                s.train_seconds += elapsed
            finished = [s for s in in_epoch if s.alive]
            if not finished:
                break
            for s in finished:
                if s.running_n:
                    s.emit("train_loss", s.running / s.running_n, s.steps - 1)
            # evaluate
            lr_used = opt.lr
            if cfg.effective_interval == "epoch":
                sched_steps += 1
            scores = evaluate_stacked(model, data.test_x, data.test_y)
            epoch_seconds = time.perf_counter() - t_epoch
            for s, (acc, loss) in zip(seeds, scores):
                if s not in finished:
                    continue
                s.train_loss_epoch = s.epoch_sum / len(bounds)
                s.test_accuracy, s.test_loss = acc, loss
                s.emit("train_loss_epoch", s.train_loss_epoch, epoch + 1)
                s.emit("test_accuracy", acc, epoch + 1)
                s.emit("test_loss", loss, epoch + 1)
                s.emit("lr", lr_used, epoch + 1)
                s.emit("epoch_seconds", epoch_seconds, epoch + 1)
                s.epochs_completed = epoch + 1
            # checkpoint
            if checkpoint is not None:
                save_checkpoint(Path(checkpoint), {
                    "run_key": group_key, "epoch": epoch + 1, "global_step": global_step,
                    "sched_steps": sched_steps, "model": model.state_dict(),
                    "optimizer": opt.state_dict(), "data_gens": [g.get_state() for g in data_gens],
                    "seeds": [s.saved() for s in seeds],
                })

    results = []
    for i, s in enumerate(seeds):
        if s.model_state is not None:
            seed_model = build_model(bn=cfg.bn, init="default", init_seed=0)
            seed_model.load_state_dict(s.model_state)
            seed_model = seed_model.to(device)
        else:
            seed_model = model.unstack(i)
        results.append(TrainResult(
            test_accuracy=s.test_accuracy if s.alive else float("nan"),
            test_loss=s.test_loss if s.alive else float("nan"),
            final_train_loss=s.train_loss_epoch, diverged=not s.alive,
            diverged_step=s.diverged_step, steps=s.steps, epochs_completed=s.epochs_completed,
            train_seconds=s.train_seconds,
            steps_per_second=(s.steps_this_session / s.train_seconds if s.train_seconds > 0
                              else float("nan")),
            history=s.history, resumed_from_epoch=start_epoch, model=seed_model,
        ))
    return results
