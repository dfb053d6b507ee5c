"""The ``study`` command line: train one cell, verify the machinery, run and analyze studies."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .config import (INITS, KERNELS, OPTIMIZERS, SCHEDULER_INTERVALS, SCHEDULERS, ConfigError,
                     TrainConfig)
from .data import DataNotFoundError

BUNDLED_MINI = Path(__file__).resolve().parent.parent / "tests" / "data" / "cifar10-mini"
TRUE_WORDS = ("true", "on", "yes", "1")
FALSE_WORDS = ("false", "off", "no", "0")


KERNELS_HELP = ("Arithmetic: 'fast' (seed-stacked model with grouped channels-last convolutions, "
                "denormals flushed; a run's result does not depend on the runs batched with it) or "
                "'reference' (the lecture's layer calls, bit for bit its loop): the same math, other "
                "rounding. Part of the run key.")


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without one is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("device='cuda' was asked for but no CUDA GPU is visible; "
                                 "use --device cpu or auto", param_hint="--device")
    return device


def parse_bool(value: str | bool, name: str = "bn") -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in TRUE_WORDS:
        return True
    if v in FALSE_WORDS:
        return False
    raise click.BadParameter(f"{value!r} is not allowed; use one of: {', '.join(TRUE_WORDS + FALSE_WORDS)}",
                             param_hint=f"--{name}")


def limit_or_none(value: int | None) -> int | None:
    """0 (MLproject's way to say 'no limit') and None both mean the whole split."""
    return None if not value else value


def tracking_options(f):
    f = click.option("--experiment", "experiment", default=None, metavar="NAME",
                     help="MLflow experiment name (default: $MLFLOW_EXPERIMENT_NAME, else 'optstudy').")(f)
    f = click.option("--tracking-uri", default=None, metavar="URI",
                     help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else MLflow's "
                          "default store, sqlite:///mlflow.db in the current directory).")(f)
    return f


def data_options(f):
    f = click.option("--download", is_flag=True,
                     help="Fetch the official CIFAR-10 archive through torchvision if missing (needs internet).")(f)
    f = click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                     help="Where decoded tensors are cached (default: $OPTSTUDY_CACHE_DIR, else ~/.cache/optstudy).")(f)
    f = click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                     help="CIFAR-10 directory, torchvision 'cifar-10-batches-py' or ImageFolder "
                          "train/<class>/ test/<class>/ layout (default: $CIFAR10_DIR, else ./data).")(f)
    return f


def use_experiment(tracking_uri: str | None, experiment: str | None) -> None:
    import mlflow

    from .tracking import configure_tracking

    configure_tracking(tracking_uri)
    if os.environ.get("MLFLOW_RUN_ID"):
        return  # inside `mlflow run`: the run and its experiment already exist
    name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "optstudy"
    mlflow.set_experiment(name)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="optstudy")
def main() -> None:
    """optstudy: which optimizer, BatchNorm, init and LR-schedule differences on a small CIFAR-10
    CNN are real, and which are seed noise. Every run is tracked in MLflow."""


@main.command()
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="adam", show_default=True,
              help="manual_* are the lecture's hand-written update rules; sgd/adam are torch.optim.")
@click.option("--bn", "bn", default="false", is_flag=False, flag_value="true", metavar="[true|false]",
              help="Use CNNWithBN (BatchNorm after each conv and hidden fc layer). '--bn' alone means true.")
@click.option("--no-bn", "no_bn", is_flag=True, help="Use the plain CNN (the default).")
@click.option("--init", type=click.Choice(INITS), default="default", show_default=True,
              help="Weight init: PyTorch's default, kaiming_normal_ or xavier_uniform_ (biases 0.01).")
@click.option("--scheduler", type=click.Choice(SCHEDULERS), default="none", show_default=True,
              help="LR schedule: StepLR (step_size, gamma) or ExponentialLR (gamma).")
@click.option("--scheduler-interval", type=click.Choice(SCHEDULER_INTERVALS), default="epoch",
              show_default=True,
              help="When the scheduler steps; 'never' is the lecture as written (built, never stepped).")
@click.option("--step-size", type=click.IntRange(min=1), default=30, show_default=True,
              help="StepLR: scheduler steps between decays.")
@click.option("--gamma", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True,
              help="Decay factor of StepLR and ExponentialLR.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Run seed; init and data-order seeds derive from it.")
@click.option("--init-seed", type=click.IntRange(min=0), default=None, help="Override the weight-init seed.")
@click.option("--data-seed", type=click.IntRange(min=0), default=None, help="Override the batch-order seed.")
@click.option("--epochs", type=click.IntRange(min=1), default=2, show_default=True, help="Training epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Training batch size.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=0.001, show_default=True,
              help="(Initial) learning rate.")
@click.option("--beta1", type=click.FloatRange(0, 1, max_open=True), default=0.9, show_default=True, help="Adam beta1.")
@click.option("--beta2", type=click.FloatRange(0, 1, max_open=True), default=0.999, show_default=True, help="Adam beta2.")
@click.option("--eps", type=click.FloatRange(0, min_open=True), default=1e-8, show_default=True, help="Adam epsilon.")
@click.option("--train-limit", type=click.IntRange(min=0), default=0, show_default=True,
              help="Use a seeded, class-stratified subset of N training images (0 = all 50,000).")
@click.option("--test-limit", type=click.IntRange(min=0), default=0, show_default=True,
              help="Use a seeded, class-stratified subset of N test images (0 = all 10,000).")
@click.option("--device", type=click.Choice(("auto", "cpu", "cuda")), default="auto", show_default=True,
              help="Where to train.")
@click.option("--kernels", type=click.Choice(KERNELS), default="fast", show_default=True, help=KERNELS_HELP)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch CPU threads (default: torch's choice). Logged; keep it fixed where results must match bit for bit.")
@click.option("--log-every", type=click.IntRange(min=1), default=500, show_default=True,
              help="Batches per logged running-mean train_loss point.")
@click.option("--log-model/--no-log-model", default=True, show_default=True,
              help="Log the trained model to MLflow.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
@data_options
@tracking_options
def train(**kw) -> None:
    """Train one cell of the study for one seed, logged as one MLflow run.

    \b
    Example:
      study train --optimizer adam --bn --init kaiming --scheduler step --seed 3
    """
    from .data import load_cifar10
    from .tracking import run_cell

    bn = False if kw.pop("no_bn") else parse_bool(kw.pop("bn"))
    try:
        cfg = TrainConfig(
            optimizer=kw["optimizer"], bn=bn, init=kw["init"], scheduler=kw["scheduler"],
            scheduler_interval=kw["scheduler_interval"], step_size=kw["step_size"], gamma=kw["gamma"],
            lr=kw["lr"], beta1=kw["beta1"], beta2=kw["beta2"], eps=kw["eps"],
            batch_size=kw["batch_size"], epochs=kw["epochs"], seed=kw["seed"],
            init_seed=kw["init_seed"], data_seed=kw["data_seed"],
            train_limit=limit_or_none(kw["train_limit"]), test_limit=limit_or_none(kw["test_limit"]),
            device=resolve_device(kw["device"]), threads=kw["threads"], log_every=kw["log_every"],
            kernels=kw["kernels"])
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        data = load_cifar10(kw["data_dir"] or None, cache_dir=kw["cache_dir"] or None,
                            download=kw["download"])
    except DataNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    use_experiment(kw["tracking_uri"], kw["experiment"])
    outcome = run_cell(cfg, data=data, log_model_artifact=kw["log_model"], progress=not kw["quiet"])
    r = outcome.result
    if not kw["quiet"]:
        click.echo(f"{cfg.run_name}: {outcome.status}, test accuracy {r.test_accuracy:.2f}% "
                   f"(test loss {r.test_loss:.4f}), {r.steps} steps at {r.steps_per_second:.0f} steps/s; "
                   f"MLflow run {outcome.run_id}")
    if outcome.status != "FINISHED":
        click.echo(f"run {outcome.run_id} {outcome.error}", err=True)
        sys.exit(1)


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="CIFAR-10 directory (default: $CIFAR10_DIR if set, else the small real subset "
                   "bundled with the tests).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Decoded-tensor cache.")
@click.option("--train-limit", type=click.IntRange(min=0), default=400, show_default=True,
              help="Training images used by the determinism check (0 = all).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads.")
@click.option("--device", type=click.Choice(("auto", "cpu", "cuda")), default="auto", show_default=True,
              help="Where the determinism and fast-kernel checks train (the optimizer and grid checks run on CPU).")
def verify(data_dir, cache_dir, train_limit, threads, device) -> None:
    """Check determinism, the fast kernels, hand-written vs torch.optim optimizers, and that every
    grid cell learns.

    Prints a table; exits non-zero if any check fails.
    """
    from rich.console import Console
    from rich.table import Table

    from .data import load_cifar10, prepare
    from .train import set_threads
    from .verify import run_checks

    set_threads(threads)
    root = data_dir or os.environ.get("CIFAR10_DIR") or BUNDLED_MINI
    try:
        data = load_cifar10(root, cache_dir=cache_dir)
    except DataNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    prepared = prepare(data, train_limit=limit_or_none(train_limit), test_limit=200, subset_seed=0)
    device = resolve_device(device)
    checks = run_checks(prepared, device=device)
    table = Table(title=f"study verify on {data.info.path} ({len(prepared.train_y)} train images, {device})")
    for col in ("check", "result", "detail"):
        table.add_column(col)
    for c in checks:
        table.add_row(c.name, "[green]PASS[/]" if c.passed else "[red]FAIL[/]", c.detail)
    Console().print(table)
    if not all(c.passed for c in checks):
        sys.exit(1)


def filter_options(f):
    """--optimizer/--bn/--init/--scheduler as filters over a grid's cells (a level or a comma list)."""
    for name, levels in reversed((("optimizer", OPTIMIZERS), ("bn", ("on", "off")), ("init", INITS),
                                  ("scheduler", SCHEDULERS))):
        f = click.option(f"--{name}", f"{name}_filter", default="all", show_default=True, metavar="LEVELS",
                         help=f"Only cells with these {name} levels: a level or a comma list of "
                              f"{', '.join(levels)}, or 'all'.")(f)
    return f


def _keeps_grid(value) -> bool:
    """'' or 'grid': how an option (and the MLproject, which cannot leave one out) says "keep
    the grid's value"."""
    return value is None or str(value).strip().lower() in ("", "grid")


class _Budget(click.ParamType):
    """A whole number, or '' / 'grid' for "keep the grid's value" (how the MLproject says 'unset')."""

    name = "N"

    def __init__(self, minimum: int) -> None:
        self.minimum = minimum

    def convert(self, value, param, ctx):
        if _keeps_grid(value):
            return None
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        try:
            number = int(float(text))
        except ValueError:
            self.fail(f"{value!r} is not allowed; give a whole number >= {self.minimum}, or 'grid'", param, ctx)
        if number < self.minimum or number != float(text):
            self.fail(f"{value!r} is not allowed; give a whole number >= {self.minimum}, or 'grid'", param, ctx)
        return number


class _GridChoice(click.Choice):
    """One of ``choices``, or '' / 'grid' for "keep the grid's value"."""

    def convert(self, value, param, ctx):
        return None if _keeps_grid(value) else super().convert(value, param, ctx)


def budget_options(f):
    f = click.option("--kernels", type=_GridChoice(KERNELS), default=None,
                     help=KERNELS_HELP + " Default: the grid's setting, else fast.")(f)
    f = click.option("--test-limit", type=_Budget(0), default=None,
                     help="Override the grid's test subset size for every cell (0 = all 10,000).")(f)
    f = click.option("--train-limit", type=_Budget(0), default=None,
                     help="Override the grid's training subset size for every cell (0 = all 50,000).")(f)
    f = click.option("--epochs", type=_Budget(1), default=None,
                     help="Override the grid's epochs for every cell.")(f)
    f = click.option("--seeds", type=_Budget(1), default=None,
                     help="Run seeds 0..N-1 (default: the grid's 'seeds').")(f)
    return f


def _load_selection(grid_file, kw):
    from .grid import GridError, load_grid, parse_filter, select

    try:
        grid = load_grid(grid_file)
        filters = {k: parse_filter(k, kw.pop(f"{k}_filter")) for k in ("optimizer", "bn", "init", "scheduler")}
        cells = select(grid, filters)
    except GridError as exc:
        raise click.UsageError(str(exc)) from exc
    seeds = list(range(kw["seeds"])) if kw.get("seeds") else grid.seeds
    overrides = {}
    if kw.get("epochs"):
        overrides["epochs"] = kw["epochs"]
    for k in ("train_limit", "test_limit"):
        if kw.get(k) is not None:
            overrides[k] = limit_or_none(kw[k])
    if kw.get("kernels"):
        overrides["kernels"] = kw["kernels"]
    try:  # every cell must accept the overrides before anything runs
        for c in cells:
            c.config(seeds[0], **overrides)
    except ConfigError as exc:
        raise click.UsageError(f"{grid_file}: {exc}") from exc
    return grid, cells, seeds, overrides


@main.command("grid")
@click.argument("grid_file", type=click.Path(dir_okay=False))
@filter_options
@budget_options
def grid_cmd(grid_file, **kw) -> None:
    """Print the cells of GRID_FILE (after filters) and the number of runs; runs nothing."""
    from rich.console import Console
    from rich.table import Table

    grid, cells, seeds, overrides = _load_selection(grid_file, kw)
    table = Table(title=f"{grid.name}: {len(cells)} cells x {len(seeds)} seeds = {len(cells) * len(seeds)} runs")
    for col in ("#", "cell", "optimizer", "bn", "init", "scheduler", "stepped", "epochs", "train", "reported"):
        table.add_column(col)
    for i, c in enumerate(cells, 1):
        cfg = c.config(seeds[0], **overrides)
        table.add_row(str(i), c.name, cfg.optimizer, "on" if cfg.bn else "off", cfg.init, cfg.scheduler,
                      cfg.effective_interval, str(cfg.epochs), str(cfg.train_limit or "all"),
                      "" if c.reported_accuracy is None else f"{c.reported_accuracy:g}%")
    Console(width=200).print(table)
    click.echo(f"seeds: {', '.join(map(str, seeds))}")
    click.echo(f"runs: {len(cells) * len(seeds)}")


@main.command("run")
@click.argument("grid_file", type=click.Path(dir_okay=False), default="experiments/factorial.yaml")
@filter_options
@budget_options
@click.option("--study", "study_name", default=None, help="Study name (default: the grid's name).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Parallel worker processes (or concurrent Ray tasks).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads per worker (default: cores // workers). Keep it fixed where results must match bit for bit.")
@click.option("--device", type=click.Choice(("auto", "cpu", "cuda")), default="auto", show_default=True,
              help="Where to train.")
@click.option("--executor", type=click.Choice(("local", "ray")), default="local", show_default=True,
              help="local worker processes, or Ray tasks (a local Ray instance or --ray-address).")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="Ray cluster address (e.g. ray://head:10001 or auto); default starts a local Ray.")
@click.option("--work-dir", type=click.Path(file_okay=False), default="study-work", show_default=True,
              help="Checkpoints and the study lock (on a cluster: a directory every node shares).")
@click.option("--seed-batch", default="auto", show_default=True, metavar="auto|off|K",
              help="Train up to K runs as one stacked model: the seeds of a cell, and of cells that differ only "
                   "in init or in schedules with the same lr at every step (auto: up to 16 on CPU, 64 on CUDA, "
                   "split so that every worker has work). A run's result does not depend on its group.")
@click.option("--log-model/--no-log-model", default=True, show_default=True, help="Log each trained model.")
@click.option("--quiet", "-q", is_flag=True, help="Only the closing summary.")
@data_options
@tracking_options
def run_cmd(grid_file, **kw) -> None:
    """Run a study: every cell of GRID_FILE over seeds, as child runs of one parent MLflow run.

    Resumable: running it again skips runs already FINISHED, marks interrupted ones and resumes
    them from their last epoch checkpoint. Exits 0 only if every run finished.

    \b
    Examples:
      study run experiments/smoke.yaml --seeds 2 --workers 2
      study run experiments/factorial.yaml --optimizer adam --bn on --seeds 5
    """
    from .data import load_cifar10
    from .runner import StudyError, run_study
    from .tracking import configure_tracking

    grid, cells, seeds, overrides = _load_selection(grid_file, kw)
    seed_batch = _seed_batch(kw["seed_batch"])
    device = resolve_device(kw["device"])
    data_dir = kw["data_dir"] or None
    try:
        load_cifar10(data_dir, cache_dir=kw["cache_dir"] or None, download=kw["download"])
    except DataNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    configure_tracking(kw["tracking_uri"])
    total = len(cells) * len(seeds)
    progress = _StudyProgress(total, quiet=kw["quiet"])
    try:
        with progress:
            summary = run_study(
                grid, cells, seeds=seeds, overrides=overrides, study=kw["study_name"],
                workers=kw["workers"], threads=kw["threads"], device=device,
                executor=kw["executor"], ray_address=kw["ray_address"], experiment=kw["experiment"],
                work_dir=kw["work_dir"], data_dir=data_dir, cache_dir=kw["cache_dir"] or None,
                log_model=kw["log_model"], seed_batch=seed_batch, on_result=progress.update)
    except StudyError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"study {summary.study}: {summary.skipped + summary.finished}/{summary.total} runs FINISHED "
               f"({summary.skipped} already done, {summary.finished} now), {len(summary.failed)} failed, "
               f"{summary.seconds:.1f} s; parent run {summary.parent_run_id}")
    if summary.interrupted_marked:
        click.echo(f"marked {summary.interrupted_marked} run(s) left RUNNING by an interrupted driver as KILLED")
    for name, reason in summary.failed:
        click.echo(f"  FAILED {name}: {reason}", err=True)
    sys.exit(0 if summary.ok else 1)


def _references(values: tuple[str, ...]) -> dict[str, str] | None:
    refs = {}
    for v in values:
        factor, sep, level = v.partition("=")
        if not sep or factor not in ("optimizer", "bn", "init", "scheduler", "scheduler_interval"):
            raise click.BadParameter(f"{v!r} is not allowed; use FACTOR=LEVEL with FACTOR one of "
                                     "optimizer, bn, init, scheduler, scheduler_interval", param_hint="--reference")
        refs[factor] = parse_bool(level) if factor == "bn" else level
    return refs or None


def analysis_options(f):
    f = click.option("--reference", multiple=True, metavar="FACTOR=LEVEL",
                     help="Reference level of a factor for the comparisons (repeatable; defaults: "
                          "optimizer=adam, bn=false, init=default, scheduler=none).")(f)
    f = click.option("--seed", "boot_seed", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Seed of the bootstrap's random generator.")(f)
    f = click.option("--method", type=click.Choice(("holm", "bh")), default="holm", show_default=True,
                     help="Multiple-comparison correction over the whole family of comparisons.")(f)
    f = click.option("--experiment", default=None, metavar="NAME",
                     help="Only look in this MLflow experiment (default: all).")(f)
    f = click.option("--tracking-uri", default=None, metavar="URI",
                     help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else MLflow's default store).")(f)
    f = click.option("--study", "study_name", required=True, help="The study's name (its grid's name by default).")(f)
    return f


def _analyze(kw, out: Path):
    from .analyze import AnalysisError, analyze_study
    from .tracking import configure_tracking

    configure_tracking(kw["tracking_uri"])
    try:
        return analyze_study(kw["study_name"], out, tracking_uri=kw["tracking_uri"], experiment=kw["experiment"],
                             seed=kw["boot_seed"], method=kw["method"], references=_references(kw["reference"]))
    except AnalysisError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@analysis_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output directory (default: reports/<study>/analysis).")
def analyze(out_dir, **kw) -> None:
    """Turn a study's MLflow runs into statistical tables and plots.

    Writes runs.csv, curves.csv, cells.csv, comparisons.csv, anova.csv, seeds.csv,
    lecture_check.csv (and .md/.tex versions) and plots/ to --out, and logs them to the
    study's parent run under analysis/.
    """
    out = Path(out_dir or Path("reports") / kw["study_name"] / "analysis")
    result = _analyze(kw, out)
    counts = result.summary.get("counts", {})
    click.echo(f"analysis of study {kw['study_name']}: {', '.join(f'{k} {v}' for k, v in counts.items())}")
    click.echo(f"tables and plots in {out}" + (f"; logged to parent run {result.parent_run_id}"
                                                if result.logged_to_parent else ""))


@main.command()
@analysis_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output directory (default: reports/<study>).")
def report(out_dir, **kw) -> None:
    """Analyze a study and render its report: an executed notebook and a self-contained HTML page.

    Runs `study analyze` into OUT/analysis, executes analysis/report.ipynb with papermill into
    OUT/report.ipynb, converts it to OUT/report.html (images embedded) and logs both to the
    study's parent run under report/.
    """
    from .report import render_report

    out = Path(out_dir or Path("reports") / kw["study_name"])
    result = _analyze(kw, out / "analysis")
    paths = render_report(kw["study_name"], out / "analysis", out, parent_run_id=result.parent_run_id,
                          tracking_uri=kw["tracking_uri"])
    click.echo(f"report: {paths['html'].resolve()}")
    click.echo(f"notebook: {paths['ipynb'].resolve()}")


def _seed_batch(value: str) -> str | int:
    v = str(value).strip().lower()
    if v in ("auto", "off"):
        return v
    if v.isdigit() and int(v) >= 1:
        return int(v)
    raise click.BadParameter(f"{value!r} is not allowed; use auto, off or a whole number >= 1",
                             param_hint="--seed-batch")


class _StudyProgress:
    """Runs done / total, ETA and failures so far: a live bar on a terminal, else one line per run."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.quiet, self.failures = total, quiet, 0
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(TextColumn("study"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("failed: {task.fields[failed]}"), TimeRemainingColumn())
            self.task = self.bar.add_task("study", total=None, failed=0)

    def __enter__(self):
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()

    def update(self, res: dict, done: int, todo: int) -> None:
        self.failures += res["status"] != "FINISHED"
        if self.bar:
            self.bar.update(self.task, total=todo, completed=done, failed=self.failures)
        elif not self.quiet:
            acc = res.get("test_accuracy")
            extra = f" {acc:.2f}%" if res["status"] == "FINISHED" and acc == acc else f" ({res.get('error')})"
            click.echo(f"[{done}/{todo}] {res['name']} {res['status']}{extra} in {res['seconds']:.1f} s; "
                       f"failed so far: {self.failures}", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
