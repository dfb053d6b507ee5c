"""Whole-study throughput: the factorial through `study run` vs the lecture's sequential loop.

In one invocation, on the same data and the same cells x seeds with the same number of steps
per run, this times

1. the lecture's way: for each run, one process-local loop with torchvision transforms per
   sample, ``DataLoader(batch_size=4, shuffle=True)``, the lecture's model/optimizer classes
   (``study.lecture``), then the lecture's evaluation (test loader, batch 4);
2. optstudy's way: ``study run`` on a grid of the same cells (a subprocess, so process start-up,
   data-cache loading, MLflow logging of every run and of every model are all included),
   with ``--workers`` and ``--seed-batch`` as given;

and prints model-steps/s (optimizer steps of all runs / wall seconds) for each and the ratio.

The lecture's loop takes the same time per step in every cell of an optimizer and BN setting,
and runs one run after another, so ``--lecture-runs N`` times it on N of the runs only, spread
evenly over the cells x seeds (every optimizer and BN setting included for N >= 8); its
model-steps/s is that sample's.

Examples:
  .venv/bin/python benchmarks/bench_study.py --data-dir ../shared/data/cifar10-jpeg \
      --cells 12 --seeds 2 --steps 1000 --workers 2
  .venv/bin/python benchmarks/bench_study.py --data-dir ../shared/data/cifar10-jpeg \
      --cells 72 --seeds 5 --steps 2500 --workers 2 --lecture-runs 16
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from study import lecture
from study.config import INITS, OPTIMIZERS, SCHEDULERS

REPO = Path(__file__).resolve().parent.parent


def factorial_cells(n: int) -> list[dict]:
    """``n`` cells spread evenly over the 72-cell factorial (all 72 for n >= 72)."""
    cells = [dict(optimizer=o, bn=b, init=i, scheduler=s)
             for o, b, i, s in itertools.product(OPTIMIZERS, (False, True), INITS, SCHEDULERS)]
    if n >= len(cells):
        return cells
    return [cells[round(k * len(cells) / n)] for k in range(n)]


def sample_runs(cells: list[dict], seeds: int, n: int | None) -> list[tuple[dict, int]]:
    """``n`` (cell, seed) pairs spread evenly over all of them (all for None or n >= their number)."""
    runs = [(cell, seed) for cell in cells for seed in range(seeds)]
    if n is None or n >= len(runs):
        return runs
    return [runs[(2 * k + 1) * len(runs) // (2 * n)] for k in range(n)]


def time_lecture(runs: list[tuple[dict, int]], steps: int, data_dir: str, test_images: int) -> tuple[float, int]:
    """Wall seconds and total steps of the lecture's loop over the given (cell, seed) runs."""
    from torch.utils.data import DataLoader, Subset

    train = lecture.trainset(data_dir)
    test_full = lecture.trainset(data_dir, train=False)
    test = Subset(test_full, range(0, len(test_full), max(1, len(test_full) // test_images)))
    t0 = time.perf_counter()
    total = 0
    for cell, seed in runs:
        torch.manual_seed(seed)
        loader = DataLoader(train, batch_size=lecture.BATCH_SIZE, shuffle=True)
        model = lecture.make_model(bn=cell["bn"], init=cell["init"])
        opt = lecture.make_optimizer(cell["optimizer"], model.parameters())
        model.train()
        lecture.train_steps(loader, model, opt, steps)
        total += steps
        model.eval()  # the lecture's evaluate_model: test loader of batch 4, no_grad
        with torch.no_grad():
            for images, labels in DataLoader(test, batch_size=4, shuffle=False):
                model(images).argmax(1).eq(labels).sum().item()
    return time.perf_counter() - t0, total


def time_study(cells: list[dict], seeds: int, steps: int, args) -> tuple[float, int, str]:
    """Wall seconds and total steps of `study run` on the same cells (fresh store and work dir)."""
    with tempfile.TemporaryDirectory(prefix="bench-study-") as tmp:
        grid = Path(tmp) / "bench.yaml"
        grid.write_text(yaml.safe_dump({
            "name": "bench", "seeds": seeds,
            "fixed": {"epochs": 1, "train_limit": steps * 4, "test_limit": args.test_images,
                      "scheduler_interval": "epoch"},
            "cells": cells}))
        cmd = [sys.executable, "-m", "study.cli", "run", str(grid), "--data-dir", args.data_dir,
               "--workers", str(args.workers), "--quiet", "--tracking-uri", f"sqlite:///{tmp}/mlflow.db",
               "--work-dir", f"{tmp}/work"]
        if args.seed_batch:
            cmd += ["--seed-batch", args.seed_batch]
        if args.kernels:
            cmd += ["--kernels", args.kernels]
        if not args.log_model:
            cmd.append("--no-log-model")
        t0 = time.perf_counter()
        res = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            raise SystemExit(f"study run failed:\n{res.stderr[-3000:]}")
        return wall, len(cells) * seeds * steps, res.stdout.strip().splitlines()[-1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("CIFAR10_DIR"),
                   help="CIFAR-10 folder (default: $CIFAR10_DIR)")
    p.add_argument("--cells", type=int, default=12, help="cells of the factorial, spread evenly (72 = all)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per cell")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps per run (batch 4)")
    p.add_argument("--test-images", type=int, default=1000, help="test images evaluated per run")
    p.add_argument("--workers", type=int, default=2, help="`study run --workers`")
    p.add_argument("--seed-batch", default=None, help="`study run --seed-batch` (auto, off or K)")
    p.add_argument("--kernels", default=None, help="`study run --kernels` (fast or reference)")
    p.add_argument("--lecture-runs", type=int, default=None,
                   help="time the lecture's loop on this many of the runs, spread evenly (default: all)")
    p.add_argument("--no-log-model", dest="log_model", action="store_false",
                   help="skip model logging in `study run` (logged by default, as users run it)")
    args = p.parse_args(argv)
    if not args.data_dir:
        p.error("give --data-dir or set CIFAR10_DIR (here: ../shared/data/cifar10-jpeg)")
    args.data_dir = str(Path(args.data_dir).resolve())
    cells = factorial_cells(args.cells)
    runs = len(cells) * args.seeds
    print(f"{len(cells)} cells x {args.seeds} seeds = {runs} runs of {args.steps} steps; data {args.data_dir}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads (lecture loop), {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    study_wall, study_steps, last = time_study(cells, args.seeds, args.steps, args)
    print(f"study run:  {study_wall:8.1f} s  {study_steps / study_wall:8.0f} model-steps/s  "
          f"(workers {args.workers}, seed-batch {args.seed_batch or 'default'}; {last})")
    sample = sample_runs(cells, args.seeds, args.lecture_runs)
    lect_wall, lect_steps = time_lecture(sample, args.steps, args.data_dir, args.test_images)
    print(f"lecture:    {lect_wall:8.1f} s  {lect_steps / lect_wall:8.0f} model-steps/s  (sequential, DataLoader batch 4; "
          f"{len(sample)} of the {runs} runs)")
    print(f"ratio study/lecture: {(study_steps / study_wall) / (lect_steps / lect_wall):.2f}x; "
          f"the full 360-run factorial (2 epochs = 25,000 steps per run) would take about "
          f"{360 * 25000 / (study_steps / study_wall) / 3600:.1f} h with study run vs "
          f"{360 * 25000 / (lect_steps / lect_wall) / 3600:.1f} h the lecture's way")
    return 0


if __name__ == "__main__":
    sys.exit(main())
