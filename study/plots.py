"""Figures of the study: learning curves, final accuracies, interactions, cell means, effects.

Every plotting function takes its data as arguments (the ``runs``, ``curves`` and ``effects``
tables built elsewhere), draws on a new figure (or on the ``ax`` it is given) and returns
``(fig, ax)``. Nothing is shown: display the figure in a notebook, or write it with
:func:`save`, which also closes it. Factor names and their levels are never fixed here: pass
the column to plot by (``factor=``, ``x=``, ``hue=``...) and the levels are read from the data,
sorted, unless an ``order`` is given.

Tables (one row each):

* ``runs``: per training run: ``run_id``, ``cell``, the factor columns (``optimizer``, ``bn``,
  ``init``, ``scheduler``), ``seed``, ``status``, ``diverged`` and the response
  ``test_accuracy`` (percent, NaN for failed runs).
* ``curves``: per (run, metric, step), long format: ``run_id``, ``cell``, the factor columns,
  ``seed``, ``metric``, ``step`` (batches), ``value``.
* ``effects``: per level-vs-reference comparison: ``factor``, ``level``, ``reference``,
  ``n_pairs``, ``mean_diff``, ``ci_low``, ``ci_high``, ``p_value``, ``p_adjusted``.

Confidence intervals of means are t-based, over runs (a run is the unit of replication):
``mean ± t_{(1+c)/2, n-1} · sd / sqrt(n)``, so they are deterministic; a group with a single
run gets no interval.

Example::

    from study import plots
    fig, ax = plots.learning_curves(curves, metric="test_accuracy", factor="optimizer")
    plots.save(fig, "figures/curves_optimizer")  # figures/curves_optimizer.png and .svg
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

__all__ = [
    "learning_curves",
    "final_accuracy",
    "interaction",
    "cell_heatmap",
    "forest",
    "save",
]

# Axis labels, with units, of the quantities the study logs. Others are labelled by name.
_LABELS = {
    "test_accuracy": "test accuracy (%)",
    "train_accuracy": "train accuracy (%)",
    "train_loss": "train loss (cross-entropy)",
    "test_loss": "test loss (cross-entropy)",
    "lr": "learning rate",
}
_STEP_LABEL = "step (batch)"
# Metrics logged once per epoch (step = epoch number); the rest are logged at batch steps.
_EPOCH_METRICS = ("test_accuracy", "test_loss", "lr", "train_loss_epoch", "epoch_seconds")
_PALETTE = "colorblind"
_EFFECT_COLUMNS = ("factor", "level", "reference", "mean_diff", "ci_low", "ci_high", "p_adjusted")


# --- helpers -------------------------------------------------------------------------------
def _label(name: str) -> str:
    """Axis label, with unit where known, of a metric or response column."""
    return _LABELS.get(name, name.replace("_", " "))


def _diff_label(response: str) -> str:
    """Axis label of a difference in ``response``: percent becomes percentage points."""
    label = _label(response)
    if label.endswith(" (%)"):
        return f"difference in {label[:-4]} (percentage points)"
    return f"difference in {label}"


def _level_label(factor: str, value: Any) -> str:
    """Readable label of one level; booleans read like the cell names (``bn`` / ``nobn``)."""
    if isinstance(value, (bool, np.bool_)):
        return factor if value else f"no{factor}"
    return str(value)


def _require_columns(df: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"{name} lacks column(s) {', '.join(map(repr, missing))}; "
            f"columns present: {', '.join(map(str, df.columns)) or 'none'}"
        )


def _require_rows(df: pd.DataFrame, name: str, what: str = "") -> None:
    if df.empty:
        raise ValueError(f"{name} has no rows{what}; nothing to plot")


def _sorted(values: Sequence[Any]) -> list[Any]:
    try:
        return sorted(values)
    except TypeError:  # mixed types: a stable order all the same
        return sorted(values, key=lambda v: (type(v).__name__, str(v)))


def _levels(df: pd.DataFrame, column: str, order: Sequence[Any] | None) -> list[Any]:
    """Levels of ``column``: sorted, or ``order`` restricted to the levels present."""
    present = list(pd.unique(df[column].dropna()))
    if order is None:
        return _sorted(present)
    present_set = set(present)
    return [v for v in order if v in present_set]


def _mean_ci(grouped: pd.core.groupby.SeriesGroupBy, confidence: float) -> pd.DataFrame:
    """Per group: ``mean``, ``n``, t-based ``low``/``high`` (NaN where n < 2)."""
    from scipy import stats  # lazy: only the plots that draw intervals need it

    agg = grouped.agg(["mean", "std", "count"]).rename(columns={"count": "n"})
    n = agg["n"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = stats.t.ppf((1 + confidence) / 2, np.where(n > 1, n - 1, np.nan))
        half = t * agg["std"].to_numpy(dtype=float) / np.sqrt(n)
    agg["low"] = agg["mean"] - half
    agg["high"] = agg["mean"] + half
    return agg


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} must lie strictly between 0 and 1")


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


def _response_rows(runs: pd.DataFrame, response: str, name: str = "runs") -> pd.DataFrame:
    """Rows of ``runs`` with a finite response; ValueError if there are none."""
    _require_rows(runs, name)
    values = pd.to_numeric(runs[response], errors="coerce")
    kept = runs[np.isfinite(values)]
    if kept.empty:
        raise ValueError(
            f"{name} has {len(runs)} row(s) but none with a finite {response!r} "
            f"(all failed or NaN); nothing to plot"
        )
    return kept


def _pct(confidence: float) -> str:
    return f"{confidence * 100:g}%"


# --- plots -------------------------------------------------------------------------------
def learning_curves(
    curves: pd.DataFrame,
    *,
    metric: str = "test_accuracy",
    factor: str = "optimizer",
    confidence: float = 0.95,
    order: Sequence[Any] | None = None,
    ax: Axes | None = None,
) -> tuple[Figure, Axes]:
    """Mean learning curve per level of a factor, with a confidence band across runs.

    Each run's values are first averaged per step (in case a step was logged twice); then,
    per level and step, the mean over runs is drawn as a line and its t-based confidence
    interval as a shaded band (no band where only one run logged that step). Non-finite
    values (a diverged run's ``inf``/``NaN`` loss) are left out of the means: filter
    diverged runs out of ``curves`` beforehand if they should not count at all.

    Args:
        curves: Long table with columns ``run_id``, ``metric``, ``step``, ``value`` and
            ``factor``.
        metric: Which metric to plot, e.g. ``"test_accuracy"``, ``"train_loss"``, ``"lr"``.
        factor: Column whose levels make the lines, e.g. ``"optimizer"`` or ``"bn"``.
        confidence: Level of the band, strictly between 0 and 1.
        order: Levels to draw, in this order; default: all levels present, sorted. Levels
            absent from the data are skipped.
        ax: Axes to draw on; default: a new figure.

    Returns:
        ``(fig, ax)``; ``ax.lines`` holds one line per level, labelled with the level.

    Raises:
        ValueError: ``curves`` is empty, lacks a column, or has no rows for ``metric``
            (the message lists the metrics present), or ``confidence`` is out of range.
    """
    _check_confidence(confidence)
    _require_columns(curves, ["run_id", "metric", "step", "value", factor], "curves")
    present = _sorted(list(pd.unique(curves["metric"].dropna())))
    data = curves[curves["metric"] == metric]
    data = data[np.isfinite(pd.to_numeric(data["value"], errors="coerce"))]
    if data.empty:
        raise ValueError(
            f"curves has no finite values for metric {metric!r}; "
            f"metrics present: {', '.join(map(str, present)) or 'none (curves is empty)'}"
        )
    levels = _levels(data, factor, order)
    if not levels:
        raise ValueError(
            f"none of the levels {list(order or [])} of {factor!r} are in curves for {metric!r}; "
            f"levels present: {_sorted(list(pd.unique(data[factor].dropna())))}"
        )
    per_run = data.groupby([factor, "run_id", "step"], sort=False)["value"].mean().reset_index()
    stats_ = _mean_ci(per_run.groupby([factor, "step"])["value"], confidence)

    fig, ax = _new_axes(ax, (7.5, 4.5))
    colors = sns.color_palette(_PALETTE, len(levels))
    n_runs = []
    for level, color in zip(levels, colors):
        s = stats_.xs(level, level=factor).sort_index()
        steps = s.index.to_numpy()
        ax.plot(steps, s["mean"].to_numpy(), color=color, lw=1.8,
                marker="o" if len(steps) <= 20 else None,  # one epoch is still a visible point
                label=_level_label(factor, level))
        ax.fill_between(steps, s["low"].to_numpy(), s["high"].to_numpy(),
                        color=color, alpha=0.2, lw=0)
        n_runs.append(per_run.loc[per_run[factor] == level, "run_id"].nunique())
    ax.set_xlabel("epoch" if metric in _EPOCH_METRICS else _STEP_LABEL)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(_label(metric))
    n_text = f"{min(n_runs)}" if min(n_runs) == max(n_runs) else f"{min(n_runs)}–{max(n_runs)}"
    ax.set_title(f"{_label(metric)} by {factor}\n"
                 f"mean over {n_text} runs per level, {_pct(confidence)} t-CI band",
                 fontsize="medium")
    ax.legend(title=factor, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(alpha=0.3)
    return fig, ax


def final_accuracy(
    runs: pd.DataFrame,
    *,
    x: str = "cell",
    response: str = "test_accuracy",
    order: Sequence[Any] | None = None,
    mark: str | None = "diverged",
    ax: Axes | None = None,
) -> tuple[Figure, Axes]:
    """Distribution of the final response per group: box plot plus one point per run.

    Runs without a finite response (failed runs) are left out of boxes and points; their
    group keeps its tick, so a cell whose runs all failed shows as an empty slot. Points are
    jittered with a fixed seed, so the figure is deterministic.

    Args:
        runs: One row per run, with columns ``x`` and ``response``.
        x: Column that makes the groups on the x axis; default one box per ``cell``.
        response: Numeric column to plot, e.g. ``"test_accuracy"`` (percent).
        order: Groups to draw, in this order; default: all groups present, sorted.
        mark: Boolean column whose true rows are drawn as red crosses (default
            ``"diverged"``); ignored if absent, ``None`` to disable.
        ax: Axes to draw on; default: a new figure, wider with more groups.

    Returns:
        ``(fig, ax)`` with one x tick per group, labels rotated.

    Raises:
        ValueError: ``runs`` is empty, lacks a column, or has no finite ``response``.
    """
    _require_columns(runs, [x, response], "runs")
    data = _response_rows(runs, response)
    groups = _levels(runs, x, order)
    data = data[data[x].isin(groups)]
    if data.empty:
        raise ValueError(f"no run with a finite {response!r} in the groups {groups}")
    labels = [_level_label(x, g) for g in groups]
    many = len(groups) > 12
    fig, ax = _new_axes(ax, (max(6.0, 0.24 * len(groups) + 2.5), 6.5 if many else 5.0))

    values = data.assign(**{response: pd.to_numeric(data[response])})
    # Matplotlib's boxplot rather than seaborn's: seaborn 0.13 passes ``vert=``, which
    # Matplotlib 3.11 deprecates. Groups without a value get no box (their tick stays).
    filled = [(i, values.loc[values[x] == g, response].to_numpy(dtype=float))
              for i, g in enumerate(groups)]
    filled = [(i, v) for i, v in filled if v.size]
    ax.boxplot([v for _, v in filled], positions=[i for i, _ in filled], widths=0.6,
               showfliers=False, patch_artist=True, manage_ticks=False,
               boxprops=dict(facecolor="0.88", edgecolor="0.3", lw=1.0),
               medianprops=dict(color="0.1", lw=1.5),
               whiskerprops=dict(color="0.3", lw=1.0), capprops=dict(color="0.3", lw=1.0))
    rng = np.random.default_rng(0)
    pos = {g: i for i, g in enumerate(groups)}
    xs = values[x].map(pos).to_numpy(dtype=float) + rng.uniform(-0.18, 0.18, len(values))
    ys = values[response].to_numpy(dtype=float)
    flagged = np.zeros(len(values), dtype=bool)
    if mark is not None and mark in values.columns:
        flagged = values[mark].fillna(False).astype(bool).to_numpy()
    ax.scatter(xs[~flagged], ys[~flagged], s=14, color="C0", alpha=0.8, zorder=3,
               label="run")
    if flagged.any():
        ax.scatter(xs[flagged], ys[flagged], s=28, color="C3", marker="x", zorder=4,
                   label=mark)
        ax.legend(loc="best", fontsize="small")

    ax.set_xticks(range(len(groups)), labels, rotation=45, ha="right",
                  rotation_mode="anchor", fontsize="small" if many else None)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_xlabel(x)
    ax.set_ylabel(_label(response))
    omitted = len(runs[runs[x].isin(groups)]) - len(values)
    note = f"; {omitted} run(s) without a value omitted" if omitted else ""
    ax.set_title(f"{_label(response)} per {x}\n{len(values)} runs, one point per run{note}",
                 fontsize="medium")
    ax.grid(axis="y", alpha=0.3)
    return fig, ax


def interaction(
    runs: pd.DataFrame,
    *,
    x: str,
    hue: str,
    response: str = "test_accuracy",
    confidence: float = 0.95,
    order: Sequence[Any] | None = None,
    hue_order: Sequence[Any] | None = None,
    ax: Axes | None = None,
) -> tuple[Figure, Axes]:
    """Interaction plot: mean response per level of ``x``, one line per level of ``hue``.

    Means are over runs (averaging over every other factor); error bars are t-based
    confidence intervals over those runs. Lines of different ``hue`` levels are dodged
    slightly sideways so their bars do not overlap. Non-parallel lines suggest an
    interaction between the two factors.

    Args:
        runs: One row per run, with columns ``x``, ``hue`` and ``response``.
        x: Factor on the x axis, e.g. ``"optimizer"``.
        hue: Factor whose levels make the lines, e.g. ``"bn"``.
        response: Numeric column to average, e.g. ``"test_accuracy"`` (percent).
        confidence: Level of the error bars, strictly between 0 and 1.
        order: Levels of ``x`` in this order; default sorted.
        hue_order: Levels of ``hue`` in this order; default sorted.
        ax: Axes to draw on; default: a new figure.

    Returns:
        ``(fig, ax)``; ``ax.containers`` holds one errorbar container per ``hue`` level,
        labelled with the level, whose data line passes through the means.

    Raises:
        ValueError: ``runs`` is empty, lacks a column, has no finite ``response``, ``x``
            equals ``hue``, or ``confidence`` is out of range.
    """
    _check_confidence(confidence)
    if x == hue:
        raise ValueError(f"x and hue are both {x!r}; pick two different factors")
    _require_columns(runs, [x, hue, response], "runs")
    data = _response_rows(runs, response)
    xs = _levels(data, x, order)
    hs = _levels(data, hue, hue_order)
    data = data[data[x].isin(xs) & data[hue].isin(hs)]
    if data.empty:
        raise ValueError(f"no run with a finite {response!r} at the requested levels")
    values = pd.to_numeric(data[response])
    stats_ = _mean_ci(values.groupby([data[hue], data[x]]), confidence)

    fig, ax = _new_axes(ax, (max(6.0, 1.2 * len(xs) + 3.0), 4.5))
    colors = sns.color_palette(_PALETTE, len(hs))
    spread = min(0.3, 0.08 * (len(hs) - 1))
    for j, (level, color) in enumerate(zip(hs, colors)):
        offset = (j / (len(hs) - 1) - 0.5) * spread if len(hs) > 1 else 0.0
        s = stats_.xs(level, level=0).reindex(xs)  # NaN where this combination is absent
        pos = np.arange(len(xs)) + offset
        mean = s["mean"].to_numpy(dtype=float)
        err = np.vstack([mean - s["low"].to_numpy(dtype=float),
                         s["high"].to_numpy(dtype=float) - mean])
        err = np.nan_to_num(err, nan=0.0)
        ax.errorbar(pos, mean, yerr=err, color=color, marker="o", ms=6, lw=1.8,
                    capsize=3, label=_level_label(hue, level))
    ax.set_xticks(range(len(xs)), [_level_label(x, v) for v in xs])
    ax.set_xlim(-0.5, len(xs) - 0.5)
    ax.set_xlabel(x)
    ax.set_ylabel(f"mean {_label(response)}")
    ax.set_title(f"{_label(response)}: {x} × {hue}\n"
                 f"mean over runs, {_pct(confidence)} t-CI", fontsize="medium")
    ax.legend(title=hue, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return fig, ax


def _as_list(factors: str | Sequence[str]) -> list[str]:
    return [factors] if isinstance(factors, str) else list(factors)


def _combined_labels(frame: pd.DataFrame, factors: list[str]) -> list[str]:
    return ["/".join(_level_label(f, v) for f, v in zip(factors, row))
            for row in frame[factors].itertuples(index=False, name=None)]


def cell_heatmap(
    runs: pd.DataFrame,
    *,
    rows: str | Sequence[str],
    cols: str | Sequence[str],
    response: str = "test_accuracy",
    order: Mapping[str, Sequence[Any]] | None = None,
    cmap: str = "viridis",
    ax: Axes | None = None,
) -> tuple[Figure, Axes]:
    """Heatmap of the mean response per cell, annotated with the means to 1 decimal.

    ``rows`` and ``cols`` may each name one factor or several; several factors are combined
    into one axis whose labels join the levels with ``/`` (e.g. ``adam/bn``; booleans read
    ``bn``/``nobn``). Only combinations present in the data get a row or column; a
    combination of row and column without runs stays blank. Failed runs (no finite
    response) are left out of the means.

    Args:
        runs: One row per run, with the factor columns and ``response``.
        rows: Factor name, or list of factor names, for the rows.
        cols: Factor name, or list of factor names, for the columns.
        response: Numeric column to average, e.g. ``"test_accuracy"`` (percent).
        order: Optional level order per factor, e.g. ``{"optimizer": ["sgd", "adam"]}``;
            factors not listed are sorted.
        cmap: Matplotlib colormap name.
        ax: Axes to draw on; default: a new figure sized to the table.

    Returns:
        ``(fig, ax)``; ``ax.texts`` holds one annotation per non-empty cell.

    Raises:
        ValueError: ``runs`` is empty, lacks a column, has no finite ``response``, or a
            factor is on both axes.
    """
    row_f, col_f = _as_list(rows), _as_list(cols)
    if not row_f or not col_f:
        raise ValueError("rows and cols must each name at least one factor")
    both = set(row_f) & set(col_f)
    if both:
        raise ValueError(f"factor(s) {sorted(both)} are on both rows and cols")
    _require_columns(runs, row_f + col_f + [response], "runs")
    data = _response_rows(runs, response)
    order = dict(order or {})
    factors = row_f + col_f
    for f in factors:
        keep = _levels(data, f, order.get(f))
        data = data[data[f].isin(keep)]
        order[f] = keep
    if data.empty:
        raise ValueError(f"no run with a finite {response!r} at the requested levels")
    values = pd.to_numeric(data[response])
    means = values.groupby([data[f] for f in factors]).mean().reset_index()

    def axis_frame(fs: list[str]) -> pd.DataFrame:
        combos = means[fs].drop_duplicates()
        rank = {f: {v: i for i, v in enumerate(order[f])} for f in fs}
        keys = combos.apply(lambda r: tuple(rank[f][r[f]] for f in fs), axis=1)
        return combos.loc[keys.sort_values().index].reset_index(drop=True)

    row_frame, col_frame = axis_frame(row_f), axis_frame(col_f)
    row_labels, col_labels = _combined_labels(row_frame, row_f), _combined_labels(col_frame, col_f)
    means["_row"] = _combined_labels(means, row_f)
    means["_col"] = _combined_labels(means, col_f)
    table = means.pivot(index="_row", columns="_col", values=response)
    table = table.reindex(index=row_labels, columns=col_labels)

    width = max(5.0, 0.9 * len(col_labels) + 3.0)
    height = max(3.0, 0.45 * len(row_labels) + 2.0)
    fig, ax = _new_axes(ax, (width, height))
    sns.heatmap(table, annot=True, fmt=".1f", cmap=cmap, ax=ax, linewidths=0.5,
                linecolor="white", cbar_kws={"label": f"mean {_label(response)}"},
                annot_kws={"fontsize": "small"})
    ax.set_xlabel("/".join(col_f))
    ax.set_ylabel("/".join(row_f))
    ax.tick_params(axis="y", rotation=0)
    if any(len(c) > 6 for c in col_labels):
        plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_title(f"mean {_label(response)} per cell ({len(data)} runs)", fontsize="medium")
    return fig, ax


def forest(
    effects: pd.DataFrame,
    *,
    response: str = "test_accuracy",
    alpha: float = 0.05,
    ax: Axes | None = None,
) -> tuple[Figure, Axes]:
    """Forest plot of effects: each level's mean difference from its reference, with CI.

    One row per row of ``effects``, top to bottom in table order, labelled
    ``"factor: level vs reference"``: a point at ``mean_diff``, a horizontal bar from
    ``ci_low`` to ``ci_high`` and a dashed vertical line at 0. Comparisons with
    ``p_adjusted < alpha`` are drawn filled and dark, the others open and grey; the right
    margin prints each row's ``p_adjusted`` (and ``n_pairs`` if present), with ``*`` on the
    significant ones.

    Args:
        effects: Table with columns ``factor``, ``level``, ``reference``, ``mean_diff``,
            ``ci_low``, ``ci_high``, ``p_adjusted`` (``n_pairs`` optional).
        response: The response the differences are in, for the x label (percent becomes
            percentage points).
        alpha: Threshold on ``p_adjusted`` for the filled marker.
        ax: Axes to draw on; default: a new figure, taller with more rows.

    Returns:
        ``(fig, ax)`` with one y tick per row of ``effects``.

    Raises:
        ValueError: ``effects`` is empty or lacks a column.
    """
    _require_columns(effects, _EFFECT_COLUMNS, "effects")
    _require_rows(effects, "effects")
    eff = effects.reset_index(drop=True)
    n = len(eff)
    labels = [f"{r.factor}: {r.level} vs {r.reference}" for r in eff.itertuples(index=False)]
    mean = pd.to_numeric(eff["mean_diff"], errors="coerce").to_numpy(dtype=float)
    low = pd.to_numeric(eff["ci_low"], errors="coerce").to_numpy(dtype=float)
    high = pd.to_numeric(eff["ci_high"], errors="coerce").to_numpy(dtype=float)
    p_adj = pd.to_numeric(eff["p_adjusted"], errors="coerce").to_numpy(dtype=float)
    significant = np.nan_to_num(p_adj, nan=1.0) < alpha
    err = np.nan_to_num(np.vstack([mean - low, high - mean]), nan=0.0)
    y = np.arange(n)

    fig, ax = _new_axes(ax, (8.0, max(2.5, 0.42 * n + 1.6)))
    ax.axvline(0.0, color="0.3", ls="--", lw=1, zorder=1)
    styles = {True: dict(color="C3", mfc="C3"), False: dict(color="0.45", mfc="white")}
    for sig in (True, False):
        idx = np.flatnonzero(significant == sig)
        if idx.size:
            ax.errorbar(mean[idx], y[idx], xerr=err[:, idx], fmt="o", ms=6, capsize=3,
                        lw=1.5, zorder=3, **styles[sig])
    ax.set_yticks(y, labels)
    ax.set_ylim(n - 0.5, -0.5)  # first row on top
    trans = ax.get_yaxis_transform()  # x in axes fraction, y in data
    has_n = "n_pairs" in eff.columns
    for i in range(n):
        p_txt = "p_adj n/a" if np.isnan(p_adj[i]) else f"p_adj={p_adj[i]:.2g}"
        star = " *" if significant[i] else ""
        n_txt = f"n={eff['n_pairs'].iloc[i]}  " if has_n and pd.notna(eff["n_pairs"].iloc[i]) else ""
        ax.text(1.02, y[i], f"{n_txt}{p_txt}{star}", transform=trans, va="center",
                fontsize="small", color="C3" if significant[i] else "0.3")
    handles = [
        Line2D([], [], marker="o", ls="", **styles[True], label=f"p_adj < {alpha:g}"),
        Line2D([], [], marker="o", ls="", **styles[False], label=f"p_adj ≥ {alpha:g}"),
    ]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.1 - 0.3 / n),
              ncol=2, frameon=False, fontsize="small")
    ax.set_xlabel(f"{_diff_label(response)}, level − reference")
    ax.set_title(f"effects on {_label(response)}: mean difference and CI", fontsize="medium")
    ax.grid(axis="x", alpha=0.3)
    return fig, ax


def save(
    fig: Figure,
    path_stem: str | pathlib.Path,
    formats: Sequence[str] = ("png", "svg"),
) -> list[pathlib.Path]:
    """Write ``fig`` as ``path_stem.<format>`` for each format, then close it.

    The suffix is appended to the stem (``"figs/a.v2"`` gives ``figs/a.v2.png``), parent
    folders are created, PNGs are written at 150 dpi, and the bounding box is tight.

    Args:
        fig: Figure to write, e.g. the first element a plot function returned.
        path_stem: Path without suffix.
        formats: File formats matplotlib can write, e.g. ``("png", "svg", "pdf")``.

    Returns:
        The paths written, in the order of ``formats``.
    """
    stem = pathlib.Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        for fmt in formats:
            fmt = fmt.lstrip(".").lower()
            path = stem.with_name(f"{stem.name}.{fmt}")
            kwargs = {"dpi": 150} if fmt == "png" else {}
            fig.savefig(path, format=fmt, bbox_inches="tight", **kwargs)
            paths.append(path)
    finally:
        plt.close(fig)
    return paths
