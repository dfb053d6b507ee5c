"""Regenerate analysis/report.ipynb, the papermill template of the study report.

The notebook is code that reads the analysis directory and prints sentences produced by
study.report from the numbers: edit this file, then run it (`python analysis/make_template.py`).
"""

from pathlib import Path

import nbformat as nbf

CELLS = [
    ("code", '''# Parameters (papermill replaces these)
study = "smoke"
analysis_dir = "analysis"''', ["parameters"]),
    ("code", '''import json
from pathlib import Path

import pandas as pd
from IPython.display import Image, Markdown, display

from study import report as R

A = Path(analysis_dir)
pd.set_option("display.precision", 2)
pd.set_option("display.max_rows", 200)
summary = json.loads((A / "summary.json").read_text())


def table(name, **kw):
    p = A / f"{name}.csv"
    return pd.read_csv(p, **kw) if p.exists() else None


def say(text):
    display(Markdown(text))


def show(pattern):
    for p in sorted((A / "plots").glob(f"{pattern}.png")):
        display(Image(filename=str(p)))


runs, cells, comparisons = table("runs"), table("cells"), table("comparisons")
seeds, missing, anova = table("seeds"), table("missing"), table("anova", index_col=0)
variance = table("variance")
variance = None if variance is None or variance.empty else variance.iloc[0]
lecture, orderings = table("lecture_check"), table("lecture_orderings")
say(f"# Study report: `{study}`")''', []),
    ("code", '''say("## Set-up")
fingerprints = summary.get("data_fingerprints") or summary.get("data_fingerprint") or []
commits = [c.get("git_commit", "?") + (" (dirty tree)" if "true" in c.get("git_dirty", []) else "")
           if isinstance(c, dict) else str(c) for c in summary.get("code_versions") or []]
lines = [
    f"- Study `{study}`, parent MLflow run `{summary.get('parent_run_id', 'n/a')}`.",
    f"- Runs: {len(runs)} recorded, {int((runs['status'] == 'FINISHED').sum())} finished.",
    f"- Data fingerprint(s): {', '.join('`%s`' % f[:16] for f in fingerprints) or 'n/a'}.",
    f"- Code version(s): {', '.join('`%s`' % c for c in commits) or 'n/a'}.",
]
for key, values in summary.get("environment", {}).items():
    if values:
        lines.append(f"- {key.replace('_', ' ')}: {', '.join(map(str, values))}.")
say("\\n".join(lines))''', []),
    ("code", '''say("## The grid")
cols = [c for c in ["cell", "label", "n", "mean", "std", "t_low", "t_high", "min", "max", "n_diverged", "n_failed"] if c in cells.columns]
say(f"{len(cells)} cells; per cell: mean final test accuracy (%) over seeds with its 95% t-interval.")
shown = cells[cols].copy()
if "label" in shown:
    shown["label"] = shown["label"].astype(object).where(shown["label"].notna(), "")
display(shown)
show("final_accuracy*")
show("heatmap*")''', []),
    ("code", '''if lecture is not None and len(lecture):
    say("## The lecture's numbers, checked")
    for _, row in lecture.iterrows():
        say("- " + R.describe_lecture_cell(row))
    if orderings is not None and len(orderings):
        say("### The lecture's orderings")
        for _, row in orderings.iterrows():
            say("- " + R.describe_ordering(row))
        display(orderings)''', []),
    ("code", '''say("## Findings per factor")
say("Each level is compared with a reference level on runs paired by seed (same initial weights "
    "and batches) within matching other factors; p-values are adjusted over the whole family "
    f"({comparisons['method'].iloc[0] if 'method' in comparisons and len(comparisons) else 'holm'}).")
for factor, group in comparisons.groupby("factor", sort=False):
    say(f"### {factor}")
    for _, row in group.iterrows():
        say("- " + R.describe_comparison(row))
    show(f"*curves*{factor}*")
show("interaction*")
show("forest*")
display(comparisons)''', []),
    ("code", '''say("## Factorial ANOVA")
if anova is not None:
    say(R.describe_anova(anova))
    model = A / "anova_model.txt"
    if model.exists():
        say(f"Model fitted: `{model.read_text().strip()}`")
    display(anova)''', []),
    ("code", '''say("## Seeds: noise and how many are needed")
if seeds is not None:
    say(R.describe_seeds(seeds, variance))
    display(seeds)''', []),
    ("code", '''say("## Failures")
say(R.describe_failures(runs, missing))
bad = runs[runs["status"] != "FINISHED"]
if len(bad):
    display(bad[[c for c in ["run_name", "status", "diverged", "superseded"] if c in bad.columns]])
if missing is not None and len(missing):
    display(missing)''', []),
]


def build() -> nbf.NotebookNode:
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for kind, src, tags in CELLS:
        cell = nbf.v4.new_code_cell(src) if kind == "code" else nbf.v4.new_markdown_cell(src)
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    return nb


if __name__ == "__main__":
    path = Path(__file__).with_name("report.ipynb")
    nbf.write(build(), path)
    print(f"wrote {path}")
