"""Optimizers and learning-rate schedules.

``manual_sgd`` and ``manual_adam`` are the lecture's hand-written update rules (no torch.optim
inside); ``sgd`` and ``adam`` are torch.optim. All four expose ``.lr`` get/set so that one
schedule function serves them all.

The hand-written rules apply the lecture's formulas to all parameters at once with
``torch._foreach_*`` ops: the same arithmetic, element by element, as the lecture's per-tensor
loop (tests compare the two bit for bit), with fewer Python-level kernel launches.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch


class ManualSGD:
    """Lecture: ``param.data -= lr * param.grad``."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float) -> None:
        self.params = list(params)
        self.lr = lr

    @torch.no_grad()
    def step(self) -> None:
        ps = [p for p in self.params if p.grad is not None]
        if ps:
            torch._foreach_sub_(ps, torch._foreach_mul([p.grad for p in ps], self.lr))

    def zero_grad(self) -> None:
        # The lecture's `param.grad.zero_()` for every parameter, as one foreach call.
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            torch._foreach_zero_(grads)

    def state_dict(self) -> dict:
        return {"lr": self.lr}

    def load_state_dict(self, state: dict) -> None:
        self.lr = state["lr"]


class ManualAdam:
    """Lecture: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; bias-corrected m_hat, v_hat;
    ``param.data -= lr * m_hat / (sqrt(v_hat) + eps)``."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, beta1: float = 0.9,
                 beta2: float = 0.999, epsilon: float = 1e-8) -> None:
        self.params = list(params)
        self.lr, self.beta1, self.beta2, self.epsilon = lr, beta1, beta2, epsilon
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        idx = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not idx:
            return
        ps = [self.params[i] for i in idx]
        gs = [p.grad for p in ps]
        ms = [self.m[i] for i in idx]
        vs = [self.v[i] for i in idx]
        # self.m[i] = beta1 * m + (1 - beta1) * grad  (same rounding: two products, one sum)
        new_m = torch._foreach_add(torch._foreach_mul(ms, self.beta1), torch._foreach_mul(gs, 1 - self.beta1))
        # self.v[i] = beta2 * v + (1 - beta2) * grad ** 2
        new_v = torch._foreach_add(torch._foreach_mul(vs, self.beta2),
                                   torch._foreach_mul(torch._foreach_pow(gs, 2), 1 - self.beta2))
        for j, i in enumerate(idx):
            self.m[i], self.v[i] = new_m[j], new_v[j]
        m_hat = torch._foreach_div(new_m, 1 - self.beta1 ** self.t)
        v_hat = torch._foreach_div(new_v, 1 - self.beta2 ** self.t)
        denom = torch._foreach_add(torch._foreach_sqrt(v_hat), self.epsilon)
        # param.data -= lr * m_hat / denom, evaluated left to right as in the lecture
        torch._foreach_sub_(ps, torch._foreach_div(torch._foreach_mul(m_hat, self.lr), denom))

    def zero_grad(self) -> None:
        # The lecture's `param.grad.zero_()` for every parameter, as one foreach call.
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            torch._foreach_zero_(grads)

    def state_dict(self) -> dict:
        return {"lr": self.lr, "t": self.t, "m": [m.clone() for m in self.m],
                "v": [v.clone() for v in self.v]}

    def load_state_dict(self, state: dict) -> None:
        self.lr, self.t = state["lr"], state["t"]
        self.m = [m.clone() for m in state["m"]]
        self.v = [v.clone() for v in state["v"]]


class _TorchOptim:
    """torch.optim with ``.lr`` as a property over every param group."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.opt = opt

    @property
    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        for g in self.opt.param_groups:
            g["lr"] = value

    def step(self) -> None:
        self.opt.step()

    def zero_grad(self) -> None:
        # torch's default (set_to_none=True): the next backward writes fresh gradients, the
        # same values as zeroing in place and accumulating, without a zeroing kernel per tensor.
        self.opt.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return self.opt.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state)


def make_optimizer(name: str, params: Iterable[torch.Tensor], *, lr: float, beta1: float = 0.9,
                   beta2: float = 0.999, eps: float = 1e-8):
    """One of the study's four optimizers, with the lecture's hyperparameters by default."""
    params = list(params)
    if name == "manual_sgd":
        return ManualSGD(params, lr=lr)
    if name == "manual_adam":
        return ManualAdam(params, lr=lr, beta1=beta1, beta2=beta2, epsilon=eps)
    if name == "sgd":
        # foreach=True: torch picks the per-tensor loop on CPU by default; the multi-tensor
        # kernels compute the same update with far fewer dispatches (about 1.8x for Adam here).
        return _TorchOptim(torch.optim.SGD(params, lr=lr, foreach=True))
    if name == "adam":
        return _TorchOptim(torch.optim.Adam(params, lr=lr, betas=(beta1, beta2), eps=eps, foreach=True))
    raise ValueError(f"optimizer={name!r} is not allowed; choose one of: manual_sgd, sgd, manual_adam, adam")


def scheduled_lr(scheduler: str, base_lr: float, steps_taken: int, *, step_size: int = 30,
                 gamma: float = 0.95) -> float:
    """The learning rate after ``steps_taken`` scheduler steps (a pure function).

    - ``none``: ``base_lr``
    - ``step``: StepLR, ``base_lr * gamma ** (steps_taken // step_size)``
    - ``exponential``: ExponentialLR, ``base_lr * gamma ** steps_taken``

    Matches ``torch.optim.lr_scheduler`` (tests compare them), and works for hand-written
    optimizers that torch's schedulers cannot drive.
    """
    if steps_taken < 0:
        raise ValueError(f"steps_taken={steps_taken} must be >= 0")
    if scheduler == "none":
        return base_lr
    if scheduler == "step":
        return base_lr * gamma ** (steps_taken // step_size)
    if scheduler == "exponential":
        return base_lr * gamma ** steps_taken
    raise ValueError(f"scheduler={scheduler!r} is not allowed; choose one of: none, step, exponential")


def optimizer_steps_per_epoch(n_train: int, batch_size: int) -> int:
    return math.ceil(n_train / batch_size)
