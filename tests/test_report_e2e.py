"""Issue-level end to end: a study's report renders, and the study is browsable through a real
MLflow server: its REST API and its web UI in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import urllib.parse
import urllib.request

import pytest

from tests.conftest import mlflow_server, subprocess_env

pytestmark = pytest.mark.slow


def _env(uri: str) -> dict:
    return subprocess_env(uri)


@pytest.fixture(scope="module")
def study(tmp_path_factory, mini_dir, session_cache):
    """A tiny study with a lecture-style reported cell, and its rendered report."""
    tmp = tmp_path_factory.mktemp("e2e")
    grid = tmp / "tiny.yaml"
    grid.write_text(textwrap.dedent("""
        name: tiny
        seeds: 3
        fixed: {epochs: 1, train_limit: 120, test_limit: 40, log_every: 10}
        cells:   # lecture-style: each with the accuracy "reported" for it
          - {optimizer: manual_sgd, reported_accuracy: 35, label: "Manual SGD"}
          - {optimizer: sgd, reported_accuracy: 31, label: "PyTorch SGD"}
          - {optimizer: adam, reported_accuracy: 56, label: "PyTorch Adam"}
          - {optimizer: adam, bn: true, reported_accuracy: 53, label: "Adam + BN"}
    """))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    env = _env(uri)
    run = subprocess.run([sys.executable, "-m", "study.cli", "run", str(grid), "--data-dir", str(mini_dir),
                          "--cache-dir", str(session_cache), "--threads", "1", "--quiet"],
                         env=env, cwd=tmp, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rep = subprocess.run([sys.executable, "-m", "study.cli", "report", "--study", "tiny", "--out", str(tmp / "report")],
                         env=env, cwd=tmp, capture_output=True, text=True, timeout=600)
    assert rep.returncode == 0, rep.stderr[-3000:]
    return {"tmp": tmp, "uri": uri, "out": tmp / "report", "stdout": rep.stdout}


def test_report_renders_every_section_from_the_numbers(study):
    out = study["out"]
    assert f"report: {(out / 'report.html').resolve()}" in study["stdout"]
    import html as html_lib

    html = (out / "report.html").read_text()
    text = html_lib.unescape(html)
    for heading in ("Study report: ", "Set-up", "The grid", "The lecture's numbers, checked",
                    "The lecture's orderings", "Findings per factor", "Factorial ANOVA",
                    "Seeds: noise and how many are needed", "Failures"):
        assert heading in text, heading
    assert html.count("data:image/png;base64") >= 5  # self-contained: plots embedded
    assert "seed-paired runs" in html and "All 12 runs finished" in html
    assert "Traceback" not in html
    # the sentence on optimizer matches the comparisons table it came from
    import pandas as pd

    from study.report import describe_comparison

    comp = pd.read_csv(out / "analysis" / "comparisons.csv")
    row = comp[comp["factor"] == "optimizer"].iloc[0]
    assert describe_comparison(row) in text
    from study.report import describe_lecture_cell, describe_ordering

    for _, r in pd.read_csv(out / "analysis" / "lecture_check.csv").iterrows():
        assert describe_lecture_cell(r) in text
    for _, r in pd.read_csv(out / "analysis" / "lecture_orderings.csv").iterrows():
        assert describe_ordering(r) in text
    nb = json.loads((out / "report.ipynb").read_text())
    assert nb["metadata"]["papermill"]["parameters"]["study"] == "tiny"
    assert all(c.get("execution_count") for c in nb["cells"] if c["cell_type"] == "code")
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error" or o.get("name") == "stderr"]


@pytest.fixture(scope="module")
def server(study):
    with mlflow_server(study["uri"], study["tmp"]) as url:
        yield url


def _api(url: str, endpoint: str, body: dict | None = None, **query) -> dict:
    full = f"{url}/api/2.0/mlflow/{endpoint}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    req = urllib.request.Request(full, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_rest_api_shows_parent_children_params_metrics_and_artifacts(server):
    exps = _api(server, "experiments/search", {"max_results": 100})["experiments"]
    exp_ids = [e["experiment_id"] for e in exps]
    (parent,) = _api(server, "runs/search", {"experiment_ids": exp_ids,
                                             "filter": "tags.study_parent = 'tiny'"})["runs"]
    pid = parent["info"]["run_id"]
    assert parent["info"]["run_name"] == "tiny" and parent["info"]["status"] == "FINISHED"
    ptags = {t["key"]: t["value"] for t in parent["data"]["tags"]}
    assert "4 cells x 3 seeds = 12 runs" in ptags["mlflow.note.content"]
    kids = _api(server, "runs/search", {"experiment_ids": exp_ids, "max_results": 100,
                                        "filter": f"tags.mlflow.parentRunId = '{pid}'"})["runs"]
    assert len(kids) == 12
    adam_bn = _api(server, "runs/search", {"experiment_ids": exp_ids, "max_results": 100,
                                           "filter": "tags.optimizer = 'adam' and tags.bn = 'true'"})["runs"]
    assert sorted(r["info"]["run_name"] for r in adam_bn) == [f"adam-bn-default-none-s{i}" for i in range(3)]
    one = adam_bn[0]
    params = {p["key"]: p["value"] for p in one["data"]["params"]}
    assert params["optimizer"] == "adam" and params["bn"] == "true" and params["batch_size"] == "4"
    hist = _api(server, "metrics/get-history", run_id=one["info"]["run_id"], metric_key="train_loss")["metrics"]
    assert [m["step"] for m in hist][:3] == [9, 19, 29]
    arts = _api(server, "artifacts/list", run_id=pid, path="report").get("files", [])
    assert {"report/report.html", "report/report.ipynb"} <= {f["path"] for f in arts}
    analysis = {f["path"] for f in _api(server, "artifacts/list", run_id=pid, path="analysis").get("files", [])}
    assert {"analysis/comparisons.csv", "analysis/cells.csv", "analysis/anova.csv"} <= analysis


def test_browser_finds_the_study_in_the_experiment_page(server, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is missing: scripts/test.sh installs it (apt-get install chromium)"
    exps = _api(server, "experiments/search", {"max_results": 100})["experiments"]
    exp_id = next(e["experiment_id"] for e in exps if e["name"] == "optstudy")
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000",
           "--window-size=1400,900", "--dump-dom", f"{server}/#/experiments/{exp_id}/runs"]
    import re

    dom = text = ""
    for _ in range(3):  # the single-page app fetches runs after load; give it a few tries
        dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
        if re.search(r"\b13 matching runs", text):
            break
    assert "Runs - Experiment" in dom or "Training runs" in text
    assert ">tiny<" in dom  # the study's parent run, with its 12 children nested under it
    assert re.search(r"\b13 matching runs", text), text[-2000:]
