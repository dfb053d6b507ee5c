"""Tests for study.optim: the hand-written optimizers against the lecture's own per-tensor code
(bit for bit) and against torch.optim (to float32 tolerance), and the schedules against
torch.optim.lr_scheduler."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch.optim import lr_scheduler

from study.config import OPTIMIZERS, SCHEDULERS
from study.models import build_model
from study.optim import (ManualAdam, ManualSGD, make_optimizer, optimizer_steps_per_epoch,
                         scheduled_lr)



# The lecture's optimizers, verbatim (shared/reference/000_c7bc7edbb134d796.txt), kept in study.lecture
from study.lecture import ManualAdam as LectureManualAdam  # noqa: E402
from study.lecture import ManualSGD as LectureManualSGD  # noqa: E402


# ---------------------------------------------------------------------------
# Helpers: two copies of one model, fed the same real batches
# ---------------------------------------------------------------------------

def _batches(data, n_steps, batch_size=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_steps):
        idx = torch.randint(len(data.train_y), (batch_size,), generator=g)
        yield data.train_x[idx], data.train_y[idx]


def _step(model, opt, x, y):
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


def _max_diff(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def _identical(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


# ---------------------------------------------------------------------------
# Hand-checkable single steps
# ---------------------------------------------------------------------------

def _scalar_param(value, grad):
    p = torch.tensor([value], dtype=torch.float64, requires_grad=True)
    p.grad = torch.tensor([grad], dtype=torch.float64)
    return p


def test_manual_sgd_one_step_by_hand():
    p = _scalar_param(1.0, 2.0)
    ManualSGD([p], lr=0.1).step()
    assert p.item() == pytest.approx(1.0 - 0.1 * 2.0)  # 0.8


def test_manual_adam_two_steps_by_hand():
    # step 1, g=2: m = 0.1*2 = 0.2, v = 0.001*4 = 0.004; m_hat = 0.2/0.1 = 2, v_hat = 0.004/0.001 = 4
    #   p = 1 - 0.1 * 2 / (sqrt(4) + 1e-8) = 0.9 + 5e-10
    p = _scalar_param(1.0, 2.0)
    opt = ManualAdam([p], lr=0.1)
    opt.step()
    p1 = 1 - 0.1 * 2 / (2 + 1e-8)
    assert p.item() == pytest.approx(p1, rel=1e-12)
    assert p1 == pytest.approx(0.9, abs=1e-9)
    # step 2, g=-1: m = 0.9*0.2 + 0.1*(-1) = 0.08; v = 0.999*0.004 + 0.001*1 = 0.004996
    #   m_hat = 0.08/0.19, v_hat = 0.004996/(1-0.999**2) = 0.004996/0.001999
    p.grad = torch.tensor([-1.0], dtype=torch.float64)
    opt.step()
    m_hat, v_hat = 0.08 / 0.19, 0.004996 / 0.001999
    assert p.item() == pytest.approx(p1 - 0.1 * m_hat / (v_hat ** 0.5 + 1e-8), rel=1e-12)
    assert opt.t == 2


# ---------------------------------------------------------------------------
# Bit for bit against the lecture's per-tensor loops
# ---------------------------------------------------------------------------

LECTURE_PAIRS = {
    "manual_sgd": (lambda ps, **kw: ManualSGD(ps, lr=kw["lr"]),
                   lambda ps, **kw: LectureManualSGD(ps, lr=kw["lr"])),
    "manual_adam": (lambda ps, **kw: ManualAdam(ps, **kw),
                    lambda ps, **kw: LectureManualAdam(ps, **kw)),
}
ADAM_SETTINGS = [dict(lr=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8),  # the lecture's defaults
                 dict(lr=3e-2, beta1=0.8, beta2=0.99, epsilon=1e-6)]


@pytest.mark.parametrize("name", LECTURE_PAIRS)
@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("settings", ADAM_SETTINGS, ids=["lecture", "other"])
def test_manual_optimizers_match_the_lecture_bit_for_bit(name, bn, settings, mini_prepared):
    ours_cls, ref_cls = LECTURE_PAIRS[name]
    a = build_model(bn=bn, init="kaiming", init_seed=3)
    b = build_model(bn=bn, init="kaiming", init_seed=3)
    opt_a, opt_b = ours_cls(a.parameters(), **settings), ref_cls(b.parameters(), **settings)
    for k, (x, y) in enumerate(_batches(mini_prepared, 20)):
        _step(a, opt_a, x, y)
        _step(b, opt_b, x, y)
        assert _identical(a, b), f"step {k}: max diff {_max_diff(a, b):.3e}"
    assert _max_diff(a, build_model(bn=bn, init="kaiming", init_seed=3)) > 0  # they did move
    if name == "manual_adam":
        assert opt_a.t == opt_b.t == 20
        assert all(torch.equal(m, n) for m, n in zip(opt_a.m, opt_b.m))
        assert all(torch.equal(v, w) for v, w in zip(opt_a.v, opt_b.v))


@pytest.mark.parametrize("name", LECTURE_PAIRS)
def test_parameters_without_gradient_are_skipped_like_the_lecture(name):
    """A parameter whose .grad is None is left alone (and Adam's t counts every step)."""
    torch.manual_seed(0)
    used = [torch.randn(5, requires_grad=True), torch.randn(3, 2, requires_grad=True)]
    unused = torch.randn(4, requires_grad=True)
    ours = [t.detach().clone().requires_grad_() for t in (*used, unused)]
    ref = [t.detach().clone().requires_grad_() for t in (*used, unused)]
    ours_cls, ref_cls = LECTURE_PAIRS[name]
    opt_a = ours_cls(ours, **ADAM_SETTINGS[1])
    opt_b = ref_cls(ref, **ADAM_SETTINGS[1])
    opt_a.step(), opt_b.step()  # no gradients at all yet: nothing moves, but Adam's t counts it
    assert all(torch.equal(p, q) for p, q in zip(ours, ref))
    for k in range(5):
        for params, opt in ((ours, opt_a), (ref, opt_b)):
            opt.zero_grad()
            (params[0].sin().sum() * (k + 1) + (params[1] ** 2).sum()).backward()
            opt.step()
        assert all(torch.equal(p, q) for p, q in zip(ours, ref))
    assert ours[2].grad is None and torch.equal(ours[2], unused)
    if name == "manual_adam":
        assert opt_a.t == opt_b.t == 6
    assert not torch.equal(ours[0], used[0])


# ---------------------------------------------------------------------------
# Against torch.optim
# ---------------------------------------------------------------------------

# float32 tolerance for "the same update rule": torch.optim fuses ops and rounds differently,
# and differences compound through later gradients.
TOL = 1e-5


MANUAL_VS_TORCH = [("manual_sgd", "sgd", 0.01), ("manual_adam", "adam", 0.001)]


@pytest.mark.parametrize("manual,reference,lr", MANUAL_VS_TORCH)
def test_manual_optimizers_track_torch_optim(manual, reference, lr, mini_prepared):
    a, b, start = (build_model(bn=False, init="default", init_seed=0) for _ in range(3))
    opt_a = make_optimizer(manual, a.parameters(), lr=lr)
    opt_b = make_optimizer(reference, b.parameters(), lr=lr)
    for k, (x, y) in enumerate(_batches(mini_prepared, 20)):
        _step(a, opt_a, x, y)
        _step(b, opt_b, x, y)
        assert _max_diff(a, b) <= TOL, f"step {k}"
    # the comparison is not vacuous: both moved far more than the tolerance
    assert _max_diff(a, start) > 100 * TOL and _max_diff(b, start) > 100 * TOL


# A bias right before a BatchNorm has no effect on the output in train mode (BN subtracts the
# batch mean), so its true gradient is 0 and what autograd returns is rounding noise (~1e-7).
# Adam divides that noise by its own square root: each implementation's rounding picks a sign
# and the two drift apart by about lr per step. Such biases are left out of the BN comparison,
# and BN with batches of 4 amplifies rounding, so only the first steps are compared.
PRE_BN_BIASES = {"conv1.bias", "conv2.bias", "fc1.bias", "fc2.bias"}


@pytest.mark.parametrize("manual,reference,lr", MANUAL_VS_TORCH)
def test_manual_optimizers_track_torch_optim_with_bn(manual, reference, lr, mini_prepared):
    a, b, start = (build_model(bn=True, init="default", init_seed=0) for _ in range(3))
    opt_a = make_optimizer(manual, a.parameters(), lr=lr)
    opt_b = make_optimizer(reference, b.parameters(), lr=lr)
    for k, (x, y) in enumerate(_batches(mini_prepared, 5)):
        _step(a, opt_a, x, y)
        _step(b, opt_b, x, y)
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            if name not in PRE_BN_BIASES:
                assert (p - q).abs().max().item() <= TOL, f"step {k}, {name}"
    assert _max_diff(a, start) > 100 * TOL


def test_torch_optimizers_get_the_settings():
    model = build_model(bn=False, init="default", init_seed=0)
    sgd = make_optimizer("sgd", model.parameters(), lr=0.01)
    assert isinstance(sgd.opt, torch.optim.SGD)
    (group,) = sgd.opt.param_groups
    assert group["lr"] == 0.01 and group["momentum"] == 0 and group["weight_decay"] == 0
    assert len(group["params"]) == 10
    adam = make_optimizer("adam", model.parameters(), lr=0.002, beta1=0.8, beta2=0.99, eps=1e-6)
    assert isinstance(adam.opt, torch.optim.Adam)
    (group,) = adam.opt.param_groups
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (0.002, (0.8, 0.99), 1e-6, 0)
    assert group["amsgrad"] is False
    madam = make_optimizer("manual_adam", model.parameters(), lr=0.002, beta1=0.8, beta2=0.99, eps=1e-6)
    assert isinstance(madam, ManualAdam)
    assert (madam.lr, madam.beta1, madam.beta2, madam.epsilon) == (0.002, 0.8, 0.99, 1e-6)
    msgd = make_optimizer("manual_sgd", model.parameters(), lr=0.05)
    assert isinstance(msgd, ManualSGD) and msgd.lr == 0.05


def test_torch_sgd_step_uses_its_lr():
    p = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = make_optimizer("sgd", [p], lr=0.25)
    p.grad = torch.tensor([4.0, 2.0])
    opt.step()
    assert torch.equal(p.detach(), torch.tensor([0.0, -2.5]))  # exact in binary: 1-1, -2-0.5


def test_unknown_optimizer_is_rejected():
    with pytest.raises(ValueError, match="rmsprop"):
        make_optimizer("rmsprop", [torch.zeros(1, requires_grad=True)], lr=0.1)


# ---------------------------------------------------------------------------
# .lr get/set and state round trips, for every optimizer
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", OPTIMIZERS)
def test_lr_setter_changes_the_next_update(name, mini_prepared):
    x, y = next(_batches(mini_prepared, 1, batch_size=8))
    # set before the first step == built with that lr
    a, b = (build_model(bn=False, init="default", init_seed=0) for _ in range(2))
    opt_a = make_optimizer(name, a.parameters(), lr=0.1)
    opt_a.lr = 0.003
    assert opt_a.lr == 0.003
    opt_b = make_optimizer(name, b.parameters(), lr=0.003)
    _step(a, opt_a, x, y)
    _step(b, opt_b, x, y)
    assert _identical(a, b)
    # lr 0 freezes the next update; restoring it moves the weights again
    before = [p.detach().clone() for p in a.parameters()]
    opt_a.lr = 0.0
    _step(a, opt_a, x, y)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), before))
    opt_a.lr = 0.003
    _step(a, opt_a, x, y)
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), before))


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("bn", [False, True])
def test_state_dict_round_trip_continues_identically(name, bn, mini_prepared):
    batches = list(_batches(mini_prepared, 10))
    a = build_model(bn=bn, init="default", init_seed=0)
    opt_a = make_optimizer(name, a.parameters(), lr=0.01)
    for x, y in batches[:5]:
        _step(a, opt_a, x, y)
    opt_a.lr = 0.004  # a scheduled lr must survive the round trip too
    buf = io.BytesIO()
    torch.save({"model": a.state_dict(), "optimizer": opt_a.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)

    b = build_model(bn=bn, init="default", init_seed=1)  # other weights, other lr: all overwritten
    opt_b = make_optimizer(name, b.parameters(), lr=0.5)
    b.load_state_dict(saved["model"])
    opt_b.load_state_dict(saved["optimizer"])
    assert opt_b.lr == 0.004
    for x, y in batches[5:]:
        _step(a, opt_a, x, y)
        _step(b, opt_b, x, y)
    assert _identical(a, b)


def test_manual_adam_state_dict_is_a_copy():
    p = _scalar_param(1.0, 2.0)
    opt = ManualAdam([p], lr=0.1)
    opt.step()
    state = opt.state_dict()
    m0 = state["m"][0].clone()
    opt.step()
    assert torch.equal(state["m"][0], m0) and state["t"] == 1


# ---------------------------------------------------------------------------
# Schedules against torch.optim.lr_scheduler
# ---------------------------------------------------------------------------

def _torch_schedule(scheduler, base_lr, n, step_size, gamma):
    """get_last_lr() after 0..n scheduler steps of a real torch scheduler."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    sched = {"none": lambda: None,
             "step": lambda: lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma),
             "exponential": lambda: lr_scheduler.ExponentialLR(opt, gamma=gamma)}[scheduler]()
    lrs = []
    for _ in range(n + 1):
        lrs.append(sched.get_last_lr()[0] if sched else opt.param_groups[0]["lr"])
        opt.step()
        if sched:
            sched.step()
    return lrs


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("base_lr,step_size,gamma", [(0.001, 30, 0.95),  # the lecture's
                                                     (0.1, 7, 0.5), (1.0, 1, 0.9)])
def test_scheduled_lr_matches_torch_schedulers(scheduler, base_lr, step_size, gamma):
    expected = _torch_schedule(scheduler, base_lr, 100, step_size, gamma)
    for k, lr in enumerate(expected):
        assert scheduled_lr(scheduler, base_lr, k, step_size=step_size, gamma=gamma) == \
            pytest.approx(lr, rel=1e-12), f"after {k} steps"


@pytest.mark.parametrize("steps,expected", [(0, 1.0), (1, 1.0), (29, 1.0), (30, 0.95), (31, 0.95),
                                            (59, 0.95), (60, 0.95 ** 2), (61, 0.95 ** 2)])
def test_step_lr_boundaries(steps, expected):
    assert scheduled_lr("step", 1.0, steps, step_size=30, gamma=0.95) == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("steps,expected", [(0, 2.0), (1, 1.0), (2, 0.5), (10, 2.0 / 1024)])
def test_exponential_lr_by_hand(steps, expected):
    assert scheduled_lr("exponential", 2.0, steps, gamma=0.5) == expected


def test_no_schedule_is_constant():
    assert {scheduled_lr("none", 0.001, k) for k in range(200)} == {0.001}


def test_bad_schedule_arguments_are_rejected():
    with pytest.raises(ValueError, match="cosine"):
        scheduled_lr("cosine", 0.1, 0)
    for scheduler in SCHEDULERS:
        with pytest.raises(ValueError, match="-1"):
            scheduled_lr(scheduler, 0.1, -1)


@pytest.mark.parametrize("n,batch,expected", [(300, 4, 75), (301, 4, 76), (3, 4, 1), (50000, 4, 12500)])
def test_steps_per_epoch(n, batch, expected):
    assert optimizer_steps_per_epoch(n, batch) == expected
