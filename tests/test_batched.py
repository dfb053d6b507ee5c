"""Tests for study.batched: K runs as one stacked model, against K train() runs.

With the reference kernels (per-seed convolutions and BatchNorms) the comparison is bit for
bit: every parameter, buffer and logged metric of every run equals what ``train()`` gives for
that run, so the tolerance is zero. The fast kernels are compared with the reference within
float rounding, and with themselves bit for bit whatever the group a run trains in.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from study.batched import (MEMBER_FIELDS, StackedCNN, auto_group_size, check_batchable,
                           evaluate_stacked, lr_signature, seed_losses, train_batched)
from study.config import INITS, OPTIMIZERS, TrainConfig
from study.data import Prepared, prepare
from study.models import CNN, CNNWithBN, build_model
from study.optim import make_optimizer
from study.train import evaluate, load_checkpoint, train

K = 3  # seeds per group
N_TRAIN = 42  # batch 4: 10 batches of 4 and a final batch of 2 per epoch



@pytest.fixture(scope="module")
def small(mini_data) -> Prepared:
    return prepare(mini_data, train_limit=N_TRAIN, test_limit=50, subset_seed=0)


def cfgs_(k: int = K, **kw) -> list[TrainConfig]:
    base = dict(optimizer="adam", epochs=2, batch_size=4, log_every=3, kernels="reference")
    return [TrainConfig(**{**base, **kw, "seed": s}) for s in range(k)]


def metrics(result):
    """The history without wall-clock times."""
    return [(n, v, s) for n, v, s in result.history if n != "epoch_seconds"]


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def same_nan_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Equal, NaN matching NaN (the weights of a diverged run)."""
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k].nan_to_num(), sb[k].nan_to_num())
               and torch.equal(sa[k].isnan(), sb[k].isnan()) for k in sa)


def assert_same_run(got, want) -> None:
    """One seed of train_batched against train() for that seed: bit for bit."""
    assert metrics(got) == metrics(want)
    assert [(n, s) for n, _, s in got.history] == [(n, s) for n, _, s in want.history]
    for field in ("diverged", "diverged_step", "steps", "epochs_completed", "resumed_from_epoch"):
        assert getattr(got, field) == getattr(want, field), field
    for field in ("test_accuracy", "test_loss", "final_train_loss"):
        a, b = getattr(got, field), getattr(want, field)
        assert a == b or (math.isnan(a) and math.isnan(b)), field
    assert type(got.model) is type(want.model)
    assert same_state(got.model, want.model) if not want.diverged else same_nan_state(got.model, want.model)


# ---------------------------------------------------------------------------
# The stacked model
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("init", INITS)
def test_initial_weights_are_each_seeds_build_model(bn, init):
    models = [build_model(bn=bn, init=init, init_seed=100 + i) for i in range(K)]
    stacked = StackedCNN.from_models(models)
    assert stacked.state_dict().keys() == models[0].state_dict().keys()
    for i, m in enumerate(models):
        back = stacked.unstack(i)
        assert type(back) is (CNNWithBN if bn else CNN)
        assert same_state(back, m)
        for name, t in m.state_dict().items():  # seed_part is the flattened view
            if t.dim():
                assert torch.equal(stacked.seed_part(stacked.state_dict()[name], i), t.flatten())
    assert stacked.conv1.weight.shape == (K * 6, 3, 5, 5)
    assert stacked.fc1.weight.shape == (K, 120, 400)


def test_unstack_round_trip_and_range():
    models = [build_model(bn=True, init="kaiming", init_seed=i) for i in range(K)]
    stacked = StackedCNN.from_models(models)
    again = StackedCNN.from_models([stacked.unstack(i) for i in range(K)])
    assert same_state(again, stacked)
    assert stacked.unstack(0) is not stacked.unstack(0)  # copies, not views
    with pytest.raises(IndexError):
        stacked.unstack(K)
    with pytest.raises(ValueError, match="CNN and CNNWithBN"):
        StackedCNN.from_models([build_model(bn=False, init="default", init_seed=0), models[0]])


def test_building_and_unstacking_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    stacked = StackedCNN.from_models([build_model(bn=True, init="xavier", init_seed=i) for i in range(K)])
    stacked.unstack(1)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_forward_and_gradients_are_each_seeds(small, bn, training):
    """Per-seed mode: logits, gradients and running statistics bit for bit those of the seeds'
    own models. Grouped mode: each tensor within 1e-4 of its largest value (measured up to 4e-5:
    float32 sums of up to 400 terms, amplified by BatchNorm's 1/std over 4 examples), plus 1e-5
    absolute for the biases before a BatchNorm, whose exact gradient is 0 and whose computed
    one is rounding noise of up to ~1e-6."""
    models = [build_model(bn=bn, init="kaiming", init_seed=i) for i in range(K)]
    x = torch.stack([small.train_x[4 * i:4 * i + 4] for i in range(K)])  # (K, 4, 3, 32, 32)
    y = torch.stack([small.train_y[4 * i:4 * i + 4] for i in range(K)])
    for grouped in (False, True):
        stacked = StackedCNN.from_models([m for m in models], grouped=grouped).train(training)
        copies = [stacked.unstack(i) for i in range(K)]
        out = stacked(x)
        seed_losses(out, y).sum().backward()
        for i, m in enumerate(copies):
            want = m(x[i])
            F.cross_entropy(want, y[i]).backward()
            grads = {n: p.grad for n, p in m.named_parameters()}
            close = torch.equal if not grouped else (
                lambda a, b: (a - b).abs().max() <= 1e-4 * b.abs().max() + 1e-5)
            assert close(out[i], want)
            for n, p in stacked.named_parameters():
                assert close(stacked.seed_part(p.grad, i), grads[n].flatten()), (grouped, n)
            for n, b in m.named_buffers():
                assert close(stacked.seed_part(stacked.state_dict()[n], i).reshape(-1).float(),
                             b.reshape(-1).float()), n


def test_seed_losses_are_cross_entropys_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    for b in range(1, 20):
        logits = torch.randn(5, b, 10, generator=g) * 3
        y = torch.randint(0, 10, (5, b), generator=g)
        got = seed_losses(logits, y)
        want = torch.stack([F.cross_entropy(logits[i], y[i]) for i in range(5)])
        if b <= 16:
            assert torch.equal(got, want), b
        else:  # the order of aten's cascade sum is emulated up to 16 examples
            assert torch.allclose(got, want, rtol=1e-6)


def test_evaluate_stacked_is_evaluate_per_seed(small):
    models = [build_model(bn=True, init="default", init_seed=i) for i in range(K)]
    stacked = StackedCNN.from_models(models)
    scores = evaluate_stacked(stacked, small.test_x, small.test_y, batch_size=20)
    assert scores == [evaluate(m, small.test_x, small.test_y, batch_size=20) for m in models]
    assert stacked.training  # the mode is restored


# ---------------------------------------------------------------------------
# train_batched against K sequential train() runs
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("bn", [False, True])
def test_batched_is_sequential_train_bit_for_bit(small, optimizer, bn):
    """Every optimizer x BatchNorm, inits rotating, a per-batch schedule: tolerance zero."""
    init = INITS[(OPTIMIZERS.index(optimizer) + bn) % len(INITS)]
    cfgs = cfgs_(optimizer=optimizer, bn=bn, init=init, scheduler="exponential",
                 scheduler_interval="batch", gamma=0.9)
    sunk = [[] for _ in cfgs]
    got = train_batched(cfgs, small, sinks=[lambda *m, s=s: s.append(m) for s in sunk])
    for cfg, result, sink in zip(cfgs, got, sunk):
        assert_same_run(result, train(cfg, small))
        assert sink == result.history
    assert got[0].steps == 2 * 11 and len([m for m in got[0].history if m[0] == "train_loss"]) == 8
    assert not same_state(got[0].model, got[1].model)  # the seeds are different runs


def test_a_longer_run_on_all_of_mini(mini_prepared):
    """75 steps x 2 epochs of Adam + BatchNorm on 300 real images: still bit for bit."""
    cfgs = cfgs_(k=2, bn=True, log_every=20, scheduler="step", step_size=1, gamma=0.5)
    for cfg, result in zip(cfgs, train_batched(cfgs, mini_prepared)):
        assert_same_run(result, train(cfg, mini_prepared))


def test_explicit_init_and_data_seeds(small):
    """init_seed / data_seed overrides are honoured per seed, as train() does, and the global
    random state is neither used nor changed."""
    cfgs = [TrainConfig(epochs=1, seed=0, init_seed=7, data_seed=1),
            TrainConfig(epochs=1, seed=0, init_seed=7, data_seed=2),
            TrainConfig(epochs=1, seed=3, init_seed=8, data_seed=1)]
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    got = train_batched(cfgs, small)
    assert torch.equal(torch.rand(3), expected)
    for cfg, result in zip(cfgs, got):
        assert_same_run(result, train(cfg, small))


def test_a_group_of_one(small):
    (cfg,) = cfgs_(k=1, bn=True, optimizer="manual_adam")
    (result,) = train_batched([cfg], small)
    assert_same_run(result, train(cfg, small))


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_fast_kernels_are_the_reference_within_rounding(small, optimizer):
    """Without BatchNorm, after 22 steps: parameters within atol 1e-5 for the SGDs (measured
    ~1e-7: rounding of ~1e-7 per step, lr 1e-3 times gradients of order 1). Adam rescales each
    gradient by its running RMS, so a parameter whose gradient is rounding noise moves by up to
    lr per step either way: its bound is 2 * lr * steps. Losses within 1e-4; accuracy within
    one of the 50 test images.
    (With BatchNorm on batches of 4, even torch's SGD and the lecture's ManualSGD in train() part
    by 1e-2 within 10 steps: rounding is amplified chaotically, so no tolerance holds over a run;
    test_forward_and_gradients_are_each_seeds checks one step of it.)"""
    cfgs = cfgs_(optimizer=optimizer, log_every=1, kernels="fast")
    got = train_batched(cfgs, small)
    atol = 1e-5 if optimizer.endswith("sgd") else 2 * cfgs[0].lr * got[0].steps
    for cfg, result in zip(cfgs, got):
        want = train(replace(cfg, kernels="reference"), small)
        assert [(n, s) for n, _, s in result.history] == [(n, s) for n, _, s in want.history]
        for (n, a, _), (_, b, _) in zip(metrics(result), metrics(want)):
            tol = 2.0 + 1e-9 if n == "test_accuracy" else 1e-4  # one image of 50 is 2 points
            assert abs(a - b) <= tol, n
        sa, sb = result.model.state_dict(), want.model.state_dict()
        assert all(torch.allclose(sa[k], sb[k], rtol=0, atol=atol) for k in sa)
        assert not same_state(result.model, want.model)  # other kernels: not the same bits


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("bn", [False, True])
def test_a_fast_run_is_the_same_in_any_group(mini_prepared, optimizer, bn):
    """With the fast kernels a run's result is bit for bit the same alone (train(), padded to a
    group of two), with other seeds, and with other seeds of other inits and schedules, at any
    place in the group (75 steps on 300 real images; the place used to matter for BatchNorm's
    channels-last kernels and torch's fused Adam, see _bn_planes and make_optimizer)."""
    (run,) = cfgs_(k=1, optimizer=optimizer, bn=bn, kernels="fast", init="kaiming", epochs=1,
                   log_every=25)
    small = mini_prepared
    alone = train(run, small)
    others = [replace(run, seed=7), replace(run, seed=8, init="default", scheduler="step"),
              replace(run, seed=9, init="xavier"), replace(run, seed=10)]
    for group in ([run, others[0]], others[:3] + [run], [others[3], run] + others[:2]):
        got = train_batched(group, small)[group.index(run)]
        assert_same_run(got, alone)


def test_fast_training_flushes_denormals_and_restores_them(small):
    tiny = torch.tensor([1e-39])  # a denormal float32
    flushed = []

    def sink(*metric):
        flushed.append(bool((tiny * 1.0 == 0).item()))

    train_batched(cfgs_(k=2, kernels="fast", epochs=1), small, sinks=[sink, None])
    assert flushed and all(flushed)  # while training: flushed to zero
    assert (tiny * 1.0).item() > 0  # afterwards: torch's default again
    flushed.clear()
    train_batched(cfgs_(k=2, epochs=1), small, sinks=[sink, None])  # reference: left alone
    assert flushed and not any(flushed)


# ---------------------------------------------------------------------------
# Which runs may share a group
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("change", [dict(optimizer="sgd"), dict(bn=True), dict(epochs=3),
                                    dict(train_limit=40), dict(threads=2), dict(log_every=7),
                                    dict(kernels="fast")])
def test_mixing_cells_raises_naming_the_field(small, change):
    cfgs = cfgs_()
    cfgs[2] = replace(cfgs[2], **change)
    (field,) = change
    with pytest.raises(ValueError, match=rf"differ in {field}\b"):
        train_batched(cfgs, small)


@pytest.mark.parametrize("change", [dict(lr=0.01), dict(scheduler="exponential"),
                                    dict(scheduler="step", step_size=1)])
def test_another_learning_rate_schedule_may_not_share_a_group(small, change):
    cfgs = cfgs_()
    cfgs[1] = replace(cfgs[1], **change)
    with pytest.raises(ValueError, match=r"differ in lr schedule: .*scheduler"):
        train_batched(cfgs, small)


def test_lr_signature():
    const = lr_signature(TrainConfig())
    assert const == ("constant", 0.001)
    # StepLR(step_size=30) stepped per epoch never decays in 2 epochs; "never" never steps
    assert lr_signature(TrainConfig(scheduler="step")) == const
    assert lr_signature(TrainConfig(scheduler="exponential", scheduler_interval="never")) == const
    assert lr_signature(TrainConfig(scheduler="exponential")) == ("per epoch", (0.001, 0.001 * 0.95))
    assert lr_signature(TrainConfig(scheduler="step", step_size=2, epochs=3)) == \
        ("per epoch", (0.001, 0.001, 0.001 * 0.95))
    # per batch: by its settings before the data are known, step by step after
    per_batch = TrainConfig(scheduler="step", scheduler_interval="batch", step_size=100)
    assert lr_signature(per_batch)[0] == "per batch" and lr_signature(per_batch) != const
    assert lr_signature(per_batch, steps_per_epoch=50) == const  # 100 steps: no decay before step 100
    assert lr_signature(per_batch, steps_per_epoch=51)[0] == "per batch"


def test_member_fields_may_differ_and_lengths_must_match(small):
    assert MEMBER_FIELDS == ("seed", "init_seed", "data_seed", "init")
    check_batchable([TrainConfig(seed=1), TrainConfig(seed=2, init_seed=5, data_seed=6, init="xavier"),
                     TrainConfig(seed=3, scheduler="step")])
    with pytest.raises(ValueError, match="at least one"):
        train_batched([], small)
    with pytest.raises(ValueError, match="sinks"):
        train_batched(cfgs_(), small, sinks=[None])
    with pytest.raises(ValueError, match="run_keys"):
        train_batched(cfgs_(), small, run_keys=["a", "b"])


def test_runs_of_cells_that_train_alike_share_a_group_and_match_train(small):
    """Seeds of three inits and two equivalent schedules in one reference group: bit for bit."""
    cfgs = [TrainConfig(optimizer="manual_adam", epochs=2, batch_size=4, log_every=3,
                        kernels="reference", seed=s, init=init, scheduler=sched)
            for s, (init, sched) in enumerate([("default", "none"), ("kaiming", "step"), ("xavier", "none")])]
    for cfg, result in zip(cfgs, train_batched(cfgs, small)):
        assert_same_run(result, train(cfg, small))


# ---------------------------------------------------------------------------
# Divergence is per seed
# ---------------------------------------------------------------------------

def poisoned(data: Prepared, cfg: TrainConfig) -> Prepared:
    """``data`` with one NaN image: the one that ``cfg``'s seed draws last in its first epoch.
    With BatchNorm and 41 examples that last example is a batch of one, which is dropped, so
    that seed never trains on it in epoch 1 while the others (other orders) do."""
    last = int(torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(
        cfg.resolved_data_seed))[-1])
    x = data.train_x.clone()
    x[last] = float("nan")
    return Prepared(x, data.train_y, data.test_x, data.test_y, data.info)


@pytest.fixture(scope="module")
def small41(mini_data) -> Prepared:
    return prepare(mini_data, train_limit=41, test_limit=50, subset_seed=0)


@pytest.mark.parametrize("optimizer,sync_every", [(o, 1) for o in OPTIMIZERS] + [("adam", 4)])
def test_a_diverging_seed_is_flagged_while_the_others_finish(small41, optimizer, sync_every):
    """The retired seed's weights and optimizer state are zeroed; the survivor is untouched."""
    cfgs = cfgs_(optimizer=optimizer, bn=True, epochs=1, log_every=1)
    data = poisoned(small41, cfgs[0])
    got = train_batched(cfgs, data, sync_every=sync_every)
    wants = [train(cfg, data) for cfg in cfgs]
    assert [w.diverged for w in wants] == [False, True, True]  # the premise of the test
    for result, want in zip(got, wants):
        if sync_every == 1 or not want.diverged:
            assert_same_run(result, want)
        else:  # metrics are the same; the diverged model is taken when the losses are read
            assert metrics(result) == metrics(want)
            assert (result.diverged_step, result.steps) == (want.diverged_step, want.steps)
            assert math.isnan(result.test_accuracy) and math.isnan(result.test_loss)
    survivor = got[0]
    assert survivor.epochs_completed == 1 and math.isfinite(survivor.test_accuracy)
    assert evaluate(survivor.model, data.test_x, data.test_y) == (survivor.test_accuracy, survivor.test_loss)


def test_a_seed_diverging_in_a_later_epoch(small41):
    """Seeds 1 and 2 diverge in epoch 1; seed 0 completes it (evaluated alone) and meets the
    NaN image in epoch 2."""
    cfgs = cfgs_(bn=True, epochs=2, log_every=2)
    data = poisoned(small41, cfgs[0])
    got = train_batched(cfgs, data)
    for cfg, result in zip(cfgs, got):
        assert_same_run(result, train(cfg, data))
    assert got[0].diverged and got[0].epochs_completed == 1 and got[0].diverged_step >= 10


@pytest.mark.parametrize("optimizer", ["sgd", "manual_sgd"])
@pytest.mark.parametrize("bn", [False, True])
def test_huge_lr_diverges_every_seed_like_train(small, tmp_path, optimizer, bn):
    cfgs = cfgs_(optimizer=optimizer, bn=bn, lr=1e6, log_every=1)
    ckpt = tmp_path / "group.pt"
    got = train_batched(cfgs, small, checkpoint=ckpt, run_keys=["a", "b", "c"])
    for cfg, result in zip(cfgs, got):
        assert_same_run(result, train(cfg, small))
        assert result.diverged and ("diverged_step", float(result.diverged_step),
                                    result.diverged_step) in result.history
    assert not ckpt.exists()  # no epoch was completed by anyone


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------

class Interrupt(Exception):
    pass


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_resume_gives_the_uninterrupted_run(small, tmp_path, optimizer):
    """BN running stats, a per-batch schedule and log_every=3 survive the group's checkpoint."""
    two = cfgs_(optimizer=optimizer, bn=True, scheduler="exponential", scheduler_interval="batch",
                gamma=0.9)
    keys = [f"key{i}" for i in range(K)]
    whole = train_batched(two, small)

    # (a) a 1-epoch group's checkpoint continued by the 2-epoch configs
    ckpt = tmp_path / "a.pt"
    first = train_batched([replace(c, epochs=1) for c in two], small, checkpoint=ckpt, run_keys=keys)
    assert all(r.epochs_completed == 1 for r in first) and ckpt.is_file()
    sunk = [[] for _ in two]
    resumed = train_batched(two, small, checkpoint=ckpt, run_keys=keys,
                            sinks=[lambda *m, s=s: s.append(m) for s in sunk])
    for r, w, s in zip(resumed, whole, sunk):
        assert r.resumed_from_epoch == 1
        assert same_state(r.model, w.model) and metrics(r) == metrics(w)
        assert s == r.history  # skipped epochs are re-emitted
        assert (r.steps, r.epochs_completed, r.test_accuracy) == (w.steps, 2, w.test_accuracy)

    # (b) the 2-epoch group killed during epoch 2, then run again
    ckpt = tmp_path / "b.pt"

    def die_in_epoch_2(name, value, step):
        if name == "train_loss" and step >= 11:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_batched(two, small, checkpoint=ckpt, run_keys=keys, sinks=[None, die_in_epoch_2, None])
    again = train_batched(two, small, checkpoint=ckpt, run_keys=keys)
    for r, w in zip(again, whole):
        assert r.resumed_from_epoch == 1
        assert same_state(r.model, w.model) and metrics(r) == metrics(w)

    # (c) a finished group resumed: nothing left to train, the same result
    done = train_batched(two, small, checkpoint=ckpt, run_keys=keys)
    for r, w in zip(done, whole):
        assert r.resumed_from_epoch == 2 and r.steps == w.steps
        assert same_state(r.model, w.model) and metrics(r) == metrics(w)


def test_resume_keeps_diverged_seeds_diverged(small41, tmp_path):
    """Seeds that diverged before the checkpoint stay diverged, with their model, after it."""
    cfgs = cfgs_(bn=True, epochs=2, log_every=2)
    data = poisoned(small41, cfgs[0])
    whole = train_batched(cfgs, data)
    ckpt = tmp_path / "div.pt"
    train_batched([replace(c, epochs=1) for c in cfgs], data, checkpoint=ckpt, run_keys=list("abc"))
    resumed = train_batched(cfgs, data, checkpoint=ckpt, run_keys=list("abc"))
    for r, w in zip(resumed, whole):
        assert metrics(r) == metrics(w) and r.diverged_step == w.diverged_step
        assert same_nan_state(r.model, w.model)


def test_checkpoint_of_another_group_is_ignored(small, tmp_path):
    cfgs = cfgs_(epochs=1)
    ckpt = tmp_path / "ckpt.pt"
    train_batched(cfgs, small, checkpoint=ckpt, run_keys=["a", "b", "c"])
    assert load_checkpoint(ckpt, "batched:a|b|c") is not None
    other = train_batched(cfgs, small, checkpoint=ckpt, run_keys=["a", "b", "d"])
    assert all(r.resumed_from_epoch == 0 for r in other)
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


# ---------------------------------------------------------------------------
# When to batch
# ---------------------------------------------------------------------------

def test_auto_group_size():
    assert auto_group_size("cpu") == 16 and auto_group_size("cuda") == 64


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_an_optimizer_step_does_not_depend_on_the_place_in_the_stack(optimizer):
    """A seed's slice of a stacked parameter gets the same update at every place in the stack
    (torch's fused Adam fails this: its vectorized body and scalar remainder round apart)."""
    def run(n: int, k: int, place: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        order = list(range(1, k))
        order.insert(place, 0)
        p0 = torch.randn(k, n, generator=g)[order].reshape(-1)
        param = torch.nn.Parameter(p0.clone())
        opt = make_optimizer(optimizer, [param], lr=1e-3)
        for _ in range(60):
            scale = 10.0 ** torch.randint(-6, 1, (k, n), generator=g)
            opt.zero_grad()
            param.grad = (torch.randn(k, n, generator=g) * scale)[order].reshape(-1)
            opt.step()
        return param.detach().view(k, n)[place]

    for n in (450, 84):
        for seed in range(5):
            for k in (2, 3):
                first = run(n, k, 0, seed)
                for place in range(1, k):
                    assert torch.equal(run(n, k, place, seed), first), (n, seed, k, place)
