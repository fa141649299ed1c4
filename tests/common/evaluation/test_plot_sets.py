"""Which plots a results folder gets (`--plots`), and that nothing else depends on it."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from dkt.common.evaluation.provenance import provenance
from dkt.common.evaluation.results import (
    ALL_PLOTS_UP_TO,
    ExperienceRecord,
    RunResult,
    plot_set,
    write_results,
)
from dkt.common.run.config import ExperimentConfig


def _record(e: int) -> ExperienceRecord:
    return ExperienceRecord(
        experience=e,
        classes=[2 * e, 2 * e + 1],
        teachers=[],
        acc_cl=[0.9, 0.5][: e + 1] + [0.0] * (1 - e),
        acc_st=[0.8, 0.6][: e + 1] + [0.0] * (1 - e),
        acc_all_cl=0.4,
        acc_all_st=0.5,
        transfer_classes=[4],
        transfer_st=0.3,
        transfer_cl=0.1,
        loss_ce=1.0,
        loss_kd=0.5,
        steps=10,
        train_seconds=0.0,
    )


PROVENANCE = provenance(command=["dkt", "simulate"])


def _result(agents: int) -> RunResult:
    config = ExperimentConfig(dataset="digits", agents=agents, experiences=2)
    return RunResult(
        config=config,
        probe_fingerprint="f" * 64,
        probe_source="holdout",
        class_orders=[[[0, 1], [2, 3]] for _ in range(agents)],
        histories={a: [_record(0), _record(1)] for a in range(agents)},
        seconds=1.0,
        extra={"provenance": PROVENANCE},  # the same in every folder
    )


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


HEATMAPS_3 = {f"plots/accuracy-matrix-agent-{a}.png" for a in range(3)}
FLEET = {"plots/accuracy.png", "plots/transfer.png"}


@pytest.mark.parametrize(
    ("plots", "expected"),
    [
        ("all", HEATMAPS_3 | FLEET),
        ("summary", FLEET),
        ("none", set()),
        ("auto", HEATMAPS_3 | FLEET),
    ],
)
def test_each_plot_set_writes_its_plots_and_nothing_else_changes(tmp_path, plots, expected):
    result = _result(3)
    write_results(result, tmp_path / "all", "all")
    write_results(result, tmp_path / plots, plots)

    written = _files(tmp_path / plots)
    assert {f for f in written if f.startswith("plots/")} == expected
    data = {"config.toml", "metrics.json", "summary.md", *(
        f"matrices/agent-{a}-{h}.csv" for a in range(3) for h in ("cl", "st")
    )}  # fmt: skip
    assert {f for f in written if not f.startswith("plots/")} == data
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "all", tmp_path / plots, sorted(data), False)
    assert (mismatch, errors) == ([], [])
    assert (tmp_path / plots / "plots").is_dir() == (plots != "none")


def test_auto_draws_every_agents_heatmap_up_to_the_limit_and_the_summary_set_beyond():
    assert ALL_PLOTS_UP_TO == 8
    assert plot_set("auto", 8) == "all"
    assert plot_set("auto", 9) == "summary"
    assert plot_set("all", 256) == "all"
    assert plot_set("none", 2) == "none"


def test_a_large_run_gets_the_summary_set_and_its_heatmaps_on_request(tmp_path):
    result = _result(ALL_PLOTS_UP_TO + 1)
    write_results(result, tmp_path)
    assert {f for f in _files(tmp_path) if f.startswith("plots/")} == FLEET

    written = RunResult.read(tmp_path).write_plots(tmp_path)

    heatmaps = {f"plots/accuracy-matrix-agent-{a}.png" for a in range(ALL_PLOTS_UP_TO + 1)}
    assert {str(p.relative_to(tmp_path)) for p in written} == heatmaps | FLEET
    assert {f for f in _files(tmp_path) if f.startswith("plots/")} == heatmaps | FLEET


def test_an_unknown_plot_set_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="plots must be one of auto, all, summary, none"):
        write_results(_result(2), tmp_path / "out", "some")
    assert not (tmp_path / "out").exists()
