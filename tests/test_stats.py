"""Tests for study.stats: hand-worked fixtures, cross-checks and simulations."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats as sps
from statsmodels.stats.anova import anova_lm
from statsmodels.stats.multitest import multipletests

from study import stats as st

X4 = np.array([1.0, 2.0, 3.0, 4.0])
# mean 2.5; deviations -1.5, -0.5, 0.5, 1.5; squares sum 2.25+0.25+0.25+2.25 = 5
# -> var (ddof=1) = 5/3, std = sqrt(5/3)
X4_MEAN = 2.5
X4_STD = np.sqrt(5.0 / 3.0)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------
# Single-sample intervals
# ---------------------------------------------------------------------------


def test_t_interval_by_hand():
    half = sps.t.ppf(0.975, 3) * X4_STD / np.sqrt(4)
    low, high = st.t_interval(X4)
    assert low == pytest.approx(X4_MEAN - half)
    assert high == pytest.approx(X4_MEAN + half)
    # 90% interval is narrower and uses t.ppf(0.95, 3)
    half90 = sps.t.ppf(0.95, 3) * X4_STD / 2.0
    assert st.t_interval(X4, confidence=0.9) == pytest.approx((X4_MEAN - half90, X4_MEAN + half90))


@pytest.mark.parametrize("n", [2, 5, 30])
def test_t_interval_matches_scipy(n):
    x = rng(n).normal(70.0, 2.0, size=n)
    expected = sps.t.interval(0.95, n - 1, loc=x.mean(), scale=sps.sem(x))
    assert st.t_interval(x) == pytest.approx(expected)


def test_small_samples_give_nan_intervals():
    for x in ([], [3.0], [np.nan, 3.0]):
        assert all(np.isnan(v) for v in st.t_interval(x))
        assert all(np.isnan(v) for v in st.prediction_interval(x))
        assert all(np.isnan(v) for v in st.bootstrap_ci(x, rng=rng()))


def test_prediction_interval_by_hand_and_wider_than_t():
    half = sps.t.ppf(0.975, 3) * X4_STD * np.sqrt(1 + 1 / 4)
    low, high = st.prediction_interval(X4)
    assert (low, high) == pytest.approx((X4_MEAN - half, X4_MEAN + half))
    t_low, t_high = st.t_interval(X4)
    assert low < t_low and high > t_high


def test_summarize_drops_nan_and_matches_hand_values():
    out = st.summarize([1.0, np.nan, 2.0, 3.0, 4.0], rng=rng(1), n_boot=2000)
    assert out["n"] == 4
    assert out["mean"] == pytest.approx(X4_MEAN)
    assert out["std"] == pytest.approx(X4_STD)
    assert out["median"] == pytest.approx(2.5)
    assert (out["min"], out["max"]) == (1.0, 4.0)
    half = sps.t.ppf(0.975, 3) * X4_STD / 2.0
    assert (out["t_low"], out["t_high"]) == pytest.approx((X4_MEAN - half, X4_MEAN + half))
    # a bootstrap CI of the mean lies inside [min, max] and around the mean
    assert 1.0 <= out["boot_low"] <= X4_MEAN <= out["boot_high"] <= 4.0
    assert set(out) == {
        "n", "mean", "std", "boot_low", "boot_high", "t_low", "t_high", "median", "min", "max",
    }


def test_summarize_empty_is_all_nan():
    out = st.summarize([np.nan], rng=rng())
    assert out["n"] == 0
    assert all(np.isnan(v) for k, v in out.items() if k != "n")


# ---------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------


def test_bootstrap_same_seed_identical_different_seed_differs():
    x = rng(5).normal(80.0, 1.5, size=12)
    a = st.bootstrap_ci(x, rng=rng(7))
    b = st.bootstrap_ci(x, rng=rng(7))
    c = st.bootstrap_ci(x, rng=rng(8))
    assert a == b
    assert a != c


@pytest.mark.parametrize("bad, name", [(42, "int"), (None, "NoneType")])
def test_bootstrap_rejects_non_generator(bad, name):
    with pytest.raises(TypeError, match=name):
        st.bootstrap_ci(X4, rng=bad)
    with pytest.raises(TypeError, match=name):
        st.paired_comparison(X4, X4[::-1], rng=bad)


def test_bootstrap_close_to_t_interval_for_large_normal_sample():
    x = rng(11).normal(75.0, 2.0, size=2000)
    t_low, t_high = st.t_interval(x)
    b_low, b_high = st.bootstrap_ci(x, rng=rng(12))
    half = (t_high - t_low) / 2
    assert abs(b_low - t_low) < 0.1 * half
    assert abs(b_high - t_high) < 0.1 * half


def test_bootstrap_accepts_other_statistics():
    x = rng(3).normal(size=50)
    low, high = st.bootstrap_ci(x, rng=rng(4), statistic=np.median, n_boot=2000)
    assert low < np.median(x) < high


# ---------------------------------------------------------------------------
# Paired comparisons
# ---------------------------------------------------------------------------

# level - reference = [2, 1, 0, 3]
# mean diff = 6/4 = 1.5; deviations 0.5, -0.5, -1.5, 1.5 -> squares sum 5 -> sd = sqrt(5/3)
# d_z = 1.5 / sqrt(5/3) = 1.5 * sqrt(3/5) ~= 1.162
# prob_improvement: 3 wins + 1 tie * 1/2 over 4 pairs = 3.5 / 4 = 0.875
LEVEL4 = np.array([3.0, 5.0, 4.0, 6.0])
REF4 = np.array([1.0, 4.0, 4.0, 3.0])


def test_paired_comparison_by_hand():
    out = st.paired_comparison(LEVEL4, REF4, rng=rng())
    assert out["n_pairs"] == 4
    assert out["mean_diff"] == pytest.approx(1.5)
    assert out["effect_size"] == pytest.approx(1.5 * np.sqrt(3.0 / 5.0))
    assert out["prob_improvement"] == pytest.approx(0.875)
    half = sps.t.ppf(0.975, 3) * np.sqrt(5.0 / 3.0) / 2.0
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((1.5 - half, 1.5 + half))
    # t = 1.5 / (sqrt(5/3) / 2), two-sided with 3 df
    t_stat = 1.5 / (np.sqrt(5.0 / 3.0) / 2.0)
    assert out["p_value"] == pytest.approx(2 * sps.t.sf(t_stat, 3))
    assert out["boot_low"] <= 1.5 <= out["boot_high"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paired_comparison_matches_scipy(seed):
    g = rng(seed)
    ref = g.normal(70.0, 2.0, size=15)
    lev = ref + g.normal(0.5, 1.0, size=15)
    out = st.paired_comparison(lev, ref, rng=rng())
    assert out["p_value"] == pytest.approx(sps.ttest_rel(lev, ref).pvalue, rel=1e-10)
    assert out["wilcoxon_p"] == pytest.approx(sps.wilcoxon(lev, ref).pvalue, rel=1e-10)
    d = lev - ref
    assert out["effect_size"] == pytest.approx(d.mean() / d.std(ddof=1))
    assert out["prob_improvement"] == pytest.approx(np.mean(d > 0))


def test_paired_comparison_wilcoxon_with_a_zero_difference_matches_scipy():
    out = st.paired_comparison(LEVEL4, REF4, rng=rng())
    assert out["wilcoxon_p"] == pytest.approx(sps.wilcoxon(LEVEL4, REF4).pvalue)


def test_paired_comparison_drops_nan_pairs():
    lev = np.append(LEVEL4, [np.nan, 9.0])
    ref = np.append(REF4, [2.0, np.nan])
    out = st.paired_comparison(lev, ref, rng=rng())
    assert out["n_pairs"] == 4
    assert out["mean_diff"] == pytest.approx(1.5)
    assert out["p_value"] == pytest.approx(sps.ttest_rel(LEVEL4, REF4).pvalue)


def test_paired_comparison_degenerate_cases():
    same = st.paired_comparison(X4, X4, rng=rng())
    assert same["mean_diff"] == 0.0
    assert np.isnan(same["wilcoxon_p"])  # all differences are zero
    assert np.isnan(same["effect_size"])  # sd of differences is zero
    assert same["prob_improvement"] == 0.5  # all ties
    one = st.paired_comparison([2.0], [1.0], rng=rng())
    assert one["n_pairs"] == 1 and one["mean_diff"] == 1.0
    assert np.isnan(one["p_value"]) and np.isnan(one["wilcoxon_p"])


def test_paired_comparison_unequal_lengths():
    with pytest.raises(ValueError, match=r"len\(level\)=3.*len\(reference\)=2"):
        st.paired_comparison([1, 2, 3], [1, 2], rng=rng())


# ---------------------------------------------------------------------------
# Multiple testing
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method, sm_method", [("holm", "holm"), ("bh", "fdr_bh")])
@pytest.mark.parametrize("seed", range(5))
def test_adjust_pvalues_matches_statsmodels(method, sm_method, seed):
    g = rng(100 + seed)
    m = int(g.integers(1, 30))
    p = g.beta(0.4, 1.0, size=m)  # skewed towards small p-values
    p[g.random(m) < 0.2] = p[0]  # some ties
    expected = multipletests(p, method=sm_method)[1]
    assert np.allclose(st.adjust_pvalues(p, method=method), expected)


@pytest.mark.parametrize("method, sm_method", [("holm", "holm"), ("bh", "fdr_bh")])
def test_adjust_pvalues_with_nans(method, sm_method):
    g = rng(9)
    p = g.uniform(0, 0.2, size=20)
    nan_at = g.random(20) < 0.3
    nan_at[0] = True
    p[nan_at] = np.nan
    out = st.adjust_pvalues(p, method=method)
    assert np.all(np.isnan(out[nan_at]))
    # NaNs are not part of the family: same as adjusting only the finite ones
    expected = multipletests(p[~nan_at], method=sm_method)[1]
    assert np.allclose(out[~nan_at], expected)
    assert out.shape == p.shape


def test_adjust_pvalues_unknown_method():
    with pytest.raises(ValueError, match="bonferroni.*holm.*bh"):
        st.adjust_pvalues([0.01, 0.2], method="bonferroni")


# ---------------------------------------------------------------------------
# Planning the number of seeds
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "std, half_width, confidence",
    [(1.0, 1.0, 0.95), (2.7, 1.0, 0.95), (0.8, 0.25, 0.99), (3.0, 0.5, 0.9)],
)
def test_seeds_needed_is_smallest(std, half_width, confidence):
    n = st.seeds_needed(std, half_width=half_width, confidence=confidence)

    def width(k):
        return sps.t.ppf((1 + confidence) / 2, k - 1) * std / np.sqrt(k)

    assert n >= 3  # all chosen cases need more than the minimum
    assert width(n) <= half_width
    assert width(n - 1) > half_width


def test_seeds_needed_edge_cases():
    assert st.seeds_needed(0.0) == 2
    assert st.seeds_needed(-1.0) == 2
    with pytest.raises(ValueError, match="nan"):
        st.seeds_needed(float("nan"))
    with pytest.raises(ValueError, match="max_n"):
        st.seeds_needed(100.0, half_width=0.01, max_n=50)


# ---------------------------------------------------------------------------
# Variance components
# ---------------------------------------------------------------------------


def test_variance_components_by_hand():
    # cells: A = [1, 3] (mean 2), B = [5, 7] (mean 6), C = [4] (mean 4); grand mean 20/5 = 4
    # ss_total   = 9 + 1 + 1 + 9 + 0 = 20
    # ss_between = 2*(2-4)^2 + 2*(6-4)^2 + 1*(4-4)^2 = 8 + 8 + 0 = 16
    # ss_within  = (1+1) + (1+1) + 0 = 4
    # pooled within variance = 4 / ((2-1) + (2-1) + (1-1)) = 2
    df = pd.DataFrame(
        {
            "opt": ["a", "a", "b", "b", "c"],
            "seed": [0, 1, 0, 1, 0],
            "acc": [1.0, 3.0, 5.0, 7.0, 4.0],
        }
    )
    out = st.variance_components(df, ["opt"], "acc")
    assert out["ss_total"] == pytest.approx(20.0)
    assert out["ss_between"] == pytest.approx(16.0)
    assert out["ss_within"] == pytest.approx(4.0)
    assert out["share_factors"] == pytest.approx(0.8)
    assert out["share_seeds"] == pytest.approx(0.2)
    assert out["share_factors"] + out["share_seeds"] == pytest.approx(1.0)
    assert out["pooled_within_std"] == pytest.approx(np.sqrt(2.0))
    assert (out["n_cells"], out["n_runs"]) == (3, 5)


def test_variance_components_shares_sum_to_one_on_random_grid():
    df = _study(rng(21), {"sgd": 0.0, "adam": 1.0, "manual_sgd": -0.5}, bn_effect=2.0)
    out = st.variance_components(df, ["optimizer", "bn"], "test_accuracy")
    assert out["ss_between"] + out["ss_within"] == pytest.approx(out["ss_total"])
    assert out["share_factors"] + out["share_seeds"] == pytest.approx(1.0)
    assert out["n_cells"] == 6 and out["n_runs"] == len(df)


# ---------------------------------------------------------------------------
# Factorial ANOVA
# ---------------------------------------------------------------------------


def _grid(g, levels: dict, n_seeds: int, effects=None):
    rows = []
    for combo in itertools.product(*levels.values()):
        for seed in range(n_seeds):
            row = dict(zip(levels, combo))
            row["seed"] = seed
            row["y"] = 50.0 + (effects(row) if effects else 0.0) + g.normal()
            rows.append(row)
    return pd.DataFrame(rows)


def test_factorial_anova_matches_statsmodels_on_balanced_2x2x3():
    g = rng(31)
    levels = {"bn": [False, True], "opt": ["sgd", "adam"], "init": [0, 1, 2]}
    df = _grid(g, levels, n_seeds=3, effects=lambda r: 2.0 * r["bn"] + (r["opt"] == "adam"))
    table, formula = st.factorial_anova(df, ["bn", "opt", "init"], "y")

    expected_formula = (
        "y ~ C(bn) + C(opt) + C(init) + C(bn):C(opt) + C(bn):C(init) + C(opt):C(init)"
    )
    assert formula == expected_formula
    data = df.assign(**{c: df[c].astype(str) for c in ["bn", "opt", "init"]})
    direct = anova_lm(smf.ols(expected_formula, data=data).fit(), typ=2)
    assert list(table.columns) == ["sum_sq", "df", "F", "PR(>F)", "partial_eta_sq"]
    assert list(table.index) == list(direct.index)
    for col in ["sum_sq", "df", "F", "PR(>F)"]:
        assert np.allclose(table[col], direct[col], equal_nan=True)

    # partial eta squared by hand for C(bn)
    ss_bn = direct.loc["C(bn)", "sum_sq"]
    ss_res = direct.loc["Residual", "sum_sq"]
    assert table.loc["C(bn)", "partial_eta_sq"] == pytest.approx(ss_bn / (ss_bn + ss_res))
    assert np.isnan(table.loc["Residual", "partial_eta_sq"])

    # balanced design: the Type II SS of a main effect is sum_l n_l (mean_l - grand)^2
    grand = df["y"].mean()
    by_bn = df.groupby("bn")["y"].agg(["mean", "size"])
    ss_hand = float((by_bn["size"] * (by_bn["mean"] - grand) ** 2).sum())
    assert table.loc["C(bn)", "sum_sq"] == pytest.approx(ss_hand)


def test_factorial_anova_main_effects_only_and_single_level_factor():
    g = rng(32)
    df = _grid(g, {"opt": ["a", "b", "c"], "bn": [True, False], "sched": ["none"]}, n_seeds=2)
    table, formula = st.factorial_anova(df, ["opt", "bn", "sched"], "y", max_order=1)
    assert formula.startswith("y ~ C(opt) + C(bn) (dropped: ")
    assert "'sched' has a single level" in formula
    assert list(table.index) == ["C(opt)", "C(bn)", "Residual"]


def test_factorial_anova_incomplete_design_drops_interaction():
    g = rng(33)
    df = _grid(
        g, {"optimizer": ["sgd", "adam"], "bn": [True, False], "init": ["default", "kaiming"]},
        n_seeds=3,
    )
    # no adam runs without BatchNorm: optimizer x bn cannot be estimated
    df = df[~((df["optimizer"] == "adam") & ~df["bn"])]
    table, formula = st.factorial_anova(df, ["optimizer", "bn", "init"], "y")
    assert formula.startswith(
        "y ~ C(optimizer) + C(bn) + C(init) + C(optimizer):C(init) + C(bn):C(init)"
    )
    assert "(dropped: C(optimizer):C(bn) not estimable)" in formula
    assert "C(optimizer):C(bn)" not in table.index
    assert {"C(optimizer)", "C(bn)", "C(init)", "Residual"} <= set(table.index)
    assert np.all(np.isfinite(table["sum_sq"]))


def test_factorial_anova_quotes_awkward_names():
    g = rng(34)
    df = _grid(g, {"lr schedule": ["none", "step"], "bn": [True, False]}, n_seeds=3)
    df = df.rename(columns={"y": "test accuracy"})
    table, formula = st.factorial_anova(df, ["lr schedule", "bn"], "test accuracy")
    assert formula.startswith("Q('test accuracy') ~ C(Q('lr schedule')) + C(bn)")
    assert len(table) == 4


# ---------------------------------------------------------------------------
# Level comparisons on a synthetic study
# ---------------------------------------------------------------------------

OPTIMIZERS = ("sgd", "manual_sgd", "adam", "manual_adam")


def _study(g, opt_effects: dict, bn_effect: float = 0.0, n_seeds: int = 5) -> pd.DataFrame:
    """optimizer x bn x seeds; accuracy = cell effect + N(0, 1) seed noise."""
    rows = []
    for opt, bn, seed in itertools.product(opt_effects, (False, True), range(n_seeds)):
        acc = 85.0 + opt_effects[opt] + bn_effect * bn + g.normal(0.0, 1.0)
        rows.append({"optimizer": opt, "bn": bn, "seed": seed, "test_accuracy": acc})
    return pd.DataFrame(rows)


def test_compare_levels_pairs_on_seed_and_other_factors():
    # differences built so that pairing errors change the result:
    # adam - sgd = seed + 1 for bn=False, 2 * (seed + 1) for bn=True (seeds 0..2)
    rows = []
    for bn, seed in itertools.product((False, True), range(3)):
        base = 10.0 * seed + 100.0 * bn
        gain = (seed + 1) * (2 if bn else 1)
        rows.append({"optimizer": "sgd", "bn": bn, "seed": seed, "acc": base})
        rows.append({"optimizer": "adam", "bn": bn, "seed": seed, "acc": base + gain})
    df = pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # shuffle rows
    out = st.compare_levels(
        df, "optimizer", "sgd", factors=["optimizer", "bn"], response="acc", rng=rng()
    )
    diffs = np.array([1, 2, 3, 2, 4, 6], dtype=float)
    assert len(out) == 1
    row = out.iloc[0]
    assert (row["factor"], row["level"], row["reference"]) == ("optimizer", "adam", "sgd")
    assert row["n_pairs"] == 6
    assert row["mean_diff"] == pytest.approx(diffs.mean())
    assert row["p_value"] == pytest.approx(sps.ttest_1samp(diffs, 0.0).pvalue)
    assert row["prob_improvement"] == 1.0
    assert row["test"] == "paired t"
    # boolean factor, reference given as a string
    out_bn = st.compare_levels(
        df, "bn", "False", factors=["optimizer", "bn"], response="acc", rng=rng()
    )
    assert out_bn.iloc[0]["level"] == "True" and out_bn.iloc[0]["n_pairs"] == 6
    assert out_bn.iloc[0]["mean_diff"] > 99.0


def test_compare_levels_unknown_reference():
    df = _study(rng(40), dict.fromkeys(OPTIMIZERS, 0.0))
    with pytest.raises(ValueError, match="rmsprop.*sgd"):
        st.compare_levels(
            df, "optimizer", "rmsprop", factors=["optimizer", "bn"],
            response="test_accuracy", rng=rng(),
        )


def test_compare_all_adjusts_over_whole_family_and_detects_planted_effect():
    effects = dict.fromkeys(OPTIMIZERS, 0.0)
    effects["adam"] = 3.0
    df = _study(rng(41), effects)
    out = st.compare_all(
        df, {"optimizer": "sgd", "bn": "False"}, factors=["optimizer", "bn"],
        response="test_accuracy", rng=rng(42), method="holm",
    )
    assert len(out) == 3 + 1
    assert list(out["factor"]) == ["optimizer"] * 3 + ["bn"]
    assert (out["method"] == "holm").all()
    assert np.allclose(out["p_adjusted"], st.adjust_pvalues(out["p_value"].to_numpy()))
    assert (out["p_adjusted"] >= out["p_value"]).all()
    adam = out.set_index("level").loc["adam"]
    assert adam["n_pairs"] == 10
    assert adam["p_adjusted"] < 0.01
    assert adam["ci_low"] < 3.0 < adam["ci_high"]

    out_bh = st.compare_all(
        df, {"optimizer": "sgd", "bn": "False"}, factors=["optimizer", "bn"],
        response="test_accuracy", rng=rng(42), method="bh",
    )
    assert np.allclose(
        out_bh["p_adjusted"], multipletests(out_bh["p_value"], method="fdr_bh")[1]
    )


def test_compare_all_unknown_method():
    df = _study(rng(43), dict.fromkeys(OPTIMIZERS, 0.0))
    with pytest.raises(ValueError, match="sidak"):
        st.compare_all(
            df, {"bn": "False"}, factors=["optimizer", "bn"], response="test_accuracy",
            rng=rng(), method="sidak",
        )


def test_null_factor_false_positive_rate_is_nominal():
    g = rng(2024)
    n_rep = 400
    hits = 0
    for _ in range(n_rep):
        df = _study(g, dict(zip(OPTIMIZERS, (0.0, 1.0, 2.0, -1.0))), bn_effect=0.0)
        out = st.compare_levels(
            df, "bn", "False", factors=["optimizer", "bn"], response="test_accuracy",
            rng=g, n_boot=50,
        )
        hits += int(out.iloc[0]["p_value"] < 0.05)
    rate = hits / n_rep
    # central 99.9% band of Binomial(400, 0.05) / 400
    low = sps.binom.ppf(0.0005, n_rep, 0.05) / n_rep
    high = sps.binom.isf(0.0005, n_rep, 0.05) / n_rep
    assert low <= rate <= high
