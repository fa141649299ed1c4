"""The table of `dkt compare`: a run's numbers from its metrics.json, mean ± std over
seeds, paired differences against the baseline, and the files, with hand-computed
values. No training here."""

from __future__ import annotations

import csv
import math

import pytest

from dkt.common.evaluation.compare_table import (
    METRICS,
    Stat,
    aggregate,
    describe,
    format_stat,
    paired_differences,
    render_markdown,
    run_numbers,
    write_table,
)
from dkt.common.run.config import ExperimentConfig
from dkt.common.run.grid import build_grid

BASE = ExperimentConfig(dataset="synthetic", agents=2, experiences=2)


def numbers(avg_acc_cl: float | None, transfer_st: float | None = 0.5) -> dict:
    return {
        "avg_acc_cl": avg_acc_cl,
        "forgetting_cl": 0.1,
        "acc_all_cl": 0.4,
        "acc_all_st": 0.3,
        "transfer_st": transfer_st,
        "bytes_per_agent_experience": 1000.0,
    }


def test_describe_is_mean_and_sample_std_of_the_defined_values():
    stat = describe([0.5, None, 0.7, 0.9])
    assert stat.n == 3
    assert stat.mean == pytest.approx(0.7)
    assert stat.std == pytest.approx(0.2)  # sqrt(((-.2)² + 0 + .2²) / (3 - 1))
    assert describe([0.25]) == Stat(0.25, None, 1)
    assert describe([None, None]) == Stat(None, None, 0)


def test_paired_differences_take_the_seeds_both_cells_have():
    cell = {0: 0.6, 1: 0.8, 2: None, 3: 0.9}
    baseline = {0: 0.5, 1: 0.5, 2: 0.4}
    assert paired_differences(cell, baseline) == pytest.approx([0.1, 0.3])


def test_run_numbers_are_the_mean_over_agents_and_bytes_per_agent_per_experience():
    def agent(published: int, fetched: int, done: int) -> dict:
        summary = {"bytes_published": published, "bytes_fetched": fetched}
        return {"summary": {**summary, "experiences_done": done}}

    metrics = {
        "mean_over_agents": {
            "avg_acc_cl": 0.8,
            "forgetting_cl": 0.05,
            "acc_all_cl": 0.6,
            "acc_all_st": 0.7,
            "transfer_st_mean": None,
        },
        "agents": {"0": agent(100, 50, 2), "1": agent(300, 0, 3), "2": agent(0, 0, 0)},
    }
    assert run_numbers(metrics) == {
        "avg_acc_cl": 0.8,
        "forgetting_cl": 0.05,
        "acc_all_cl": 0.6,
        "acc_all_st": 0.7,
        "transfer_st": None,
        "bytes_per_agent_experience": 87.5,  # mean of (100 + 50) / 2 and (300 + 0) / 3
    }


def grid_and_numbers():
    grid = build_grid(BASE, [0, 1, 2], [("kd_weight", ["0", "1"], "--vary")])
    runs = {
        ("kd_weight=0.0", 0): numbers(0.50),
        ("kd_weight=0.0", 1): numbers(0.60),
        ("kd_weight=0.0", 2): numbers(0.70, transfer_st=None),
        ("kd_weight=1.0", 0): numbers(0.55),
        ("kd_weight=1.0", 1): numbers(0.80),
        # seed 2 of kd_weight=1 is not done yet
    }
    return grid, runs


def test_aggregate_gives_mean_std_and_paired_difference_per_cell():
    grid, runs = grid_and_numbers()
    base_row, row = aggregate(grid, runs)
    assert base_row.is_baseline and not row.is_baseline
    assert base_row.seeds_done == (0, 1, 2) and row.seeds_done == (0, 1)
    assert base_row.stats["avg_acc_cl"].mean == pytest.approx(0.6)
    assert base_row.stats["avg_acc_cl"].std == pytest.approx(0.1)
    assert base_row.stats["transfer_st"] == Stat(0.5, 0.0, 2)
    assert row.stats["avg_acc_cl"].mean == pytest.approx(0.675)
    assert row.stats["avg_acc_cl"].std == pytest.approx(math.sqrt(2 * 0.125**2))
    # Pairs: seed 0: 0.55 - 0.50 = 0.05, seed 1: 0.80 - 0.60 = 0.20.
    diff = row.diffs["avg_acc_cl"]
    assert (diff.n, diff.mean) == (2, pytest.approx(0.125))
    assert diff.std == pytest.approx(math.sqrt(2 * 0.075**2))
    assert base_row.diffs["avg_acc_cl"] == Stat(0.0, 0.0, 3)


def test_without_a_baseline_there_are_no_differences():
    grid = build_grid(BASE, [0], [("kd_weight", ["0.5", "1"], "--vary")])
    rows = aggregate(grid, {("kd_weight=0.5", 0): numbers(0.5)})
    assert [r.diffs for r in rows] == [{}, {}]
    assert rows[1].stats["avg_acc_cl"] == Stat(None, None, 0)
    text = render_markdown(grid, rows, "dkt compare")
    assert "- baseline: none" in text
    assert "Paired difference" not in text


def test_format_stat_in_points_and_bytes():
    assert format_stat(Stat(0.1234, 0.0456, 3), "fraction") == "12.3 ± 4.6"
    assert format_stat(Stat(0.1234, 0.0456, 3), "fraction", signed=True) == "+12.3 ± 4.6"
    assert format_stat(Stat(-0.02, None, 1), "fraction", signed=True) == "-2.0"
    assert format_stat(Stat(1536.0, 0.0, 2), "bytes") == "1.5 KiB ± 0 B"
    assert format_stat(Stat(-1536.0, None, 1), "bytes", signed=True) == "-1.5 KiB"
    assert format_stat(Stat(None, None, 0), "fraction") == "n/a"


def test_the_markdown_starts_with_the_command_and_has_a_row_per_cell(tmp_path):
    grid, runs = grid_and_numbers()
    command = "dkt compare --seeds 0,1,2 --vary kd_weight=0,1"
    text = render_markdown(grid, aggregate(grid, runs), command)
    lines = text.splitlines()
    assert lines[:3] == ["```bash", command, "```"]
    assert "- base: dataset=synthetic, agents=2, experiences=2 " in text
    assert "- baseline: kd_weight=0.0, paired by seed" in text
    assert "| 0.0 | 3 | 60.0 ± 10.0 | 10.0 ± 0.0 |" in text
    assert "| 1.0 | 2 | 67.5 ± 17.7 |" in text
    assert "| 0.0 | 3 | baseline | baseline |" in text
    assert "| 1.0 | 2 | +12.5 ± 10.6 | +0.0 ± 0.0 |" in text


def test_the_csv_is_tidy_one_row_per_cell_and_metric(tmp_path):
    grid, runs = grid_and_numbers()
    write_table(tmp_path, grid, runs, "dkt compare")
    with open(tmp_path / "compare.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == [
        "cell", "kd_weight", "metric", "unit", "seeds", "mean", "std", "baseline",
        "diff_mean", "diff_std", "diff_seeds",
    ]  # fmt: skip
    assert len(rows) == 2 * len(METRICS)
    row = next(r for r in rows if r["cell"] == "kd_weight=1.0" and r["metric"] == "avg_acc_cl")
    assert row["kd_weight"] == "1.0" and row["baseline"] == "kd_weight=0.0"
    assert (row["unit"], row["seeds"], row["diff_seeds"]) == ("fraction", "2", "2")
    assert float(row["mean"]) == pytest.approx(0.675)
    assert float(row["diff_mean"]) == pytest.approx(0.125)
    one = next(r for r in rows if r["cell"] == "kd_weight=1.0" and r["metric"] == "transfer_st")
    assert one["std"] == "0.0"
    with open(tmp_path / "compare-runs.csv") as fh:
        per_run = list(csv.DictReader(fh))
    assert len(per_run) == 5 * len(METRICS)
    missing = [r for r in per_run if r["cell"] == "kd_weight=0.0" and r["seed"] == "2"]
    assert {r["metric"]: r["value"] for r in missing}["transfer_st"] == ""
    assert (tmp_path / "compare.png").stat().st_size > 0
