"""Checks and timings that need a CUDA GPU: run once when a GPU machine is lent.

CI and the test suite never need a GPU; this script covers what they cannot:
1. seed-batched training on CUDA (plain and grouped kernels) matches sequential `train()` on
   CUDA within rounding;
2. model-steps/s on the GPU: sequential `train()` vs `train_batched` for K seeds, and the
   projected runs/minute for the 360-run factorial (2 epochs of 12,500 steps).

Usage: python benchmarks/gpu_check.py --data-dir DIR [--k 5] [--steps 2000]
Exits non-zero if a check fails or no GPU is visible.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from study.batched import train_batched
from study.config import TrainConfig
from study.data import load_cifar10, prepare
from study.train import train


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("CIFAR10_DIR"))
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--steps", type=int, default=2000)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU visible", file=sys.stderr)
        return 2
    print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    data = load_cifar10(args.data_dir)
    ok = True
    # 1. correctness on a small budget
    small = prepare(data, train_limit=400, test_limit=200, subset_seed=0, device="cuda")
    for optimizer in ("sgd", "adam", "manual_adam"):
        for grouped in (False, True):
            cfgs = [TrainConfig(optimizer=optimizer, bn=True, seed=s, device="cuda", epochs=1, log_every=10)
                    for s in range(3)]
            for cfg, got in zip(cfgs, train_batched(cfgs, small, grouped=grouped)):
                want = train(cfg, small)
                worst = max((a - b).abs().max().item() for a, b in
                            zip(got.model.state_dict().values(), want.model.state_dict().values())
                            if a.is_floating_point())
                dacc = abs(got.test_accuracy - want.test_accuracy)
                passed = dacc <= 2.0  # BN over batches of 4 amplifies rounding; see tests/test_batched.py
                ok &= passed
                print(f"{optimizer:12s} grouped={grouped!s:5s} seed {cfg.seed}: max |param diff| {worst:.2e}, "
                      f"|acc diff| {dacc:.2f} -> {'PASS' if passed else 'FAIL'}")
    # 2. throughput
    big = prepare(data, train_limit=args.steps * 4, test_limit=1000, subset_seed=0, device="cuda")
    for bn in (False, True):
        cfgs = [TrainConfig(optimizer="adam", bn=bn, seed=s, device="cuda", epochs=1) for s in range(args.k)]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for cfg in cfgs:
            train(cfg, big)
        torch.cuda.synchronize()
        seq = args.k * args.steps / (time.perf_counter() - t0)
        for grouped in (False, True):
            t0 = time.perf_counter()
            train_batched(cfgs, big, grouped=grouped)
            torch.cuda.synchronize()
            bat = args.k * args.steps / (time.perf_counter() - t0)
            print(f"bn={bn}: sequential {seq:.0f} model-steps/s, batched(K={args.k}, grouped={grouped}) "
                  f"{bat:.0f} model-steps/s ({bat / seq:.2f}x); factorial at this rate: "
                  f"{bat / 25000 * 60:.1f} runs/minute")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
