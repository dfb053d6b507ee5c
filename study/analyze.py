"""Read a finished (or partly finished) study back from MLflow and analyze it.

The analyzer reads only stored results (DeepOBS's separation): the study's child runs (tags,
params, final metrics, metric histories) and its parent run's ``study/resolved.yaml`` (the
planned cells and seeds). It never looks at checkpoints or other private state of a run.

Three layers:

1. :func:`load_study` reads MLflow into DataFrames (``runs``, ``curves``) plus the planned
   cells and seeds (``cells``).
2. Pure functions turn those DataFrames into tables: :func:`cell_table`,
   :func:`comparison_table`, :func:`anova_table`, :func:`seeds_table`, :func:`variance_table`,
   :func:`missing_table`, :func:`problems_table`, :func:`lecture_check_table`,
   :func:`lecture_orderings_table` (with :func:`verdict` and :func:`reported_in_pi`).
   Every statistic comes from :mod:`study.stats`; every random draw from the one
   ``numpy.random.Generator`` passed down.
3. Writers (:func:`write_table`, :func:`write_plots`) produce CSV, Markdown and LaTeX tables
   and PNG/SVG figures; :func:`analyze_study` runs all three and logs the files to the study's
   parent run under ``analysis/``.

Which runs count: the statistics use FINISHED runs that are not superseded (an attempt of a
``run_key`` is superseded when a later attempt of the same key FINISHED). Every other run is
listed in ``problems.csv`` with the reason, and every planned cell x seed without a usable run
in ``missing.csv``. Nothing is dropped silently.

Cells: a run's ``cell`` tag names only its factor levels (``sgd-nobn-default-none``), so two
cells of one grid that differ in another setting (``lr``, ``epochs``...) share a tag. Cells are
therefore identified by tag *and* settings (the run's params, the plan's settings): where a tag
is shared, the planned cell (of several, the one whose distinguishing settings are the
defaults) keeps the plain name and the others get those settings appended, e.g.
``sgd-nobn-default-none[lr=1000000.0]``. The appended part is the run's ``variant``;
comparisons pair runs only within the same variant, and plots by factor level show the main
variant only.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from . import stats
from .config import OPERATIONAL_FIELDS, TrainConfig

__all__ = [
    "AnalysisError",
    "AnalysisResult",
    "StudyData",
    "FACTORS",
    "DEFAULT_REFERENCES",
    "analyze_study",
    "load_study",
    "mark_attempts",
    "name_cells",
    "cell_table",
    "varying_factors",
    "resolve_references",
    "comparison_table",
    "anova_table",
    "seeds_table",
    "variance_table",
    "missing_table",
    "problems_table",
    "reported_in_pi",
    "lecture_check_table",
    "lecture_pairs",
    "lecture_orderings_table",
    "verdict",
    "write_table",
    "write_plots",
]

# The factors of the study, as tagged on every child run (scheduler_interval is the effective
# one: "never" also for scheduler none).
FACTORS = ("optimizer", "bn", "init", "scheduler", "scheduler_interval")
# Reference level of each factor in comparisons: the lecture's baseline (PyTorch Adam, plain
# CNN, PyTorch's default init, no schedule) and the corrected way of stepping a scheduler.
DEFAULT_REFERENCES: dict[str, Any] = {
    "optimizer": "adam", "bn": False, "init": "default", "scheduler": "none",
    "scheduler_interval": "epoch",
}
RESPONSE = "test_accuracy"  # percent; the run's metric final_test_accuracy
HALF_WIDTH = 1.0  # target CI half-width for seeds_needed, in accuracy points
REPORTED_RESOLUTION = 1.0  # the lecture prints "%d %%": 52 means 52 <= acc < 53
# Histories read into curves.csv, with the unit of their step (see study.train.train).
CURVE_METRICS = {"train_loss": "batch", "test_accuracy": "epoch", "test_loss": "epoch",
                 "lr": "epoch", "train_loss_epoch": "epoch"}
# Settings that identify a cell besides its factor tags: the TrainConfig fields, less the
# per-seed ones and those that say how (not what) a run computes.
_PER_SEED = ("seed", "init_seed", "data_seed")
SIGNATURE_FIELDS = tuple(f.name for f in fields(TrainConfig)
                         if f.name not in _PER_SEED and f.name not in OPERATIONAL_FIELDS)
_DATA_KEY = "data"  # the data fingerprint, part of a cell's signature
# Settings added after runs were logged: what a run without the param computed with.
_BEFORE_THE_SETTING = {"kernels": "reference"}

RUN_COLUMNS = [
    "run_id", "run_name", "run_key", "cell", "cell_label", "optimizer", "bn", "init",
    "scheduler", "scheduler_interval", "seed", "status", "diverged", "superseded",
    "test_accuracy", "test_loss", "final_train_loss", "reported_accuracy",
    # beyond the required columns: how the run was judged, and where it came from
    "used", "latest_attempt", "excluded_reason", "planned", "variant", "cell_tag",
    "diverged_step", "error", "interrupted", "start_time", "data_fingerprint", "git_commit",
    "git_dirty", "data_layout", "data_encoding", "data_path", "torch_version", "python_version",
    "device", "torch_threads",
]
CURVE_COLUMNS = ["run_id", "cell", *FACTORS, "seed", "metric", "step", "step_unit", "value"]


class AnalysisError(ValueError):
    """The study cannot be analyzed (unknown name, nothing finished...); the message says why."""


@dataclass
class StudyData:
    """What :func:`load_study` read: the runs, their curves and the plan.

    ``runs`` has one row per child run (columns :data:`RUN_COLUMNS`); ``curves`` one row per
    logged point of the latest attempt of each run key (columns :data:`CURVE_COLUMNS`);
    ``cells`` one row per cell, planned cells first in the grid's order (columns ``cell``,
    ``label``, the factors, ``variant``, ``reported_accuracy``, ``planned``).
    """

    study: str
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    runs: pd.DataFrame
    curves: pd.DataFrame
    cells: pd.DataFrame
    seeds: list[int]
    resolved: dict = field(default_factory=dict)
    parent_tags: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class AnalysisResult:
    """Everything :func:`analyze_study` computed, and the files it wrote."""

    study: str
    parent_run_id: str
    out_dir: Path
    runs: pd.DataFrame
    curves: pd.DataFrame
    cells: pd.DataFrame
    missing: pd.DataFrame
    problems: pd.DataFrame
    comparisons: pd.DataFrame
    anova: pd.DataFrame
    anova_model: str
    seeds: pd.DataFrame
    variance: pd.DataFrame
    lecture_check: pd.DataFrame | None
    lecture_orderings: pd.DataFrame | None
    summary: dict
    files: list[Path]
    logged_to_parent: bool = False


# =========================================================================================
# Layer 1: reading MLflow
# =========================================================================================

def _param_str(value: Any) -> str:
    """A setting as MLflow stores it (as study.tracking.run_params writes it)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _default_signature(fingerprint: str) -> dict[str, str]:
    default = TrainConfig()
    sig = {f: _param_str(getattr(default, f)) for f in SIGNATURE_FIELDS}
    sig[_DATA_KEY] = fingerprint
    return sig


def _planned_cell(entry: Mapping[str, Any], overrides: Mapping[str, Any],
                  fingerprint: str) -> dict[str, Any]:
    """One cell of resolved.yaml: its tag name, signature, factor levels and metadata."""
    settings = {k: v for k, v in entry.items() if k not in ("cell", "reported_accuracy", "label")}
    try:
        cfg = TrainConfig(**{**settings, **overrides, "seed": 0})
        values = {f: getattr(cfg, f) for f in SIGNATURE_FIELDS}
        factors = {"optimizer": cfg.optimizer, "bn": cfg.bn, "init": cfg.init,
                   "scheduler": cfg.scheduler, "scheduler_interval": cfg.effective_interval}
        tag = cfg.cell
    except (TypeError, ValueError):  # a plan written by another code version: read it as is
        values = {f: v for f, v in {**settings, **overrides}.items() if f in SIGNATURE_FIELDS}
        factors = {f: settings.get(f) for f in FACTORS}
        tag = str(entry.get("cell"))
    sig = {f: _param_str(v) for f, v in values.items()}
    sig[_DATA_KEY] = fingerprint
    reported = entry.get("reported_accuracy")
    return {"cell_tag": str(entry.get("cell", tag)), "signature": sig, **factors,
            "label": entry.get("label"),
            "reported_accuracy": float(reported) if reported is not None else float("nan")}


def _search_all(client, experiment_ids: list[str], filter_string: str) -> list:
    out, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=1000,
                                  page_token=token)
        out += page
        token = page.token
        if not token:
            return out


def _quote(value: str) -> str:
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise AnalysisError(f"study name {value!r} contains both quote characters; MLflow cannot search it")


# Tags describing where and on what a run ran; summarized in summary.json's "environment".
ENVIRONMENT_TAGS = ("data_layout", "data_encoding", "data_path", "torch_version", "python_version",
                    "device", "torch_threads")


def _run_row(run) -> dict[str, Any]:
    """The stored facts of one child run (before judging attempts and naming cells)."""
    tags, metrics, info = run.data.tags, run.data.metrics, run.info
    nan = float("nan")

    def number(text: str | None) -> float:
        try:
            return float(text) if text not in (None, "") else nan
        except ValueError:
            return nan

    seed = tags.get("seed", run.data.params.get("seed"))
    return {
        "run_id": info.run_id,
        "run_name": info.run_name or tags.get("mlflow.runName", ""),
        "run_key": tags.get("run_key") or info.run_id,
        "cell_tag": tags.get("cell", ""),
        "cell_label": tags.get("cell_label"),
        "optimizer": tags.get("optimizer"),
        "bn": str(tags.get("bn", "")).lower() == "true",
        "init": tags.get("init"),
        "scheduler": tags.get("scheduler"),
        "scheduler_interval": tags.get("scheduler_interval"),
        "seed": int(float(seed)) if seed not in (None, "") else -1,
        "status": info.status,
        "diverged": tags.get("diverged") == "true",
        "test_accuracy": metrics.get("final_test_accuracy", nan),
        "test_loss": metrics.get("final_test_loss", nan),
        "final_train_loss": metrics.get("final_train_loss", nan),
        "reported_accuracy": number(tags.get("reported_accuracy")),
        "diverged_step": number(tags.get("diverged_step")),
        "error": tags.get("error"),
        "interrupted": tags.get("interrupted") == "true",
        "start_time": info.start_time,
        "data_fingerprint": tags.get("data_fingerprint", ""),
        "git_commit": tags.get("git_commit", ""),
        "git_dirty": tags.get("git_dirty", ""),
        **{tag: tags.get(tag, "") for tag in ENVIRONMENT_TAGS},
        "signature": {**{f: run.data.params.get(f, _BEFORE_THE_SETTING.get(f, "") if run.data.params else "")
                         for f in SIGNATURE_FIELDS},
                      _DATA_KEY: tags.get("data_fingerprint", "")},
    }


def _has_params(signature: Mapping[str, str]) -> bool:
    return any(signature.get(f) for f in SIGNATURE_FIELDS)


def load_study(study: str, *, tracking_uri: str | None = None, experiment: str | None = None,
               curves: bool = True) -> StudyData:
    """Read a study's runs, curves and plan from MLflow.

    Args:
        study: The study's name (its parent run's ``study_parent`` tag, the children's
            ``study`` tag).
        tracking_uri: MLflow tracking URI; default ``$MLFLOW_TRACKING_URI`` or MLflow's default.
        experiment: Experiment name to look for the study's parent run in; default every
            experiment of the store. The children are read from the parent's experiment.
        curves: Read the metric histories (one request per run and metric).

    Returns:
        A :class:`StudyData`.

    Raises:
        AnalysisError: No such experiment, or no study of that name (the message lists the
            studies that exist), or the study has no child runs.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = MlflowClient(tracking_uri)
    uri = tracking_uri or mlflow.get_tracking_uri()
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = sorted(e.name for e in client.search_experiments())
            raise AnalysisError(f"no MLflow experiment named {experiment!r} at {uri}; "
                                f"experiments: {', '.join(names) or 'none'}")
        experiment_ids = [exp.experiment_id]
    else:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]

    parents = (client.search_runs(experiment_ids, f"tags.study_parent = {_quote(study)}",
                                  order_by=["attributes.start_time DESC"], max_results=100)
               if experiment_ids else [])
    if not parents:
        known = sorted({r.data.tags["study_parent"] for r in
                        (_search_all(client, experiment_ids, "tags.study_parent LIKE '%'")
                         if experiment_ids else [])})
        where = f"experiment {experiment!r}" if experiment else "any experiment"
        raise AnalysisError(f"no study named {study!r} in {where} at {uri}; studies found: "
                            f"{', '.join(known) or 'none'}")
    # The latest parent: it holds the latest plan. (Each `mlflow run` of a study makes a new
    # parent; the runner's own driver reuses one.) Its children live in its experiment.
    parent = parents[0]
    parent_id = parent.info.run_id
    notes: list[str] = []
    others = parents[1:]
    if others:
        elsewhere = sorted({p.info.experiment_id for p in others} - {parent.info.experiment_id})
        notes.append(f"{len(parents)} parent runs carry study_parent={study!r}; using the latest, "
                     f"{parent_id}" + (f" (others in experiment(s) {', '.join(elsewhere)} are "
                                       "not analyzed)" if elsewhere else ""))
    experiment_ids = [parent.info.experiment_id]

    # The plan: the parent's resolved.yaml (rewritten by each `study run`: the latest plan).
    resolved: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(parent_id, "study/resolved.yaml", tmp)
            resolved = yaml.safe_load(Path(path).read_text()) or {}
        except Exception as exc:  # MlflowException, OSError: report, analyze what is there
            notes.append(f"the parent run has no readable study/resolved.yaml ({exc}); "
                         "no planned cells or seeds, so nothing can be reported missing")
    fingerprint = str((resolved.get("data") or {}).get("fingerprint")
                      or parent.data.tags.get("data_fingerprint", ""))
    overrides = resolved.get("overrides") or {}
    seeds = [int(s) for s in resolved.get("seeds") or []]
    planned = [_planned_cell(e, overrides, fingerprint) for e in resolved.get("cells") or []]

    # The children: tagged with the study, or pointing to the parent.
    found = {r.info.run_id: r for r in _search_all(client, experiment_ids,
                                                   f"tags.study = {_quote(study)}")}
    for r in _search_all(client, experiment_ids, f"tags.`mlflow.parentRunId` = '{parent_id}'"):
        found.setdefault(r.info.run_id, r)
    found.pop(parent_id, None)
    if not found:
        raise AnalysisError(f"study {study!r} (parent run {parent_id}) has no child runs yet")
    rows = [_run_row(r) for r in found.values()]
    # A run killed before it logged its params: its settings are those of its key's other
    # attempts, or of the one planned cell with its tag.
    by_key = {r["run_key"]: r["signature"] for r in rows if _has_params(r["signature"])}
    for r in rows:
        if not _has_params(r["signature"]):
            same_tag = [p["signature"] for p in planned if p["cell_tag"] == r["cell_tag"]]
            fallback = by_key.get(r["run_key"]) or (same_tag[0] if len(same_tag) == 1 else None)
            if fallback is not None:
                r["signature"] = dict(fallback)

    # Name the cells by tag and settings, planned cells first.
    if not fingerprint:
        fingerprint = pd.Series([r["data_fingerprint"] for r in rows]).mode().iloc[0]
        for p in planned:
            p["signature"][_DATA_KEY] = fingerprint
    names = name_cells([(p["cell_tag"], p["signature"]) for p in planned]
                       + [(r["cell_tag"], r["signature"]) for r in rows],
                       defaults=_default_signature(fingerprint), n_planned=len(planned))
    cell_rows = []
    for p, (name, variant) in zip(planned, names[:len(planned)]):
        cell_rows.append({"cell": name, "label": p["label"],
                          **{f: p[f] for f in FACTORS}, "variant": variant,
                          "reported_accuracy": p["reported_accuracy"], "planned": True})
    planned_names = {c["cell"] for c in cell_rows}
    extra: dict[str, dict] = {}
    for r, (name, variant) in zip(rows, names[len(planned):]):
        r["cell"], r["variant"] = name, variant
        del r["signature"]
        if name not in planned_names and name not in extra:
            extra[name] = {"cell": name, "label": r["cell_label"],
                           **{f: r[f] for f in FACTORS}, "variant": variant,
                           "reported_accuracy": r["reported_accuracy"], "planned": False}
    cell_rows += [extra[k] for k in sorted(extra)]
    cells = pd.DataFrame(cell_rows, columns=["cell", "label", *FACTORS, "variant",
                                             "reported_accuracy", "planned"])
    # A run without a label or reported value tag gets its cell's.
    meta = cells.set_index("cell")
    runs = pd.DataFrame(rows)
    runs["cell_label"] = runs["cell_label"].where(runs["cell_label"].notna(),
                                                  runs["cell"].map(meta["label"]))
    runs["reported_accuracy"] = runs["reported_accuracy"].where(
        runs["reported_accuracy"].notna(), runs["cell"].map(meta["reported_accuracy"]))
    seed_set = set(seeds)
    runs["planned"] = runs["cell"].isin(planned_names) & runs["seed"].isin(seed_set)
    runs = mark_attempts(runs)
    order = {c: i for i, c in enumerate(cells["cell"])}
    runs = (runs.assign(_o=runs["cell"].map(order))
            .sort_values(["_o", "seed", "start_time"], kind="mergesort")
            .drop(columns="_o").reset_index(drop=True))
    runs["start_time"] = [_iso(t) for t in runs["start_time"]]
    runs = runs[RUN_COLUMNS]

    curve_frame = (_read_curves(client, runs[runs["latest_attempt"]]) if curves
                   else pd.DataFrame(columns=CURVE_COLUMNS))
    return StudyData(study=study, parent_run_id=parent_id,
                     experiment_id=parent.info.experiment_id, tracking_uri=uri, runs=runs,
                     curves=curve_frame, cells=cells, seeds=seeds, resolved=resolved,
                     parent_tags=dict(parent.data.tags), notes=notes)


def _iso(ms: Any) -> str:
    if ms is None or (isinstance(ms, float) and math.isnan(ms)):
        return ""
    return datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc).isoformat(timespec="seconds")


def _read_curves(client, runs: pd.DataFrame) -> pd.DataFrame:
    """Long table of every history in CURVE_METRICS of the given runs."""
    out = []
    for r in runs.itertuples(index=False):
        for metric, unit in CURVE_METRICS.items():
            for m in client.get_metric_history(r.run_id, metric):
                out.append((r.run_id, r.cell, *(getattr(r, f) for f in FACTORS), r.seed,
                            metric, int(m.step), unit, float(m.value)))
    curves = pd.DataFrame(out, columns=CURVE_COLUMNS)
    return curves.sort_values(["run_id", "metric", "step"], kind="mergesort").reset_index(drop=True)


# =========================================================================================
# Layer 2: pure functions on DataFrames
# =========================================================================================

def name_cells(entries: Sequence[tuple[str, Mapping[str, str]]], *,
               defaults: Mapping[str, str], n_planned: int = 0) -> list[tuple[str, str]]:
    """Unique cell names from (tag, settings signature) pairs.

    Entries with the same tag and signature are the same cell. Where a tag has several
    signatures, one keeps the plain tag: the only planned one, or else the one (planned ones
    first considered) whose distinguishing settings all equal ``defaults``. The others get the
    settings in which they differ appended, ``tag[key=value,...]``.

    Args:
        entries: ``(cell tag, {setting: value as a string})``; the first ``n_planned`` entries
            are the plan's cells, the rest the runs'.
        defaults: The default value of each setting, as a string.
        n_planned: How many leading entries are planned cells.

    Returns:
        ``(cell name, variant)`` per entry, where ``variant`` is the appended part without the
        brackets ("" for the plain name).
    """
    def freeze(sig: Mapping[str, str]) -> tuple:
        return tuple(sorted(sig.items()))

    groups: dict[str, list[tuple]] = {}
    planned: dict[str, list[tuple]] = {}
    for i, (tag, sig) in enumerate(entries):
        key = freeze(sig)
        if key not in groups.setdefault(tag, []):
            groups[tag].append(key)
        if i < n_planned and key not in planned.setdefault(tag, []):
            planned[tag].append(key)

    def differing(sigs: list[tuple]) -> list[str]:
        dicts = [dict(s) for s in sigs]
        keys = sorted({k for d in dicts for k in d})
        return [k for k in keys if len({d.get(k, "") for d in dicts}) > 1]

    def text(sig: dict, keys: list[str]) -> str:
        return ",".join(f"{k}={sig.get(k, '')[:12] if k == _DATA_KEY else sig.get(k, '')}"
                        for k in keys)

    variants: dict[tuple[str, tuple], str] = {}
    for tag, sigs in groups.items():
        if len(sigs) == 1:
            variants[(tag, sigs[0])] = ""
            continue
        candidates = planned.get(tag) or sigs
        plain = None
        if len(candidates) == 1:
            plain = candidates[0]
        else:
            keys = differing(candidates)
            hits = [s for s in candidates if all(dict(s).get(k, "") == defaults.get(k) for k in keys)]
            plain = hits[0] if len(hits) == 1 else None
        for s in sigs:
            if s == plain:
                variants[(tag, s)] = ""
            else:
                keys = differing([s, plain]) if plain is not None else differing(sigs)
                variants[(tag, s)] = text(dict(s), keys)
    out = []
    for tag, sig in entries:
        v = variants[(tag, freeze(sig))]
        out.append((f"{tag}[{v}]" if v else tag, v))
    return out


def _failure_reason(row: Mapping[str, Any]) -> str:
    status = row["status"]
    if status == "FAILED":
        if row.get("diverged"):
            step = row.get("diverged_step")
            return (f"diverged at step {int(step)}" if step is not None and np.isfinite(step)
                    else "diverged")
        return f"error: {row['error']}" if row.get("error") else "FAILED (no error recorded)"
    if status == "KILLED":
        return "interrupted (KILLED)"
    if status == "FINISHED":
        return "FINISHED without final_test_accuracy"
    return f"{status} (not finished)"


def mark_attempts(runs: pd.DataFrame) -> pd.DataFrame:
    """Judge every run: which attempt of its key counts, and why the others do not.

    For each ``run_key`` the chosen run is the latest FINISHED one, or else the latest attempt
    (by ``start_time``). A run is ``superseded`` when its key has a FINISHED run and it is not
    the chosen one (a KILLED or FAILED attempt re-run to FINISHED, or an earlier duplicate).
    A run is ``used`` in the statistics when it is the chosen FINISHED run and has a finite
    ``test_accuracy``; every other run gets an ``excluded_reason``.

    Args:
        runs: One row per run with ``run_id``, ``run_key``, ``status``, ``start_time``,
            ``test_accuracy``, ``diverged`` (and optionally ``diverged_step``, ``error``).

    Returns:
        A copy with the columns ``superseded``, ``latest_attempt``, ``used`` (bool) and
        ``excluded_reason`` ("" for used runs) set.
    """
    runs = runs.copy()
    for col, default in (("diverged_step", np.nan), ("error", None)):
        if col not in runs.columns:
            runs[col] = default
    ordered = runs.sort_values("start_time", kind="mergesort")
    chosen: dict[str, Any] = {}
    has_finished: dict[str, Any] = {}
    for idx, r in ordered.iterrows():
        key = r["run_key"]
        if r["status"] == "FINISHED":
            has_finished[key] = idx
        chosen[key] = has_finished.get(key, idx)
    chosen_idx = set(chosen.values())
    superseded, latest, used, reasons = [], [], [], []
    for idx, r in runs.iterrows():
        key = r["run_key"]
        is_chosen = idx in chosen_idx
        finished_idx = has_finished.get(key)
        sup = finished_idx is not None and not is_chosen
        ok = is_chosen and r["status"] == "FINISHED" and np.isfinite(float(r["test_accuracy"]))
        if ok:
            reason = ""
        elif sup:
            by = runs.at[finished_idx, "run_id"]
            what = ("earlier duplicate FINISHED run" if r["status"] == "FINISHED"
                    else _failure_reason(r))
            reason = f"{what}; superseded by FINISHED run {by} of the same run_key"
        elif not is_chosen:
            reason = (f"{_failure_reason(r)}; earlier attempt, the latest attempt "
                      f"{runs.at[chosen[key], 'run_id']} did not finish either")
        else:
            reason = _failure_reason(r)
        superseded.append(bool(sup))
        latest.append(bool(is_chosen))
        used.append(bool(ok))
        reasons.append(reason)
    runs["superseded"], runs["latest_attempt"] = superseded, latest
    runs["used"], runs["excluded_reason"] = used, reasons
    return runs


def _used(runs: pd.DataFrame) -> pd.Series:
    """The runs the statistics use (``used`` if present, else FINISHED with a value)."""
    if "used" in runs.columns:
        return runs["used"].astype(bool)
    ok = pd.to_numeric(runs[RESPONSE], errors="coerce").notna()
    if "status" in runs.columns:
        ok &= runs["status"].eq("FINISHED")
    if "superseded" in runs.columns:
        ok &= ~runs["superseded"].astype(bool)
    return ok


def _latest(runs: pd.DataFrame) -> pd.Series:
    if "latest_attempt" in runs.columns:
        return runs["latest_attempt"].astype(bool)
    return pd.Series(True, index=runs.index)


def _cells_from_runs(runs: pd.DataFrame) -> pd.DataFrame:
    cols = ["cell"] + [f for f in FACTORS if f in runs.columns]
    cells = runs.drop_duplicates("cell")[cols].copy()
    cells["label"] = (runs.groupby("cell")["cell_label"].first().reindex(cells["cell"]).to_numpy()
                      if "cell_label" in runs.columns else None)
    cells["reported_accuracy"] = (
        runs.groupby("cell")["reported_accuracy"].first().reindex(cells["cell"]).to_numpy()
        if "reported_accuracy" in runs.columns else np.nan)
    return cells.sort_values("cell").reset_index(drop=True)


def cell_table(runs: pd.DataFrame, *, rng: np.random.Generator, cells: pd.DataFrame | None = None,
               seeds: Sequence[int] | None = None, confidence: float = 0.95,
               n_boot: int = 10_000) -> pd.DataFrame:
    """Per cell: how many runs, their mean and spread, and two confidence intervals.

    Args:
        runs: One row per run with ``cell``, ``seed``, ``test_accuracy``, and optionally
            ``status``, ``diverged``, ``used``, ``latest_attempt``.
        rng: Generator for the bootstrap intervals, consumed cell by cell in table order.
        cells: The cells to report, in order, with ``label`` and ``reported_accuracy``
            (default: the cells of ``runs``, sorted). Cells without runs get ``n = 0``.
        seeds: The planned seeds, to count ``n_missing`` (planned cells only).
        confidence: Coverage of the intervals.
        n_boot: Bootstrap resamples per cell.

    Returns:
        One row per cell: ``cell``, ``label``, the factors, ``n`` (runs used), ``mean``,
        ``std``, ``boot_low``/``boot_high`` (percentile bootstrap CI of the mean),
        ``t_low``/``t_high`` (t CI), ``median``, ``min``, ``max`` (all from
        :func:`study.stats.summarize` over used runs), ``n_diverged`` (latest attempts that
        diverged), ``n_failed`` (latest attempts FAILED for another reason), ``n_interrupted``
        (latest attempts KILLED), ``n_missing`` (planned seeds without a used run) and
        ``reported_accuracy``.
    """
    cells = _cells_from_runs(runs) if cells is None else cells
    used, latest = _used(runs), _latest(runs)
    status = runs["status"] if "status" in runs.columns else pd.Series("FINISHED", index=runs.index)
    diverged = (runs["diverged"].astype(bool) if "diverged" in runs.columns
                else pd.Series(False, index=runs.index))
    rows = []
    for c in cells.to_dict("records"):
        in_cell = runs["cell"].eq(c["cell"])
        values = pd.to_numeric(runs.loc[in_cell & used, RESPONSE], errors="coerce").to_numpy(float)
        summary = stats.summarize(values, rng=rng, confidence=confidence, n_boot=n_boot)
        last = in_cell & latest
        n_missing = np.nan
        if seeds is not None and c.get("planned", True):
            have = set(runs.loc[in_cell & used, "seed"])
            n_missing = sum(s not in have for s in seeds)
        rows.append({
            "cell": c["cell"], "label": c.get("label"),
            **{f: c[f] for f in FACTORS if f in c},
            **summary,
            "n_diverged": int((last & diverged).sum()),
            "n_failed": int((last & status.eq("FAILED") & ~diverged).sum()),
            "n_interrupted": int((last & status.eq("KILLED")).sum()),
            "n_missing": n_missing,
            "reported_accuracy": c.get("reported_accuracy", np.nan),
        })
    out = pd.DataFrame(rows)
    if "n_missing" in out.columns:
        out["n_missing"] = out["n_missing"].astype("Int64")
    return out


def _levels(used: pd.DataFrame, factor: str) -> pd.Series:
    """A factor's levels as strings; the interval only of runs that have a scheduler (without
    one there is nothing to step, and the tag says "never")."""
    if factor == "scheduler_interval" and "scheduler" in used.columns:
        used = used[used["scheduler"].astype(str) != "none"]
    return used[factor].astype(str)


def varying_factors(runs: pd.DataFrame, factors: Sequence[str] = FACTORS) -> list[str]:
    """The factors with two or more levels among the used runs, in ``factors`` order.

    ``scheduler_interval`` counts only where it varies among runs with a scheduler: in a grid
    that steps every scheduler per epoch it merely repeats ``scheduler != "none"``.
    """
    used = runs[_used(runs)]
    return [f for f in factors if f in used.columns and _levels(used, f).nunique() > 1]


def resolve_references(runs: pd.DataFrame, factors: Sequence[str],
                       references: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The reference level of each factor for the comparisons.

    ``references`` overrides :data:`DEFAULT_REFERENCES` per factor. An overridden level must
    exist among the used runs; a default level that is absent falls back to the most frequent
    level (ties: the first in sorted order).

    Raises:
        AnalysisError: An overriding level is not a level of its factor, or names a factor
            that is not one of :data:`FACTORS`.
    """
    used = runs[_used(runs)]
    given = dict(references or {})
    unknown = [k for k in given if k not in FACTORS]
    if unknown:
        raise AnalysisError(f"references name unknown factor(s) {unknown}; factors: {list(FACTORS)}")
    out: dict[str, Any] = {}
    for f in factors:
        levels = _levels(used, f)
        present = set(levels)
        if f in given:
            if str(given[f]) not in present:
                raise AnalysisError(f"reference level {given[f]!r} of {f!r} is not among the "
                                    f"levels run: {sorted(present)}")
            out[f] = given[f]
            continue
        default = DEFAULT_REFERENCES.get(f)
        if default is not None and str(default) in present:
            out[f] = default
        else:
            counts = levels.value_counts()
            out[f] = sorted(counts[counts == counts.max()].index)[0]
    return out


def _pair_factors(runs: pd.DataFrame, factors: Sequence[str]) -> list[str]:
    """Columns that define a pairing unit besides the seed: the factors, and the variant when
    cells of the same factor levels differ in another setting."""
    used = runs[_used(runs)]
    extra = ["variant"] if "variant" in used.columns and used["variant"].nunique() > 1 else []
    return [*factors, *extra]


COMPARISON_COLUMNS = ["factor", "level", "reference", "n_pairs", "mean_diff", "ci_low", "ci_high",
                      "p_value", "p_adjusted", "effect_size", "wilcoxon_p", "prob_improvement",
                      "test", "method", "boot_low", "boot_high"]


def _nested_comparisons(used: pd.DataFrame, refs: Mapping[str, Any], pair: list[str], *,
                        rng: np.random.Generator, confidence: float, n_boot: int) -> pd.DataFrame:
    """:func:`study.stats.compare_levels` per factor when ``scheduler_interval`` varies among
    scheduled runs, where it is nested in ``scheduler``:

    * ``scheduler``: compared within each interval ``L``, a run without a scheduler standing in
      for every interval (its lr never changes), levels labelled ``step@L``;
    * ``scheduler_interval``: compared among the runs that have a scheduler.
    """
    kw = {"factors": pair, "response": RESPONSE, "rng": rng, "confidence": confidence,
          "n_boot": n_boot}
    none = used["scheduler"].astype(str) == "none"
    tables = []
    for f, ref in refs.items():
        if f == "scheduler":
            for interval in sorted(used.loc[~none, "scheduler_interval"].astype(str).unique()):
                frame = used[~none & (used["scheduler_interval"].astype(str) == interval)]
                frame = pd.concat([frame, used[none].assign(scheduler_interval=interval)])
                if str(ref) not in set(frame["scheduler"].astype(str)):
                    continue
                t = stats.compare_levels(frame, f, ref, **kw)
                label = {lev: lev if lev == "none" else f"{lev}@{interval}"
                         for lev in set(t["level"]) | set(t["reference"])}
                tables.append(t.assign(level=t["level"].map(label),
                                       reference=t["reference"].map(label)))
        elif f == "scheduler_interval":
            tables.append(stats.compare_levels(used[~none], f, ref, **kw))
        else:
            tables.append(stats.compare_levels(used, f, ref, **kw))
    return pd.concat(tables, ignore_index=True)


def comparison_table(runs: pd.DataFrame, *, rng: np.random.Generator,
                     factors: Sequence[str] | None = None,
                     references: Mapping[str, Any] | None = None, method: str = "holm",
                     confidence: float = 0.95, n_boot: int = 10_000) -> pd.DataFrame:
    """Every level of every varying factor against its reference, paired by seed.

    A run is paired with the reference-level run of the same seed and the same levels of every
    other factor (and the same variant), by :func:`study.stats.compare_all`, which adjusts the
    p-values over the whole family. Where the scheduler interval varies among runs with a
    scheduler (the lecture's never-stepped and corrected schedules), it is nested in the
    scheduler; see :func:`_nested_comparisons`; the family is adjusted all the same.

    Args:
        runs: One row per run; only used runs count.
        rng: Generator for the bootstrap intervals.
        factors: The factors to compare (default: :func:`varying_factors`).
        references: Overrides of the reference levels (see :func:`resolve_references`).
        method: ``"holm"`` or ``"bh"``.
        confidence: Coverage of the intervals.
        n_boot: Bootstrap resamples per comparison.

    Returns:
        Columns :data:`COMPARISON_COLUMNS`; no rows when no factor varies.
    """
    stats.adjust_pvalues([], method=method)  # reject an unknown method before any work
    used = runs[_used(runs)].copy()
    factors = varying_factors(runs) if factors is None else list(factors)
    if not factors:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    refs = resolve_references(runs, factors, references)
    pair = _pair_factors(runs, factors)
    if "scheduler" in factors and "scheduler_interval" in factors:
        table = _nested_comparisons(used, refs, pair, rng=rng, confidence=confidence,
                                    n_boot=n_boot)
        table["p_adjusted"] = stats.adjust_pvalues(table["p_value"].to_numpy(float), method=method)
        table["method"] = method
    else:
        table = stats.compare_all(used, refs, factors=pair, response=RESPONSE, rng=rng,
                                  method=method, confidence=confidence, n_boot=n_boot)
    return table[COMPARISON_COLUMNS]


def anova_table(runs: pd.DataFrame, factors: Sequence[str] | None = None) -> tuple[pd.DataFrame, str]:
    """Factorial ANOVA (main effects and two-way interactions) over the used runs.

    Returns:
        ``(table, description)``: the table of :func:`study.stats.factorial_anova` with the term
        as a column, and a description of the data and the model fitted (what was dropped for
        an incomplete grid). When no model can be fitted, an empty table and the reason.
    """
    used = runs[_used(runs)]
    factors = varying_factors(runs) if factors is None else list(factors)
    constant = [f for f in FACTORS if f not in factors]
    pair = _pair_factors(runs, factors)
    lines = [f"Factorial ANOVA (Type II sums of squares) of {RESPONSE} over {len(used)} runs "
             "(FINISHED, not superseded).",
             f"Factors varying: {', '.join(pair) or 'none'}; constant (not in the model): "
             f"{', '.join(constant) or 'none'}."]
    columns = ["term", "sum_sq", "df", "F", "PR(>F)", "partial_eta_sq"]
    if not factors:
        return pd.DataFrame(columns=columns), "\n".join(lines + ["Not fitted: no factor varies."])
    try:
        table, description = stats.factorial_anova(used, pair, RESPONSE, max_order=2)
    except ValueError as exc:
        return pd.DataFrame(columns=columns), "\n".join(lines + [f"Not fitted: {exc}"])
    table = table.rename_axis("term").reset_index()
    return table[columns], "\n".join(lines + [f"Model fitted: {description}"])


def seeds_table(cells: pd.DataFrame, runs: pd.DataFrame | None = None, *,
                half_width: float = HALF_WIDTH, confidence: float = 0.95) -> pd.DataFrame:
    """Per cell: the seed-to-seed std and the seeds needed for a CI of ``± half_width``.

    Args:
        cells: The output of :func:`cell_table`.
        runs: The runs; when given, a last row ``(pooled)`` uses the pooled within-cell std
            of :func:`study.stats.variance_components`.
        half_width: Target half-width of the confidence interval of a cell mean (points).
        confidence: Coverage of that interval.

    Returns:
        Columns ``cell``, ``label``, ``n``, ``std``, ``half_width_now`` (of the t CI with the
        runs there are), ``seeds_needed`` (:func:`study.stats.seeds_needed`; NA where the std
        is unknown) and ``half_width`` (the target).
    """
    rows = []
    for c in cells.itertuples(index=False):
        std = float(c.std)
        rows.append({"cell": c.cell, "label": c.label, "n": int(c.n), "std": std,
                     "half_width_now": (c.t_high - c.t_low) / 2.0,
                     "seeds_needed": (stats.seeds_needed(std, half_width, confidence)
                                      if np.isfinite(std) else pd.NA)})
    if runs is not None:
        used = runs[_used(runs)]
        vc = stats.variance_components(used, ["cell"], RESPONSE)
        std = float(vc["pooled_within_std"])
        rows.append({"cell": "(pooled)", "label": "pooled within-cell std", "n": int(vc["n_runs"]),
                     "std": std, "half_width_now": np.nan,
                     "seeds_needed": (stats.seeds_needed(std, half_width, confidence)
                                      if np.isfinite(std) else pd.NA)})
    out = pd.DataFrame(rows, columns=["cell", "label", "n", "std", "half_width_now", "seeds_needed"])
    out["seeds_needed"] = out["seeds_needed"].astype("Int64")
    out["half_width"] = half_width
    return out


def variance_table(runs: pd.DataFrame) -> pd.DataFrame:
    """How much of the variance of the used runs is between cells (factors) and within (seeds).

    Returns:
        One row of :func:`study.stats.variance_components` over the cells.
    """
    used = runs[_used(runs)]
    vc = stats.variance_components(used, ["cell"], RESPONSE)
    return pd.DataFrame([{"grouping": "cell (all factors)", **vc}])


def missing_table(cells: pd.DataFrame, seeds: Sequence[int], runs: pd.DataFrame) -> pd.DataFrame:
    """Planned cell x seed without a used run, with what happened to it.

    Args:
        cells: The cells, with ``planned`` (only planned ones count) and ``label``.
        seeds: The planned seeds.
        runs: The judged runs (see :func:`mark_attempts`).

    Returns:
        Columns ``cell``, ``label``, ``seed``, ``attempts``, ``latest_status``,
        ``latest_run_id`` and ``reason``.
    """
    planned = cells[cells["planned"].astype(bool)] if "planned" in cells.columns else cells
    used = _used(runs)
    latest = _latest(runs)
    rows = []
    for c in planned.itertuples(index=False):
        for s in seeds:
            here = runs["cell"].eq(c.cell) & runs["seed"].eq(s)
            if (here & used).any():
                continue
            last = runs[here & latest]
            if last.empty:
                rows.append({"cell": c.cell, "label": c.label, "seed": s, "attempts": 0,
                             "latest_status": "", "latest_run_id": "", "reason": "no run"})
                continue
            r = last.sort_values("start_time").iloc[-1]
            rows.append({"cell": c.cell, "label": c.label, "seed": s, "attempts": int(here.sum()),
                         "latest_status": r["status"], "latest_run_id": r["run_id"],
                         "reason": r["excluded_reason"] if "excluded_reason" in r else r["status"]})
    return pd.DataFrame(rows, columns=["cell", "label", "seed", "attempts", "latest_status",
                                       "latest_run_id", "reason"])


def problems_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Every run the statistics do not use, with the reason."""
    cols = ["run_id", "run_name", "cell", "seed", "status", "diverged", "superseded",
            "excluded_reason"]
    return runs.loc[~_used(runs), cols].reset_index(drop=True)


def reported_in_pi(reported: float, pi_low: float, pi_high: float, *,
                   resolution: float = REPORTED_RESOLUTION) -> bool | None:
    """Whether a truncated reported value is compatible with a prediction interval.

    The lecture prints accuracies with ``%d``, so ``reported = 52`` means the true value was
    in ``[52, 53)``. The answer is whether ``[reported, reported + resolution)`` intersects
    ``[pi_low, pi_high]``.

    Returns:
        ``True``/``False``, or ``None`` when any input is NaN (no interval).
    """
    values = (reported, pi_low, pi_high)
    if any(v is None or not np.isfinite(float(v)) for v in values):
        return None
    return bool(reported <= pi_high and reported + resolution > pi_low)


def lecture_check_table(runs: pd.DataFrame, cells: pd.DataFrame, *,
                        confidence: float = 0.95) -> pd.DataFrame:
    """Each cell with a reported accuracy against what our seeds give.

    Returns:
        Per reported cell: ``cell``, ``label``, ``reported``, ``reported_interval`` (the
        ``%d`` truncation interval), ``n``, ``mean``, ``ci_low``/``ci_high`` (t CI of the
        mean), ``pi_low``/``pi_high`` (prediction interval of one new run, from
        :func:`study.stats.prediction_interval`) and ``inside_pi``
        (:func:`reported_in_pi`; NA with fewer than two runs).
    """
    used = _used(runs)
    rows = []
    for c in cells.itertuples(index=False):
        rep = c.reported_accuracy
        if rep is None or not np.isfinite(float(rep)):
            continue
        x = pd.to_numeric(runs.loc[runs["cell"].eq(c.cell) & used, RESPONSE],
                          errors="coerce").to_numpy(float)
        x = x[np.isfinite(x)]
        ci = stats.t_interval(x, confidence)
        pi = stats.prediction_interval(x, confidence)
        rows.append({"cell": c.cell, "label": c.label, "reported": float(rep),
                     "reported_interval": f"[{rep:g}, {rep + REPORTED_RESOLUTION:g})",
                     "n": int(x.size), "mean": float(x.mean()) if x.size else np.nan,
                     "ci_low": ci[0], "ci_high": ci[1], "pi_low": pi[0], "pi_high": pi[1],
                     "inside_pi": reported_in_pi(float(rep), pi[0], pi[1])})
    out = pd.DataFrame(rows, columns=["cell", "label", "reported", "reported_interval", "n", "mean",
                                      "ci_low", "ci_high", "pi_low", "pi_high", "inside_pi"])
    out["inside_pi"] = out["inside_pi"].astype("boolean")
    return out


def _full(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Factor levels of a cell given by its non-default factors (the lecture's defaults)."""
    s = {"optimizer": "adam", "bn": False, "init": "default", "scheduler": "none", **settings}
    s.setdefault("scheduler_interval", "never" if s["scheduler"] == "none" else "epoch")
    return s


# The lecture's pairwise claims: (name, cell a, cell b), cells by their factor levels.
LECTURE_CLAIMS: tuple[tuple[str, dict, dict], ...] = (
    ("torch Adam vs manual Adam", _full({}), _full({"optimizer": "manual_adam"})),
    ("manual SGD vs torch SGD", _full({"optimizer": "manual_sgd"}), _full({"optimizer": "sgd"})),
    ("Adam vs Adam+BN", _full({}), _full({"bn": True})),
    ("Adam+BN vs Adam+BN+Kaiming", _full({"bn": True}), _full({"bn": True, "init": "kaiming"})),
    ("Adam+BN vs Adam+BN+Xavier", _full({"bn": True}), _full({"bn": True, "init": "xavier"})),
    ("Adam+BN+StepLR(never) vs Adam+BN+ExponentialLR(never)",
     _full({"bn": True, "scheduler": "step", "scheduler_interval": "never"}),
     _full({"bn": True, "scheduler": "exponential", "scheduler_interval": "never"})),
    ("Adam+BN vs Adam+BN+StepLR(never)", _full({"bn": True}),
     _full({"bn": True, "scheduler": "step", "scheduler_interval": "never"})),
)


def _find_cell(cells: pd.DataFrame, levels: Mapping[str, Any]) -> dict | None:
    """The cell with these factor levels; preferring one with a reported value, then no variant."""
    hit = cells
    for f, v in levels.items():
        hit = hit[hit[f].astype(str) == str(v)]
    if hit.empty:
        return None
    rank = 2 * hit["reported_accuracy"].isna().astype(int)
    if "variant" in hit.columns:
        rank += (hit["variant"].fillna("") != "").astype(int)
    return hit.iloc[int(np.argmin(rank.to_numpy()))].to_dict()


def lecture_pairs(cells: pd.DataFrame) -> list[tuple[str, str, str]]:
    """The lecture's pairwise claims that this study can test, as ``(claim, cell a, cell b)``.

    The fixed claims of :data:`LECTURE_CLAIMS` whose two cells both exist, then every corrected
    scheduler cell (stepped per epoch or batch) against its never-stepped version.
    """
    out = []
    for name, a, b in LECTURE_CLAIMS:
        ca, cb = _find_cell(cells, a), _find_cell(cells, b)
        if ca is not None and cb is not None:
            out.append((name, ca["cell"], cb["cell"]))
    for c in cells.to_dict("records"):
        if c["scheduler"] == "none" or c["scheduler_interval"] in ("never", None):
            continue
        never = _find_cell(cells, {**{f: c[f] for f in FACTORS}, "scheduler_interval": "never"})
        if never is not None:
            label = c["label"] if isinstance(c.get("label"), str) and c["label"] else c["cell"]
            out.append((f"{label} vs never stepped", c["cell"], never["cell"]))
    return out


def verdict(ci_low: float, ci_high: float, claimed: int | float) -> str:
    """What our paired difference ``a - b`` says about a claimed ordering.

    Args:
        ci_low, ci_high: Confidence interval of the mean difference ``a - b``.
        claimed: The claimed sign of ``a - b``: ``+1`` (a better), ``-1`` (b better), ``0`` or
            NaN (no claim: a tie in the reported numbers, or one of them unknown).

    Returns:
        ``"supported"`` (the CI excludes 0 in the claimed direction), ``"contradicted"``
        (excludes 0 in the other direction), ``"not resolved"`` (the CI includes 0, or there is
        no CI), or, without a claim, ``"a better"`` / ``"b better"`` when the CI excludes 0.
    """
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return "not resolved"
    if ci_low <= 0.0 <= ci_high:
        return "not resolved"
    ours = 1 if ci_low > 0 else -1
    if claimed is None or not np.isfinite(claimed) or claimed == 0:
        return "a better" if ours > 0 else "b better"
    return "supported" if ours == np.sign(claimed) else "contradicted"


ORDERING_COLUMNS = ["claim", "cell_a", "cell_b", "label_a", "label_b", "reported_a", "reported_b",
                    "claimed_direction", "n_pairs", "mean_diff", "ci_low", "ci_high", "p_value",
                    "p_adjusted", "method", "verdict", "identical"]


def lecture_orderings_table(runs: pd.DataFrame, cells: pd.DataFrame, *,
                            rng: np.random.Generator, method: str = "holm",
                            confidence: float = 0.95, n_boot: int = 10_000) -> pd.DataFrame:
    """The lecture's pairwise claims (see :func:`lecture_pairs`) tested on our runs.

    For each claim ``a vs b``: the direction the lecture's reported numbers claim, our mean
    difference ``a - b`` over runs paired by seed (:func:`study.stats.paired_comparison`),
    its t CI and p-value, the p-value adjusted over this family (``method``), the
    :func:`verdict`, and ``identical`` (the two cells gave exactly the same accuracy on every
    seed, e.g. a scheduler that is never stepped: the lecture's difference was seed noise).
    """
    used = runs[_used(runs)]
    meta = cells.set_index("cell")
    rows = []
    for claim, a, b in lecture_pairs(cells):
        ya = used[used["cell"] == a].groupby("seed")[RESPONSE].mean()
        yb = used[used["cell"] == b].groupby("seed")[RESPONSE].mean()
        both = ya.index.intersection(yb.index).sort_values()
        res = stats.paired_comparison(ya.loc[both].to_numpy(float), yb.loc[both].to_numpy(float),
                                      rng=rng, confidence=confidence, n_boot=n_boot)
        ra, rb = meta.at[a, "reported_accuracy"], meta.at[b, "reported_accuracy"]
        claimed = float(np.sign(ra - rb)) if pd.notna(ra) and pd.notna(rb) else np.nan
        rows.append({"claim": claim, "cell_a": a, "cell_b": b,
                     "label_a": meta.at[a, "label"], "label_b": meta.at[b, "label"],
                     "reported_a": ra, "reported_b": rb,
                     "claimed_direction": {1.0: "a > b", -1.0: "a < b", 0.0: "tie"}.get(claimed, "none"),
                     "n_pairs": res["n_pairs"], "mean_diff": res["mean_diff"],
                     "ci_low": res["ci_low"], "ci_high": res["ci_high"], "p_value": res["p_value"],
                     "verdict": verdict(res["ci_low"], res["ci_high"], claimed),
                     # bit-identical results on every seed: the two cells compute the same thing
                     "identical": bool(len(both)) and bool((ya.loc[both] == yb.loc[both]).all())})
    out = pd.DataFrame(rows, columns=[c for c in ORDERING_COLUMNS if c not in ("p_adjusted", "method")])
    out["p_adjusted"] = stats.adjust_pvalues(out["p_value"].to_numpy(dtype=float), method=method)
    out["method"] = method
    return out[ORDERING_COLUMNS]


# =========================================================================================
# Layer 3: writers
# =========================================================================================

def _float_format(column: str) -> str:
    precise = ("p_" in column or column.endswith("_p") or column == "PR(>F)" or "eta" in column
               or "share" in column or column.startswith("prob"))
    return "{:.3f}" if precise else "{:.2f}"


def _markdown(df: pd.DataFrame) -> str:
    """GitHub Markdown of a table, numbers right-aligned and formatted as :func:`_display` does
    (tabulate would otherwise re-parse the formatted strings as numbers)."""
    if not len(df.columns):
        return "(empty)"
    align = ["right" if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
             else "left" for c in df.columns]
    return _display(df).to_markdown(index=False, disable_numparse=True, colalign=align)


def _display(df: pd.DataFrame) -> pd.DataFrame:
    """The table as strings: floats to 2-3 decimals, missing values blank."""
    out = pd.DataFrame(index=df.index)
    for col in df.columns:
        s = df[col]
        if pd.api.types.is_float_dtype(s):
            fmt = _float_format(str(col))
            out[col] = [fmt.format(v) if pd.notna(v) else "" for v in s]
        else:
            out[col] = ["" if (v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)))
                        else str(v) for v in s]
    return out


def write_table(df: pd.DataFrame, stem: str | Path, *, formats: Sequence[str] = ("csv", "md", "tex")
                ) -> list[Path]:
    """Write a table as ``stem.csv`` (full precision), ``stem.md`` and ``stem.tex``.

    Returns:
        The paths written.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    shown = _display(df) if {"md", "tex"} & set(formats) else None
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        if fmt == "csv":
            df.to_csv(path, index=False)
        elif fmt == "md":
            path.write_text(_markdown(df) + "\n")
        elif fmt == "tex":
            styler = (shown.style.hide(axis="index").format(escape="latex")
                      .format_index(escape="latex", axis=1))
            path.write_text(styler.to_latex(hrules=True))
        else:
            raise ValueError(f"unknown table format {fmt!r}; use csv, md or tex")
        paths.append(path)
    return paths


def _plot_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Used runs of the main variant (the one with most runs): plots by factor level must not
    mix a cell with another learning rate into the level's mean."""
    used = runs[_used(runs)]
    if "variant" in used.columns and used["variant"].nunique() > 1:
        counts = used["variant"].value_counts()
        main = sorted(counts[counts == counts.max()].index)[0]
        used = used[used["variant"] == main]
    return used


def write_plots(runs: pd.DataFrame, curves: pd.DataFrame, comparisons: pd.DataFrame,
                out_dir: str | Path, *, confidence: float = 0.95) -> tuple[list[Path], list[str]]:
    """Draw the study's figures with :mod:`study.plots` into ``out_dir`` (PNG and SVG).

    Learning curves of test accuracy and train loss per level of each varying factor; final
    accuracy per cell; interaction plots (optimizer x bn, init x bn, scheduler x optimizer,
    where both factors vary); a heatmap of cell means; a forest plot of the comparisons.

    Returns:
        ``(paths written, notes on figures skipped and why)``.
    """
    from . import plots

    out_dir = Path(out_dir)
    paths: list[Path] = []
    skipped: list[str] = []
    used = _plot_runs(runs)
    factors = varying_factors(runs)

    def attempt(name: str, draw) -> None:
        try:
            fig, _ = draw()
        except ValueError as exc:
            skipped.append(f"{name}: {exc}")
            return
        paths.extend(plots.save(fig, out_dir / name))

    stat_curves = curves[curves["run_id"].isin(used["run_id"])]
    for f in factors:
        for metric in ("test_accuracy", "train_loss"):
            def draw(f=f, metric=metric):
                return plots.learning_curves(stat_curves, metric=metric, factor=f,
                                             confidence=confidence)
            attempt(f"curves_{metric}_by_{f}", draw)
    latest = runs[_latest(runs)]
    attempt("final_accuracy", lambda: plots.final_accuracy(  # cells in the plan's order
        latest, x="cell", response=RESPONSE, order=list(pd.unique(latest["cell"]))))
    for x, hue in (("optimizer", "bn"), ("init", "bn"), ("scheduler", "optimizer")):
        if x in factors and hue in factors:
            attempt(f"interaction_{x}_x_{hue}",
                    lambda x=x, hue=hue: plots.interaction(used, x=x, hue=hue, response=RESPONSE,
                                                           confidence=confidence))
    rows = [f for f in ("optimizer", "bn") if f in factors]
    cols = [f for f in ("init", "scheduler", "scheduler_interval") if f in factors]
    if not rows and len(cols) >= 2:
        rows = [cols.pop(0)]
    if not cols and len(rows) == 2:
        cols = [rows.pop()]
    if rows and cols:
        attempt("heatmap_cells", lambda: plots.cell_heatmap(used, rows=rows, cols=cols,
                                                            response=RESPONSE))
    else:
        skipped.append("heatmap_cells: fewer than two factors vary")
    effects = comparisons[pd.to_numeric(comparisons["mean_diff"], errors="coerce").notna()]
    if len(effects):
        attempt("forest_comparisons", lambda: plots.forest(effects, response=RESPONSE))
    else:
        skipped.append("forest_comparisons: no comparison with pairs")
    return paths, skipped


def _summary(data: StudyData, runs: pd.DataFrame, missing: pd.DataFrame,
             settings: dict) -> dict[str, Any]:
    status = runs["status"]
    fingerprints = sorted({f for f in runs["data_fingerprint"] if f}
                          | ({data.parent_tags["data_fingerprint"]}
                             if data.parent_tags.get("data_fingerprint") else set()))
    commits = runs.groupby("git_commit").agg(n_runs=("run_id", "size"),
                                             dirty=("git_dirty", lambda s: sorted(set(s))))
    problems = list(data.notes)
    problems += [f"{r.run_name} ({r.run_id}): {r.excluded_reason}"
                 for r in runs[~runs["used"]].itertuples(index=False)]
    problems += [f"missing {r.cell} seed {r.seed}: {r.reason}" for r in missing.itertuples(index=False)]
    warnings = []
    if len(fingerprints) > 1:
        warnings.append(f"the runs used {len(fingerprints)} different data fingerprints")
    if len(commits) > 1:
        warnings.append(f"the runs come from {len(commits)} code versions (git commits)")
    return {
        "study": data.study,
        "parent_run_id": data.parent_run_id,
        "experiment_id": data.experiment_id,
        "tracking_uri": data.tracking_uri,
        "grid": data.resolved.get("grid", data.parent_tags.get("grid")),
        "planned": {"cells": int(data.cells["planned"].sum()), "seeds": data.seeds,
                    "runs": int(data.cells["planned"].sum()) * len(data.seeds)},
        "counts": {
            "runs": int(len(runs)),
            "finished": int((status == "FINISHED").sum()),
            "failed": int((status == "FAILED").sum()),
            "diverged": int(runs["diverged"].sum()),
            "killed": int((status == "KILLED").sum()),
            "unfinished": int((~status.isin(["FINISHED", "FAILED", "KILLED"])).sum()),
            "superseded": int(runs["superseded"].sum()),
            "used": int(runs["used"].sum()),
            "unplanned": int((~runs["planned"]).sum()),
            "missing": int(len(missing)),
        },
        "data_fingerprints": fingerprints,
        "environment": {tag: sorted({str(v) for v in runs[tag].dropna() if str(v)})
                        for tag in ENVIRONMENT_TAGS if tag in runs},
        "code_versions": [{"git_commit": c, "n_runs": int(row.n_runs), "git_dirty": row.dirty}
                          for c, row in commits.iterrows()],
        "settings": settings,
        "warnings": warnings,
        "problems": problems,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    return value


def _report(result_tables: list[tuple[str, str, pd.DataFrame]], summary: dict, anova_model: str,
            plots: list[Path], out_dir: Path) -> str:
    c = summary["counts"]
    lines = [f"# Analysis of study `{summary['study']}`", "",
             f"Parent run `{summary['parent_run_id']}`; {c['runs']} runs: {c['finished']} FINISHED, "
             f"{c['failed']} FAILED ({c['diverged']} diverged), {c['killed']} KILLED, "
             f"{c['superseded']} superseded; {c['used']} used in the statistics; "
             f"{c['missing']} planned cell x seed missing.", ""]
    for w in summary["warnings"]:
        lines += [f"**Warning:** {w}.", ""]
    lines += ["## Problems", ""]
    lines += [f"- {p}" for p in summary["problems"]] or ["None."]
    lines.append("")
    for name, title, df in result_tables:
        lines += [f"## {title} (`{name}.csv`)", ""]
        if name == "anova":
            lines += ["```", anova_model, "```", ""]
        lines += [_markdown(df) if len(df) else "(no rows)", ""]
    if plots:
        lines += ["## Figures", ""]
        lines += [f"![{p.stem}]({p.relative_to(out_dir).as_posix()})" for p in plots
                  if p.suffix == ".png"]
    return "\n".join(lines) + "\n"


def analyze_study(study: str, out_dir: str | Path, *, tracking_uri: str | None = None,
                  experiment: str | None = None, seed: int = 0, method: str = "holm",
                  confidence: float = 0.95, references: Mapping[str, Any] | None = None,
                  log_to_parent: bool = True) -> AnalysisResult:
    """Analyze a study stored in MLflow and write every table and figure to ``out_dir``.

    Args:
        study: The study's name.
        out_dir: Folder for the outputs (created).
        tracking_uri: MLflow tracking URI (default: ``$MLFLOW_TRACKING_URI`` / MLflow's).
        experiment: Experiment name to look in (default: all).
        seed: Seed of the one ``numpy.random.Generator`` behind every bootstrap interval.
        method: Multiple-testing adjustment, ``"holm"`` or ``"bh"``.
        confidence: Coverage of every interval.
        references: Reference level per factor for the comparisons (overrides
            :data:`DEFAULT_REFERENCES`).
        log_to_parent: Log the files to the study's parent run under ``analysis/``.

    Returns:
        An :class:`AnalysisResult`.

    Raises:
        AnalysisError: Unknown study (the message lists the studies there are), a study
            without any FINISHED run, or a bad reference level.
        ValueError: An unknown ``method`` or ``confidence`` outside (0, 1).
    """
    stats.adjust_pvalues([], method=method)
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    data = load_study(study, tracking_uri=tracking_uri, experiment=experiment)
    runs = data.runs
    if not runs["used"].any():
        statuses = runs["status"].value_counts().to_dict()
        reasons = sorted(set(runs["excluded_reason"]))[:5]
        raise AnalysisError(f"study {study!r} has {len(runs)} child run(s) but none FINISHED with a "
                            f"test accuracy (statuses: {statuses}); reasons: {'; '.join(reasons)}")
    rng = np.random.default_rng(seed)
    cells = cell_table(runs, rng=rng, cells=data.cells, seeds=data.seeds, confidence=confidence)
    comparisons = comparison_table(runs, rng=rng, references=references, method=method,
                                   confidence=confidence)
    anova, anova_model = anova_table(runs)
    seeds = seeds_table(cells, runs, confidence=confidence)
    variance = variance_table(runs)
    missing = missing_table(data.cells, data.seeds, runs)
    problems = problems_table(runs)
    has_reported = data.cells["reported_accuracy"].notna().any()
    lecture = lecture_check_table(runs, data.cells, confidence=confidence) if has_reported else None
    orderings = (lecture_orderings_table(runs, data.cells, rng=rng, method=method,
                                         confidence=confidence) if has_reported else None)

    tables: list[tuple[str, str, pd.DataFrame]] = [
        ("cells", "Cells", cells), ("comparisons", "Comparisons with the reference levels", comparisons),
        ("anova", "ANOVA", anova), ("seeds", "Seeds needed", seeds),
        ("variance", "Variance components", variance), ("missing", "Missing runs", missing),
        ("problems", "Runs not used", problems)]
    if lecture is not None:
        tables += [("lecture_check", "The lecture's numbers", lecture),
                   ("lecture_orderings", "The lecture's orderings", orderings)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = write_table(runs, out / "runs")
    # curves: raw long-format data (thousands of rows), so CSV only
    files += write_table(data.curves, out / "curves", formats=("csv",))
    for name, _, df in tables:
        files += write_table(df, out / name)
    (out / "anova_model.txt").write_text(anova_model + "\n")
    files.append(out / "anova_model.txt")
    plot_paths, skipped = write_plots(runs, data.curves, comparisons, out / "plots",
                                      confidence=confidence)
    files += plot_paths

    settings = {"seed": seed, "method": method, "confidence": confidence,
                "references": {k: str(v) for k, v in
                               resolve_references(runs, varying_factors(runs), references).items()},
                "half_width": HALF_WIDTH, "factors_varying": varying_factors(runs),
                "anova_model": anova_model.splitlines()[-1], "plots_skipped": skipped}
    summary = _summary(data, runs, missing, settings)
    report = out / "report.md"
    report.write_text(_report(tables, summary, anova_model, plot_paths, out))
    files.append(report)
    summary_path = out / "summary.json"
    summary["files"] = sorted(p.relative_to(out).as_posix() for p in files + [summary_path])
    summary_path.write_text(json.dumps(_jsonable(summary), indent=2) + "\n")
    files.append(summary_path)

    logged = False
    if log_to_parent:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri)
        for p in files:
            rel = p.parent.relative_to(out).as_posix()
            client.log_artifact(data.parent_run_id, str(p),
                                "analysis" if rel == "." else f"analysis/{rel}")
        logged = True
    return AnalysisResult(
        study=study, parent_run_id=data.parent_run_id, out_dir=out, runs=runs,
        curves=data.curves, cells=cells, missing=missing, problems=problems,
        comparisons=comparisons, anova=anova, anova_model=anova_model, seeds=seeds,
        variance=variance, lecture_check=lecture, lecture_orderings=orderings, summary=summary,
        files=files, logged_to_parent=logged)
