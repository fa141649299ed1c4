"""A grid of experiments for `dkt compare`: a base config, the options varied and the
seeds, expanded into cells (one combination of varied values) and runs (a cell at one
seed), each with its folder under the output directory.

Generic over `ExperimentConfig`: any field can be varied or set in the base, and every
value is checked by the config's own validation. Torch-free.

Layout of an output directory OUT:

    OUT/grid.toml                        the resolved grid (re-runnable with --grid)
    OUT/runs/CELL-KEY/seed-S/            one results folder per run (write_results)
    OUT/runs/CELL-KEY/seed-S.partial/    a run in progress (checkpoints, then results)

A run whose `metrics.json` exists is done and never rerun.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from dkt.common.run.config import ExperimentConfig, config_fields

GRID_FILE = "grid.toml"
RUNS_DIR = "runs"
PARTIAL_SUFFIX = ".partial"
GRID_FILE_KEYS = ("base", "seeds", "vary", "baseline")


class GridError(ValueError):
    """A grid a user wrote that cannot run; the message is one line saying what to fix."""


def field_names() -> list[str]:
    """The options a grid can vary: the config's one-value fields (each a flag)."""
    return [f.name for f in config_fields()]


def all_field_names() -> list[str]:
    """Every field of the config, including tables such as per-agent overrides, which a
    base may set but a grid does not vary."""
    return [f.name for f in dataclasses.fields(ExperimentConfig)]


def option_name(key: str, where: str, *, in_base: bool = False) -> str:
    """The config field a user's key names (`kd-weight` or `kd_weight`), or a GridError
    naming the valid fields."""
    name = key.strip().replace("-", "_")
    if name == "seed":
        raise GridError(f"{where}: the seed is not an option to vary here; use --seeds / seeds")
    valid = all_field_names() if in_base else field_names()
    if name not in valid:
        listed = ", ".join(n for n in valid if n != "seed")
        raise GridError(f"{where}: unknown option {key.strip()!r}; valid options: {listed}")
    return name


def typed_value(base: ExperimentConfig, name: str, raw: Any, where: str) -> Any:
    """`raw` (a flag's text or a TOML value) as the field's value, checked by the config."""
    try:
        config = ExperimentConfig.from_dict({**base.to_dict(), name: raw})
    except ValueError as exc:
        raise GridError(f"{where}: {exc}") from None
    return getattr(config, name)


def format_value(value: Any) -> str:
    """A value as it appears in cell keys and tables: true/false, 0.1, 1.0, dkt."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class Cell:
    """One combination of varied values, in the grid's order of varied options."""

    values: tuple[tuple[str, Any], ...]

    @property
    def key(self) -> str:
        """A folder name: `kd_weight=0.1__exchange=dkt` (`base` when nothing varies)."""
        if not self.values:
            return "base"
        parts = (f"{name}={format_value(value)}" for name, value in self.values)
        return re.sub(r"[^\w.=+-]", "_", "__".join(parts))

    @property
    def label(self) -> str:
        """For people: `kd_weight=0.1, exchange=dkt`."""
        return ", ".join(f"{n}={format_value(v)}" for n, v in self.values) or "base"

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)

    def with_values(self, changes: dict[str, Any]) -> Cell:
        return Cell(tuple((n, changes.get(n, v)) for n, v in self.values))


@dataclass(frozen=True)
class Run:
    """One cell at one seed, with the exact config it trains."""

    cell: Cell
    seed: int
    config: ExperimentConfig

    def folder(self, out: str | Path) -> Path:
        return Path(out) / RUNS_DIR / self.cell.key / f"seed-{self.seed}"

    def partial_folder(self, out: str | Path) -> Path:
        folder = self.folder(out)
        return folder.with_name(folder.name + PARTIAL_SUFFIX)

    def is_done(self, out: str | Path) -> bool:
        return (self.folder(out) / "metrics.json").exists()


@dataclass(frozen=True)
class Grid:
    """Base config × varied options × seeds, with an optional baseline cell spec."""

    base: ExperimentConfig
    seeds: tuple[int, ...]
    vary: tuple[tuple[str, tuple[Any, ...]], ...]
    baseline: tuple[tuple[str, Any], ...] = ()

    @property
    def varied(self) -> list[str]:
        return [name for name, _ in self.vary]

    def cells(self) -> list[Cell]:
        names = self.varied
        return [
            Cell(tuple(zip(names, combo, strict=True)))
            for combo in itertools.product(*(values for _, values in self.vary))
        ]

    def runs(self) -> list[Run]:
        """Every run, seed by seed, so early results cover every cell."""
        cells = self.cells()
        runs = []
        for seed in self.seeds:
            for cell in cells:
                try:
                    config = ExperimentConfig.from_dict(
                        {**self.base.to_dict(), **cell.as_dict(), "seed": seed}
                    )
                except ValueError as exc:
                    raise GridError(f"cell {cell.label}: {exc}") from None
                runs.append(Run(cell, seed, config))
        return runs

    def baseline_of(self, cell: Cell) -> Cell | None:
        """The cell `cell` is compared with: itself with the baseline's values."""
        return cell.with_values(dict(self.baseline)) if self.baseline else None

    @property
    def baseline_label(self) -> str:
        return ", ".join(f"{n}={format_value(v)}" for n, v in self.baseline)

    def to_toml(self) -> str:
        """The resolved grid, re-runnable with `dkt compare --grid`."""
        base = {k: v for k, v in self.base.to_dict().items() if k != "seed"}
        doc: dict[str, Any] = {"seeds": list(self.seeds)}
        if self.baseline:
            doc["baseline"] = dict(self.baseline)
        doc["base"] = base
        doc["vary"] = {name: list(values) for name, values in self.vary}
        return tomli_w.dumps(doc)


# Building a grid --------------------------------------------------------------------


@dataclass
class GridSpec:
    """A grid as written by a user (raw values), before validation."""

    base: dict[str, Any]
    seeds: list[Any] | None
    vary: list[tuple[str, list[Any], str]]  # (key, raw values, where it was written)
    baseline: list[tuple[str, Any, str]] | None  # None: the default baseline


def read_grid_file(path: str | Path) -> GridSpec:
    """Read a grid TOML: `seeds = [...]`, `baseline = {key = value}`, `[base]`, `[vary]`."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise GridError(f"{path} is not valid TOML: {exc}") from None
    unknown = sorted(set(doc) - set(GRID_FILE_KEYS))
    if unknown:
        raise GridError(
            f"{path}: unknown key {unknown[0]!r}; a grid file has "
            f"{', '.join(GRID_FILE_KEYS)} (experiment options go in [base] or [vary])"
        )
    base = doc.get("base", {})
    vary = doc.get("vary", {})
    baseline = doc.get("baseline")
    for name, value in (("base", base), ("vary", vary)):
        if not isinstance(value, dict):
            raise GridError(f"{path}: {name} must be a table ([{name}])")
    if baseline is not None and not isinstance(baseline, dict):
        raise GridError(f"{path}: baseline must be a table, e.g. baseline = {{ kd_weight = 0 }}")
    for key, values in vary.items():
        if not isinstance(values, list) or not values:
            raise GridError(f"{path}: vary.{key} must be a non-empty list, e.g. {key} = [0, 1]")
    seeds = doc.get("seeds")
    if seeds is not None and not isinstance(seeds, list):
        raise GridError(f"{path}: seeds must be a list, e.g. seeds = [0, 1, 2]")
    return GridSpec(
        base=dict(base),
        seeds=seeds,
        vary=[(key, list(values), f"{path} [vary]") for key, values in vary.items()],
        baseline=None
        if baseline is None
        else [(key, value, f"{path} baseline") for key, value in baseline.items()],
    )


def parse_vary_flag(text: str) -> tuple[str, list[str]]:
    """`kd_weight=0,0.1,1` -> ("kd_weight", ["0", "0.1", "1"])."""
    key, sep, values = text.partition("=")
    parts = [v.strip() for v in values.split(",")]
    if not sep or not key.strip() or not all(parts):
        raise GridError(f"--vary {text!r}: write OPTION=VALUE,VALUE,... e.g. kd_weight=0,0.1,1")
    return key.strip(), parts


def parse_baseline_flag(text: str) -> tuple[str, str]:
    """`exchange=none` -> ("exchange", "none")."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip() or "," in value:
        raise GridError(f"--baseline {text!r}: write OPTION=VALUE, e.g. kd_weight=0")
    return key.strip(), value.strip()


def parse_seeds(text: str) -> list[int]:
    """`0,1,2` -> [0, 1, 2]."""
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise GridError(
            f"--seeds {text!r}: write whole numbers separated by commas, e.g. 0,1,2"
        ) from None


DEFAULT_SEEDS = (0, 1, 2)


def build_grid(
    base: ExperimentConfig,
    seeds: Iterable[Any] | None,
    vary: Sequence[tuple[str, Sequence[Any], str]],
    baseline: Sequence[tuple[str, Any, str]] | None = None,
) -> Grid:
    """Validate every option and value against `ExperimentConfig` and build the grid.
    `baseline` None picks the default (see `default_baseline`); an empty list means none."""
    typed_seeds = _seeds(DEFAULT_SEEDS if seeds is None else list(seeds))
    typed_vary: dict[str, tuple[Any, ...]] = {}
    for key, raws, where in vary:
        name = option_name(key, where)
        values = tuple(typed_value(base, name, raw, f"{where} {name}") for raw in raws)
        repeated = [format_value(v) for i, v in enumerate(values) if v in values[:i]]
        if repeated:
            raise GridError(f"{where} {name}: value {repeated[0]} is listed twice")
        typed_vary[name] = values  # a later --vary of the same option replaces the file's
    grid_vary = tuple(typed_vary.items())
    if baseline is None:
        chosen = default_baseline(dict(grid_vary))
    else:
        chosen = []
        for key, raw, where in baseline:
            name = option_name(key, where)
            value = typed_value(base, name, raw, f"{where} {name}")
            if name not in typed_vary:
                raise GridError(
                    f"{where} {name}={format_value(value)}: the baseline must name a varied "
                    f"option ({', '.join(typed_vary) or 'nothing is varied'})"
                )
            if value not in typed_vary[name]:
                listed = ", ".join(map(format_value, typed_vary[name]))
                raise GridError(
                    f"{where} {name}={format_value(value)}: not one of the varied values ({listed})"
                )
            chosen.append((name, value))
    grid = Grid(base, typed_seeds, grid_vary, tuple(chosen))
    grid.runs()  # every combination must be a valid config, before anything starts
    return grid


def default_baseline(vary: dict[str, tuple[Any, ...]]) -> list[tuple[str, Any]]:
    """`exchange=none` when exchange varies over none, else `kd_weight=0` when kd_weight
    varies over 0, else no baseline."""
    fields = set(field_names())
    if "exchange" in fields and "none" in vary.get("exchange", ()):
        return [("exchange", "none")]
    if "kd_weight" in fields and 0.0 in vary.get("kd_weight", ()):
        return [("kd_weight", 0.0)]
    return []


def _seeds(raw: Sequence[Any]) -> tuple[int, ...]:
    if not raw:
        raise GridError("seeds: give at least one seed")
    if any(isinstance(s, bool) or not isinstance(s, int) for s in raw):
        raise GridError(f"seeds must be whole numbers, got {raw!r}")
    if len(set(raw)) != len(raw):
        raise GridError(f"seeds: a seed is listed twice in {raw!r}")
    return tuple(raw)


# Resuming ---------------------------------------------------------------------------


def check_resumable(grid: Grid, out: str | Path) -> None:
    """Refuse to mix runs of different base configs in one output directory: the saved
    grid's base must agree with this one on every option that neither grid varies, and
    every finished run's config must be the one this grid would train there."""
    out = Path(out)
    saved = out / GRID_FILE
    if saved.exists():
        doc = tomllib.loads(saved.read_text())
        try:
            old = ExperimentConfig.from_dict(doc.get("base", {}))
        except ValueError as exc:
            raise GridError(f"{saved} cannot be read ({exc}); pick another --out") from None
        skip = {"seed", *grid.varied, *doc.get("vary", {})}
        changed = config_differences(old, grid.base, skip)
        if changed:
            raise GridError(
                f"{out} holds runs of a different base config ({changed}); "
                "use the same base options, or another --out"
            )
    for run in grid.runs():
        metrics = run.folder(out) / "metrics.json"
        if metrics.exists():
            done = ExperimentConfig.from_dict(json.loads(metrics.read_text())["config"])
            changed = config_differences(done, run.config)
            if changed:
                raise GridError(
                    f"{run.folder(out)} holds a run of another config ({changed}); "
                    "pick another --out"
                )


def config_differences(
    old: ExperimentConfig, new: ExperimentConfig, skip: Iterable[str] = ()
) -> str:
    """`kd_weight: 1.0 -> 5.0, epochs: 8 -> 2` for the fields that differ ('' if none)."""
    skip = set(skip)
    return ", ".join(
        f"{name}: {getattr(old, name)!r} -> {getattr(new, name)!r}"
        for name in all_field_names()
        if name not in skip and getattr(old, name) != getattr(new, name)
    )


def write_grid_file(grid: Grid, out: str | Path) -> Path:
    path = Path(out) / GRID_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(grid.to_toml())
    return path
