"""Seed-batched training throughput: K sequential ``train()`` runs against ``train_batched``.

All run in one process, on the same data, with the same cell (optimizer, BatchNorm), batch
size (4), thread count and number of optimizer steps per seed:

- ``sequential``: ``study.train.train`` once per seed with the reference kernels (the lecture's
  layer calls), seeds 0..K-1, one after another: one run at a time, as before seed batching;
- ``batched-ref``: ``study.batched.train_batched`` on the K configs at once, reference kernels
  (bit for bit the sequential results on CPU);
- ``batched-fast``: the same with the fast kernels (grouped channels-last convolutions, one
  BatchNorm call per layer, denormals flushed), equal to the reference within rounding.

Throughput is model-steps per second: K * steps divided by the training time, which is each
run's ``TrainResult.train_seconds`` (training steps only; the per-epoch evaluation is left out,
and shown separately in the wall-clock). All are warmed up first; repeats rotate which goes
first, so that drift in machine load falls on each, and the medians are compared. The last
lines say how the batched results compare with the sequential ones.

Example:
  CIFAR10_DIR=/work/shared/data/cifar10-jpeg .venv/bin/python benchmarks/bench_batched.py \\
      --k 5 --steps 2000 --threads 1 --optimizer adam --bn
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

# Make `study` importable when the script is run from a checkout without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from study.batched import train_batched  # noqa: E402
from study.config import OPTIMIZERS, TrainConfig  # noqa: E402
from study.data import DataNotFoundError, load_cifar10, prepare  # noqa: E402
from study.train import train  # noqa: E402

BATCH_SIZE = 4  # the lecture's
LR = 0.001  # the lecture's
TEST_LIMIT = 1000  # per-epoch evaluation set; not in the step timing


def budget(steps: int, n_train: int) -> tuple[int, int, int]:
    """(train_limit, epochs, steps taken): one epoch over ``steps * 4`` examples when that fits,
    else whole epochs over the full split (the steps then round up to whole epochs)."""
    if steps * BATCH_SIZE <= n_train:
        return max(10, steps * BATCH_SIZE), 1, max(10, steps * BATCH_SIZE) // BATCH_SIZE
    per_epoch = math.ceil(n_train / BATCH_SIZE)
    epochs = math.ceil(steps / per_epoch)
    return n_train, epochs, epochs * per_epoch


def configs(args, k: int, train_limit: int, epochs: int, kernels: str) -> list[TrainConfig]:
    return [TrainConfig(optimizer=args.optimizer, bn=args.bn, lr=LR, batch_size=BATCH_SIZE,
                        epochs=epochs, train_limit=train_limit, test_limit=TEST_LIMIT, seed=s,
                        threads=args.threads, device=args.device, kernels=kernels) for s in range(k)]


def run_sequential(cfgs, data) -> tuple[float, float, list]:
    """(training seconds, wall seconds, results) of one train() per config."""
    t0 = time.perf_counter()
    results = [train(c, data) for c in cfgs]
    return sum(r.train_seconds for r in results), time.perf_counter() - t0, results


def run_batched(cfgs, data) -> tuple[float, float, list]:
    """(training seconds, wall seconds, results) of one train_batched over all configs."""
    t0 = time.perf_counter()
    results = train_batched(cfgs, data)
    return results[0].train_seconds, time.perf_counter() - t0, results


def same_results(a: list, b: list) -> tuple[bool, float]:
    """(bitwise equal, largest absolute parameter difference) over every seed's final model."""
    equal, worst = True, 0.0
    for ra, rb in zip(a, b):
        sa, sb = ra.model.state_dict(), rb.model.state_dict()
        for name in sa:
            equal &= torch.equal(sa[name], sb[name])
            worst = max(worst, (sa[name].double() - sb[name].double()).abs().max().item())
    return equal, worst


from bench_train import cpu_model  # noqa: E402  (same folder; scripts run from anywhere)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench_batched.py",
        description="Time K sequential study.train.train runs against one "
                    "study.batched.train_batched of the same K seeds, on the same data.",
        epilog="Example: .venv/bin/python benchmarks/bench_batched.py "
               "--data-dir /work/shared/data/cifar10-jpeg --k 5 --steps 2000 --threads 1 --bn",
    )
    p.add_argument("--data-dir", type=Path, default=os.environ.get("CIFAR10_DIR") or None,
                   help="CIFAR-10 directory, either layout (default: $CIFAR10_DIR).")
    p.add_argument("--k", type=int, default=5, help="seeds (default: %(default)s).")
    p.add_argument("--steps", type=int, default=2000,
                   help="optimizer steps per seed (default: %(default)s).")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads for both (default: %(default)s).")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                   help="the cell's optimizer (default: %(default)s).")
    p.add_argument("--bn", action="store_true", help="CNNWithBN instead of CNN.")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="device of the data and models (default: %(default)s).")
    p.add_argument("--repeats", type=int, default=1,
                   help="timed runs of each, alternating which goes first (default: %(default)s).")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="optstudy's tensor cache (default: $OPTSTUDY_CACHE_DIR, else ~/.cache/optstudy).")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="also write the settings and every measurement here as JSON.")
    args = p.parse_args(argv)
    if args.data_dir is None:
        p.error("no data directory: pass --data-dir PATH or set CIFAR10_DIR=PATH "
                "(on this project's machines: /work/shared/data/cifar10-jpeg)")
    for name in ("k", "steps", "threads", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        cifar = load_cifar10(args.data_dir, cache_dir=args.cache_dir)
    except DataNotFoundError as e:
        print(e, file=sys.stderr)
        return 2
    train_limit, epochs, steps = budget(args.steps, len(cifar.train_y))
    data = prepare(cifar, train_limit=train_limit, test_limit=TEST_LIMIT, subset_seed=0,
                   device=args.device)
    warm = prepare(cifar, train_limit=200, test_limit=100, subset_seed=0, device=args.device)
    ways = {  # name -> (run, configs)
        "sequential": (run_sequential, configs(args, args.k, train_limit, epochs, "reference")),
        "batched-ref": (run_batched, configs(args, args.k, train_limit, epochs, "reference")),
        "batched-fast": (run_batched, configs(args, args.k, train_limit, epochs, "fast")),
    }
    run_sequential(configs(args, 1, 200, 1, "reference"), warm)
    for kernels in ("reference", "fast"):
        run_batched(configs(args, args.k, 200, 1, kernels), warm)

    cpu = cpu_model()
    print(f"torch {torch.__version__} | device {args.device} | threads {torch.get_num_threads()} | "
          f"cpu {cpu} ({os.cpu_count()} logical) | load average {os.getloadavg()[0]:.1f}")
    print(f"k {args.k} | optimizer {args.optimizer} | bn {args.bn} | batch {BATCH_SIZE} | "
          f"steps/seed {steps} (train_limit {train_limit}, epochs {epochs})")
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    results: dict[str, list] = {}
    names = list(ways)
    for r in range(args.repeats):
        for name in names[r % 3:] + names[:r % 3]:
            run, cfgs = ways[name]
            t_train, t_wall, results[name] = run(cfgs, data)
            times[name].append((t_train, t_wall))
            print(f"  repeat {r + 1}/{args.repeats} {name:<12} {args.k * steps / t_train:8.1f} "
                  f"model-steps/s (train {t_train:.1f} s, wall {t_wall:.1f} s)", flush=True)

    sps = {name: statistics.median(args.k * steps / t for t, _ in ts) for name, ts in times.items()}
    base = sps["sequential"]
    print(f"k={args.k} bn={args.bn} {args.optimizer} threads={args.threads} {args.device}: "
          + " | ".join(f"{name} {v:.1f} model-steps/s ({v / base:.2f}x)" for name, v in sps.items()))
    comparison = {}
    for name in ("batched-ref", "batched-fast"):
        equal, worst = same_results(results["sequential"], results[name])
        accs = [abs(a.test_accuracy - b.test_accuracy) for a, b in zip(results["sequential"], results[name])]
        comparison[name] = {"bitwise_identical": equal, "max_param_diff": worst, "max_accuracy_diff": max(accs)}
        print(f"  {name} vs sequential: " + ("bitwise identical" if equal else
              f"max |param diff| {worst:.2e}, max |test accuracy diff| {max(accs):.2f} points"))
    diverged = sum(r.diverged for rs in results.values() for r in rs)
    if diverged:
        print(f"  {diverged} diverged runs")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "settings": {**{k: str(v) for k, v in vars(args).items()}, "steps_taken": steps,
                         "train_limit": train_limit, "epochs": epochs},
            "torch": torch.__version__, "cpu": cpu,
            **{name: {"train_seconds": [t for t, _ in ts], "wall_seconds": [w for _, w in ts],
                      "median_model_steps_per_second": sps[name]} for name, ts in times.items()},
            "ratios": {name: sps[name] / base for name in sps}, "comparison": comparison,
        }, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
