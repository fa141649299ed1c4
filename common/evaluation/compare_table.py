"""The table of `dkt compare`: per cell, mean ± std over seeds of each run's headline
numbers, and the paired difference against the baseline cell of the same seed; written
as compare.md, compare.csv, compare-runs.csv and compare.png. Torch-free.

compare.csv is tidy, one row per (cell, metric):

    cell            the cell's key (its folder under runs/)
    OPTION...       one column per varied option, with the cell's value
    metric          avg_acc_cl, forgetting_cl, acc_all_cl, acc_all_st, transfer_st,
                    bytes_per_agent_experience
    unit            fraction (accuracies, forgetting: 0..1) or bytes
    seeds           how many seeds the mean is over (seeds whose value is defined)
    mean, std       over seeds; std is the sample standard deviation (n - 1), empty for n < 2
    baseline        the baseline cell's key ('' without a baseline)
    diff_mean, diff_std, diff_seeds
                    over the seeds both runs have: mean and std of (cell - baseline);
                    0 for the baseline cell itself, empty without a baseline

compare-runs.csv has the values behind it, one row per (cell, seed, metric):
cell, OPTION..., seed, metric, unit, value.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dkt.common.byte_sizes import format_bytes
from dkt.common.run.grid import Cell, Grid, format_value

RunKey = tuple[str, int]  # (cell key, seed)
Numbers = dict[str, float | None]


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    unit: str  # "fraction" or "bytes"


METRICS = (
    Metric("avg_acc_cl", "avg acc cl", "fraction"),
    Metric("forgetting_cl", "forgetting cl", "fraction"),
    Metric("acc_all_cl", "acc all cl", "fraction"),
    Metric("acc_all_st", "acc all st", "fraction"),
    Metric("transfer_st", "transfer st", "fraction"),
    Metric("bytes_per_agent_experience", "bytes/agent/exp", "bytes"),
)


def run_numbers(metrics: Mapping[str, Any]) -> Numbers:
    """A run's headline numbers from its metrics.json: the mean over agents of each
    (as in summary.md); bytes are published + fetched per agent per experience."""
    mean = metrics["mean_over_agents"]
    per_agent = [
        (a["summary"]["bytes_published"] + a["summary"]["bytes_fetched"])
        / a["summary"]["experiences_done"]
        for a in metrics["agents"].values()
        if a["summary"]["experiences_done"]
    ]
    return {
        "avg_acc_cl": mean.get("avg_acc_cl"),
        "forgetting_cl": mean.get("forgetting_cl"),
        "acc_all_cl": mean.get("acc_all_cl"),
        "acc_all_st": mean.get("acc_all_st"),
        "transfer_st": mean.get("transfer_st_mean"),
        "bytes_per_agent_experience": statistics.fmean(per_agent) if per_agent else None,
    }


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation of the defined values among n."""

    mean: float | None
    std: float | None
    n: int


def describe(values: Sequence[float | None]) -> Stat:
    present = [v for v in values if v is not None]
    if not present:
        return Stat(None, None, 0)
    std = statistics.stdev(present) if len(present) > 1 else None
    return Stat(statistics.fmean(present), std, len(present))


def paired_differences(
    cell: Mapping[int, float | None], baseline: Mapping[int, float | None]
) -> list[float]:
    """cell - baseline for every seed both have a value for, in seed order."""
    return [
        value - baseline[seed]  # type: ignore[operator]
        for seed, value in sorted(cell.items())
        if value is not None and baseline.get(seed) is not None
    ]


@dataclass(frozen=True)
class CellRow:
    cell: Cell
    seeds_done: tuple[int, ...]
    stats: dict[str, Stat]
    baseline: Cell | None
    diffs: dict[str, Stat]  # empty without a baseline

    @property
    def is_baseline(self) -> bool:
        return self.baseline is not None and self.baseline == self.cell


def aggregate(grid: Grid, numbers: Mapping[RunKey, Numbers]) -> list[CellRow]:
    """One row per cell of the grid, from the numbers of the runs that are done."""
    rows = []
    for cell in grid.cells():
        seeds = tuple(s for s in grid.seeds if (cell.key, s) in numbers)
        per_metric = {m.name: {s: numbers[cell.key, s][m.name] for s in seeds} for m in METRICS}
        stats = {name: describe(list(v.values())) for name, v in per_metric.items()}
        base = grid.baseline_of(cell)
        diffs = {}
        if base is not None:
            base_seeds = [s for s in grid.seeds if (base.key, s) in numbers]
            for m in METRICS:
                reference = {s: numbers[base.key, s][m.name] for s in base_seeds}
                diffs[m.name] = describe(paired_differences(per_metric[m.name], reference))
        rows.append(CellRow(cell, seeds, stats, base, diffs))
    return rows


# Rendering --------------------------------------------------------------------------


def format_stat(stat: Stat, unit: str, signed: bool = False) -> str:
    """`95.8 ± 1.2` (percent points) or `1.5 KiB ± 0.1 KiB`; `n/a` when undefined."""
    if stat.mean is None:
        return "n/a"
    if unit == "bytes":
        sign = "+" if signed and stat.mean > 0 else ("-" if stat.mean < 0 else "")
        text = sign + format_bytes(abs(stat.mean))
        return text if stat.std is None else f"{text} ± {format_bytes(stat.std)}"
    text = f"{100 * stat.mean:+.1f}" if signed else f"{100 * stat.mean:.1f}"
    return text if stat.std is None else f"{text} ± {100 * stat.std:.1f}"


def _option_columns(grid: Grid, cell: Cell) -> list[str]:
    return [format_value(v) for _, v in cell.values] if grid.vary else ["base"]


def render_markdown(grid: Grid, rows: list[CellRow], command: str) -> str:
    """compare.md: the command that produced it, the grid, then the two tables."""
    defaults = type(grid.base)()
    changed = [
        f"{name}={format_value(getattr(grid.base, name))}"
        for name in grid.base.to_dict()
        if name not in {"seed", *grid.varied}
        and getattr(grid.base, name) != getattr(defaults, name)
    ]
    runs_done = sum(len(r.seeds_done) for r in rows)
    runs_total = len(rows) * len(grid.seeds)
    lines = [
        "```bash",
        command,
        "```",
        "",
        "# dkt compare",
        "",
        f"- base: {', '.join(changed) if changed else 'the defaults'} "
        "(every other option at its default; the full grid is in `grid.toml`)",
        "- varied: "
        + (
            "; ".join(f"{n} ∈ {{{', '.join(map(format_value, v))}}}" for n, v in grid.vary)
            or "nothing (one cell)"
        ),
        f"- seeds: {', '.join(map(str, grid.seeds))}; runs done: {runs_done} of {runs_total}",
        f"- baseline: {grid.baseline_label}, paired by seed"
        if grid.baseline
        else "- baseline: none (no varied `exchange=none` or `kd_weight=0`; "
        "pass --baseline OPTION=VALUE), so no paired differences",
        "",
        "## Mean ± std over seeds",
        "",
    ]
    heads = grid.varied or ["cell"]
    lines += _table(
        [*heads, "seeds", *(m.label for m in METRICS)],
        [
            [
                *_option_columns(grid, r.cell),
                str(len(r.seeds_done)),
                *(format_stat(r.stats[m.name], m.unit) for m in METRICS),
            ]
            for r in rows
        ],
    )
    if grid.baseline:
        lines += [
            "",
            f"## Paired difference against the baseline ({grid.baseline_label}), same seed",
            "",
        ]
        lines += _table(
            [*heads, "pairs", *(f"Δ {m.label}" for m in METRICS)],
            [
                [
                    *_option_columns(grid, r.cell),
                    str(max((s.n for s in r.diffs.values()), default=0)),
                    *(
                        "baseline"
                        if r.is_baseline
                        else format_stat(r.diffs[m.name], m.unit, signed=True)
                        for m in METRICS
                    ),
                ]
                for r in rows
            ],
        )
    lines += [
        "",
        "Accuracy and forgetting in percentage points (heads: `cl` continual, `st` "
        "student); `avg acc`: mean accuracy on every experience after training the last, "
        "`acc all`: on the test data of all classes, `transfer st`: the student head on "
        "classes only the teachers trained on; bytes: published + fetched per agent per "
        "experience. Each number is the mean over agents of one run, then the mean ± "
        "sample std (n − 1) over seeds. A paired difference is the mean ± std over seeds "
        "of (cell − baseline cell of the same seed). `compare.csv` has these numbers "
        "unrounded, `compare-runs.csv` every run's, `runs/CELL/seed-S/` each run's "
        "results folder.",
        "",
    ]
    return "\n".join(lines)


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in body),
    ]


def _csv_number(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else repr(float(value))


def write_csv(path: Path, grid: Grid, rows: list[CellRow]) -> None:
    """compare.csv, one row per (cell, metric); see the module docstring."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["cell", *grid.varied, "metric", "unit", "seeds", "mean", "std", "baseline"]
            + ["diff_mean", "diff_std", "diff_seeds"]
        )
        for r in rows:
            for m in METRICS:
                stat, diff = r.stats[m.name], r.diffs.get(m.name)
                writer.writerow(
                    [r.cell.key, *(format_value(v) for _, v in r.cell.values), m.name, m.unit]
                    + [stat.n, _csv_number(stat.mean), _csv_number(stat.std)]
                    + [r.baseline.key if r.baseline else ""]
                    + (
                        [_csv_number(diff.mean), _csv_number(diff.std), diff.n]
                        if diff is not None
                        else ["", "", ""]
                    )
                )


def write_runs_csv(path: Path, grid: Grid, numbers: Mapping[RunKey, Numbers]) -> None:
    """compare-runs.csv, one row per (cell, seed, metric)."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["cell", *grid.varied, "seed", "metric", "unit", "value"])
        for cell in grid.cells():
            for seed in grid.seeds:
                if (cell.key, seed) not in numbers:
                    continue
                for m in METRICS:
                    writer.writerow(
                        [cell.key, *(format_value(v) for _, v in cell.values), seed]
                        + [m.name, m.unit, _csv_number(numbers[cell.key, seed][m.name])]
                    )


def plot(path: Path, grid: Grid, rows: list[CellRow]) -> None:
    """compare.png: one panel per metric, a horizontal bar per cell (± std over seeds),
    the baseline cell hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = max(3.0, 0.35 * len(rows) + 1.5)
    fig, axes = plt.subplots(2, 3, figsize=(15, 2 * height), constrained_layout=True)
    labels = [r.cell.label for r in rows]
    ys = list(range(len(rows)))
    for ax, m in zip(axes.flat, METRICS, strict=True):
        scale = 100.0 if m.unit == "fraction" else 1 / 1024
        means = [(r.stats[m.name].mean or 0.0) * scale for r in rows]
        stds = [(r.stats[m.name].std or 0.0) * scale for r in rows]
        bars = ax.barh(ys, means, xerr=stds, capsize=3, color="tab:blue", alpha=0.8)
        for bar, r in zip(bars, rows, strict=True):
            if r.is_baseline:
                bar.set_hatch("//")
                bar.set_color("tab:gray")
        ax.set_yticks(ys, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(m.label)
        ax.set_xlabel("%" if m.unit == "fraction" else "KiB")
        ax.grid(axis="x", alpha=0.3)
    hatched = f"; baseline ({grid.baseline_label}) hatched" if grid.baseline else ""
    fig.suptitle(f"dkt compare: mean ± std over {len(grid.seeds)} seeds{hatched}")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_table(
    out: Path, grid: Grid, numbers: Mapping[RunKey, Numbers], command: str
) -> list[CellRow]:
    """Write compare.md, compare.csv, compare-runs.csv and compare.png into `out`."""
    rows = aggregate(grid, numbers)
    (out / "compare.md").write_text(render_markdown(grid, rows, command))
    write_csv(out / "compare.csv", grid, rows)
    write_runs_csv(out / "compare-runs.csv", grid, numbers)
    plot(out / "compare.png", grid, rows)
    return rows
