"""Tests of study.plots on small synthetic runs/curves/effects tables."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from scipy import stats  # noqa: E402

from study import plots  # noqa: E402

OPTIMIZERS = ["sgd", "adam", "manual_sgd"]  # deliberately unsorted
INITS = ["kaiming", "default"]
SEEDS = [0, 1, 2]
STEPS = [0, 100, 200, 300]


def _cell(opt: str, bn: bool, init: str, sched: str) -> str:
    return f"{opt}-{'bn' if bn else 'nobn'}-{init}-{sched}"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def runs() -> pd.DataFrame:
    rng = np.random.default_rng(123)
    rows = []
    for opt, bn, init, seed in itertools.product(OPTIMIZERS, [False, True], INITS, SEEDS):
        base = {"sgd": 50.0, "adam": 60.0, "manual_sgd": 45.0}[opt] + (8.0 if bn else 0.0)
        rows.append({
            "run_id": f"r{len(rows):03d}", "cell": _cell(opt, bn, init, "step"),
            "optimizer": opt, "bn": bn, "init": init, "scheduler": "step", "seed": seed,
            "status": "FINISHED", "diverged": False,
            "test_accuracy": base + rng.normal(0.0, 2.0),
        })
    df = pd.DataFrame(rows)
    # One failed run (no accuracy), one diverged run at chance level.
    df.loc[0, ["status", "test_accuracy"]] = ["FAILED", np.nan]
    df.loc[5, ["diverged", "test_accuracy"]] = [True, 10.0]
    return df


@pytest.fixture
def curves(runs: pd.DataFrame) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    rows = []
    factor_cols = ["run_id", "cell", "optimizer", "bn", "init", "scheduler", "seed"]
    for run in runs[factor_cols].itertuples(index=False):
        for step in STEPS:
            for metric, value in [("test_accuracy", 10 + step / 10 + rng.normal(0, 3)),
                                  ("train_loss", 2.3 - step / 300 + rng.normal(0, 0.1)),
                                  ("lr", 1e-3 * 0.95 ** (step // 100))]:
                rows.append({**run._asdict(), "metric": metric, "step": step, "value": value})
    return pd.DataFrame(rows)


@pytest.fixture
def effects() -> pd.DataFrame:
    return pd.DataFrame({
        "factor": ["optimizer", "optimizer", "bn", "init"],
        "level": ["adam", "manual_sgd", True, "kaiming"],
        "reference": ["sgd", "sgd", False, "default"],
        "n_pairs": [12, 12, 18, 18],
        "mean_diff": [9.8, -5.1, 8.0, 0.3],
        "ci_low": [8.1, -6.9, 6.5, -1.0],
        "ci_high": [11.5, -3.3, 9.5, 1.6],
        "p_value": [1e-6, 1e-4, 1e-7, 0.6],
        "p_adjusted": [3e-6, 2e-4, 4e-7, 0.6],
    })


# --- learning_curves ------------------------------------------------------------------------
def test_learning_curves_one_line_per_level_at_the_group_means(curves):
    fig, ax = plots.learning_curves(curves, metric="test_accuracy", factor="optimizer")
    assert isinstance(fig, Figure) and isinstance(ax, Axes)
    levels = sorted(OPTIMIZERS)
    assert len(ax.lines) == len(levels)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == levels
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == len(levels)
    expected = (curves[curves["metric"] == "test_accuracy"]
                .groupby(["optimizer", "step"])["value"].mean())
    for line, level in zip(ax.lines, levels):
        assert line.get_label() == level
        np.testing.assert_array_equal(line.get_xdata(), STEPS)
        np.testing.assert_allclose(line.get_ydata(), expected.loc[level].to_numpy())
    assert ax.get_xlabel() == "epoch"  # test_accuracy is logged once per epoch
    assert ax.get_ylabel() == "test accuracy (%)"
    assert ax.get_title()


def test_learning_curves_band_is_the_t_interval_over_runs(curves):
    fig, ax = plots.learning_curves(curves, metric="train_loss", factor="optimizer",
                                    confidence=0.9)
    vals = curves[(curves["metric"] == "train_loss") & (curves["optimizer"] == "adam")]
    g = vals.groupby("step")["value"]
    half = stats.t.ppf(0.95, g.count() - 1) * g.std() / np.sqrt(g.count())
    band = [c for c in ax.collections if isinstance(c, PolyCollection)][0]  # "adam" sorts first
    ys = band.get_paths()[0].vertices[:, 1]
    np.testing.assert_allclose(ys.max(), (g.mean() + half).max())
    np.testing.assert_allclose(ys.min(), (g.mean() - half).min())
    assert ax.get_xlabel() == "step (batch)"  # train_loss is logged at global batch indices


def test_learning_curves_bool_factor_and_order(curves):
    _, ax = plots.learning_curves(curves, factor="bn")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["nobn", "bn"]
    _, ax = plots.learning_curves(curves, factor="optimizer", order=["sgd", "adam", "lion"])
    assert [line.get_label() for line in ax.lines] == ["sgd", "adam"]


def test_learning_curves_missing_metric_names_it_and_the_metrics_present(curves):
    with pytest.raises(ValueError, match="test_loss") as err:
        plots.learning_curves(curves, metric="test_loss")
    assert "lr, test_accuracy, train_loss" in str(err.value)
    with pytest.raises(ValueError, match="test_accuracy"):
        plots.learning_curves(curves.iloc[0:0])
    with pytest.raises(ValueError, match="'nope'"):
        plots.learning_curves(curves, factor="nope")


# --- final_accuracy -----------------------------------------------------------------------
def test_final_accuracy_one_tick_per_cell_and_one_point_per_finished_run(runs):
    # Make one cell fail entirely: its tick must stay, with no points.
    failed_cell = runs["cell"].iloc[-1]
    runs.loc[runs["cell"] == failed_cell, "test_accuracy"] = np.nan
    fig, ax = plots.final_accuracy(runs)
    assert isinstance(fig, Figure) and isinstance(ax, Axes)
    cells = sorted(runs["cell"].unique())
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == cells and len(ax.get_xticks()) == len(cells)
    assert all(t.get_rotation() == 45 for t in ax.get_xticklabels())
    assert len(ax.patches) == len(cells) - 1  # one box per cell with a value
    n_points = sum(len(c.get_offsets()) for c in ax.collections if c.get_label() in ("run", "diverged"))
    assert n_points == runs["test_accuracy"].notna().sum()
    diverged = [c for c in ax.collections if c.get_label() == "diverged"]
    assert len(diverged) == 1 and len(diverged[0].get_offsets()) == 1
    assert ax.get_ylabel() == "test accuracy (%)"
    assert "omitted" in ax.get_title()


def test_final_accuracy_without_any_value_raises(runs):
    runs["test_accuracy"] = np.nan
    with pytest.raises(ValueError, match="test_accuracy"):
        plots.final_accuracy(runs)
    with pytest.raises(ValueError, match="no rows"):
        plots.final_accuracy(runs.iloc[0:0])


# --- interaction --------------------------------------------------------------------------
def test_interaction_lines_pass_through_the_group_means(runs):
    fig, ax = plots.interaction(runs, x="optimizer", hue="bn")
    assert isinstance(fig, Figure) and isinstance(ax, Axes)
    containers = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(containers) == 2
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["nobn", "bn"]
    assert [t.get_text() for t in ax.get_xticklabels()] == sorted(OPTIMIZERS)
    means = runs.groupby(["bn", "optimizer"])["test_accuracy"].mean()  # NaN skipped
    for container, bn in zip(containers, [False, True]):
        y = container.lines[0].get_ydata()
        np.testing.assert_allclose(y, means.loc[bn].reindex(sorted(OPTIMIZERS)).to_numpy())
    assert ax.get_ylabel() == "mean test accuracy (%)"


def test_interaction_rejects_same_factor_twice(runs):
    with pytest.raises(ValueError, match="different"):
        plots.interaction(runs, x="bn", hue="bn")


# --- cell_heatmap -------------------------------------------------------------------------
def test_cell_heatmap_annotations_are_the_cell_means(runs):
    fig, ax = plots.cell_heatmap(runs, rows=["optimizer", "bn"], cols="init")
    assert isinstance(fig, Figure) and isinstance(ax, Axes)
    means = runs.groupby(["optimizer", "bn", "init"])["test_accuracy"].mean()
    table = means.unstack("init")  # rows sorted by (optimizer, bn), columns sorted by init
    expected = [f"{v:.1f}" for v in table.to_numpy().ravel()]
    assert [t.get_text() for t in ax.texts] == expected
    row_labels = [f"{o}/{'bn' if b else 'nobn'}" for o, b in table.index]
    assert [t.get_text() for t in ax.get_yticklabels()] == row_labels
    assert [t.get_text() for t in ax.get_xticklabels()] == sorted(INITS)
    assert ax.get_ylabel() == "optimizer/bn" and ax.get_xlabel() == "init"


def test_cell_heatmap_order_selects_and_orders_levels(runs):
    _, ax = plots.cell_heatmap(runs, rows=["optimizer", "bn"], cols="init",
                               order={"optimizer": ["sgd", "adam"], "init": ["kaiming"]})
    assert [t.get_text() for t in ax.get_yticklabels()] == ["sgd/nobn", "sgd/bn",
                                                            "adam/nobn", "adam/bn"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["kaiming"]
    assert len(ax.texts) == 4


def test_cell_heatmap_rejects_a_factor_on_both_axes(runs):
    with pytest.raises(ValueError, match="both"):
        plots.cell_heatmap(runs, rows=["optimizer", "bn"], cols="bn")


# --- forest -------------------------------------------------------------------------------
def test_forest_one_row_per_effect_with_significance_marked(effects):
    fig, ax = plots.forest(effects)
    assert isinstance(fig, Figure) and isinstance(ax, Axes)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["optimizer: adam vs sgd", "optimizer: manual_sgd vs sgd",
                      "bn: True vs False", "init: kaiming vs default"]
    assert len(ax.get_yticks()) == len(effects)
    starred = [t.get_text() for t in ax.texts if t.get_text().endswith("*")]
    assert len(starred) == (effects["p_adjusted"] < 0.05).sum()
    # Points sit at mean_diff on their row; significant ones filled, others white.
    points = {}
    for c in ax.containers:
        line = c.lines[0]
        for x, y in zip(line.get_xdata(), line.get_ydata()):
            points[int(y)] = (x, line.get_markerfacecolor())
    assert sorted(points) == list(range(len(effects)))
    for i, row in effects.iterrows():
        x, face = points[i]
        assert x == pytest.approx(row["mean_diff"])
        assert (face != "white") == (row["p_adjusted"] < 0.05)
    assert any(line.get_xdata()[0] == 0 for line in ax.lines)  # the zero line


def test_forest_rejects_empty_or_incomplete_tables(effects):
    with pytest.raises(ValueError, match="no rows"):
        plots.forest(effects.iloc[0:0])
    with pytest.raises(ValueError, match="ci_high"):
        plots.forest(effects.drop(columns="ci_high"))


# --- save ---------------------------------------------------------------------------------
def test_save_writes_png_and_svg_and_closes(tmp_path, effects):
    fig, _ = plots.forest(effects)
    paths = plots.save(fig, tmp_path / "nested" / "forest.v1")
    assert paths == [tmp_path / "nested" / "forest.v1.png", tmp_path / "nested" / "forest.v1.svg"]
    png, svg = (p.read_bytes() for p in paths)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert b"<svg" in svg[:2000]
    assert not plt.fignum_exists(fig.number)
