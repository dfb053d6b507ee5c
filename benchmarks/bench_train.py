"""Training throughput: the lecture's loop against optstudy's trainer, on the same data.

Both loops run in one process, on the same CIFAR-10 directory, with the same model, optimizer,
batch size (4) and torch thread count, for the same number of optimizer steps:

- ``lecture``: the lecture's code as written. ``torchvision.datasets.ImageFolder`` (or
  ``CIFAR10`` for torchvision's layout) decodes each image and applies
  ``Compose([ToTensor(), Normalize((0.5,)*3, (0.5,)*3)])`` per sample;
  ``DataLoader(batch_size=4, shuffle=True)`` with ``num_workers=0``; the lecture's CNN (or
  CNNWithBN) and optimizer (``torch.optim`` or its ManualSGD/ManualAdam, from study.lecture);
  zero_grad / forward / CrossEntropyLoss / backward / step / ``running_loss += loss.item()``.
- ``study``: ``study.data.load_cifar10`` + ``study.data.prepare`` (timed on their own line,
  not in the step timing), then ``study.train.train`` on ``steps * 4`` examples for one epoch
  (more epochs over fewer examples if that exceeds the split), timed by its own
  ``TrainResult.train_seconds``: training steps and the per-epoch shuffle, not evaluation.

Each loop is warmed up for ``--warmup`` steps before it is timed. Repeats alternate the order
(lecture first, then study first, ...) so that drift in machine load falls on both, and the
table reports the median steps/s of each loop and the ratio of the medians.

Example:
  CIFAR10_DIR=/work/shared/data/cifar10-jpeg .venv/bin/python benchmarks/bench_train.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch



# Make `study` importable when the script is run from a checkout without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from study.config import OPTIMIZERS, TrainConfig  # noqa: E402
from study.data import DataNotFoundError, load_cifar10, prepare  # noqa: E402
from study.train import train  # noqa: E402

BATCH_SIZE = 4  # the lecture's DataLoader(batch_size=4)
LR = 0.001  # the lecture's lr for all four optimizers
TEST_LIMIT = 1000  # study's per-epoch evaluation set; evaluation is not in the step timing


# The lecture's code, verbatim, lives in study.lecture (tests check it against the lecture's text).
from study.lecture import CNN, CNNWithBN  # noqa: E402
from study.lecture import make_optimizer as lecture_optimizer  # noqa: E402
from study.lecture import train_steps as lecture_steps  # noqa: E402
from study.lecture import trainset as lecture_trainset  # noqa: E402


def time_lecture(trainset, *, steps: int, warmup: int, optimizer: str, bn: bool,
                 seed: int) -> float:
    """Steps per second of the lecture loop (fresh model, optimizer and loader; warmed up)."""
    from torch.utils.data import DataLoader

    torch.manual_seed(seed)  # the lecture seeds nothing; fixed here so repeats are comparable
    trainloader = DataLoader(trainset, batch_size=BATCH_SIZE, shuffle=True)
    model = CNNWithBN() if bn else CNN()
    opt = lecture_optimizer(optimizer, model.parameters())
    model.train()
    if warmup:
        lecture_steps(trainloader, model, opt, warmup)
    t0 = time.perf_counter()
    running_loss = lecture_steps(trainloader, model, opt, steps)
    seconds = time.perf_counter() - t0
    if not math.isfinite(running_loss):
        raise RuntimeError(f"the lecture loop diverged (running_loss={running_loss})")
    return steps / seconds


# ---------------------------------------------------------------------------------------
# optstudy's trainer
# ---------------------------------------------------------------------------------------

def study_budget(steps: int, n_train: int) -> tuple[int, int]:
    """(train_limit, epochs) such that ``study.train.train`` takes exactly ``steps`` steps.

    One epoch over ``steps * 4`` examples when that fits in the training split; otherwise the
    fewest epochs that divide ``steps`` evenly and fit.
    """
    for epochs in range(max(1, math.ceil(steps * BATCH_SIZE / n_train)), steps + 1):
        per_epoch = steps // epochs
        if steps % epochs == 0 and per_epoch * BATCH_SIZE <= n_train:
            if per_epoch * BATCH_SIZE < 10:  # a stratified subset needs one example per class
                break
            return per_epoch * BATCH_SIZE, epochs
    raise SystemExit(f"--steps {steps} cannot be split into whole epochs of at most "
                     f"{n_train // BATCH_SIZE} steps; choose a number with a divisor that fits "
                     f"(e.g. a multiple of 1000)")


def time_study(data, *, steps: int, warm, optimizer: str, bn: bool, threads: int,
               train_limit: int, epochs: int, seed: int, kernels: str = "reference") -> float:
    """Steps per second of ``study.train.train`` (training steps only, warmed up first)."""
    cfg = TrainConfig(optimizer=optimizer, bn=bn, lr=LR, batch_size=BATCH_SIZE, epochs=epochs,
                      train_limit=train_limit, test_limit=TEST_LIMIT, seed=seed, threads=threads,
                      kernels=kernels)
    if warm is not None:
        train(TrainConfig(optimizer=optimizer, bn=bn, lr=LR, batch_size=BATCH_SIZE, epochs=1,
                          seed=seed, threads=threads, kernels=kernels), warm)
    result = train(cfg, data)
    if result.steps != steps:
        raise RuntimeError(f"study took {result.steps} steps, expected {steps}"
                           + (" (diverged)" if result.diverged else ""))
    return result.steps_per_second


# ---------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo), for benchmark headers."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@dataclass
class Report:
    settings: dict
    environment: dict
    setup_seconds: dict
    lecture_steps_per_second: list[float] = field(default_factory=list)
    study_steps_per_second: list[float] = field(default_factory=list)

    @property
    def lecture_median(self) -> float:
        return statistics.median(self.lecture_steps_per_second)

    @property
    def study_median(self) -> float:
        return statistics.median(self.study_steps_per_second)

    @property
    def ratio(self) -> float:
        return self.study_median / self.lecture_median

    def as_dict(self) -> dict:
        return {
            "settings": self.settings, "environment": self.environment,
            "setup_seconds": self.setup_seconds,
            "lecture": {"steps_per_second": self.lecture_steps_per_second,
                        "median_steps_per_second": self.lecture_median},
            "study": {"steps_per_second": self.study_steps_per_second,
                      "median_steps_per_second": self.study_median},
            "ratio_study_over_lecture": self.ratio,
        }

    def table(self) -> str:
        steps = self.settings["steps"]
        rows = [("loop", "steps", "median steps/s", "runs (steps/s)")]
        for name, values in (("lecture", self.lecture_steps_per_second),
                             ("study", self.study_steps_per_second)):
            rows.append((name, str(steps), f"{statistics.median(values):.1f}",
                         " ".join(f"{v:.1f}" for v in values)))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) if i in (0, 3) else c.rjust(w)
                           for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append(f"ratio study/lecture (medians): {self.ratio:.2f}x")
        return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench_train.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Time the lecture's CIFAR-10 training loop against optstudy's trainer for the same\n"
            "number of optimizer steps, on the same data, in one process, and print steps/s.\n\n"
            "  lecture  ImageFolder/CIFAR10 + ToTensor + Normalize per sample, DataLoader(batch 4,\n"
            "           shuffle, no workers), the lecture's CNN and optimizer classes.\n"
            "  study    study.data.load_cifar10 + prepare (timed apart), then study.train.train;\n"
            "           only its training steps are timed (TrainResult.train_seconds).\n\n"
            "Repeats alternate which loop goes first; the table shows the medians and their ratio."),
        epilog="example:\n  .venv/bin/python benchmarks/bench_train.py "
               "--data-dir /work/shared/data/cifar10-jpeg --steps 3000 --repeats 3 --threads 1",
    )
    p.add_argument("--data-dir", type=Path, default=os.environ.get("CIFAR10_DIR") or None,
                   metavar="PATH",
                   help="CIFAR-10 directory, ImageFolder (train/<class>/*.jpg) or torchvision "
                        "(cifar-10-batches-py) layout (default: $CIFAR10_DIR).")
    p.add_argument("--steps", type=int, default=3000, metavar="N",
                   help="optimizer steps timed per loop and repeat (default: %(default)s).")
    p.add_argument("--repeats", type=int, default=3, metavar="N",
                   help="timed runs of each loop, alternating which goes first; the table "
                        "reports the median (default: %(default)s).")
    p.add_argument("--threads", type=int, choices=(1, 2), default=1,
                   help="torch intra-op threads, the same for both loops (default: %(default)s).")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                   help="adam/sgd: torch.optim in both loops; manual_adam/manual_sgd: the lecture's "
                        "classes verbatim in the lecture loop, study.optim's in the study "
                        "(default: %(default)s).")
    p.add_argument("--bn", action="store_true",
                   help="use CNNWithBN (BatchNorm) instead of the plain CNN in both loops.")
    p.add_argument("--kernels", choices=("reference", "fast"), default="reference",
                   help="the study loop's kernels: reference (the lecture's layer calls, one "
                        "model) or fast (a single run trains as a stacked group of two, see "
                        "study.batched) (default: %(default)s).")
    p.add_argument("--warmup", type=int, default=50, metavar="N",
                   help="untimed steps run before each timed run (default: %(default)s).")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed of the models' init and batch order (default: %(default)s).")
    p.add_argument("--cache-dir", type=Path, default=None, metavar="PATH",
                   help="optstudy's tensor cache (default: $OPTSTUDY_CACHE_DIR, else ~/.cache/optstudy).")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="also write the settings, environment and every measurement here as JSON.")
    args = p.parse_args(argv)
    if args.data_dir is None:
        p.error("no data directory: pass --data-dir PATH or set CIFAR10_DIR=PATH "
                "(on this project's machines: /work/shared/data/cifar10-jpeg)")
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)

    try:
        t0 = time.perf_counter()
        cifar = load_cifar10(args.data_dir, cache_dir=args.cache_dir)
        t_load = time.perf_counter() - t0
    except DataNotFoundError as e:
        print(f"{e}\n(bench_train.py reads an existing copy; it has no --download)", file=sys.stderr)
        return 2
    train_limit, epochs = study_budget(args.steps, len(cifar.train_y))
    t0 = time.perf_counter()
    data = prepare(cifar, train_limit=train_limit, test_limit=TEST_LIMIT, subset_seed=0)
    warm = (prepare(cifar, train_limit=max(10, args.warmup * BATCH_SIZE), test_limit=100,
                    subset_seed=0) if args.warmup else None)
    t_prepare = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainset = lecture_trainset(args.data_dir)
    t_dataset = time.perf_counter() - t0

    report = Report(
        settings={"steps": args.steps, "repeats": args.repeats, "threads": torch.get_num_threads(),
                  "optimizer": args.optimizer, "bn": args.bn, "warmup": args.warmup,
                  "batch_size": BATCH_SIZE, "lr": LR, "seed": args.seed,
                  "study_train_limit": train_limit, "study_epochs": epochs,
                  "study_test_limit": TEST_LIMIT},
        environment={"torch": torch.__version__, "python": platform.python_version(),
                     "cpu": cpu_model(), "cpu_count": os.cpu_count(),
                     "data_dir": str(Path(args.data_dir).resolve()), "layout": cifar.info.layout,
                     "lecture_dataset": type(trainset).__name__,
                     "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "load_average_start": os.getloadavg()[0]},
        setup_seconds={"study_load_cifar10": t_load, "study_prepare": t_prepare,
                       "lecture_dataset": t_dataset},
    )
    env = report.environment
    print(f"torch {env['torch']} | threads {torch.get_num_threads()} | cpu {env['cpu']} "
          f"({env['cpu_count']} logical) | load average {env['load_average_start']:.2f}")
    print(f"data {env['data_dir']} ({env['layout']}; lecture reads it with {env['lecture_dataset']})")
    print(f"optimizer {args.optimizer} | bn {args.bn} | batch {BATCH_SIZE} | steps {args.steps} "
          f"| warmup {args.warmup} | repeats {args.repeats}")
    busy = env["load_average_start"] - (env["cpu_count"] or 1) + args.threads
    if busy > 0.5:
        print(f"warning: load average {env['load_average_start']:.2f} on {env['cpu_count']} CPUs: "
              "other processes are running and the timings will be noisy; compare the per-run "
              "columns, or rerun on an idle machine.")
        if args.threads >= (env["cpu_count"] or 1):
            print("warning: as many torch threads as CPUs on a busy machine: each op waits for "
                  "its descheduled peer thread and throughput can drop tenfold (use --threads 1).")
    print(f"setup (not in step timing): study load_cifar10 {t_load:.2f}s + prepare {t_prepare:.2f}s "
          f"(train_limit={train_limit}, epochs={epochs}); lecture {env['lecture_dataset']} "
          f"{t_dataset:.2f}s")

    for r in range(args.repeats):
        order = ("lecture", "study") if r % 2 == 0 else ("study", "lecture")
        for loop in order:
            if loop == "lecture":
                sps = time_lecture(trainset, steps=args.steps, warmup=args.warmup,
                                   optimizer=args.optimizer, bn=args.bn, seed=args.seed)
                report.lecture_steps_per_second.append(sps)
            else:
                sps = time_study(data, steps=args.steps, warm=warm, optimizer=args.optimizer,
                                 bn=args.bn, threads=args.threads, train_limit=train_limit,
                                 epochs=epochs, seed=args.seed, kernels=args.kernels)
                report.study_steps_per_second.append(sps)
            print(f"  repeat {r + 1}/{args.repeats} {loop:<7} {sps:8.1f} steps/s", flush=True)

    report.environment["load_average_end"] = os.getloadavg()[0]
    print()
    print(report.table())
    print(f"load average (1 min) at start {env['load_average_start']:.2f}, at end "
          f"{env['load_average_end']:.2f} on {env['cpu_count']} CPUs (this benchmark accounts for "
          f"about 1; more means other processes competed for the CPUs)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
