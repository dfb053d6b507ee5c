"""Declarative study grids (``experiments/*.yaml``): factors, fixed settings, seeds, exclusions.

A grid file has a ``name``, optional ``description``, ``seeds`` (a count, meaning seeds
0..N-1, or an explicit list), ``fixed`` settings shared by every cell, and either
``factors`` (levels whose full product makes the cells, minus ``exclude``) or ``cells`` (an
explicit list), or both. A cell may carry metadata that is not a training setting:
``reported_accuracy`` (what the lecture printed, for the analysis) and ``label``.

Everything is validated before anything runs: an unknown key or level, a wrong type, a
duplicate cell or malformed YAML raises :class:`GridError` naming the file, the key and what
is allowed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .config import (INITS, OPTIMIZERS, SCHEDULER_INTERVALS, SCHEDULERS, ConfigError,
                     TrainConfig)

TOP_LEVEL_KEYS = ("name", "description", "seeds", "fixed", "factors", "cells", "exclude")
CELL_METADATA = ("reported_accuracy", "label")
FACTOR_LEVELS: dict[str, tuple] = {
    "optimizer": OPTIMIZERS, "bn": (False, True), "init": INITS, "scheduler": SCHEDULERS,
    "scheduler_interval": SCHEDULER_INTERVALS,
}
# Settings a grid may fix or vary, with the Python type each must have in YAML.
SETTING_TYPES: dict[str, tuple[type, ...]] = {
    f.name: {"str": (str,), "bool": (bool,), "int": (int,), "float": (float, int),
             "int | None": (int, type(None))}[str(f.type)]
    for f in fields(TrainConfig)
}


class GridError(ValueError):
    """A grid file is invalid; the message names the file, the key and what is allowed."""


@dataclass(frozen=True)
class Cell:
    """One cell of a grid: its training settings (without the seed) and its metadata."""

    settings: dict[str, Any]
    reported_accuracy: float | None = None
    label: str | None = None

    def config(self, seed: int, **overrides: Any) -> TrainConfig:
        return TrainConfig(**{**self.settings, **overrides, "seed": seed})

    @property
    def name(self) -> str:
        return self.config(0).cell


@dataclass
class Grid:
    name: str
    path: Path
    seeds: list[int]
    cells: list[Cell]
    description: str = ""
    raw: dict = field(default_factory=dict)

    def runs(self, seeds: list[int] | None = None, **overrides: Any) -> list[tuple[Cell, TrainConfig]]:
        """Every (cell, config) of the grid for the given seeds, cell-major."""
        return [(c, c.config(s, **overrides)) for c in self.cells for s in (seeds or self.seeds)]


def _err(path: Path, where: str, message: str) -> GridError:
    return GridError(f"{path}: {where}: {message}")


def _check_setting(path: Path, where: str, key: str, value: Any) -> Any:
    if key not in SETTING_TYPES:
        raise _err(path, where, f"unknown setting {key!r}; allowed: {', '.join(SETTING_TYPES)}")
    types = SETTING_TYPES[key]
    if isinstance(value, bool) and bool not in types:
        raise _err(path, where, f"{key}={value!r} has the wrong type; expected {types[0].__name__}")
    if not isinstance(value, types):
        raise _err(path, where, f"{key}={value!r} has the wrong type; expected "
                                f"{' or '.join(t.__name__ for t in types if t is not type(None))}")
    if key in FACTOR_LEVELS and value not in FACTOR_LEVELS[key]:
        allowed = ", ".join(str(v).lower() if isinstance(v, bool) else v for v in FACTOR_LEVELS[key])
        raise _err(path, where, f"{key}={value!r} is not a level; allowed: {allowed}")
    return float(value) if types == (float, int) else value  # `gamma: 1` means 1.0


def _seeds(path: Path, value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool)
                                                 and s >= 0 for s in value):
        if len(set(value)) != len(value):
            raise _err(path, "seeds", f"{value!r} repeats a seed")
        return list(value)
    raise _err(path, "seeds", f"{value!r} is not allowed; give a count >= 1 or a list of seeds >= 0")


def load_grid(path: str | Path) -> Grid:
    """Read and validate a grid file. See the module docstring for the format."""
    path = Path(path)
    if not path.is_file():
        raise GridError(f"{path}: no such grid file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise GridError(f"{path}: malformed YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise GridError(f"{path}: a grid file must be a mapping with keys {', '.join(TOP_LEVEL_KEYS)}")
    unknown = [k for k in raw if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise _err(path, unknown[0], f"unknown key; allowed: {', '.join(TOP_LEVEL_KEYS)}")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise _err(path, "name", f"{name!r} must be a non-empty string")
    seeds = _seeds(path, raw.get("seeds", 5))

    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise _err(path, "fixed", "must be a mapping of setting: value")
    fixed = {k: _check_setting(path, f"fixed.{k}", k, v) for k, v in fixed.items()}
    if "seed" in fixed:
        raise _err(path, "fixed.seed", "seeds are set by the top-level 'seeds' key")

    combos: list[dict[str, Any]] = []
    factors = raw.get("factors")
    if factors is not None:
        if not isinstance(factors, dict) or not factors:
            raise _err(path, "factors", "must be a mapping of setting: [levels]")
        for k, levels in factors.items():
            if not isinstance(levels, list) or not levels:
                raise _err(path, f"factors.{k}", f"{levels!r} must be a non-empty list of levels")
            for v in levels:
                _check_setting(path, f"factors.{k}", k, v)
            if len(set(map(repr, levels))) != len(levels):
                raise _err(path, f"factors.{k}", f"{levels!r} repeats a level")
        keys = list(factors)
        combos += [dict(zip(keys, values)) for values in itertools.product(*factors.values())]

    excludes = raw.get("exclude") or []
    if not isinstance(excludes, list) or not all(isinstance(e, dict) for e in excludes):
        raise _err(path, "exclude", "must be a list of mappings (setting: level)")
    for i, e in enumerate(excludes):
        for k, v in e.items():
            _check_setting(path, f"exclude[{i}].{k}", k, v)
    combos = [c for c in combos if not any(all(c.get(k, fixed.get(k)) == v for k, v in e.items())
                                           for e in excludes)]

    metas: list[dict[str, Any]] = [{} for _ in combos]
    explicit = raw.get("cells") or []
    if not isinstance(explicit, list):
        raise _err(path, "cells", "must be a list of mappings")
    for i, c in enumerate(explicit):
        if not isinstance(c, dict):
            raise _err(path, f"cells[{i}]", "must be a mapping of setting: value")
        settings = {k: _check_setting(path, f"cells[{i}].{k}", k, v) for k, v in c.items()
                    if k not in CELL_METADATA}
        meta = {k: c[k] for k in CELL_METADATA if k in c}
        if "reported_accuracy" in meta and not isinstance(meta["reported_accuracy"], (int, float)):
            raise _err(path, f"cells[{i}].reported_accuracy", f"{meta['reported_accuracy']!r} must be a number (percent)")
        combos.append(settings)
        metas.append(meta)
    if not combos:
        raise _err(path, "cells", "the grid has no cells (give 'factors' or 'cells')")

    cells, seen = [], {}
    for i, (settings, meta) in enumerate(zip(combos, metas)):
        merged = {**fixed, **settings}
        try:
            cfg = TrainConfig(**merged, seed=0)
        except ConfigError as exc:
            raise _err(path, f"cell {i}", str(exc)) from exc
        ident = repr(sorted(cfg.key_fields().items()))
        if ident in seen:
            raise _err(path, f"cell {i} ({cfg.cell})", f"duplicates cell {seen[ident]}; every cell must differ")
        seen[ident] = i
        cells.append(Cell(merged, reported_accuracy=meta.get("reported_accuracy"), label=meta.get("label")))
    return Grid(name=name, path=path, seeds=seeds, cells=cells,
                description=str(raw.get("description", "")), raw=raw)


def parse_filter(factor: str, value: str | None) -> list[Any] | None:
    """``"adam,sgd"`` -> ["adam", "sgd"]; ``"all"``, ``""`` or None -> None (no filter).

    Raises:
      GridError: a level is not one of the factor's levels.
    """
    if value is None or str(value).strip().lower() in ("", "all"):
        return None
    out = []
    for part in str(value).split(","):
        part = part.strip()
        if factor == "bn":
            low = part.lower()
            if low in ("on", "true", "yes", "1", "bn"):
                out.append(True)
                continue
            if low in ("off", "false", "no", "0", "nobn"):
                out.append(False)
                continue
            raise GridError(f"--bn {part!r} is not a level; allowed: on, off (or true, false)")
        if part not in FACTOR_LEVELS[factor]:
            raise GridError(f"--{factor.replace('_', '-')} {part!r} is not a level; allowed: "
                            f"{', '.join(FACTOR_LEVELS[factor])}")
        out.append(part)
    return out


def select(grid: Grid, filters: dict[str, list[Any] | None]) -> list[Cell]:
    """The cells whose factor levels are all among the filter's levels."""
    active = {k: v for k, v in filters.items() if v is not None}
    keep = [c for c in grid.cells
            if all(getattr(c.config(0), k) in levels for k, levels in active.items())]
    if not keep:
        desc = ", ".join(f"{k}={','.join(map(str, v))}" for k, v in active.items())
        raise GridError(f"{grid.path}: no cell matches {desc}")
    return keep
