"""Tests for study.verify: the built-in checks pass on real data, and each can fail."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch

import study.verify as sv
from study.config import INITS, OPTIMIZERS, SCHEDULERS, TrainConfig
from study.data import prepare
from study.verify import (PARAM_TOLERANCE, check_cell_learns, check_determinism, check_optimizer_pair,
                          grid_cells, optimizer_divergence, run_checks)



@pytest.fixture(scope="module")
def small(mini_data):
    return prepare(mini_data, train_limit=40, test_limit=20, subset_seed=0)


def test_run_checks_pass_on_the_mini_set(mini_prepared):
    checks = run_checks(mini_prepared)
    assert len(checks) == 5
    failed = [(c.name, c.detail) for c in checks if not c.passed]
    assert not failed
    names = [c.name for c in checks]
    assert names[0].startswith("determinism") and "72 cells" in names[4]
    assert names[1].startswith("fast kernels") and "identical parameters" in checks[1].detail
    assert names[2:4] == ["manual_sgd vs sgd", "manual_adam vs adam"]


def test_fast_kernel_check_can_fail(mini_prepared, monkeypatch):
    """A group that trains a run differently from the run alone must be reported."""
    real = sv.train_batched

    def nudged(cfgs, data, **kw):
        results = real(cfgs, data, **kw)
        with torch.no_grad():
            next(results[1].model.parameters()).add_(1e-6)
        return results

    monkeypatch.setattr(sv, "train_batched", nudged)
    check = sv.check_fast_kernels(mini_prepared, TrainConfig(epochs=1, log_every=10))
    assert check.passed is False and "DIFFERENT" in check.detail


def test_optimizer_check_can_fail(mini_prepared):
    """Hand-written SGD is not Adam: the check must say so."""
    check = check_optimizer_pair("manual_sgd", "adam", mini_prepared, steps=10)
    assert check.passed is False
    assert "not bit-identical" in check.detail and f"{PARAM_TOLERANCE:.0e}" in check.detail


def test_optimizer_divergence_is_zero_for_one_rule_against_itself(mini_prepared):
    diffs = optimizer_divergence("manual_adam", "manual_adam", mini_prepared, steps=5)
    assert diffs == [0.0] * 5
    check = check_optimizer_pair("sgd", "sgd", mini_prepared, steps=5)
    assert check.passed and check.detail == "bit-identical over 5 steps"


def test_determinism_check_passes_and_can_fail(small, monkeypatch):
    cfg = TrainConfig(optimizer="adam", bn=True, epochs=1, batch_size=8, log_every=1)
    assert check_determinism(small, cfg).passed

    real_train, calls = sv.train, []

    def second_run_differs(cfg, data, **kw):
        calls.append(cfg)
        return real_train(replace(cfg, seed=cfg.seed + len(calls) - 1), data, **kw)

    monkeypatch.setattr(sv, "train", second_run_differs)
    check = check_determinism(small, cfg)
    assert len(calls) == 2 and check.passed is False
    assert "parameters identical: False" in check.detail


def test_grid_is_the_full_factorial():
    cells = grid_cells()
    assert len(cells) == 4 * 2 * 3 * 3 == 72
    assert {(c.optimizer, c.bn, c.init, c.scheduler) for c in cells} == \
        set(itertools.product(OPTIMIZERS, (False, True), INITS, SCHEDULERS))
    assert len({c.cell for c in cells}) == 72


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("bn", [False, True])
def test_cell_learns(mini_prepared, optimizer, bn):
    cfg = TrainConfig(optimizer=optimizer, bn=bn, init="xavier", scheduler="step", scheduler_interval="batch")
    passed, before, after = check_cell_learns(cfg, mini_prepared)
    assert before > after and passed is True


def test_cell_check_can_fail(mini_prepared, monkeypatch):
    """An optimizer that climbs the gradient makes the loss go up, and the check fails."""
    real = sv.make_optimizer

    def ascending(name, params, **kw):
        opt = real(name, params, **kw)
        params = list(opt.params)
        step = opt.step

        def climb():
            for p in params:
                p.grad.neg_()
            step()

        opt.step = climb
        return opt

    monkeypatch.setattr(sv, "make_optimizer", ascending)
    passed, before, after = check_cell_learns(TrainConfig(optimizer="manual_sgd"), mini_prepared)
    assert passed is False and after > before
