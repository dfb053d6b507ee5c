"""Statistics for comparing CNN training choices across seeds.

A small library of pure functions in the spirit of google-research/rliable:
arrays in, plain dicts (or pandas DataFrames where the result is a table)
out, and an explicit :class:`numpy.random.Generator` argument named ``rng``
wherever randomness is involved. Nothing here touches numpy's global random
state, so results are reproducible from the generator's seed alone.

Conventions used throughout:

* Accuracies are in percent (0-100); nothing here depends on the scale, but
  arguments such as ``half_width`` are in the same units as the data.
* One-dimensional samples are array-likes of shape ``(n,)``, one value per
  run (seed). Non-finite values (NaN, inf) are dropped before computing, and
  ``n`` always counts the values actually used.
* Intervals are returned as ``(low, high)`` tuples of floats, and are
  ``(nan, nan)`` when the sample is too small to form one (``n < 2``).
* Tabular inputs are long-format :class:`pandas.DataFrame` objects with one
  row per training run, one column per factor (e.g. ``optimizer``, ``bn``),
  a ``seed`` column, and a numeric response column (e.g. ``test_accuracy``).
  Factor levels are compared as strings, so a boolean column ``bn`` has the
  levels ``"True"`` and ``"False"``.

Typical use::

    rng = np.random.default_rng(0)
    table = compare_all(
        runs,
        {"optimizer": "sgd", "bn": "False"},
        factors=["optimizer", "bn", "init"],
        response="test_accuracy",
        rng=rng,
    )
"""

from __future__ import annotations

import itertools
import keyword
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = [
    "adjust_pvalues",
    "bootstrap_ci",
    "compare_all",
    "compare_levels",
    "factorial_anova",
    "paired_comparison",
    "prediction_interval",
    "seeds_needed",
    "summarize",
    "t_interval",
    "variance_components",
]

_NAN_INTERVAL = (float("nan"), float("nan"))
_ADJUST_METHODS = ("holm", "bh")
_COMPARISON_COLUMNS = [
    "factor",
    "level",
    "reference",
    "n_pairs",
    "mean_diff",
    "ci_low",
    "ci_high",
    "boot_low",
    "boot_high",
    "p_value",
    "wilcoxon_p",
    "effect_size",
    "prob_improvement",
    "test",
]


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _as_1d(x: Any, name: str = "x") -> np.ndarray:
    """Returns ``x`` as a 1-D float array (without dropping anything)."""
    arr = np.asarray(x, dtype=float)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got an array of shape {arr.shape}.")
    return arr


def _finite_1d(x: Any, name: str = "x") -> np.ndarray:
    """Returns the finite values of ``x`` as a 1-D float array."""
    arr = _as_1d(x, name)
    return arr[np.isfinite(arr)]


def _check_confidence(confidence: float) -> float:
    confidence = float(confidence)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}.")
    return confidence


def _check_rng(rng: Any) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            "rng must be a numpy.random.Generator (e.g. np.random.default_rng(seed)), "
            f"got {type(rng).__name__}: {rng!r}."
        )
    return rng


def _t_quantile(confidence: float, dof: int | np.ndarray) -> float | np.ndarray:
    return sps.t.ppf((1.0 + confidence) / 2.0, dof)


# ---------------------------------------------------------------------------
# Intervals for a single sample
# ---------------------------------------------------------------------------


def t_interval(x: Any, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval for the mean of a sample.

    Computes ``mean ± t_{n-1, (1+c)/2} * s / sqrt(n)`` with ``s`` the sample
    standard deviation (``ddof=1``). Equals ``scipy.stats.t.interval`` with
    ``loc=mean`` and ``scale=s/sqrt(n)``.

    Args:
        x: Array-like of shape ``(n,)``, e.g. one accuracy per seed.
            Non-finite values are dropped.
        confidence: Coverage of the interval, in (0, 1).

    Returns:
        ``(low, high)`` as floats; ``(nan, nan)`` if fewer than two finite
        values remain. A constant sample gives ``(mean, mean)``.
    """
    confidence = _check_confidence(confidence)
    x = _finite_1d(x)
    n = x.size
    if n < 2:
        return _NAN_INTERVAL
    mean = float(np.mean(x))
    half = float(_t_quantile(confidence, n - 1) * np.std(x, ddof=1) / np.sqrt(n))
    return (mean - half, mean + half)


def bootstrap_ci(
    x: Any,
    *,
    rng: np.random.Generator,
    confidence: float = 0.95,
    n_boot: int = 10_000,
    statistic: Callable[..., Any] = np.mean,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a statistic.

    Resamples the data with replacement ``n_boot`` times in one vectorized
    draw (an ``(n_boot, n)`` index matrix from ``rng``) and returns the
    ``(1-c)/2`` and ``(1+c)/2`` percentiles of the resampled statistic.

    Args:
        x: Array-like of shape ``(n,)``. Non-finite values are dropped.
        rng: A ``numpy.random.Generator``; the only source of randomness.
            Using the same seed gives the same interval.
        confidence: Coverage of the interval, in (0, 1).
        n_boot: Number of bootstrap resamples.
        statistic: Function called as ``statistic(samples, axis=1)`` on an
            array of shape ``(n_boot, n)``; it must reduce along ``axis`` and
            return shape ``(n_boot,)`` (``np.mean``, ``np.median`` do).

    Returns:
        ``(low, high)`` as floats; ``(nan, nan)`` if fewer than two finite
        values remain.

    Raises:
        TypeError: If ``rng`` is not a ``numpy.random.Generator`` (an int
            seed or ``None`` is rejected on purpose).
        ValueError: If ``n_boot < 1`` or ``confidence`` is outside (0, 1).
    """
    rng = _check_rng(rng)
    confidence = _check_confidence(confidence)
    n_boot = int(n_boot)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}.")
    x = _finite_1d(x)
    n = x.size
    if n < 2:
        return _NAN_INTERVAL
    idx = rng.integers(0, n, size=(n_boot, n))
    boot = np.asarray(statistic(x[idx], axis=1), dtype=float)
    if boot.shape != (n_boot,):
        raise ValueError(
            "statistic must reduce an (n_boot, n) array along axis=1 to shape "
            f"(n_boot,), got shape {boot.shape}."
        )
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(boot, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return (float(low), float(high))


def prediction_interval(x: Any, confidence: float = 0.95) -> tuple[float, float]:
    """Interval expected to contain the result of ONE new run.

    Computes ``mean ± t_{n-1, (1+c)/2} * s * sqrt(1 + 1/n)``. This is wider
    than :func:`t_interval`: it answers "what accuracy will the next seed
    give?" rather than "where is the mean?".

    Args:
        x: Array-like of shape ``(n,)``. Non-finite values are dropped.
        confidence: Coverage of the interval, in (0, 1).

    Returns:
        ``(low, high)`` as floats; ``(nan, nan)`` if fewer than two finite
        values remain.
    """
    confidence = _check_confidence(confidence)
    x = _finite_1d(x)
    n = x.size
    if n < 2:
        return _NAN_INTERVAL
    mean = float(np.mean(x))
    half = float(
        _t_quantile(confidence, n - 1) * np.std(x, ddof=1) * np.sqrt(1.0 + 1.0 / n)
    )
    return (mean - half, mean + half)


def summarize(
    x: Any,
    *,
    rng: np.random.Generator,
    confidence: float = 0.95,
    n_boot: int = 10_000,
) -> dict[str, float | int]:
    """Descriptive statistics and two confidence intervals for a sample.

    Args:
        x: Array-like of shape ``(n,)``, e.g. the accuracies of one
            configuration across seeds. NaNs (and infinities) are dropped
            before computing anything.
        rng: A ``numpy.random.Generator`` used for the bootstrap interval.
        confidence: Coverage of both intervals, in (0, 1).
        n_boot: Number of bootstrap resamples.

    Returns:
        A dict with keys ``n`` (number of finite values, int), ``mean``,
        ``std`` (``ddof=1``), ``boot_low``/``boot_high`` (percentile bootstrap
        CI of the mean), ``t_low``/``t_high`` (Student-t CI of the mean),
        ``median``, ``min`` and ``max``. Values that cannot be computed for
        the given ``n`` (``std`` and intervals for ``n < 2``, everything for
        ``n == 0``) are NaN.

    Raises:
        TypeError: If ``rng`` is not a ``numpy.random.Generator``.
    """
    rng = _check_rng(rng)
    x = _finite_1d(x)
    n = int(x.size)
    nan = float("nan")
    boot_low, boot_high = bootstrap_ci(x, rng=rng, confidence=confidence, n_boot=n_boot)
    t_low, t_high = t_interval(x, confidence=confidence)
    return {
        "n": n,
        "mean": float(np.mean(x)) if n else nan,
        "std": float(np.std(x, ddof=1)) if n >= 2 else nan,
        "boot_low": boot_low,
        "boot_high": boot_high,
        "t_low": t_low,
        "t_high": t_high,
        "median": float(np.median(x)) if n else nan,
        "min": float(np.min(x)) if n else nan,
        "max": float(np.max(x)) if n else nan,
    }


# ---------------------------------------------------------------------------
# Paired comparisons and multiple testing
# ---------------------------------------------------------------------------


def paired_comparison(
    level: Any,
    reference: Any,
    *,
    rng: np.random.Generator,
    confidence: float = 0.95,
    n_boot: int = 10_000,
) -> dict[str, float | int]:
    """Compares two paired samples, e.g. two optimizers run on the same seeds.

    Element ``i`` of ``level`` and element ``i`` of ``reference`` must come
    from the same pairing unit (same seed and same levels of every other
    factor). All statistics are about the differences
    ``d = level - reference``. Pairs where either side is NaN (or infinite)
    are dropped before computing; ``n_pairs`` counts the pairs kept.

    Args:
        level: Array-like of shape ``(n,)``, the results of the level under
            test.
        reference: Array-like of shape ``(n,)``, the paired results of the
            reference level.
        rng: A ``numpy.random.Generator`` used for the bootstrap interval.
        confidence: Coverage of the intervals, in (0, 1).
        n_boot: Number of bootstrap resamples.

    Returns:
        A dict with keys:

        * ``n_pairs``: number of complete pairs used (int).
        * ``mean_diff``: mean of ``level - reference``.
        * ``ci_low``, ``ci_high``: Student-t CI of the mean difference.
        * ``p_value``: two-sided paired t test; equals
          ``scipy.stats.ttest_rel(level, reference).pvalue``.
        * ``wilcoxon_p``: two-sided Wilcoxon signed-rank test
          (``scipy.stats.wilcoxon``, zero differences discarded); NaN when
          ``n_pairs < 2`` or all differences are 0.
        * ``effect_size``: Cohen's d_z, mean difference divided by the
          standard deviation of the differences (``ddof=1``); NaN when that
          standard deviation is 0 or ``n_pairs < 2``.
        * ``prob_improvement``: share of pairs with ``level > reference``,
          ties counting 1/2.
        * ``boot_low``, ``boot_high``: percentile bootstrap CI of the mean
          difference.

        Quantities that need two pairs are NaN when ``n_pairs < 2``. When
        all differences are equal, the t interval collapses to a point and
        ``p_value`` is 0 (nonzero difference) or NaN (zero difference), as
        in scipy.

    Raises:
        ValueError: If the two inputs have different lengths.
        TypeError: If ``rng`` is not a ``numpy.random.Generator``.
    """
    rng = _check_rng(rng)
    confidence = _check_confidence(confidence)
    a = _as_1d(level, "level")
    b = _as_1d(reference, "reference")
    if a.size != b.size:
        raise ValueError(
            "level and reference must have equal lengths (one element per pair), "
            f"got len(level)={a.size} and len(reference)={b.size}."
        )
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    n = int(d.size)
    nan = float("nan")

    mean = float(np.mean(d)) if n else nan
    prob = float(np.mean(d > 0) + 0.5 * np.mean(d == 0)) if n else nan
    out: dict[str, float | int] = {
        "n_pairs": n,
        "mean_diff": mean,
        "ci_low": nan,
        "ci_high": nan,
        "p_value": nan,
        "wilcoxon_p": nan,
        "effect_size": nan,
        "prob_improvement": prob,
        "boot_low": nan,
        "boot_high": nan,
    }
    if n < 2:
        return out

    sd = float(np.std(d, ddof=1))
    out["ci_low"], out["ci_high"] = t_interval(d, confidence=confidence)
    if sd > 0:
        t_stat = mean / (sd / np.sqrt(n))
        out["p_value"] = float(2.0 * sps.t.sf(abs(t_stat), n - 1))
        out["effect_size"] = mean / sd
    elif mean != 0:
        out["p_value"] = 0.0
    if np.any(d != 0):
        with warnings.catch_warnings():
            # Small samples with zeros/ties make scipy warn about switching
            # from the exact to the normal approximation; that is expected.
            warnings.simplefilter("ignore")
            try:
                out["wilcoxon_p"] = float(
                    sps.wilcoxon(a[keep], b[keep], alternative="two-sided").pvalue
                )
            except ValueError:
                out["wilcoxon_p"] = nan
    out["boot_low"], out["boot_high"] = bootstrap_ci(
        d, rng=rng, confidence=confidence, n_boot=n_boot
    )
    return out


def adjust_pvalues(p: Any, method: str = "holm") -> np.ndarray:
    """Adjusts a family of p-values for multiple comparisons.

    Implements Holm's step-down family-wise error correction (``"holm"``)
    and the Benjamini-Hochberg false discovery rate correction (``"bh"``).
    Results equal ``statsmodels.stats.multitest.multipletests(p,
    method="holm" / "fdr_bh")[1]`` on the non-NaN entries.

    Args:
        p: Array-like of p-values in [0, 1], any shape. NaN entries are
            passed through untouched and are NOT counted in the family size.
        method: ``"holm"`` or ``"bh"``.

    Returns:
        A float array of the same shape as ``p`` with the adjusted p-values
        (capped at 1).

    Raises:
        ValueError: For an unknown ``method`` or p-values outside [0, 1].
    """
    if method not in _ADJUST_METHODS:
        raise ValueError(
            f"Unknown p-value adjustment method {method!r}; "
            f"allowed methods are {', '.join(repr(m) for m in _ADJUST_METHODS)}."
        )
    arr = np.asarray(p, dtype=float)
    flat = arr.ravel()
    out = flat.copy()
    ok = ~np.isnan(flat)
    vals = flat[ok]
    if np.any((vals < 0) | (vals > 1)):
        raise ValueError("p-values must lie in [0, 1] (NaN allowed).")
    m = vals.size
    if m == 0:
        return out.reshape(arr.shape)
    order = np.argsort(vals, kind="mergesort")
    sorted_p = vals[order]
    ranks = np.arange(1, m + 1)
    if method == "holm":
        adjusted = np.maximum.accumulate((m - ranks + 1) * sorted_p)
    else:  # "bh"
        adjusted = np.minimum.accumulate((m / ranks * sorted_p)[::-1])[::-1]
    adjusted = np.minimum(adjusted, 1.0)
    result = np.empty(m)
    result[order] = adjusted
    out[ok] = result
    return out.reshape(arr.shape)


def seeds_needed(
    std: float,
    half_width: float = 1.0,
    confidence: float = 0.95,
    max_n: int = 10_000,
) -> int:
    """Number of seeds needed to pin a mean down to ``± half_width``.

    Returns the smallest ``n >= 2`` with
    ``t_{n-1, (1+c)/2} * std / sqrt(n) <= half_width``, i.e. the number of
    runs for which the t interval of the mean has the requested half-width,
    taking ``std`` (e.g. a seed-to-seed standard deviation from a pilot
    study, in accuracy points) as known.

    Args:
        std: Run-to-run standard deviation, same units as ``half_width``.
        half_width: Target half-width of the confidence interval (> 0).
        confidence: Coverage of the interval, in (0, 1).
        max_n: Largest number of seeds to consider.

    Returns:
        The number of seeds, an int ``>= 2``; 2 when ``std <= 0``.

    Raises:
        ValueError: If ``std`` is NaN (or infinite), ``half_width <= 0``, or
            no ``n <= max_n`` reaches the target.
    """
    std = float(std)
    if not np.isfinite(std):
        raise ValueError(f"std must be a finite number, got {std!r}.")
    half_width = float(half_width)
    if not half_width > 0:
        raise ValueError(f"half_width must be > 0, got {half_width!r}.")
    confidence = _check_confidence(confidence)
    max_n = int(max_n)
    if std <= 0:
        return 2
    n = np.arange(2, max(max_n, 2) + 1)
    width = _t_quantile(confidence, n - 1) * std / np.sqrt(n)
    hit = np.flatnonzero(width <= half_width)
    if hit.size == 0 or max_n < 2:
        raise ValueError(
            f"No n <= max_n={max_n} reaches half_width={half_width} with "
            f"std={std} at confidence={confidence}; raise max_n."
        )
    return int(n[hit[0]])


# ---------------------------------------------------------------------------
# Tabular analyses (long-format DataFrames, one row per run)
# ---------------------------------------------------------------------------


def _check_columns(df: pd.DataFrame, columns: Sequence[Any], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"{what} {missing!r} not found in the DataFrame; "
            f"columns are {list(df.columns)!r}."
        )


def variance_components(
    df: pd.DataFrame, factors: Sequence[Any], response: Any
) -> dict[str, float | int]:
    """Splits the variance of a response into between-cell and within-cell parts.

    A cell is one combination of the levels of ``factors`` (one training
    configuration); the runs inside a cell differ only by seed. The total
    sum of squares around the grand mean splits exactly into

    * ``ss_between = sum_cells n_c * (mean_c - grand_mean)**2`` (explained by
      the factors), and
    * ``ss_within = sum_cells sum_runs (y - mean_c)**2`` (seed-to-seed noise).

    Args:
        df: Long-format DataFrame, one row per run.
        factors: Column names defining the cells. An empty list puts every
            run in a single cell.
        response: Name of the numeric response column, e.g.
            ``"test_accuracy"``. Rows with a non-finite response are dropped.

    Returns:
        A dict with keys ``ss_total``, ``ss_between``, ``ss_within``,
        ``share_factors`` (``ss_between / ss_total``), ``share_seeds``
        (``ss_within / ss_total``), ``pooled_within_std`` (square root of the
        pooled within-cell variance, ``ss_within / sum_cells (n_c - 1)``; the
        typical seed-to-seed standard deviation within one configuration),
        ``n_cells`` and ``n_runs``. Shares are NaN when ``ss_total`` is 0;
        ``pooled_within_std`` is NaN when no cell has two runs.
    """
    factors = list(factors)
    _check_columns(df, factors + [response], "Columns")
    y = pd.to_numeric(df[response], errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(y)
    y = y[keep]
    n_runs = int(y.size)
    nan = float("nan")
    if factors:
        keys = pd.DataFrame(
            {i: df[f].astype(str).to_numpy()[keep] for i, f in enumerate(factors)}
        )
        cell = keys.groupby(list(keys.columns), sort=False).ngroup().to_numpy()
    else:
        cell = np.zeros(n_runs, dtype=int)
    if n_runs == 0:
        return {
            "ss_total": nan, "ss_between": nan, "ss_within": nan,
            "share_factors": nan, "share_seeds": nan, "pooled_within_std": nan,
            "n_cells": 0, "n_runs": 0,
        }
    n_cells = int(cell.max()) + 1
    counts = np.bincount(cell, minlength=n_cells)
    cell_means = np.bincount(cell, weights=y, minlength=n_cells) / counts
    grand = float(np.mean(y))
    ss_total = float(np.sum((y - grand) ** 2))
    ss_within = float(np.sum((y - cell_means[cell]) ** 2))
    ss_between = float(np.sum(counts * (cell_means - grand) ** 2))
    dof_within = n_runs - n_cells
    return {
        "ss_total": ss_total,
        "ss_between": ss_between,
        "ss_within": ss_within,
        "share_factors": ss_between / ss_total if ss_total > 0 else nan,
        "share_seeds": ss_within / ss_total if ss_total > 0 else nan,
        "pooled_within_std": float(np.sqrt(ss_within / dof_within)) if dof_within > 0 else nan,
        "n_cells": n_cells,
        "n_runs": n_runs,
    }


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _formula_name(name: str) -> str:
    """Quotes a column name for a patsy formula only when necessary."""
    if _IDENTIFIER.match(name) and not keyword.iskeyword(name) and name not in {"C", "Q", "I"}:
        return name
    return "Q(" + repr(name) + ")"


def factorial_anova(
    df: pd.DataFrame,
    factors: Sequence[Any],
    response: Any,
    *,
    max_order: int = 2,
) -> tuple[pd.DataFrame, str]:
    """Factorial ANOVA (Type II sums of squares) with partial eta squared.

    Fits an ordinary least squares model with a categorical term
    ``C(factor)`` per factor plus all interactions up to ``max_order``
    factors, and tabulates it with ``statsmodels.stats.anova.anova_lm(model,
    typ=2)``. Factor values are cast to ``str`` first, so boolean, integer
    and string columns are all treated as categorical.

    The model is reduced automatically when the data cannot support it:

    * factors with a single level in ``df`` are left out;
    * interactions that are not estimable (some combination of levels is
      missing, so the design matrix is rank deficient, or the model would
      leave no residual degrees of freedom) are dropped, lowest order first
      considered, and a higher-order interaction is dropped when one of its
      lower-order interactions was. In the worst case only main effects
      remain.

    Everything that was left out is listed in the returned description.

    Args:
        df: Long-format DataFrame, one row per run.
        factors: Names of the factor columns.
        response: Name of the numeric response column. Rows with a
            non-finite response or a missing factor value are dropped.
        max_order: Highest interaction order to include (1 = main effects
            only, 2 = two-way interactions, ...).

    Returns:
        ``(table, description)``. ``table`` is indexed by term (e.g.
        ``"C(optimizer)"``, ``"C(optimizer):C(bn)"``, ``"Residual"``) with
        columns ``sum_sq``, ``df``, ``F``, ``PR(>F)`` and ``partial_eta_sq``
        (``SS_effect / (SS_effect + SS_residual)``; NaN for the residual
        row). ``description`` is the formula actually fitted, e.g.
        ``"test_accuracy ~ C(optimizer) + C(bn) + C(optimizer):C(bn)"``,
        followed by ``" (dropped: ...)"`` when anything was left out.

    Raises:
        ValueError: If a column is missing, ``max_order < 1``, no factor has
            two levels, or even the main-effects model cannot be estimated
            with at least one residual degree of freedom.
    """
    import patsy
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    factors = list(factors)
    if int(max_order) < 1:
        raise ValueError(f"max_order must be >= 1, got {max_order!r}.")
    _check_columns(df, factors + [response], "Columns")
    resp_name = str(response)
    y = pd.to_numeric(df[response], errors="coerce")
    keep = np.isfinite(y.to_numpy(dtype=float))
    for f in factors:
        keep &= df[f].notna().to_numpy()
    data = pd.DataFrame({resp_name: y[keep].to_numpy(dtype=float)})
    for f in factors:
        data[str(f)] = df[f].astype(str).to_numpy()[keep]

    notes: list[str] = []
    used: list[str] = []
    for f in factors:
        name = str(f)
        if data[name].nunique() < 2:
            notes.append(f"{name!r} has a single level")
        else:
            used.append(name)
    if not used:
        raise ValueError(
            f"No factor among {[str(f) for f in factors]!r} has two or more levels; "
            "nothing to test."
        )

    lhs = _formula_name(resp_name)
    main_terms = [f"C({_formula_name(f)})" for f in used]
    n_obs = len(data)

    def estimable(terms: list[str]) -> bool:
        rhs = " + ".join(terms)
        design = patsy.dmatrix(rhs, data, return_type="dataframe")
        x = design.to_numpy(dtype=float)
        rank = np.linalg.matrix_rank(x)
        return rank == x.shape[1] and n_obs - rank > 0

    if not estimable(main_terms):
        raise ValueError(
            f"The main-effects model {lhs} ~ {' + '.join(main_terms)} cannot be "
            f"estimated from {n_obs} runs (confounded factors or no residual "
            "degrees of freedom)."
        )

    terms = list(main_terms)
    dropped: list[frozenset[int]] = []
    for order in range(2, min(int(max_order), len(used)) + 1):
        for combo in itertools.combinations(range(len(used)), order):
            term = ":".join(main_terms[i] for i in combo)
            key = frozenset(combo)
            if any(d < key for d in dropped):
                dropped.append(key)
                notes.append(f"{term} contains a dropped interaction")
                continue
            if estimable(terms + [term]):
                terms.append(term)
            else:
                dropped.append(key)
                notes.append(f"{term} not estimable")

    formula = f"{lhs} ~ {' + '.join(terms)}"
    model = smf.ols(formula, data=data).fit()
    table = anova_lm(model, typ=2)
    table = table[["sum_sq", "df", "F", "PR(>F)"]].copy()
    ss_resid = float(table.loc["Residual", "sum_sq"])
    table["partial_eta_sq"] = table["sum_sq"] / (table["sum_sq"] + ss_resid)
    table.loc["Residual", "partial_eta_sq"] = np.nan
    description = formula
    if notes:
        description += " (dropped: " + "; ".join(notes) + ")"
    return table, description


def compare_levels(
    df: pd.DataFrame,
    factor: Any,
    reference: Any,
    *,
    factors: Sequence[Any],
    response: Any,
    pair_on: Any = "seed",
    rng: np.random.Generator,
    confidence: float = 0.95,
    n_boot: int = 10_000,
) -> pd.DataFrame:
    """Compares every level of one factor with a reference level, paired.

    Each run at a non-reference level is paired with the reference-level
    run that has the same ``pair_on`` value (the seed) and the same levels
    of every other factor in ``factors``, and :func:`paired_comparison` is
    run over those pairs. Runs without a partner are ignored, and pairs with
    a NaN response on either side are dropped.

    Levels are matched as strings, so ``reference`` may be given as
    ``"False"`` or ``False`` for a boolean column.

    Args:
        df: Long-format DataFrame, one row per run.
        factor: Column whose levels are compared.
        reference: The baseline level of ``factor``.
        factors: All factor columns of the design (``factor`` may or may not
            be among them); the others define the pairing along with
            ``pair_on``.
        response: Name of the numeric response column.
        pair_on: Column identifying the pairing unit, usually the seed.
        rng: A ``numpy.random.Generator`` for the bootstrap intervals.
        confidence: Coverage of the intervals, in (0, 1).
        n_boot: Number of bootstrap resamples per comparison.

    Returns:
        One row per non-reference level (in order of first appearance in
        ``df``) with columns ``factor``, ``level``, ``reference`` (strings),
        ``n_pairs``, ``mean_diff`` (level minus reference), ``ci_low``,
        ``ci_high`` (t interval), ``boot_low``, ``boot_high`` (bootstrap
        interval), ``p_value`` (paired t), ``wilcoxon_p``, ``effect_size``
        (d_z), ``prob_improvement`` and ``test`` (``"paired t"``).

    Raises:
        ValueError: If a column is missing, ``reference`` is not a level of
            ``factor``, or two runs share the same pairing key within a
            level (pairing would be ambiguous).
        TypeError: If ``rng`` is not a ``numpy.random.Generator``.
    """
    rng = _check_rng(rng)
    others = [f for f in factors if f != factor]
    _check_columns(df, [factor, response, pair_on] + others, "Columns")
    levels = df[factor].astype(str)
    present = list(pd.unique(levels))
    ref = str(reference)
    if ref not in present:
        raise ValueError(
            f"Reference level {ref!r} is not a level of {factor!r}; "
            f"levels present: {present!r}."
        )
    keys = [str(k) for k in others] + ["__pair_on__"]
    frame = pd.DataFrame({str(k): df[k].astype(str).to_numpy() for k in others})
    frame["__pair_on__"] = df[pair_on].astype(str).to_numpy()
    frame["__level__"] = levels.to_numpy()
    frame["__y__"] = pd.to_numeric(df[response], errors="coerce").to_numpy(dtype=float)

    dup = frame.duplicated(subset=keys + ["__level__"], keep=False)
    if dup.any():
        example = frame.loc[dup, keys + ["__level__"]].iloc[0].to_dict()
        raise ValueError(
            f"Ambiguous pairing for factor {factor!r}: several runs share the key "
            f"{example!r} (same {pair_on!r} and other factor levels). "
            "List every factor of the design in `factors`."
        )

    ref_rows = frame.loc[frame["__level__"] == ref, keys + ["__y__"]]
    rows = []
    for lev in present:
        if lev == ref:
            continue
        lev_rows = frame.loc[frame["__level__"] == lev, keys + ["__y__"]]
        merged = lev_rows.merge(ref_rows, on=keys, suffixes=("_lev", "_ref"))
        merged = merged.sort_values(keys, kind="mergesort")
        res = paired_comparison(
            merged["__y___lev"].to_numpy(),
            merged["__y___ref"].to_numpy(),
            rng=rng,
            confidence=confidence,
            n_boot=n_boot,
        )
        rows.append(
            {"factor": str(factor), "level": lev, "reference": ref, **res, "test": "paired t"}
        )
    return pd.DataFrame(rows, columns=_COMPARISON_COLUMNS)


def compare_all(
    df: pd.DataFrame,
    references: Mapping[Any, Any],
    *,
    factors: Sequence[Any],
    response: Any,
    rng: np.random.Generator,
    method: str = "holm",
    confidence: float = 0.95,
    pair_on: Any = "seed",
    n_boot: int = 10_000,
) -> pd.DataFrame:
    """Paired comparisons against a reference for several factors at once.

    Runs :func:`compare_levels` for each ``factor -> reference level`` in
    ``references`` and corrects the raw paired-t p-values for multiple
    testing over the WHOLE family of comparisons (all levels of all
    factors together).

    Args:
        df: Long-format DataFrame, one row per run.
        references: Mapping from factor name to its reference level, e.g.
            ``{"optimizer": "sgd", "bn": "False"}``.
        factors: All factor columns of the design.
        response: Name of the numeric response column.
        rng: A ``numpy.random.Generator``, consumed in the order of
            ``references``.
        method: Adjustment method passed to :func:`adjust_pvalues`
            (``"holm"`` or ``"bh"``).
        confidence: Coverage of the intervals, in (0, 1).
        pair_on: Column identifying the pairing unit, usually the seed.
        n_boot: Number of bootstrap resamples per comparison.

    Returns:
        The concatenated :func:`compare_levels` tables plus ``p_adjusted``
        and ``method`` columns. Comparisons with a NaN p-value (too few
        pairs) keep a NaN ``p_adjusted`` and do not count in the family.

    Raises:
        ValueError: For an unknown ``method`` or any error of
            :func:`compare_levels`.
    """
    rng = _check_rng(rng)
    adjust_pvalues([], method=method)  # validates `method` before any work
    tables = [
        compare_levels(
            df,
            factor,
            ref,
            factors=factors,
            response=response,
            pair_on=pair_on,
            rng=rng,
            confidence=confidence,
            n_boot=n_boot,
        )
        for factor, ref in references.items()
    ]
    if tables:
        out = pd.concat(tables, ignore_index=True)
    else:
        out = pd.DataFrame(columns=_COMPARISON_COLUMNS)
    out["p_adjusted"] = adjust_pvalues(out["p_value"].to_numpy(dtype=float), method=method)
    out["method"] = method
    return out
