"""One flat, typed config per training run, its validation, its key and its name.

Every setting that can change what a run learns lives in :class:`TrainConfig`. The config is
logged whole to MLflow (``mlflow.log_params(asdict(cfg))``) and hashed, with the data
fingerprint, into the run's ``run_key``: two runs with the same key are the same experiment.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

# The factor levels of the study. Plain tuples: the single source for CLI choices, grid
# validation and `study verify`'s grid of cells.
OPTIMIZERS = ("manual_sgd", "sgd", "manual_adam", "adam")
INITS = ("default", "kaiming", "xavier")
SCHEDULERS = ("none", "step", "exponential")
# When a scheduler steps. "never" reproduces the lecture as written: the scheduler is
# built but `scheduler.step()` is never called, so the lr stays constant.
SCHEDULER_INTERVALS = ("epoch", "batch", "never")
DEVICES = ("auto", "cpu", "cuda")
# How the arithmetic runs (see TrainConfig.kernels).
KERNELS = ("fast", "reference")
FACTORS = ("optimizer", "bn", "init", "scheduler")

# Fields that say how a run is executed, not what it computes: left out of the run key so
# that the same experiment run on another machine, device or thread count is found again.
# (On CPU another thread count may change the last bits; the count is logged with each run.)
OPERATIONAL_FIELDS = ("device", "threads", "log_every")


class ConfigError(ValueError):
    """A setting has a value outside what is allowed; the message names both."""


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of one training run. Defaults are the lecture's."""

    # --- the study's factors ---
    optimizer: str = "adam"  # one of OPTIMIZERS; manual_* are the lecture's hand-written rules
    bn: bool = False  # CNNWithBN (BatchNorm after each conv and hidden fc layer) instead of CNN
    init: str = "default"  # one of INITS; kaiming/xavier set biases to 0.01 as in the lecture
    scheduler: str = "none"  # one of SCHEDULERS
    scheduler_interval: str = "epoch"  # one of SCHEDULER_INTERVALS
    # --- schedule shape (lecture: StepLR(step_size=30, gamma=0.95), ExponentialLR(gamma=0.95)) ---
    step_size: int = 30  # StepLR: decay every `step_size` scheduler steps
    gamma: float = 0.95  # multiplicative decay per decay step
    # --- optimization (lecture: lr 0.001, batch 4, 2 epochs; Adam betas 0.9/0.999, eps 1e-8) ---
    lr: float = 0.001
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    batch_size: int = 4
    epochs: int = 2
    # --- randomness: one seed, from which separate init and data-order streams derive ---
    seed: int = 0
    init_seed: int | None = None  # overrides the stream derived from `seed` for weight init
    data_seed: int | None = None  # overrides the stream derived from `seed` for batch order
    # --- data budget: seeded, class-stratified subsets (None = the whole split) ---
    train_limit: int | None = None
    test_limit: int | None = None
    subset_seed: int = 0  # fixed across run seeds, so every seed sees the same subset
    # --- arithmetic: the same model and update rules, computed two ways ---
    # "fast": the seed-stacked model of study.batched (grouped channels-last convolutions, one
    #   BatchNorm call per layer over all stacked seeds, denormals flushed to zero); a run's
    #   result is bit for bit the same whichever runs share its group, and alone.
    # "reference": the lecture's layer calls on each model and foreach torch.optim, bit for bit
    #   what the lecture's own loop computes from the same weights and batches.
    # The two agree to float rounding per step; over thousands of steps the rounding grows
    # like any other (seed-noise-sized at most; `study verify` measures it).
    kernels: str = "fast"
    # --- execution (not part of the run key) ---
    device: str = "cpu"  # resolved device ("cpu" or "cuda"); "auto" is resolved by the CLI
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    log_every: int = 500  # batches per logged running-mean train_loss point

    def __post_init__(self) -> None:
        validate(self)

    # Derived values -------------------------------------------------------------------
    @property
    def resolved_init_seed(self) -> int:
        return self.init_seed if self.init_seed is not None else derive_seed(self.seed, "init")

    @property
    def resolved_data_seed(self) -> int:
        return self.data_seed if self.data_seed is not None else derive_seed(self.seed, "data")

    @property
    def effective_interval(self) -> str:
        """The scheduler interval that matters: without a scheduler there is nothing to step."""
        return "never" if self.scheduler == "none" else self.scheduler_interval

    @property
    def cell(self) -> str:
        """The cell's readable name, e.g. ``adam-bn-kaiming-step``.

        The scheduler interval is appended only where it differs from the default ``epoch``
        (``adam-bn-default-step@never`` is the lecture's never-stepped StepLR).
        """
        name = f"{self.optimizer}-{'bn' if self.bn else 'nobn'}-{self.init}-{self.scheduler}"
        if self.scheduler != "none" and self.scheduler_interval != "epoch":
            name += f"@{self.scheduler_interval}"
        return name

    @property
    def run_name(self) -> str:
        return f"{self.cell}-s{self.seed}"

    def key_fields(self) -> dict[str, Any]:
        """The fields that define the experiment (everything but OPERATIONAL_FIELDS)."""
        d = {k: v for k, v in asdict(self).items() if k not in OPERATIONAL_FIELDS}
        # Equivalent configs hash alike: explicit seeds equal to the derived ones, and the
        # interval of a run without a scheduler, change nothing.
        d["init_seed"] = self.resolved_init_seed
        d["data_seed"] = self.resolved_data_seed
        d["scheduler_interval"] = self.effective_interval
        if self.kernels == "reference":
            del d["kernels"]  # the arithmetic of every run logged before the setting existed
        return d


def derive_seed(seed: int, stream: str) -> int:
    """A seed for one random stream (``"init"``, ``"data"``...) derived from the run seed.

    Separate streams let a cell change its data order without changing its initial weights,
    and vice versa. The derivation is a hash, so streams of nearby seeds are unrelated.
    """
    digest = hashlib.sha256(f"optstudy:{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**63 - 1)


def run_key(cfg: TrainConfig, data_fingerprint: str) -> str:
    """A stable hash of the experiment: the config's key fields plus the data fingerprint."""
    payload = json.dumps({"config": cfg.key_fields(), "data": data_fingerprint}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def validate(cfg: TrainConfig) -> None:
    """Raise :class:`ConfigError` naming the first bad value and what is allowed."""
    _choice("optimizer", cfg.optimizer, OPTIMIZERS)
    _choice("init", cfg.init, INITS)
    _choice("scheduler", cfg.scheduler, SCHEDULERS)
    _choice("scheduler_interval", cfg.scheduler_interval, SCHEDULER_INTERVALS)
    _choice("device", cfg.device, ("cpu", "cuda"))
    _choice("kernels", cfg.kernels, KERNELS)
    if not isinstance(cfg.bn, bool):
        raise ConfigError(f"bn={cfg.bn!r} is not allowed; use true or false")
    positive_ints = {"epochs": cfg.epochs, "batch_size": cfg.batch_size,
                     "step_size": cfg.step_size, "log_every": cfg.log_every}
    for name, value in positive_ints.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name}={value!r} is not allowed; it must be a whole number >= 1")
    for name in ("train_limit", "test_limit", "threads"):
        value = getattr(cfg, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name}={value!r} is not allowed; give a whole number >= 1 "
                              "or leave it unset for all")
    if not (cfg.lr > 0):
        raise ConfigError(f"lr={cfg.lr!r} is not allowed; it must be > 0")
    if not (0 < cfg.gamma <= 1):
        raise ConfigError(f"gamma={cfg.gamma!r} is not allowed; it must be in (0, 1]")
    for name in ("beta1", "beta2"):
        if not (0 <= getattr(cfg, name) < 1):
            raise ConfigError(f"{name}={getattr(cfg, name)!r} is not allowed; it must be in [0, 1)")
    if not (cfg.eps > 0):
        raise ConfigError(f"eps={cfg.eps!r} is not allowed; it must be > 0")
    for name in ("seed", "init_seed", "data_seed", "subset_seed"):
        value = getattr(cfg, name)
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ConfigError(f"{name}={value!r} is not allowed; it must be a whole number >= 0")


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build a config from a flat dict (a grid cell, MLflow params), rejecting unknown keys."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
    return TrainConfig(**values)
