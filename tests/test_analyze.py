"""The analyzer: pure table functions on hand-made runs, and one real tiny study end to end."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import stats as sps

from study import analyze as an
from study import stats
from tests.conftest import all_runs


# --- hand-made runs ------------------------------------------------------------------------
def make_runs(rows: list[dict]) -> pd.DataFrame:
    """Runs as load_study gives them, from a few fields per run (the rest defaulted)."""
    out = []
    for i, r in enumerate(rows):
        r = dict(r)
        opt, bn = r.get("optimizer", "adam"), r.get("bn", False)
        init, sched = r.get("init", "default"), r.get("scheduler", "none")
        interval = r.get("scheduler_interval", "never" if sched == "none" else "epoch")
        cell = r.pop("cell", f"{opt}-{'bn' if bn else 'nobn'}-{init}-{sched}"
                     + ("@never" if sched != "none" and interval == "never" else ""))
        seed = r.get("seed", 0)
        out.append({
            "run_id": f"r{i}", "run_name": f"{cell}-s{seed}", "run_key": r.get("run_key", f"{cell}/{seed}"),
            "cell": cell, "cell_label": r.get("cell_label"), "optimizer": opt, "bn": bn, "init": init,
            "scheduler": sched, "scheduler_interval": interval, "seed": seed,
            "status": r.get("status", "FINISHED"), "diverged": r.get("diverged", False),
            "test_accuracy": r.get("acc", np.nan), "reported_accuracy": r.get("reported", np.nan),
            "start_time": r.get("start_time", i), "variant": "", "error": r.get("error"),
            "diverged_step": r.get("diverged_step", np.nan),
        })
    return an.mark_attempts(pd.DataFrame(out))


def factorial_runs(rng, n_seeds=8, seed_sd=5.0) -> pd.DataFrame:
    """optimizer {adam, sgd} x bn {False, True}: a large per-seed offset shared by all cells
    (what pairing removes), sgd -3 points, bn +2 points, small noise."""
    seed_offset = rng.normal(0, seed_sd, n_seeds)
    rows = []
    for opt in ("adam", "sgd"):
        for bn in (False, True):
            for s in range(n_seeds):
                acc = 50 + seed_offset[s] - 3.0 * (opt == "sgd") + 2.0 * bn + rng.normal(0, 0.3)
                rows.append({"optimizer": opt, "bn": bn, "seed": s, "acc": acc})
    return make_runs(rows)


# --- cells ---------------------------------------------------------------------------------
def test_cell_table_matches_numpy_and_counts_failures():
    a = [50.0, 52.0, 55.0, 51.0]
    runs = make_runs(
        [{"optimizer": "adam", "seed": s, "acc": v} for s, v in enumerate(a)]
        + [{"optimizer": "adam", "seed": 4, "status": "FAILED", "diverged": True, "diverged_step": 7},
           {"optimizer": "adam", "seed": 5, "status": "FAILED", "error": "RuntimeError: boom"},
           {"optimizer": "sgd", "seed": 0, "acc": 40.0}, {"optimizer": "sgd", "seed": 1, "acc": 41.0}])
    cells = an.cell_table(runs, rng=np.random.default_rng(0), n_boot=2000)
    row = cells.set_index("cell").loc["adam-nobn-default-none"]
    x = np.array(a)
    assert row["n"] == 4
    assert row["mean"] == pytest.approx(x.mean())
    assert row["std"] == pytest.approx(x.std(ddof=1))
    assert (row["median"], row["min"], row["max"]) == (51.5, 50.0, 55.0)
    lo, hi = sps.t.interval(0.95, 3, loc=x.mean(), scale=x.std(ddof=1) / 2)
    assert (row["t_low"], row["t_high"]) == pytest.approx((lo, hi))
    assert row["boot_low"] <= x.mean() <= row["boot_high"]
    assert (row["n_diverged"], row["n_failed"]) == (1, 1)
    sgd = cells.set_index("cell").loc["sgd-nobn-default-none"]
    assert (sgd["n"], sgd["mean"], sgd["n_diverged"], sgd["n_failed"]) == (2, 40.5, 0, 0)
    again = an.cell_table(runs, rng=np.random.default_rng(0), n_boot=2000)
    pd.testing.assert_frame_equal(cells, again)  # one seed, one result


def test_mark_attempts_supersedes_reruns_and_explains_every_exclusion():
    runs = make_runs([
        {"run_key": "k1", "status": "KILLED", "start_time": 1},
        {"run_key": "k1", "acc": 50.0, "start_time": 2},
        {"run_key": "k2", "status": "FAILED", "error": "OSError: disk", "start_time": 1},
        {"run_key": "k2", "status": "FAILED", "error": "OSError: disk", "start_time": 2},
        {"run_key": "k3", "acc": 51.0, "start_time": 1},
        {"run_key": "k3", "acc": 51.0, "start_time": 3},
        {"run_key": "k4", "status": "FAILED", "diverged": True, "diverged_step": 3},
    ])
    assert runs["superseded"].tolist() == [True, False, False, False, True, False, False]
    assert runs["used"].tolist() == [False, True, False, False, False, True, False]
    assert runs["latest_attempt"].tolist() == [False, True, False, True, False, True, True]
    reasons = runs["excluded_reason"].tolist()
    assert "interrupted (KILLED)" in reasons[0] and "superseded by FINISHED run r1" in reasons[0]
    assert "earlier attempt" in reasons[2] and reasons[3] == "error: OSError: disk"
    assert "duplicate" in reasons[4] and reasons[6] == "diverged at step 3"
    assert an.problems_table(runs)["run_id"].tolist() == ["r0", "r2", "r3", "r4", "r6"]


def test_name_cells_keeps_the_plain_name_for_default_settings():
    defaults = {"lr": "0.001", "epochs": "2", "data": "fp"}
    plain = {"lr": "0.001", "epochs": "1", "data": "fp"}
    hot = {"lr": "1000000.0", "epochs": "1", "data": "fp"}
    names = an.name_cells([("sgd", plain), ("sgd", hot), ("adam", plain), ("sgd", hot)],
                          defaults=defaults, n_planned=3)
    assert names == [("sgd", ""), ("sgd[lr=1000000.0]", "lr=1000000.0"), ("adam", ""),
                     ("sgd[lr=1000000.0]", "lr=1000000.0")]
    # a single planned cell keeps its name; an older run with other settings gets them appended
    old = {"lr": "0.001", "epochs": "2", "data": "fp"}
    assert an.name_cells([("adam", plain), ("adam", old)], defaults=defaults, n_planned=1) == [
        ("adam", ""), ("adam[epochs=2]", "epochs=2")]


def test_missing_table_lists_planned_cell_seeds_without_a_finished_run():
    runs = make_runs([{"optimizer": "adam", "seed": 0, "acc": 50.0},
                      {"optimizer": "adam", "seed": 1, "status": "FAILED", "diverged": True,
                       "diverged_step": 2}])
    cells = pd.DataFrame({"cell": ["adam-nobn-default-none", "sgd-nobn-default-none"],
                          "label": [None, "SGD"], "planned": [True, True]})
    missing = an.missing_table(cells, [0, 1], runs)
    assert missing[["cell", "seed", "reason"]].values.tolist() == [
        ["adam-nobn-default-none", 1, "diverged at step 2"],
        ["sgd-nobn-default-none", 0, "no run"], ["sgd-nobn-default-none", 1, "no run"]]


# --- comparisons ---------------------------------------------------------------------------
def test_comparisons_pair_by_seed_and_recover_a_planted_effect():
    runs = factorial_runs(np.random.default_rng(1))
    shuffled = runs.sample(frac=1.0, random_state=3).reset_index(drop=True)
    table = an.comparison_table(shuffled, rng=np.random.default_rng(0), n_boot=2000)
    assert table.columns.tolist() == an.COMPARISON_COLUMNS
    assert table[["factor", "level", "reference"]].values.tolist() == [
        ["optimizer", "sgd", "adam"], ["bn", "True", "False"]]
    sgd = table.iloc[0]
    # by hand: each sgd run minus the adam run of the same seed and bn
    key = ["seed", "bn"]
    m = runs[runs.optimizer == "sgd"].merge(runs[runs.optimizer == "adam"], on=key)
    d = (m["test_accuracy_x"] - m["test_accuracy_y"]).to_numpy()
    assert sgd["n_pairs"] == 16
    assert sgd["mean_diff"] == pytest.approx(d.mean())
    assert sgd["p_value"] == pytest.approx(sps.ttest_rel(m["test_accuracy_x"], m["test_accuracy_y"]).pvalue)
    assert sgd["mean_diff"] == pytest.approx(-3.0, abs=0.3)
    assert sgd["ci_high"] < 0  # pairing removes the seed offsets (sd 5) and resolves -3
    assert table.iloc[1]["mean_diff"] == pytest.approx(2.0, abs=0.3) and table.iloc[1]["ci_low"] > 0
    assert table["p_adjusted"].tolist() == pytest.approx(stats.adjust_pvalues(table["p_value"], "holm"))
    same = an.comparison_table(runs, rng=np.random.default_rng(0), n_boot=2000)
    pd.testing.assert_frame_equal(table, same)  # row order does not matter
    bh = an.comparison_table(runs, rng=np.random.default_rng(0), method="bh", n_boot=2000)
    assert bh["p_adjusted"].tolist() == pytest.approx(stats.adjust_pvalues(bh["p_value"], "bh"))


def test_scheduler_comparisons_pair_across_the_interval_of_runs_without_a_scheduler():
    rng = np.random.default_rng(5)
    base = rng.normal(50, 3, 4)
    # as the factorial grid: every scheduler stepped per epoch (the tag says "never" for none)
    runs = make_runs([{"optimizer": o, "scheduler": sc, "seed": s,
                       "acc": base[s] + (sc == "step") + 2 * (o == "sgd") + rng.normal(0, 0.1)}
                      for o in ("adam", "sgd") for sc in ("none", "step") for s in range(4)])
    assert an.varying_factors(runs) == ["optimizer", "scheduler"]  # the interval only repeats it
    table = an.comparison_table(runs, rng=np.random.default_rng(0), n_boot=200).set_index("factor")
    assert table.loc["scheduler", ["level", "reference", "n_pairs"]].tolist() == ["step", "none", 8]
    assert table.loc["scheduler", "mean_diff"] == pytest.approx(1.0, abs=0.2)
    # as the lecture grid: schedulers stepped per epoch and never
    runs = make_runs([{"scheduler": sc, "scheduler_interval": iv, "seed": s,
                       "acc": base[s] + (iv == "epoch") + rng.normal(0, 0.1)}
                      for sc, iv in (("none", "never"), ("step", "never"), ("step", "epoch"))
                      for s in range(4)])
    assert an.varying_factors(runs) == ["scheduler", "scheduler_interval"]
    table = an.comparison_table(runs, rng=np.random.default_rng(0), n_boot=200)
    assert table[["factor", "level", "reference", "n_pairs"]].values.tolist() == [
        ["scheduler", "step@epoch", "none", 4], ["scheduler", "step@never", "none", 4],
        ["scheduler_interval", "never", "epoch", 4]]
    assert table["mean_diff"].tolist() == pytest.approx([1.0, 0.0, -1.0], abs=0.2)
    assert table["p_adjusted"].tolist() == pytest.approx(
        stats.adjust_pvalues(table["p_value"].to_numpy(float), "holm"))


def test_references_default_override_and_fallback_to_the_most_frequent_level():
    runs = make_runs([{"optimizer": o, "bn": b, "seed": s, "acc": 50.0 + s}
                      for o, b in (("sgd", False), ("sgd", True), ("manual_sgd", False))
                      for s in range(2)])
    assert an.varying_factors(runs) == ["optimizer", "bn"]
    assert an.resolve_references(runs, ["optimizer", "bn"]) == {"optimizer": "sgd", "bn": False}
    assert an.resolve_references(runs, ["optimizer"], {"optimizer": "manual_sgd"}) == {
        "optimizer": "manual_sgd"}
    with pytest.raises(an.AnalysisError, match="'adam' of 'optimizer' is not among"):
        an.resolve_references(runs, ["optimizer"], {"optimizer": "adam"})


def test_anova_and_variance_on_a_planted_design():
    runs = factorial_runs(np.random.default_rng(2), seed_sd=0.5)  # ANOVA does not pair by seed
    table, text = an.anova_table(runs)
    assert table["term"].tolist() == ["C(optimizer)", "C(bn)", "C(optimizer):C(bn)", "Residual"]
    assert "test_accuracy ~ C(optimizer) + C(bn) + C(optimizer):C(bn)" in text
    terms = table.set_index("term")
    assert terms.loc["C(optimizer)", "PR(>F)"] < 0.001 and terms.loc["C(bn)", "PR(>F)"] < 0.001
    assert terms.loc["C(optimizer):C(bn)", "PR(>F)"] > 0.01  # none planted
    var = an.variance_table(runs).iloc[0]
    assert var["share_factors"] + var["share_seeds"] == pytest.approx(1.0)
    cells = an.cell_table(runs, rng=np.random.default_rng(0), n_boot=200)
    seeds = an.seeds_table(cells, runs)
    assert seeds["cell"].iloc[-1] == "(pooled)"
    first = seeds.iloc[0]
    assert first["seeds_needed"] == stats.seeds_needed(first["std"], 1.0)


# --- the lecture ---------------------------------------------------------------------------
@pytest.mark.parametrize("low, high, claimed, expected", [
    (0.5, 2.0, 1, "supported"),
    (-2.0, -0.5, -1, "supported"),
    (-2.0, -0.5, 1, "contradicted"),
    (0.5, 2.0, -1, "contradicted"),
    (-0.5, 2.0, 1, "not resolved"),
    (0.0, 2.0, 1, "not resolved"),  # the CI touches 0: not excluded
    (0.0, 0.0, 1, "not resolved"),
    (np.nan, np.nan, 1, "not resolved"),
    (0.5, 2.0, np.nan, "a better"),
    (-2.0, -0.5, 0, "b better"),
    (-2.0, 0.5, np.nan, "not resolved"),
])
def test_verdict(low, high, claimed, expected):
    assert an.verdict(low, high, claimed) == expected


@pytest.mark.parametrize("reported, low, high, expected", [
    (52, 50.0, 52.3, True),  # "52 %" means [52, 53): it meets a PI that ends at 52.3
    (52, 53.1, 55.0, False),  # the PI starts above anything that prints as 52
    (52, 53.0, 55.0, False),  # 53.0 would have printed as 53
    (52, 52.99, 55.0, True),
    (52, 40.0, 51.99, False),
    (52, np.nan, np.nan, None),
])
def test_reported_in_pi_with_percent_d_truncation(reported, low, high, expected):
    assert an.reported_in_pi(reported, low, high) is expected


def _values_with_pi(low: float, high: float) -> list[float]:
    """Three values whose 95% prediction interval is exactly [low, high]."""
    mean, half = (low + high) / 2, (high - low) / 2
    d = half / (sps.t.ppf(0.975, 2) * np.sqrt(1 + 1 / 3))
    return [mean - d, mean, mean + d]


def test_lecture_check_table_on_a_hand_fixture():
    near, far = _values_with_pi(48.0, 52.3), _values_with_pi(53.1, 55.0)
    runs = make_runs([{"cell": "near", "seed": s, "acc": v} for s, v in enumerate(near)]
                     + [{"cell": "far", "seed": s, "acc": v} for s, v in enumerate(far)]
                     + [{"cell": "solo", "seed": 0, "acc": 52.5}])
    cells = pd.DataFrame({"cell": ["near", "far", "solo", "unreported"],
                          "label": ["Near", "Far", "Solo", "x"],
                          "reported_accuracy": [52.0, 52.0, 52.0, np.nan]})
    table = an.lecture_check_table(runs, cells).set_index("cell")
    assert table.index.tolist() == ["near", "far", "solo"]
    assert table.loc["near", "pi_high"] == pytest.approx(52.3)
    assert table.loc["far", ["pi_low", "pi_high"]].tolist() == pytest.approx([53.1, 55.0])
    assert bool(table.loc["near", "inside_pi"]) is True
    assert bool(table.loc["far", "inside_pi"]) is False
    assert pd.isna(table.loc["solo", "inside_pi"]) and table.loc["solo", "n"] == 1
    assert table.loc["near", "reported_interval"] == "[52, 53)"
    lo, hi = stats.t_interval(near)
    assert (table.loc["near", "ci_low"], table.loc["near", "ci_high"]) == pytest.approx((lo, hi))


def test_lecture_orderings_find_cells_by_settings_and_judge_the_claims():
    rng = np.random.default_rng(4)
    base = rng.normal(50, 4, 6)
    spec = [  # (settings, reported, shift)
        ({"optimizer": "adam"}, 56, 5.0),
        ({"optimizer": "manual_adam"}, 53, 0.0),
        ({"optimizer": "adam", "bn": True}, 53, 10.0),
        ({"optimizer": "adam", "bn": True, "scheduler": "step", "scheduler_interval": "never"}, 55, 10.0),
        ({"optimizer": "adam", "bn": True, "scheduler": "step", "scheduler_interval": "epoch"}, None, 10.0),
    ]
    rows, cells = [], []
    for settings, reported, shift in spec:
        for s in range(6):
            rows.append({**settings, "seed": s, "acc": base[s] + shift + rng.normal(0, 0.2),
                         "reported": reported if reported is not None else np.nan})
    runs = make_runs(rows)
    meta = runs.drop_duplicates("cell")[["cell", *an.FACTORS, "reported_accuracy"]].copy()
    meta["label"], meta["variant"] = meta["cell"], ""
    meta = meta.sample(frac=1.0, random_state=0)  # order of the cells does not matter
    table = an.lecture_orderings_table(runs, meta, rng=np.random.default_rng(0), n_boot=500)
    t = table.set_index("claim")
    assert list(t.index) == ["torch Adam vs manual Adam", "Adam vs Adam+BN",
                             "Adam+BN vs Adam+BN+StepLR(never)",
                             "adam-bn-default-step vs never stepped"]
    assert t.loc["torch Adam vs manual Adam", ["claimed_direction", "verdict"]].tolist() == ["a > b", "supported"]
    assert t.loc["torch Adam vs manual Adam", "mean_diff"] == pytest.approx(5.0, abs=0.3)
    assert t.loc["Adam vs Adam+BN", ["claimed_direction", "verdict"]].tolist() == ["a > b", "contradicted"]
    assert t.loc["Adam+BN vs Adam+BN+StepLR(never)", "claimed_direction"] == "a < b"
    assert t.loc["Adam+BN vs Adam+BN+StepLR(never)", "verdict"] == "not resolved"
    assert t.loc["adam-bn-default-step vs never stepped", "claimed_direction"] == "none"
    assert (t["n_pairs"] == 6).all()
    assert table["p_adjusted"].tolist() == pytest.approx(
        stats.adjust_pvalues(table["p_value"].to_numpy(float), "holm"), nan_ok=True)


def test_write_table_writes_csv_markdown_and_latex(tmp_path):
    df = pd.DataFrame({"cell_name": ["a_b"], "mean": [52.34567], "p_value": [0.012345], "n": [3],
                       "seeds_needed": pd.array([pd.NA], dtype="Int64")})
    paths = an.write_table(df, tmp_path / "t")
    assert [p.name for p in paths] == ["t.csv", "t.md", "t.tex"]
    assert pd.read_csv(paths[0])["mean"].iloc[0] == pytest.approx(52.34567)
    md = paths[1].read_text()
    assert "52.35" in md and "0.012" in md and "<NA>" not in md
    tex = paths[2].read_text()
    assert "cell\\_name" in tex and "a\\_b" in tex and "\\toprule" in tex


# --- end to end ----------------------------------------------------------------------------
TINY = """
    name: tiny
    seeds: 2
    fixed: {epochs: 1, train_limit: 120, test_limit: 40, log_every: 10}
    factors:
      optimizer: [sgd, adam]
      bn: [false, true]
    cells:
      - {optimizer: manual_adam, reported_accuracy: 53, label: "Manual Adam"}
      - {optimizer: sgd, lr: 1000000.0}
"""

EXPECTED_TABLES = ("runs", "missing", "problems", "cells", "comparisons", "anova", "seeds",
                   "variance", "lecture_check", "lecture_orderings")


def test_analyze_a_real_tiny_study_end_to_end(tracking, tmp_path, mini_dir, session_cache, monkeypatch):
    from mlflow.tracking import MlflowClient

    from study.cli import main

    monkeypatch.chdir(tmp_path)
    grid = tmp_path / "tiny.yaml"
    grid.write_text(textwrap.dedent(TINY))
    res = CliRunner().invoke(main, ["run", str(grid), "--data-dir", str(mini_dir), "--cache-dir",
                                    str(session_cache), "--no-log-model", "--quiet", "--threads", "1"])
    assert res.exit_code == 1, res.output  # the diverging cell fails; the study goes on
    assert "10/12 runs FINISHED" in res.output

    # An interrupted earlier attempt of one key (killed before it logged its params), re-run
    # to FINISHED afterwards: superseded.
    client = MlflowClient(tracking)
    done = next(r for r in all_runs(tracking) if r.info.run_name == "sgd-bn-default-none-s0")
    killed = client.create_run(done.info.experiment_id, run_name=done.info.run_name,
                               start_time=done.info.start_time - 1000,
                               tags={**done.data.tags, "interrupted": "true", "diverged": ""}).info.run_id
    client.set_terminated(killed, status="KILLED")

    out = tmp_path / "analysis"
    result = an.analyze_study("tiny", out, seed=0)

    for name in EXPECTED_TABLES:
        for suffix in ("csv", "md", "tex"):
            assert (out / f"{name}.{suffix}").is_file(), f"{name}.{suffix}"
    for name in ("curves.csv", "anova_model.txt", "summary.json", "report.md"):
        assert (out / name).is_file(), name
    plots = {p.name for p in (out / "plots").iterdir()}
    for stem in ("curves_test_accuracy_by_optimizer", "curves_train_loss_by_bn", "final_accuracy",
                 "interaction_optimizer_x_bn", "heatmap_cells", "forest_comparisons"):
        assert {f"{stem}.png", f"{stem}.svg"} <= plots, stem

    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 13 and runs["run_id"].is_unique
    old = runs.set_index("run_id").loc[killed]
    assert old["superseded"] and not old["used"] and old["status"] == "KILLED"
    assert f"superseded by FINISHED run {done.info.run_id}" in old["excluded_reason"]
    hot = runs[runs["cell"] == "sgd-nobn-default-none[lr=1000000.0]"]
    assert len(hot) == 2 and hot["diverged"].all() and (hot["status"] == "FAILED").all()
    assert not hot["used"].any() and hot["test_accuracy"].isna().all()
    assert runs.loc[runs["cell"] == "sgd-nobn-default-none", "diverged"].eq(False).all()
    assert runs["used"].sum() == 10

    cells = pd.read_csv(out / "cells.csv").set_index("cell")
    assert len(cells) == 6
    assert cells.loc["sgd-nobn-default-none[lr=1000000.0]", "n"] == 0
    assert cells.loc["sgd-nobn-default-none[lr=1000000.0]", "n_diverged"] == 2
    assert pd.isna(cells.loc["sgd-nobn-default-none[lr=1000000.0]", "mean"])
    plain = cells.loc["sgd-nobn-default-none"]
    accs = runs.loc[(runs["cell"] == "sgd-nobn-default-none"), "test_accuracy"]
    assert (plain["n"], plain["n_diverged"]) == (2, 0) and plain["mean"] == pytest.approx(accs.mean())
    assert cells.loc["manual_adam-nobn-default-none", "reported_accuracy"] == 53
    assert cells.loc["manual_adam-nobn-default-none", "label"] == "Manual Adam"

    missing = pd.read_csv(out / "missing.csv")
    assert sorted(missing["seed"]) == [0, 1] and missing["reason"].str.startswith("diverged").all()
    comparisons = pd.read_csv(out / "comparisons.csv")
    assert set(comparisons["factor"]) == {"optimizer", "bn"}
    assert comparisons.loc[comparisons["level"] == "sgd", "n_pairs"].item() == 4  # diverged runs excluded
    check = pd.read_csv(out / "lecture_check.csv")
    assert check["cell"].tolist() == ["manual_adam-nobn-default-none"] and check["n"].item() == 2
    orderings = pd.read_csv(out / "lecture_orderings.csv")
    assert "torch Adam vs manual Adam" in orderings["claim"].tolist()
    assert "not estimable" in (out / "anova_model.txt").read_text()  # manual_adam has no bn cell

    summary = json.loads((out / "summary.json").read_text())
    assert summary["study"] == "tiny" and summary["parent_run_id"] == result.parent_run_id
    assert {k: summary["counts"][k] for k in ("runs", "finished", "failed", "diverged", "killed",
                                               "superseded", "used", "missing")} == {
        "runs": 13, "finished": 10, "failed": 2, "diverged": 2, "killed": 1, "superseded": 1,
        "used": 10, "missing": 2}
    assert len(summary["data_fingerprints"]) == 1 and len(summary["code_versions"]) == 1

    logged = {a.path for a in client.list_artifacts(result.parent_run_id, "analysis")}
    assert {"analysis/cells.csv", "analysis/summary.json", "analysis/plots"} <= logged
    assert "analysis/plots/forest_comparisons.png" in {
        a.path for a in client.list_artifacts(result.parent_run_id, "analysis/plots")}

    again = an.analyze_study("tiny", tmp_path / "again", seed=0, log_to_parent=False)
    pd.testing.assert_frame_equal(again.cells, result.cells)  # same seed, same bootstrap

    with pytest.raises(an.AnalysisError, match="no study named 'nope'.*tiny"):
        an.analyze_study("nope", tmp_path / "x")


def test_a_study_without_finished_runs_is_a_clear_error(tracking, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    client = MlflowClient(tracking)
    exp = client.create_experiment("optstudy")
    parent = client.create_run(exp, run_name="broken", tags={"study_parent": "broken"}).info.run_id
    tags = {"study": "broken", "run_key": "k", "cell": "adam-nobn-default-none", "seed": "0",
            "optimizer": "adam", "bn": "false", "init": "default", "scheduler": "none",
            "scheduler_interval": "never", "error": "RuntimeError: out of memory",
            "mlflow.parentRunId": parent}
    child = client.create_run(exp, run_name="adam-nobn-default-none-s0", tags=tags).info.run_id
    client.set_terminated(child, status="FAILED")
    with pytest.raises(an.AnalysisError, match="none FINISHED.*out of memory"):
        an.analyze_study("broken", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_run_logged_before_the_kernels_setting_reads_as_the_reference_kernels(tracking):
    """Runs logged before `kernels` existed computed with what is now `kernels=reference`."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    from study.config import TrainConfig
    from study.tracking import run_params

    client = MlflowClient(tracking)
    exp = client.create_experiment("before-kernels")
    signatures = []
    for kernels in (None, "fast", "reference"):
        run = client.create_run(exp, tags={"cell": "adam-nobn-default-none", "seed": "0", "run_key": str(kernels)})
        params = run_params(TrainConfig(kernels=kernels or "reference"))
        if kernels is None:
            del params["kernels"]
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
        client.set_terminated(run.info.run_id)
        signatures.append(an._run_row(client.get_run(run.info.run_id))["signature"])
    assert [s["kernels"] for s in signatures] == ["reference", "fast", "reference"]
    assert signatures[0] == signatures[2]  # the same cell, not a variant
