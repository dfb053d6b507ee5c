"""Checks and timings that need a CUDA GPU: run once when a GPU machine is lent.

CI and the test suite never need a GPU; this script covers what they cannot, in one run of a
few minutes:

1. correctness on CUDA, small budget: seed-batched training with the reference kernels and with
   the fast kernels against sequential reference `train()` on CUDA (within rounding: BatchNorm
   on batches of 4 amplifies it, so test accuracy within 2 points of 200 images), and whether
   a fast run's result is the same in another group (bit for bit on CPU; reported here);
2. throughput: model-steps/s of sequential `train()` and of fast groups of K = 15 and 64 runs,
   for Adam with and without BatchNorm, and the runs/minute they imply for the factorial
   (360 runs of 2 epochs = 25,000 steps).

Usage: python benchmarks/gpu_check.py --data-dir DIR [--steps 2000]
Exits 1 if a check fails, 2 if no GPU is visible.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from study.batched import train_batched  # noqa: E402
from study.config import TrainConfig  # noqa: E402
from study.data import load_cifar10, prepare  # noqa: E402
from study.train import train  # noqa: E402


def max_param_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in
               zip(a.model.state_dict().values(), b.model.state_dict().values()) if x.is_floating_point())


def timed(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("CIFAR10_DIR"))
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps per run in the timings")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU visible", file=sys.stderr)
        return 2
    print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}", flush=True)
    data = load_cifar10(args.data_dir)
    ok = True
    # 1. correctness on a small budget
    small = prepare(data, train_limit=400, test_limit=200, subset_seed=0, device="cuda")
    for optimizer in ("sgd", "adam", "manual_adam"):
        cfgs = [TrainConfig(optimizer=optimizer, bn=True, seed=s, device="cuda", epochs=1, log_every=10,
                            kernels="reference") for s in range(3)]
        wants = [train(cfg, small) for cfg in cfgs]
        for kernels in ("reference", "fast"):
            group = [replace(c, kernels=kernels) for c in cfgs]
            for cfg, got, want in zip(group, train_batched(group, small), wants):
                dacc = abs(got.test_accuracy - want.test_accuracy)
                passed = dacc <= 2.0
                ok &= passed
                print(f"{optimizer:12s} {kernels:9s} seed {cfg.seed}: max |param diff| "
                      f"{max_param_diff(got, want):.2e}, |acc diff| {dacc:.2f} -> {'PASS' if passed else 'FAIL'}")
        fast = [replace(c, kernels="fast") for c in cfgs]
        a = train_batched(fast, small)[0]
        b = train_batched([fast[2], fast[1], fast[0]], small)[2]
        print(f"{optimizer:12s} fast seed 0 at place 0 vs place 2: max |param diff| {max_param_diff(a, b):.2e} "
              f"(0 = the same in any group, as on CPU)", flush=True)
    # 2. throughput
    big = prepare(data, train_limit=args.steps * 4, test_limit=1000, subset_seed=0, device="cuda")
    for bn in (False, True):
        one = TrainConfig(optimizer="adam", bn=bn, device="cuda", epochs=1, kernels="reference")
        seq = 3 * args.steps / timed(lambda: [train(replace(one, seed=s), big) for s in range(3)])
        print(f"bn={bn}: sequential train() {seq:.0f} model-steps/s = {seq / 25000 * 60:.2f} factorial runs/minute",
              flush=True)
        for k in (15, 64):
            cfgs = [replace(one, seed=s, kernels="fast") for s in range(k)]
            bat = k * args.steps / timed(lambda: train_batched(cfgs, big))
            print(f"bn={bn}: fast group of {k}: {bat:.0f} model-steps/s ({bat / seq:.1f}x) = "
                  f"{bat / 25000 * 60:.1f} factorial runs/minute", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
