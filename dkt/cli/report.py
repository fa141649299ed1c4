"""The end-of-run table printed on the terminal (the results folder has the full report)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _kib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1024:.0f}"


def print_summary(metrics: dict[str, Any], console: Console) -> None:
    """Per agent: transfer accuracy first (the point of DKT), then the usual CL numbers."""
    table = Table(title="DKT results (accuracies in %)", title_justify="left")
    table.add_column("agent")
    table.add_column("transfer st", style="bold green", justify="right")
    table.add_column("transfer cl", justify="right")
    table.add_column("avg acc cl", justify="right")
    table.add_column("avg acc st", justify="right")
    table.add_column("forget cl", justify="right")
    table.add_column("KiB out/in", justify="right")
    rows = [(a, m["summary"]) for a, m in metrics["agents"].items()]
    if len(rows) > 1:
        rows.append(("mean", metrics["mean_over_agents"]))
    for name, s in rows:
        table.add_row(
            name,
            _pct(s.get("transfer_st_mean")),
            _pct(s.get("transfer_cl_mean")),
            _pct(s.get("avg_acc_cl")),
            _pct(s.get("avg_acc_st")),
            _pct(s.get("forgetting_cl")),
            f"{_kib(s.get('bytes_published'))}/{_kib(s.get('bytes_fetched'))}",
        )
    console.print(table)
    if metrics.get("missing_agents"):
        console.print(f"[yellow]missing agents:[/] {metrics['missing_agents']}")
