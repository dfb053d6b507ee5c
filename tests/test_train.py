"""Tests for study.train: determinism, seed streams, schedules as driven by torch's own
schedulers, divergence, checkpoint resume, batching, evaluation and learning.

A spy wraps ``build_model`` and ``make_optimizer`` as the loop sees them, recording each run's
initial weights, the batches it trains on and the lr in effect at every optimizer step.
"""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim import lr_scheduler

import study.train as st
from study.config import KERNELS, OPTIMIZERS, SCHEDULER_INTERVALS, SCHEDULERS, TrainConfig
from study.data import Prepared, prepare
from study.models import build_model
from study.train import batch_bounds, evaluate, load_checkpoint, train

N_TRAIN, BATCH = 40, 8
NB = N_TRAIN // BATCH  # 5 optimizer steps per epoch
PER_EPOCH = {"train_loss_epoch", "test_accuracy", "test_loss", "lr", "epoch_seconds"}



@pytest.fixture(scope="module")
def small(mini_data) -> Prepared:
    return prepare(mini_data, train_limit=N_TRAIN, test_limit=50, subset_seed=0)


def cfg_(**kw) -> TrainConfig:
    """A small config; the reference kernels unless ``kernels`` is given: those tests spy on
    train()'s own loop (the fast kernels train in study.batched's loop; test_batched.py)."""
    base = dict(optimizer="adam", epochs=2, batch_size=BATCH, log_every=1, seed=0, kernels="reference")
    return TrainConfig(**{**base, **kw})


def metrics(result):
    """The history without wall-clock times."""
    return [(n, v, s) for n, v, s in result.history if n != "epoch_seconds"]


def series(result, name):
    return [(s, v) for n, v, s in result.history if n == name]


def same_params(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def spy(monkeypatch):
    rec = SimpleNamespace(initial=[], batches=[], lrs=[])
    real_build, real_make = st.build_model, st.make_optimizer

    def build(**kw):
        model = real_build(**kw)
        rec.initial.append({k: v.clone() for k, v in model.state_dict().items()})
        model.register_forward_pre_hook(
            lambda m, args: rec.batches.append(args[0].clone()) if m.training else None)
        return model

    def make(name, params, **kw):
        opt = real_make(name, params, **kw)
        real_step = opt.step

        def step():
            rec.lrs.append(opt.lr)
            real_step()

        opt.step = step
        return opt

    monkeypatch.setattr(st, "build_model", build)
    monkeypatch.setattr(st, "make_optimizer", make)
    return rec


# ---------------------------------------------------------------------------
# Determinism and seed streams
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("kernels", KERNELS)
def test_same_config_twice_is_identical(small, optimizer, bn, kernels):
    cfg = cfg_(kernels=kernels, optimizer=optimizer, bn=bn, init="kaiming", scheduler="exponential",
               scheduler_interval="batch", gamma=0.9)
    a, b = train(cfg, small), train(cfg, small)
    assert same_params(a.model, b.model)
    assert metrics(a) == metrics(b) and len(series(a, "train_loss")) == 2 * NB
    assert (a.test_accuracy, a.test_loss, a.final_train_loss) == (b.test_accuracy, b.test_loss, b.final_train_loss)
    # and it learned something: not the initial weights
    assert not same_params(a.model, build_model(bn=bn, init="kaiming", init_seed=cfg.resolved_init_seed))


def test_another_seed_is_another_run(small, spy):
    a, b = train(cfg_(seed=0), small), train(cfg_(seed=1), small)
    assert not same_params(a.model, b.model)
    assert series(a, "train_loss") != series(b, "train_loss")
    assert not torch.equal(spy.initial[0]["conv1.weight"], spy.initial[1]["conv1.weight"])
    assert not torch.equal(spy.batches[0], spy.batches[2 * NB])


def test_init_and_data_streams_are_separate(small, spy):
    """Fixed init_seed, other data_seed: same initial weights, other batches (and vice versa)."""
    runs = [train(cfg_(init_seed=7, data_seed=1), small),
            train(cfg_(init_seed=7, data_seed=2), small),
            train(cfg_(init_seed=8, data_seed=1), small)]
    init = spy.initial
    batches = [spy.batches[i * 2 * NB:(i + 1) * 2 * NB] for i in range(3)]
    assert all(len(b) == 2 * NB for b in batches)
    # runs 0 and 1: same initial weights, other batch order, other results
    assert all(torch.equal(init[0][k], init[1][k]) for k in init[0])
    assert not all(torch.equal(x, y) for x, y in zip(batches[0], batches[1]))
    assert not same_params(runs[0].model, runs[1].model)
    # runs 0 and 2: other initial weights, the very same batches
    assert not torch.equal(init[0]["fc1.weight"], init[2]["fc1.weight"])
    assert all(torch.equal(x, y) for x, y in zip(batches[0], batches[2]))
    # each epoch is a permutation of the whole training set
    seen = torch.cat(batches[0][:NB]).flatten(1)
    assert len(torch.unique(seen, dim=0)) == N_TRAIN


# ---------------------------------------------------------------------------
# Schedules: the lr of every step, against torch.optim.lr_scheduler in the lecture's loop
# ---------------------------------------------------------------------------

def torch_lrs(scheduler, interval, base, step_size, gamma, epochs, nb):
    """The lr torch.optim.SGD sees at each step when a real torch scheduler is stepped per
    batch, per epoch, or never (the lecture builds its scheduler and never steps it)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    sched = {"none": None,
             "step": lambda: lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma),
             "exponential": lambda: lr_scheduler.ExponentialLR(opt, gamma=gamma)}[scheduler]
    sched = sched() if sched else None
    out = []
    for _ in range(epochs):
        for _ in range(nb):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            if sched and interval == "batch":
                sched.step()
        if sched and interval == "epoch":
            sched.step()
    return out


# Logged "lr" per epoch is the lr of the epoch's last step (NB = 5 steps per epoch, base 0.01,
# gamma 0.5, step_size 2). Per batch, the last steps of epochs 1..3 have had 4, 9, 14
# scheduler steps; per epoch, 0, 1, 2.
B, G = 0.01, 0.5
EXPECTED_EPOCH_LR = {
    ("exponential", "epoch"): [B, B * G, B * G ** 2],
    ("exponential", "batch"): [B * G ** 4, B * G ** 9, B * G ** 14],
    ("step", "epoch"): [B, B, B * G],  # 0 // 2, 1 // 2, 2 // 2
    ("step", "batch"): [B * G ** 2, B * G ** 4, B * G ** 7],  # 4 // 2, 9 // 2, 14 // 2
}


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("interval", SCHEDULER_INTERVALS)
def test_lr_of_every_step_follows_torchs_scheduler(small, spy, scheduler, interval):
    cfg = cfg_(optimizer="sgd", lr=B, gamma=G, step_size=2, epochs=3,
               scheduler=scheduler, scheduler_interval=interval)
    result = train(cfg, small)
    expected = torch_lrs(scheduler, cfg.effective_interval, B, 2, G, 3, NB)
    assert len(spy.lrs) == len(expected) == 3 * NB
    assert spy.lrs == pytest.approx(expected, rel=1e-12)
    logged = series(result, "lr")
    assert [s for s, _ in logged] == [1, 2, 3]
    want = EXPECTED_EPOCH_LR.get((scheduler, interval), [B, B, B])  # none, or never stepped
    assert [v for _, v in logged] == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_is_driven_by_the_schedule(small, spy, optimizer):
    cfg = cfg_(optimizer=optimizer, lr=B, gamma=G, epochs=1, scheduler="exponential",
               scheduler_interval="batch")
    train(cfg, small)
    assert spy.lrs == pytest.approx([B * G ** k for k in range(NB)], rel=1e-12)


# ---------------------------------------------------------------------------
# Metrics and the result
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kernels", KERNELS)
def test_metrics_steps_and_result(small, kernels):
    sunk = []
    r = train(cfg_(kernels=kernels, log_every=3), small, sink=lambda n, v, s: sunk.append((n, v, s)))
    assert sunk == r.history
    # train_loss every 3 batches at the global batch index, flushed at each epoch's end:
    # epoch 1 = batches 0-4 -> steps 2, 4; epoch 2 = batches 5-9 -> steps 7, 9
    assert [s for s, _ in series(r, "train_loss")] == [2, 4, 7, 9]
    for name in PER_EPOCH:
        assert [s for s, _ in series(r, name)] == [1, 2], name
    assert (r.steps, r.epochs_completed, r.resumed_from_epoch) == (2 * NB, 2, 0)
    assert not r.diverged and r.diverged_step is None
    assert r.test_accuracy == series(r, "test_accuracy")[-1][1]
    assert r.final_train_loss == series(r, "train_loss_epoch")[-1][1]
    assert (r.test_accuracy, r.test_loss) == pytest.approx(evaluate(r.model, small.test_x, small.test_y))
    assert r.steps_per_second > 0 and r.train_seconds > 0


def test_epoch_loss_is_the_mean_of_the_batch_losses(small):
    r = train(cfg_(log_every=1), small)
    losses = [v for _, v in series(r, "train_loss")]
    epoch = [v for _, v in series(r, "train_loss_epoch")]
    assert epoch == pytest.approx([sum(losses[:NB]) / NB, sum(losses[NB:]) / NB], rel=1e-12)


# ---------------------------------------------------------------------------
# Divergence is data
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["sgd", "manual_sgd"])
@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("kernels", KERNELS)
def test_huge_lr_diverges_and_is_recorded(small, tmp_path, optimizer, bn, kernels):
    ckpt = tmp_path / "ckpt.pt"
    r = train(cfg_(kernels=kernels, optimizer=optimizer, bn=bn, lr=1e6), small, checkpoint=ckpt, run_key="k")
    assert r.diverged is True
    assert isinstance(r.diverged_step, int) and 0 <= r.diverged_step < NB
    assert math.isnan(r.test_accuracy) and math.isnan(r.test_loss)
    assert ("diverged_step", float(r.diverged_step), r.diverged_step) in r.history
    # every loss before the divergent step was finite and logged (log_every=1)
    logged = series(r, "train_loss")
    assert [s for s, _ in logged] == list(range(r.diverged_step))
    assert all(math.isfinite(v) for _, v in logged)
    assert r.steps == r.diverged_step and r.epochs_completed == 0
    assert not series(r, "test_accuracy") and not ckpt.exists()


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------

class Interrupt(Exception):
    pass


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("kernels", KERNELS)
def test_resume_gives_the_uninterrupted_run(small, tmp_path, optimizer, kernels):
    """BN (running stats), a per-batch schedule (scheduler steps) and log_every=3 (a window
    that does not divide an epoch) all have to survive the checkpoint."""
    two = cfg_(kernels=kernels, optimizer=optimizer, bn=True, scheduler="exponential", scheduler_interval="batch",
               gamma=0.9, log_every=3)
    whole = train(two, small)

    # (a) a 1-epoch run's checkpoint continued by the 2-epoch config
    ckpt = tmp_path / "a.pt"
    first = train(replace(two, epochs=1), small, checkpoint=ckpt, run_key="k")
    assert first.epochs_completed == 1 and ckpt.is_file()
    sunk = []
    resumed = train(two, small, checkpoint=ckpt, run_key="k", sink=lambda *m: sunk.append(m))
    assert resumed.resumed_from_epoch == 1
    assert same_params(resumed.model, whole.model)
    assert metrics(resumed) == metrics(whole)
    assert sunk == resumed.history  # skipped epochs are re-emitted: the sink's history is complete
    assert (resumed.steps, resumed.epochs_completed) == (whole.steps, 2)
    assert resumed.test_accuracy == whole.test_accuracy

    # (b) the 2-epoch run itself, killed during epoch 2, then run again
    ckpt = tmp_path / "b.pt"

    def die_in_epoch_2(name, value, step):
        if name == "train_loss" and step >= NB:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(two, small, checkpoint=ckpt, run_key="k", sink=die_in_epoch_2)
    again = train(two, small, checkpoint=ckpt, run_key="k")
    assert again.resumed_from_epoch == 1
    assert same_params(again.model, whole.model) and metrics(again) == metrics(whole)

    # (c) a finished run resumed: nothing left to train, the same result
    done = train(two, small, checkpoint=ckpt, run_key="k")
    assert done.resumed_from_epoch == 2 and done.steps == whole.steps
    assert same_params(done.model, whole.model) and metrics(done) == metrics(whole)
    assert done.test_accuracy == whole.test_accuracy


def test_checkpoint_of_another_run_is_ignored(small, tmp_path):
    cfg = cfg_(optimizer="manual_adam")
    fresh = train(cfg, small)
    ckpt = tmp_path / "ckpt.pt"
    train(replace(cfg, epochs=1, seed=5), small, checkpoint=ckpt, run_key="other")
    assert load_checkpoint(ckpt, "other") is not None and load_checkpoint(ckpt, "mine") is None
    r = train(cfg, small, checkpoint=ckpt, run_key="mine")
    assert r.resumed_from_epoch == 0
    assert same_params(r.model, fresh.model) and metrics(r) == metrics(fresh)
    assert load_checkpoint(ckpt, "mine")["epoch"] == 2  # and now it is ours


def test_damaged_checkpoint_is_ignored(small, tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"not a checkpoint")
    assert load_checkpoint(ckpt, "k") is None and load_checkpoint(None, "k") is None
    r = train(cfg_(epochs=1), small, checkpoint=ckpt, run_key="k")
    assert r.resumed_from_epoch == 0 and r.epochs_completed == 1
    assert load_checkpoint(ckpt, "k")["epoch"] == 1
    assert not list(tmp_path.glob("*.tmp"))


# ---------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n,batch,bn,expected", [
    (8, 4, False, [(0, 4), (4, 8)]),
    (8, 4, True, [(0, 4), (4, 8)]),
    (9, 4, False, [(0, 4), (4, 8), (8, 9)]),
    (9, 4, True, [(0, 4), (4, 8)]),  # a batch of 1 cannot be batch-normalized
    (10, 4, False, [(0, 4), (4, 8), (8, 10)]),
    (10, 4, True, [(0, 4), (4, 8), (8, 10)]),  # a batch of 2 can
    (3, 4, True, [(0, 3)]),
    (1, 1, False, [(0, 1)]),
])
def test_batch_bounds(n, batch, bn, expected):
    assert batch_bounds(n, batch, bn=bn) == expected


@pytest.mark.parametrize("bn,steps", [(False, 6), (True, 5)])
def test_bn_skips_a_final_batch_of_one(mini_data, bn, steps):
    data = prepare(mini_data, train_limit=21, test_limit=20, subset_seed=0)  # 5 batches of 4 + 1
    r = train(cfg_(bn=bn, batch_size=4, epochs=1), data)
    assert r.steps == steps and not r.diverged
    assert len(series(r, "train_loss")) == steps


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------

def test_evaluate_by_hand():
    # logits = 10 * one_hot(pred); preds 1, 2, 3, 4 vs labels 1, 2, 3, 0: 3 of 4 right = 75%.
    # CE of a right row: log(1 + 9 e^-10); of a wrong row: log(e^10 + 9).
    logits = 10 * F.one_hot(torch.tensor([1, 2, 3, 4]), 10).float()
    y = torch.tensor([1, 2, 3, 0])
    want_loss = (3 * math.log(1 + 9 * math.exp(-10)) + math.log(math.exp(10) + 9)) / 4
    for bs in (1, 3, 1000):
        acc, loss = evaluate(nn.Identity(), logits, y, batch_size=bs)
        assert acc == 75.0
        assert loss == pytest.approx(want_loss, rel=1e-6)


@pytest.mark.parametrize("bn", [False, True])
def test_evaluate_is_an_argmax_count_in_eval_mode(small, bn):
    model = build_model(bn=bn, init="default", init_seed=0)
    model.train()
    model(small.train_x[:16])  # move BN running stats off their defaults
    x, y = small.test_x, small.test_y
    acc, loss = evaluate(model, x, y, batch_size=7)  # 50 = 7 * 7 + 1: a ragged last batch
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert acc == 100.0 * (out.argmax(1) == y).sum().item() / len(y)
    assert loss == pytest.approx(F.cross_entropy(out, y).item(), rel=1e-5)


# ---------------------------------------------------------------------------
# Learning
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer,lr", [("manual_sgd", 0.05), ("sgd", 0.05),
                                          ("manual_adam", 0.003), ("adam", 0.003)])
@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("kernels", KERNELS)
def test_a_few_steps_lower_the_training_loss(small, optimizer, lr, bn, kernels):
    """One fixed batch of 32, one step per epoch: epoch k's loss is measured before step k."""
    data = Prepared(small.train_x[:32], small.train_y[:32], small.test_x, small.test_y, small.info)
    r = train(cfg_(kernels=kernels, optimizer=optimizer, lr=lr, bn=bn, batch_size=32, epochs=6), data)
    losses = [v for _, v in series(r, "train_loss_epoch")]
    assert len(losses) == 6 and r.steps == 6
    assert losses[-1] < losses[0] - 0.01, losses


def test_set_deterministic_fixes_cudnn_for_cuda_only(monkeypatch):
    from study.train import set_deterministic

    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    set_deterministic(torch.device("cpu"))
    assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (False, True)
    set_deterministic(torch.device("cuda"))
    assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (True, False)
