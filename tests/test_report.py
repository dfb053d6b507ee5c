"""Sentences in the report come from the numbers: each generator is checked on hand fixtures."""

from __future__ import annotations


import pandas as pd
import pytest

from study import report as R


def comparison(**kw):
    row = dict(factor="bn", level="True", reference="False", n_pairs=5, mean_diff=2.5, ci_low=1.0,
               ci_high=4.0, p_value=0.004, p_adjusted=0.01, effect_size=2.1)
    row.update(kw)
    return pd.Series(row)


def test_a_significant_comparison_is_called_real_with_its_numbers():
    s = R.describe_comparison(comparison())
    assert "+2.50" in s and "1.00 to 4.00" in s and "p = 0.010" in s and "5 seed-paired" in s
    assert "reliably higher" in s and "real difference" in s


def test_a_non_significant_comparison_is_called_noise():
    s = R.describe_comparison(comparison(mean_diff=-0.4, ci_low=-1.5, ci_high=0.7, p_adjusted=0.6))
    assert "-0.40" in s and "within seed noise" in s and "real" not in s


def test_identical_runs_are_called_identical_not_noise():
    s = R.describe_comparison(comparison(level="step@never", reference="none", mean_diff=0.0, ci_low=0.0,
                                         ci_high=0.0, p_adjusted=float("nan")))
    assert "identical test accuracy on all 5" in s and "noise" not in s


def test_too_few_pairs_are_not_compared():
    assert "too few" in R.describe_comparison(comparison(n_pairs=1, mean_diff=float("nan")))


@pytest.mark.parametrize("inside,word", [(True, "inside"), (False, "outside")])
def test_lecture_cell_sentence(inside, word):
    row = pd.Series(dict(label="PyTorch Adam", reported=56, n=5, mean=53.2, ci_low=52.1, ci_high=54.3,
                         pi_low=50.9, pi_high=55.5, inside_pi=inside))
    s = R.describe_lecture_cell(row)
    assert "PyTorch Adam" in s and "56%" in s and "53.20%" in s and word in s


@pytest.mark.parametrize("verdict,phrase", [("supported", "support the lecture"),
                                            ("contradicted", "opposite"),
                                            ("not resolved", "cannot tell")])
def test_ordering_sentence_follows_the_verdict(verdict, phrase):
    row = pd.Series(dict(claim="torch Adam vs manual Adam", reported_a=56.0, reported_b=53.0, n_pairs=5,
                         mean_diff=0.3, ci_low=-0.5, ci_high=1.1, p_adjusted=0.4, verdict=verdict, identical=False))
    s = R.describe_ordering(row)
    assert phrase in s and "+3 points" in s and "+0.30" in s and "same accuracy" not in s


def test_ordering_sentence_flags_identical_results_and_missing_numbers():
    row = pd.Series(dict(claim="manual SGD vs torch SGD", reported_a=35.0, reported_b=float("nan"), n_pairs=5,
                         mean_diff=0.0, ci_low=0.0, ci_high=0.0, p_adjusted=float("nan"), verdict="not resolved",
                         identical=True))
    s = R.describe_ordering(row)
    assert "no number for one side" in s and "same accuracy on every seed" in s


def test_anova_sentence_ranks_significant_terms_by_effect_size():
    t = pd.DataFrame({"sum_sq": [10.0, 50.0, 1.0, 20.0], "df": [1, 3, 3, 32], "F": [16.0, 26.7, 0.5, float("nan")],
                      "PR(>F)": [0.0003, 1e-8, 0.68, float("nan")],
                      "partial_eta_sq": [10 / 30, 50 / 70, 1 / 21, float("nan")]},
                     index=["C(bn)", "C(optimizer)", "C(optimizer):C(bn)", "Residual"])
    s = R.describe_anova(t)
    assert s.index("optimizer (partial") < s.index("bn (partial")
    assert "optimizer x bn" not in s and "0.71" in s


def test_anova_sentence_with_nothing_significant():
    t = pd.DataFrame({"sum_sq": [1.0, 20.0], "df": [1, 8], "F": [0.4, float("nan")], "PR(>F)": [0.5, float("nan")],
                      "partial_eta_sq": [1 / 21, float("nan")]}, index=["C(bn)", "Residual"])
    assert "No main effect" in R.describe_anova(t)


def test_seeds_sentence_uses_the_measured_spread():
    seeds = pd.DataFrame({"cell": ["a", "b", "c"], "std": [0.5, 1.0, 2.0], "seeds_needed": [4, 7, 18]})
    s = R.describe_seeds(seeds, {"share_seeds": 0.25, "share_factors": 0.75})
    assert "median 1.00" in s and "median of 7 seeds" in s and "up to 18" in s and "25%" in s and "75%" in s


def test_failures_sentence_counts_what_is_excluded():
    runs = pd.DataFrame({"status": ["FINISHED", "FAILED", "KILLED", "FINISHED"],
                         "diverged": [False, True, False, False], "superseded": [False, False, True, False]})
    s = R.describe_failures(runs, pd.DataFrame({"cell": ["x"], "seed": [3]}))
    assert s.startswith("1 run(s) did not finish (1 diverged)") and "1 planned run(s) are missing" in s
    ok = R.describe_failures(runs.iloc[[0, 3]], None)
    assert "All 2 runs finished" in ok
