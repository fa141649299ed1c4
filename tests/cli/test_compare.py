"""`dkt compare` end to end: a real (tiny) grid in spawned workers, its table against the
runs' own metrics.json recomputed here, resuming, and bad input on the command line."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import statistics
from pathlib import Path

import pytest

from dkt.cli import main
from dkt.cli.compare import RunJob, run_one
from dkt.common.engine.simulation import simulate
from dkt.common.run.config import ExperimentConfig
from dkt.common.training.checkpoints import read_checkpoint
from tests.support.experiments import InterruptAt, StopAfter

TINY = [
    "--dataset", "synthetic", "--agents", "2", "--experiences", "2", "--epochs", "1",
    "--probe-size", "24", "--batch-size", "16", "--probe-batch-size", "16",
    "--replay-size", "12", "--assignment", "disjoint",
]  # fmt: skip
GRID = [*TINY, "--seeds", "0,1", "--vary", "kd_weight=0,1", "--workers", "2"]
CELLS = ("kd_weight=0.0", "kd_weight=1.0")
SEEDS = (0, 1)


def compare(*argv: str) -> tuple[int, str]:
    """Run `dkt compare ARGV` in this process; (exit code, stderr + stdout)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["compare", *argv])
    return code, err.getvalue() + out.getvalue()


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("compare") / "out"
    code, output = compare(*GRID, "--out", str(out))
    assert code == 0, output
    return out, output


def recomputed(metrics: dict) -> dict[str, float | None]:
    """A run's headline numbers from its matrices and records, independently of dkt."""
    per_agent = []
    for agent in metrics["agents"].values():
        r = agent["accuracy_matrix"]["cl"]
        last = len(r) - 1
        records = agent["experiences"]
        transfer = [x["transfer_st"] for x in records if x["transfer_st"] is not None]
        per_agent.append(
            {
                "avg_acc_cl": sum(r[last][: last + 1]) / (last + 1),
                "forgetting_cl": statistics.fmean(
                    max(r[e][j] for e in range(j, last)) - r[last][j] for j in range(last)
                ),
                "acc_all_cl": records[-1]["acc_all_cl"],
                "acc_all_st": records[-1]["acc_all_st"],
                "transfer_st": statistics.fmean(transfer) if transfer else None,
                "bytes_per_agent_experience": sum(
                    x["bytes_published"] + x["bytes_fetched"] for x in records
                )
                / len(records),
            }
        )
    out = {}
    for name in per_agent[0]:
        values = [a[name] for a in per_agent if a[name] is not None]
        out[name] = statistics.fmean(values) if values else None
    return out


def test_a_real_grid_writes_one_row_per_cell_and_every_run_folder(compared):
    out, output = compared
    assert "2 cells × 2 seeds = 4 runs, 0 done, 4 to run on 2 workers × 1 thread" in output
    for cell in CELLS:
        for seed in SEEDS:
            assert (out / "runs" / cell / f"seed-{seed}" / "metrics.json").exists()
            assert not (out / "runs" / cell / f"seed-{seed}" / "checkpoints").exists()
    assert sorted(p.name for p in (out / "runs").iterdir()) == list(CELLS)
    md = (out / "compare.md").read_text().splitlines()
    assert md[1] == "dkt compare " + " ".join([*GRID, "--out", str(out)])
    assert sum(line.startswith("| 0.0 | 2 |") for line in md) == 2  # means, differences
    assert sum(line.startswith("| 1.0 | 2 |") for line in md) == 2
    assert (out / "compare.png").stat().st_size > 0
    assert (out / "grid.toml").exists()


def test_the_table_equals_the_runs_metrics_recomputed(compared):
    out, _ = compared
    runs = {
        (cell, seed): recomputed(
            json.loads((out / "runs" / cell / f"seed-{seed}" / "metrics.json").read_text())
        )
        for cell in CELLS
        for seed in SEEDS
    }
    config = json.loads((out / "runs" / CELLS[1] / "seed-1" / "metrics.json").read_text())
    assert config["config"]["kd_weight"] == 1.0 and config["config"]["seed"] == 1
    with open(out / "compare.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(CELLS) * 6
    for row in rows:
        values = [runs[row["cell"], s][row["metric"]] for s in SEEDS]
        assert row["seeds"] == "2"
        assert float(row["mean"]) == pytest.approx(statistics.fmean(values), abs=1e-9)
        assert float(row["std"]) == pytest.approx(statistics.stdev(values), abs=1e-9)
        diffs = [runs[row["cell"], s][row["metric"]] - runs[CELLS[0], s][row["metric"]]
                 for s in SEEDS]  # fmt: skip
        assert row["baseline"] == CELLS[0]
        assert float(row["diff_mean"]) == pytest.approx(statistics.fmean(diffs), abs=1e-9)
        assert float(row["diff_std"]) == pytest.approx(statistics.stdev(diffs), abs=1e-9)
    # The disjoint streams give transfer numbers, and distilling (λ=1) is what moves them.
    assert all(runs[cell, s]["transfer_st"] is not None for cell in CELLS for s in SEEDS)


def test_running_the_same_grid_again_runs_nothing(compared):
    out, _ = compared
    metrics = sorted(out.glob("runs/*/seed-*/metrics.json"))
    before = [p.stat().st_mtime_ns for p in metrics]
    code, output = compare(*GRID, "--out", str(out), "--quiet")
    assert code == 0, output
    assert "4 runs, 4 done, 0 to run" in output
    assert [p.stat().st_mtime_ns for p in metrics] == before


def test_a_changed_base_for_the_same_folder_is_refused(compared):
    out, _ = compared
    code, output = compare(*GRID, "--epochs", "2", "--out", str(out))
    assert code == 2
    assert output.strip().splitlines() == [
        f"dkt compare: error: {out} holds runs of a different base config (epochs: 1 -> 2); "
        "use the same base options, or another --out"
    ]


@pytest.mark.slow
def test_a_grid_grown_by_a_seed_runs_only_the_new_runs(compared, tmp_path):
    out, _ = compared
    code, output = compare(*TINY, "--seeds", "0,1,2", "--vary", "kd_weight=0,1",
                           "--out", str(out), "--quiet")  # fmt: skip
    assert code == 0, output
    assert "6 runs, 4 done, 2 to run on 2 workers" in output
    assert "| 1.0 | 3 |" in (out / "compare.md").read_text()


def test_an_interrupted_run_leaves_a_partial_folder_that_the_next_attempt_replaces(tmp_path):
    config = ExperimentConfig(dataset="synthetic", agents=2, experiences=2, epochs=1,
                              probe_size=24, batch_size=16, probe_batch_size=16)  # fmt: skip
    folder = tmp_path / "runs" / "base" / "seed-0"
    partial = folder.with_name("seed-0.partial")
    partial.mkdir(parents=True)
    (partial / "config.toml").write_text(config.replace(lr=0.5).to_toml())
    (partial / "stale.txt").write_text("from a run of another config")
    outcome = run_one(RunJob(config, str(folder), "cpu"))
    assert outcome.error is None
    assert not partial.exists()
    assert not (folder / "stale.txt").exists() and not (folder / "checkpoints").exists()
    assert json.loads((folder / "metrics.json").read_text())["config"] == config.to_dict()


def test_an_interrupted_run_continues_from_its_checkpoints_with_the_same_numbers(tmp_path):
    config = ExperimentConfig(dataset="synthetic", agents=2, experiences=2, epochs=1,
                              probe_size=24, batch_size=16, probe_batch_size=16)  # fmt: skip
    folder = tmp_path / "runs" / "base" / "seed-0"
    partial = folder.with_name("seed-0.partial")
    partial.mkdir(parents=True)
    (partial / "config.toml").write_text(config.to_toml())
    with pytest.raises(StopAfter):  # both agents finish experience 0, then the run stops
        simulate(config, checkpoint_dir=partial / "checkpoints", listener=InterruptAt(1, 0))
    saved = read_checkpoint(partial / "checkpoints" / "agent-0" / "experience-000.pt")

    assert run_one(RunJob(config, str(folder), "cpu")).error is None

    records = json.loads((folder / "metrics.json").read_text())["agents"]["0"]["experiences"]
    assert records[0] == saved["history"][0]  # restored, not retrained (same train_seconds)
    uninterrupted = simulate(config).histories[0]
    drop = {"train_seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in records] == [
        {k: v for k, v in r.to_dict().items() if k not in drop} for r in uninterrupted
    ]


def test_the_seed_flag_is_refused_in_favour_of_seeds(tmp_path):
    code, output = compare("--seed", "3", "--out", str(tmp_path / "out"))
    assert code == 2
    assert output.strip() == (
        "dkt compare: error: --seed: every cell runs at each of --seeds; write --seeds instead"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--vary", "kd_wieght=0,1"], "--vary: unknown option 'kd_wieght'; valid options: "),
        (["--vary", "kd_weight=0,abc"], "--vary kd_weight: kd_weight must be float, got 'abc'"),
        (["--vary", "backbone=mlp,vgg"], "backbone must be one of mlp, cnn"),
        (["--vary", "kd_weight"], "--vary 'kd_weight': write OPTION=VALUE,VALUE,..."),
        (["--seeds", "0,one"], "--seeds '0,one': write whole numbers"),
        (["--vary", "epochs=1,2", "--baseline", "epochs=3"], "not one of the varied values"),
    ],
)
def test_bad_flags_are_one_line_and_start_nothing(tmp_path, argv, message):
    code, output = compare(*argv, "--out", str(tmp_path / "out"))
    assert code == 2
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dkt compare: error: ")
    assert message in lines[0]
    assert not (tmp_path / "out").exists()


def test_an_unknown_field_in_the_grid_file_is_one_line_naming_the_valid_ones(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text("seeds = [0]\n[base]\ndataset = 'synthetic'\n[vary]\nlamda = [0, 1]\n")
    code, output = compare("--grid", str(grid), "--out", str(tmp_path / "out"))
    assert code == 2
    assert output.strip().splitlines() == [
        f"dkt compare: error: {grid} [vary]: unknown option 'lamda'; valid options: "
        + ", ".join(f for f in ExperimentConfig().to_dict() if f not in ("seed", "agent_overrides"))
    ]
    assert not (tmp_path / "out").exists()
