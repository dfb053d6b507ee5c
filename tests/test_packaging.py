"""The environment is described once: pyproject ranges, the lock's exact versions, conda.yaml."""

from __future__ import annotations

import re

import yaml

from tests.conftest import REPO


def _name(req: str) -> str:
    return re.split(r"[\[=<>!~ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[_name(name)] = version.strip()
    return pins


def conda_pins() -> dict[str, str]:
    env = yaml.safe_load((REPO / "conda.yaml").read_text())
    (pip,) = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    return {_name(r): r.split("==", 1)[1] for r in pip if "==" in r}


def pyproject_deps() -> list[str]:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def test_torch_is_pinned_everywhere():
    assert lock()["torch"] == "2.14.1" and lock()["torchvision"] == "0.29.1"
    assert conda_pins()["torch"] == "2.14.1" and conda_pins()["torchvision"] == "0.29.1"
    assert "torch==2.14.1" in pyproject_deps() and "torchvision==0.29.1" in pyproject_deps()


def test_conda_pins_equal_the_lock():
    l = lock()
    mismatched = {n: (v, l.get(n)) for n, v in conda_pins().items() if l.get(n) != v}
    assert mismatched == {}


def test_every_dependency_is_in_conda_yaml_and_the_lock():
    names = {_name(d) for d in pyproject_deps()}
    assert names - set(conda_pins()) == set()
    assert names - set(lock()) == set()


def test_python_version_agrees():
    env = yaml.safe_load((REPO / "conda.yaml").read_text())
    assert "python=3.11" in env["dependencies"]
