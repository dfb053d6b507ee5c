"""Built-in checks that the study's machinery does what it claims (``study verify``).

1. determinism: one cell and seed trained twice gives bit-identical parameters and metrics;
2. the fast kernels: a run trained alone and inside a group of other runs (other seeds and
   inits) gives bit-identical parameters and metrics; its distance from the reference kernels
   is reported;
3. hand-written vs torch.optim optimizers from identical weights and batches: the largest
   parameter difference after each of the first steps, against a float32 tolerance;
4. every cell of the 4 x 2 x 3 x 3 grid builds, runs a few steps and lowers the loss.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .config import INITS, OPTIMIZERS, SCHEDULERS, TrainConfig
from .data import Prepared
from .models import build_model
from .optim import make_optimizer, scheduled_lr
from .train import train
from .batched import train_batched

# A float32 tolerance for "the same update rule": both sides round differently (torch.optim
# fuses ops), and differences compound through the gradients of later steps.
PARAM_TOLERANCE = 1e-5


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


def check_determinism(data: Prepared, cfg: TrainConfig) -> Check:
    """Train the same config twice; parameters and every metric must match bit for bit."""
    a, b = train(cfg, data), train(cfg, data)
    same_params = all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(),
                                                         b.model.state_dict().values()))
    metrics = lambda r: [(n, v, s) for n, v, s in r.history if n != "epoch_seconds"]  # noqa: E731
    same_metrics = metrics(a) == metrics(b)
    return Check(f"determinism ({cfg.run_name}, {cfg.epochs} epoch(s), {a.steps} steps)",
                 same_params and same_metrics,
                 f"parameters identical: {same_params}; metrics identical: {same_metrics}; "
                 f"test accuracy {a.test_accuracy:.2f}% both times" if same_params and same_metrics
                 else f"parameters identical: {same_params}; metrics identical: {same_metrics}")


def check_fast_kernels(data: Prepared, cfg: TrainConfig) -> Check:
    """The fast kernels give a run the same result alone and in a group; report the distance
    from the reference kernels."""
    cfg = replace(cfg, kernels="fast")
    alone = train(cfg, data)
    others = [replace(cfg, seed=cfg.seed + 100, init="xavier"),
              replace(cfg, seed=cfg.seed + 101, init="default")]
    grouped = train_batched([others[0], cfg, others[1]], data)[1]
    reference = train(replace(cfg, kernels="reference"), data)
    same_params = all(torch.equal(p, q) for p, q in zip(alone.model.state_dict().values(),
                                                         grouped.model.state_dict().values()))
    metrics = lambda r: [(n, v, s) for n, v, s in r.history if n != "epoch_seconds"]  # noqa: E731
    same = same_params and metrics(alone) == metrics(grouped)
    worst = max((p - q).abs().max().item() for p, q in zip(alone.model.state_dict().values(),
                                                           reference.model.state_dict().values())
                if p.is_floating_point())
    return Check(f"fast kernels: {cfg.run_name} alone = in a group of 3", same,
                 f"{'identical' if same else 'DIFFERENT'} parameters and metrics; vs the reference "
                 f"kernels: max |param diff| {worst:.2e}, test accuracy {alone.test_accuracy:.2f}% vs "
                 f"{reference.test_accuracy:.2f}%")


def optimizer_divergence(manual: str, reference: str, data: Prepared, *, steps: int = 50,
                         batch_size: int = 4, lr: float = 1e-3, seed: int = 0) -> list[float]:
    """Largest absolute parameter difference after each step, ``manual`` vs ``reference``,
    from identical initial weights and identical batches."""
    models = [build_model(bn=False, init="default", init_seed=seed) for _ in range(2)]
    opts = [make_optimizer(name, m.parameters(), lr=lr) for name, m in zip((manual, reference), models)]
    g = torch.Generator().manual_seed(seed)
    diffs = []
    for _ in range(steps):
        idx = torch.randint(len(data.train_y), (batch_size,), generator=g)
        for model, opt in zip(models, opts):
            opt.zero_grad()
            F.cross_entropy(model(data.train_x[idx]), data.train_y[idx]).backward()
            opt.step()
        diffs.append(max((p - q).abs().max().item()
                         for p, q in zip(models[0].parameters(), models[1].parameters())))
    return diffs


def check_optimizer_pair(manual: str, reference: str, data: Prepared, steps: int = 50) -> Check:
    diffs = optimizer_divergence(manual, reference, data, steps=steps)
    worst = max(diffs)
    exact = worst == 0.0
    detail = (f"bit-identical over {steps} steps" if exact else
              f"max |diff| per step: first {diffs[0]:.2e}, worst {worst:.2e} "
              f"(tolerance {PARAM_TOLERANCE:.0e}); not bit-identical")
    return Check(f"{manual} vs {reference}", worst <= PARAM_TOLERANCE, detail)


def grid_cells() -> list[TrainConfig]:
    """The 72 cells of the factorial grid, schedulers stepped per batch so that a few steps
    exercise them."""
    return [TrainConfig(optimizer=o, bn=bn, init=i, scheduler=s, scheduler_interval="batch")
            for o, bn, i, s in itertools.product(OPTIMIZERS, (False, True), INITS, SCHEDULERS)]


def check_cell_learns(cfg: TrainConfig, data: Prepared, *, steps: int = 10, batch: int = 32) -> tuple[bool, float, float]:
    """Run ``steps`` steps of ``cfg``'s optimizer and schedule on one fixed batch; the loss on
    that batch (in eval mode) must go down. Returns (passed, loss before, loss after)."""
    model = build_model(bn=cfg.bn, init=cfg.init, init_seed=cfg.resolved_init_seed)
    # A larger lr than the lecture's makes "lowers the loss" visible in 10 steps for SGD too.
    opt = make_optimizer(cfg.optimizer, model.parameters(), lr=0.01)
    x, y = data.train_x[:batch], data.train_y[:batch]

    def loss_now() -> float:
        model.eval()
        with torch.inference_mode():
            value = F.cross_entropy(model(x), y).item()
        model.train()
        return value

    before = loss_now()
    for k in range(steps):
        opt.lr = scheduled_lr(cfg.scheduler, 0.01, k, step_size=3, gamma=cfg.gamma)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    after = loss_now()
    return after < before, before, after


def check_grid(data: Prepared) -> Check:
    failures, n = [], 0
    for cfg in grid_cells():
        n += 1
        ok, before, after = check_cell_learns(cfg, data)
        if not ok:
            failures.append(f"{cfg.cell} ({before:.3f} -> {after:.3f})")
    return Check(f"grid: {n} cells build, step and lower the loss", not failures,
                 "all lowered their loss" if not failures else "did not learn: " + ", ".join(failures))


def run_checks(data: Prepared, *, epochs: int = 1, device: str = "cpu") -> list[Check]:
    """All checks on ``data`` (CPU tensors). The determinism and fast-kernel checks train on
    ``device``; the optimizer and grid checks compare update rules on CPU."""
    on_device = data if device == "cpu" else Prepared(
        data.train_x.to(device), data.train_y.to(device), data.test_x.to(device),
        data.test_y.to(device), data.info)
    cfg = TrainConfig(optimizer="adam", bn=True, init="kaiming", scheduler="step",
                      scheduler_interval="batch", step_size=10, epochs=epochs, seed=1, log_every=10,
                      device=device)
    return [
        check_determinism(on_device, cfg),
        check_fast_kernels(on_device, cfg),
        check_optimizer_pair("manual_sgd", "sgd", data),
        check_optimizer_pair("manual_adam", "adam", data),
        check_grid(data),
    ]
