"""The study report: sentences generated from the numbers, and the notebook that shows them.

Every sentence that states a conclusion comes from a function here, applied to the analysis
tables (``study.analyze``); nothing in the report is written in by hand. The notebook template
``analysis/report.ipynb`` is executed with papermill against a study's analysis directory,
then converted to a self-contained HTML page (images embedded).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

TEMPLATE = Path(__file__).resolve().parent.parent / "analysis" / "report.ipynb"
ALPHA = 0.05


def _fmt_p(p: float) -> str:
    if p != p:  # nan
        return "p not computable"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _signed(x: float, unit: str = " points") -> str:
    return f"{x:+.2f}{unit}"


def describe_comparison(row: dict | pd.Series, alpha: float = ALPHA) -> str:
    """One sentence for one level-vs-reference comparison (a row of comparisons.csv).

    The verdict depends only on the multiplicity-adjusted p-value and the CI of the paired
    mean difference: "a real difference" when p_adjusted < alpha, otherwise "within seed noise".
    """
    n = int(row["n_pairs"])
    head = f"{row['factor']} = {row['level']} vs {row['reference']}"
    if n < 2 or row["mean_diff"] != row["mean_diff"]:
        return f"{head}: only {n} paired run(s), too few to compare."
    if row["mean_diff"] == 0 and row["ci_low"] == 0 and row["ci_high"] == 0:
        return (f"{head}: identical test accuracy on all {n} seed-paired runs: at this budget the two "
                "settings train the same way.")
    real = row["p_adjusted"] < alpha
    direction = "higher" if row["mean_diff"] > 0 else "lower"
    text = (f"{head}: {_signed(row['mean_diff'])} test accuracy (95% CI {row['ci_low']:.2f} to "
            f"{row['ci_high']:.2f}; {n} seed-paired runs; adjusted {_fmt_p(row['p_adjusted'])}")
    if "effect_size" in row and row["effect_size"] == row["effect_size"]:
        text += f"; d_z = {row['effect_size']:.2f}"
    text += "). "
    if real:
        return text + f"{row['level']} is reliably {direction} than {row['reference']}: a real difference."
    return text + "The difference is within seed noise at this number of seeds."


def describe_lecture_cell(row: dict | pd.Series) -> str:
    """Whether the lecture's single-run accuracy is what one run of this cell would give."""
    label = row.get("label") or row.get("cell")
    where = ("inside" if bool(row["inside_pi"]) else "outside")
    verdict = ("consistent with one seed of this cell" if bool(row["inside_pi"])
               else "not what a single run of this cell gives here")
    return (f"{label}: the lecture reported {row['reported']:g}%; over {int(row['n'])} seeds we get "
            f"{row['mean']:.2f}% (95% CI {row['ci_low']:.2f} to {row['ci_high']:.2f}); one run falls in "
            f"[{row['pi_low']:.2f}, {row['pi_high']:.2f}] with 95% probability, so the reported value is "
            f"{where} it: {verdict}.")


def describe_ordering(row: dict | pd.Series) -> str:
    """One sentence for one of the lecture's pairwise claims (a row of lecture_orderings.csv:
    claim, reported_a, reported_b, n_pairs, mean_diff (a - b), ci_low, ci_high, p_adjusted,
    verdict, identical)."""
    verdict = row["verdict"]
    meaning = {"supported": "our seeds support the lecture's ordering",
               "contradicted": "our seeds show the opposite ordering",
               "not resolved": "our seeds cannot tell the two apart",
               "a better": "the first is reliably better", "b better": "the second is reliably better",
               }.get(verdict, verdict)
    if is_finite(row.get("reported_a")) and is_finite(row.get("reported_b")):
        said = f"the lecture's single runs say {row['reported_a'] - row['reported_b']:+g} points"
    else:
        said = "the lecture reported no number for one side"
    if int(row["n_pairs"]) < 2 or not is_finite(row["mean_diff"]):
        return f"{row['claim']}: {said}; we have {int(row['n_pairs'])} seed pair(s), too few to test it."
    text = (f"{row['claim']}: {said}; over {int(row['n_pairs'])} seed pairs the difference is "
            f"{_signed(row['mean_diff'])} (95% CI {row['ci_low']:.2f} to {row['ci_high']:.2f}, adjusted "
            f"{_fmt_p(row['p_adjusted'])}): {meaning}.")
    if str(row.get("identical", "")).lower() == "true":
        text += " Both give the same accuracy on every seed: the lecture's gap was single-run noise."
    return text


def describe_anova(table: pd.DataFrame, alpha: float = ALPHA) -> str:
    """Which terms of the factorial ANOVA matter, ranked by partial eta squared."""
    terms = table.drop(index=[i for i in table.index if str(i) == "Residual"], errors="ignore")
    terms = terms.dropna(subset=["partial_eta_sq"]).sort_values("partial_eta_sq", ascending=False)
    if terms.empty:
        return "The ANOVA has no estimable terms."
    sig = terms[terms["PR(>F)"] < alpha]
    parts = [f"{_term(i)} (partial eta squared {r['partial_eta_sq']:.2f}, {_fmt_p(r['PR(>F)'])})"
             for i, r in sig.iterrows()]
    if not parts:
        return "No main effect or interaction is significant at the 5% level (unadjusted F tests)."
    return ("Significant at the 5% level (unadjusted F tests), largest first: " + "; ".join(parts) + ".")


def _term(name) -> str:
    return str(name).replace("C(", "").replace(")", "").replace(":", " x ")


def describe_seeds(seeds: pd.DataFrame, variance: dict | pd.Series | None = None) -> str:
    """How many seeds a per-cell 95% CI of +-1 accuracy point needs, from the measured spread."""
    need = seeds["seeds_needed"].dropna()
    if need.empty:
        return "Too few seeds per cell to estimate the seed-to-seed spread."
    text = (f"Seed-to-seed standard deviation per cell: median {seeds['std'].median():.2f} points "
            f"(range {seeds['std'].min():.2f} to {seeds['std'].max():.2f}). A 95% CI of +-1 point per "
            f"cell needs a median of {int(need.median())} seeds (up to {int(need.max())}).")
    if variance is not None and variance.get("share_seeds") == variance.get("share_seeds"):
        text += (f" Seeds explain {100 * variance['share_seeds']:.0f}% of the variance of final accuracy "
                 f"and the cells {100 * variance['share_factors']:.0f}%.")
    return text


def describe_failures(runs: pd.DataFrame, missing: pd.DataFrame | None = None) -> str:
    """Failed, diverged and missing runs, so that none is silently dropped."""
    failed = runs[(runs["status"] != "FINISHED") & ~runs.get("superseded", False)]
    diverged = int(runs["diverged"].fillna(False).astype(bool).sum())
    n_missing = 0 if missing is None else len(missing)
    if failed.empty and n_missing == 0:
        return f"All {len(runs)} runs finished; none diverged; no planned run is missing."
    text = f"{len(failed)} run(s) did not finish ({diverged} diverged)"
    text += f" and {n_missing} planned run(s) are missing." if n_missing else "."
    return text + " They are listed below and excluded from the statistics."


def render_report(study: str, analysis_dir: str | Path, out_dir: str | Path, *,
                  parent_run_id: str | None = None, tracking_uri: str | None = None,
                  template: Path = TEMPLATE, timeout: int = 600) -> dict[str, Path]:
    """Execute the report notebook with papermill and write report.ipynb and report.html.

    Args:
      study: the study's name (shown in the report).
      analysis_dir: the directory ``study analyze`` wrote (CSV tables, plots/, summary.json).
      out_dir: where report.ipynb and report.html go.
      parent_run_id: if given, both files are logged to this run under ``report/``.

    Returns:
      ``{"ipynb": path, "html": path}``.
    """
    import nbformat
    import papermill as pm
    from nbconvert import HTMLExporter

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ipynb, html = out / "report.ipynb", out / "report.html"
    pm.execute_notebook(str(template), str(ipynb), kernel_name="python3", progress_bar=False,
                        parameters={"study": study, "analysis_dir": str(Path(analysis_dir).resolve())},
                        execution_timeout=timeout, cwd=str(out))
    exporter = HTMLExporter(embed_images=True, exclude_input=True)
    body, _ = exporter.from_notebook_node(nbformat.read(ipynb, as_version=4))
    html.write_text(body, encoding="utf-8")
    if parent_run_id:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri)
        client.log_artifact(parent_run_id, str(ipynb), "report")
        client.log_artifact(parent_run_id, str(html), "report")
    return {"ipynb": ipynb, "html": html}


def is_finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False
