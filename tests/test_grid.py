"""Grid files: expansion, the lecture's cells, filters, and errors that name file, key and allowed."""

from __future__ import annotations

import textwrap

import pytest
from click.testing import CliRunner

from study.cli import main
from study.grid import GridError, load_grid, parse_filter, select
from tests.conftest import REPO


def grid_file(tmp_path, text: str):
    p = tmp_path / "g.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_factorial_is_the_full_72_cell_product():
    g = load_grid(REPO / "experiments" / "factorial.yaml")
    assert len(g.cells) == 4 * 2 * 3 * 3 and g.seeds == [0, 1, 2, 3, 4]
    combos = {(c.settings["optimizer"], c.settings["bn"], c.settings["init"], c.settings["scheduler"]) for c in g.cells}
    assert len(combos) == 72
    assert all(c.config(0).epochs == 2 and c.config(0).batch_size == 4 and c.config(0).lr == 0.001 for c in g.cells)


def test_lecture_grid_reproduces_the_lecture_cells():
    g = load_grid(REPO / "experiments" / "lecture.yaml")
    reported = {c.name: c.reported_accuracy for c in g.cells}
    assert reported == {
        "manual_sgd-nobn-default-none": 35, "sgd-nobn-default-none": 31,
        "manual_adam-nobn-default-none": 53, "adam-nobn-default-none": 56,
        "adam-bn-default-none": 53, "adam-bn-kaiming-none": 52, "adam-bn-xavier-none": 52,
        "adam-bn-default-step@never": 55, "adam-bn-default-exponential@never": 52,
        "adam-bn-default-step": None, "adam-bn-default-exponential": None,
    }
    never = [c for c in g.cells if c.settings.get("scheduler_interval") == "never"]
    assert {c.settings["scheduler"] for c in never} == {"step", "exponential"}


def test_smoke_grid_is_small():
    g = load_grid(REPO / "experiments" / "smoke.yaml")
    assert len(g.cells) * len(g.seeds) <= 8 and all(c.config(0).train_limit for c in g.cells)


def test_exclusions_remove_cells(tmp_path):
    g = load_grid(grid_file(tmp_path, """
        name: x
        factors: {optimizer: [sgd, adam], bn: [false, true]}
        exclude: [{optimizer: sgd, bn: true}]
    """))
    assert sorted(c.name for c in g.cells) == ["adam-bn-default-none", "adam-nobn-default-none", "sgd-nobn-default-none"]


@pytest.mark.parametrize("body,needles", [
    ("factors: {optimiser: [sgd]}", ["optimiser", "unknown setting", "optimizer"]),
    ("factors: {optimizer: [rmsprop]}", ["factors.optimizer", "rmsprop", "manual_sgd, sgd, manual_adam, adam"]),
    ("factors: {bn: [yes please]}", ["factors.bn", "wrong type", "bool"]),
    ("fixed: {epochs: two}\nfactors: {optimizer: [sgd]}", ["fixed.epochs", "'two'", "int"]),
    ("factors: {optimizer: [sgd, sgd]}", ["factors.optimizer", "repeats"]),
    ("cells: [{optimizer: sgd}, {optimizer: sgd, scheduler: none}]", ["duplicates cell 0"]),
    ("factors: {optimizer: [sgd}", ["malformed YAML"]),
    ("grid_size: 3\nfactors: {optimizer: [sgd]}", ["grid_size", "unknown key", "factors"]),
    ("seeds: 0\nfactors: {optimizer: [sgd]}", ["seeds", "count >= 1"]),
    ("fixed: {epochs: 0}\nfactors: {optimizer: [sgd]}", ["epochs=0", ">= 1"]),
])
def test_bad_grid_names_file_key_and_allowed(tmp_path, body, needles):
    p = grid_file(tmp_path, body)
    with pytest.raises(GridError) as e:
        load_grid(p)
    msg = str(e.value)
    assert str(p) in msg
    for n in needles:
        assert n in msg


def test_filters():
    g = load_grid(REPO / "experiments" / "factorial.yaml")
    cells = select(g, {"optimizer": parse_filter("optimizer", "adam"), "bn": None, "init": None, "scheduler": None})
    assert len(cells) == 18
    cells = select(g, {"optimizer": ["adam"], "bn": parse_filter("bn", "on"),
                       "init": ["kaiming"], "scheduler": parse_filter("scheduler", "step")})
    assert [c.name for c in cells] == ["adam-bn-kaiming-step"]
    assert parse_filter("optimizer", "adam, sgd") == ["adam", "sgd"] and parse_filter("init", "all") is None
    with pytest.raises(GridError, match="'adamw'.*manual_sgd, sgd, manual_adam, adam"):
        parse_filter("optimizer", "adam,adamw")


def test_grid_command_prints_cells_and_runs_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["grid", str(REPO / "experiments" / "factorial.yaml"), "--optimizer", "adam",
                                    "--seeds", "2"])
    assert res.exit_code == 0, res.output
    assert "runs: 36" in res.output and "adam-bn-xavier-exponential" in res.output
    assert not (tmp_path / "mlflow.db").exists()
    bad = CliRunner().invoke(main, ["grid", str(REPO / "experiments" / "factorial.yaml"), "--init", "he"])
    assert bad.exit_code == 2 and "'he'" in bad.output
