"""A run's and a comparison's numbers as tidy tables: rows as plain dicts (`*_records`),
or a pandas DataFrame where pandas is installed (`to_frame`). Torch-free; pandas is
imported only when a frame is asked for.

A run's tables, `by`:

    experience  one row per agent × experience: its accuracies, transfer, losses, bytes
    metric      one row per agent × experience × metric: agent, experience, metric, value
    matrix      one row per agent × head × (after experience e, test experience j):
                the accuracy matrix R[e][j], long
    agent       one row per agent: its summary after its last experience
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dkt.common.evaluation.compare_table import METRICS, CellRow, Numbers, RunKey
from dkt.common.evaluation.metrics import average_accuracy
from dkt.common.run.grid import Grid, format_value

if TYPE_CHECKING:
    from dkt.common.evaluation.results import RunResult

RunTable = Literal["experience", "metric", "matrix", "agent"]
CompareTable = Literal["cell", "run"]

# The columns of `by="experience"`, in order; every one but the first four is a metric.
EXPERIENCE_COLUMNS = (
    "agent",
    "experience",
    "classes",
    "teachers",
    "acc_cl",
    "acc_st",
    "avg_acc_cl",
    "avg_acc_st",
    "acc_all_cl",
    "acc_all_st",
    "transfer_cl",
    "transfer_st",
    "loss_ce",
    "loss_kd",
    "loss_lwf",
    "kd_weight",
    "steps",
    "train_seconds",
    "bytes_published",
    "bytes_fetched",
)
EXPERIENCE_METRICS = EXPERIENCE_COLUMNS[4:]
METRIC_COLUMNS = ("agent", "experience", "metric", "value")
MATRIX_COLUMNS = ("agent", "head", "after_experience", "test_experience", "accuracy")

PANDAS_MISSING = (
    "to_frame() needs pandas, which is not installed: pip install pandas "
    "(or pip install 'dkt[tables]'); to_records() gives the same rows as dicts without it"
)


def run_records(result: RunResult, by: RunTable = "experience") -> list[dict[str, Any]]:
    """A run's numbers as rows (see the module docstring for `by`)."""
    from dkt.common.evaluation.results import accuracy_matrix, agent_summary, reported_heads

    heads = reported_heads(result.config)
    histories = sorted(result.histories.items())
    if by == "agent":
        return [{"agent": a, **agent_summary(h, heads)} for a, h in histories]
    if by == "matrix":
        return [
            {
                "agent": a,
                "head": head,
                "after_experience": e,
                "test_experience": j,
                "accuracy": value,
            }  # fmt: skip
            for a, history in histories
            for head in heads
            for e, row in enumerate(accuracy_matrix(history, head))
            for j, value in enumerate(row)
        ]
    rows = []
    for agent, history in histories:
        matrices = {h: accuracy_matrix(history, h) for h in heads}
        for i, record in enumerate(history):
            row: dict[str, Any] = {
                "agent": agent,
                "experience": record.experience,
                "classes": list(record.classes),
                "teachers": sorted({t[0] for t in record.teachers}),
            }
            for head in ("cl", "st"):
                known = head in heads
                accuracies = getattr(record, f"acc_{head}")
                row[f"acc_{head}"] = accuracies[record.experience] if known else None
                row[f"avg_acc_{head}"] = average_accuracy(matrices[head], i) if known else None
                row[f"acc_all_{head}"] = getattr(record, f"acc_all_{head}") if known else None
            row["transfer_cl"] = record.transfer_cl
            row["transfer_st"] = record.transfer_st if "st" in heads else None
            for name in EXPERIENCE_COLUMNS[12:]:
                row[name] = getattr(record, name)
            rows.append({c: row[c] for c in EXPERIENCE_COLUMNS})
    if by == "experience":
        return rows
    if by == "metric":
        return [
            {"agent": r["agent"], "experience": r["experience"], "metric": m, "value": r[m]}
            for r in rows
            for m in EXPERIENCE_METRICS
        ]
    raise ValueError(f"by must be one of experience, metric, matrix, agent; got {by!r}")


def run_columns(by: RunTable) -> tuple[str, ...] | None:
    """The columns of a run's table (None for `agent`: the summary's keys)."""
    return {"experience": EXPERIENCE_COLUMNS, "metric": METRIC_COLUMNS,
            "matrix": MATRIX_COLUMNS}.get(by)  # fmt: skip


def to_frame(records: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> Any:
    """The rows as a pandas DataFrame (columns in order, also when there are no rows), or
    an ImportError that says how to get pandas."""
    try:
        import pandas as pd
    except ImportError:
        raise ImportError(PANDAS_MISSING) from None
    return pd.DataFrame.from_records(list(records), columns=list(columns) if columns else None)


@dataclass(frozen=True)
class Comparison:
    """What `dkt.compare` returns: the grid, one row per cell (mean ± std over seeds and
    the paired difference against the baseline), each run's numbers, and where the runs'
    results folders are (None when they were written to a temporary folder)."""

    grid: Grid
    rows: list[CellRow]
    numbers: dict[RunKey, Numbers]
    out: Path | None = None

    def to_records(self, by: CompareTable = "cell") -> list[dict[str, Any]]:
        """`cell`: one row per cell × metric (as compare.csv); `run`: one row per
        cell × seed × metric (as compare-runs.csv). Option values keep their types."""
        if by == "cell":
            return [
                {
                    "cell": r.cell.key,
                    **r.cell.as_dict(),
                    "metric": m.name,
                    "unit": m.unit,
                    "seeds": r.stats[m.name].n,
                    "mean": r.stats[m.name].mean,
                    "std": r.stats[m.name].std,
                    "baseline": r.baseline.key if r.baseline else None,
                    "diff_mean": r.diffs[m.name].mean if r.diffs else None,
                    "diff_std": r.diffs[m.name].std if r.diffs else None,
                    "diff_seeds": r.diffs[m.name].n if r.diffs else None,
                }
                for r in self.rows
                for m in METRICS
            ]
        if by == "run":
            return [
                {
                    "cell": cell.key,
                    **cell.as_dict(),
                    "seed": seed,
                    "metric": m.name,
                    "unit": m.unit,
                    "value": self.numbers[cell.key, seed][m.name],
                }  # fmt: skip
                for cell in self.grid.cells()
                for seed in self.grid.seeds
                if (cell.key, seed) in self.numbers
                for m in METRICS
            ]
        raise ValueError(f"by must be cell or run; got {by!r}")

    def to_frame(self, by: CompareTable = "cell") -> Any:
        """`to_records(by)` as a pandas DataFrame."""
        varied = self.grid.varied
        columns = (
            ["cell", *varied, "metric", "unit", "seeds", "mean", "std", "baseline",
             "diff_mean", "diff_std", "diff_seeds"]
            if by == "cell"
            else ["cell", *varied, "seed", "metric", "unit", "value"]
        )  # fmt: skip
        return to_frame(self.to_records(by), columns)

    def __str__(self) -> str:
        """A plain-text table: per cell, each metric's mean ± std over seeds."""
        from dkt.common.evaluation.compare_table import format_stat

        header = [*(self.grid.varied or ["cell"]), "seeds", *(m.label for m in METRICS)]
        body = [
            [
                *([format_value(v) for _, v in r.cell.values] if self.grid.varied else ["base"]),
                str(len(r.seeds_done)),
                *(format_stat(r.stats[m.name], m.unit) for m in METRICS),
            ]
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
        return "\n".join(
            "  ".join(text.ljust(w) for text, w in zip(row, widths, strict=True)).rstrip()
            for row in [header, *body]
        )
