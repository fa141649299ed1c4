"""Experiment tracking: a `dkt simulate --log tensorboard,mlflow` run read back with
TensorBoard's own EventAccumulator and MLflow's own client holds exactly the numbers of
its metrics.json."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import mlflow
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from dkt.cli import main
from dkt.common.evaluation.results import ExperienceRecord
from dkt.common.evaluation.tracking import (
    Tracking,
    flat_params,
    parse_log,
    record_scalars,
)


def read_agent_events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of one agent's TensorBoard run directory: {tag: [(step, value)]}."""
    acc = event_accumulator.EventAccumulator(
        str(folder), size_guidance={event_accumulator.TENSORS: 0}
    )
    acc.Reload()
    return {
        tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
        for tag in acc.Tags()["tensors"]
    }


def expected_scalars(metrics: dict[str, Any], agent: str) -> dict[str, list[tuple[int, float]]]:
    """What an agent's events must hold, straight from metrics.json's records."""
    out: dict[str, list[tuple[int, float]]] = {}
    for raw in metrics["agents"][agent]["experiences"]:
        for tag, value, step in record_scalars(ExperienceRecord(**raw)):
            out.setdefault(tag, []).append((step, value))
    return out


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tracked") / "run"
    # Disjoint classes, so experience 1 has transfer classes (from the peer's experience 0).
    argv = ["simulate", "--agents", "2", "--experiences", "2", "--epochs", "2"]
    argv += ["--assignment", "disjoint"]
    code = main([*argv, "--out", str(out), "--quiet", "--log", "tensorboard,mlflow"])
    assert code == 0
    return out


def test_metrics_json_keeps_the_per_epoch_losses_whose_mean_is_the_experience_loss(
    tracked_run: Path,
) -> None:
    metrics = json.loads((tracked_run / "metrics.json").read_text())
    for agent in metrics["agents"].values():
        for record in agent["experiences"]:
            assert len(record["epoch_loss_ce"]) == 2 and len(record["epoch_loss_kd"]) == 2
            # Both epochs have the same number of steps, so the plain mean is the loss.
            assert sum(record["epoch_loss_ce"]) / 2 == pytest.approx(record["loss_ce"], rel=1e-12)
            assert sum(record["epoch_loss_kd"]) / 2 == pytest.approx(record["loss_kd"], rel=1e-12)


def test_tensorboard_events_per_agent_hold_exactly_the_metrics_json_numbers(
    tracked_run: Path,
) -> None:
    metrics = json.loads((tracked_run / "metrics.json").read_text())
    for agent in ("0", "1"):
        found = read_agent_events(tracked_run / "tensorboard" / f"agent-{agent}")
        expected = expected_scalars(metrics, agent)
        assert found == expected
        record = metrics["agents"][agent]["experiences"][1]
        assert found["accuracy_st/all"][1] == (1, record["acc_all_st"])
        assert found["accuracy_cl/experience_0"][1] == (1, record["acc_cl"][0])
        assert record["transfer_st"] is not None
        assert found["transfer/st"] == [(1, record["transfer_st"])]
        assert found["bytes/published"][1] == (1, record["bytes_published"])
        assert found["bytes/fetched"][1] == (1, record["bytes_fetched"])
        # Per epoch, on a global epoch axis: experience 1's epochs are steps 2 and 3.
        assert found["loss_epoch/ce"] == [
            (2 * r["experience"] + i, v)
            for r in metrics["agents"][agent]["experiences"]
            for i, v in enumerate(r["epoch_loss_ce"])
        ]


def test_mlflow_run_holds_the_config_the_metrics_and_the_results_folder(
    tracked_run: Path,
) -> None:
    metrics = json.loads((tracked_run / "metrics.json").read_text())
    client = mlflow.MlflowClient(f"sqlite:///{tracked_run / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dkt")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params == flat_params(metrics["config"])
    assert run.data.params["agents"] == "2" and run.data.params["epochs"] == "2"
    for agent in ("0", "1"):
        for tag, points in expected_scalars(metrics, agent).items():
            history = client.get_metric_history(run.info.run_id, f"agent_{agent}/{tag}")
            assert sorted((m.step, m.value) for m in history) == points
    history = client.get_metric_history(run.info.run_id, "agent_1/accuracy_cl/all")
    assert [(m.step, m.value) for m in history] == [
        (r["experience"], r["acc_all_cl"]) for r in metrics["agents"]["1"]["experiences"]
    ]
    mean = client.get_metric_history(run.info.run_id, "mean/acc_all_cl")
    assert [m.value for m in mean] == [metrics["mean_over_agents"]["acc_all_cl"]]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "config.toml", "summary.md", "matrices", "plots"} <= artifacts
    assert "tensorboard" in artifacts
    assert not artifacts & {"checkpoints", "mlflow.db", "mlartifacts"}
    downloaded = Path(client.download_artifacts(run.info.run_id, "metrics.json"))
    assert json.loads(downloaded.read_text()) == metrics


def test_a_given_tracking_uri_wins_over_the_results_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # MLflow's own default artifact root is ./mlruns
    store = tmp_path / "elsewhere" / "store.db"
    store.parent.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    out = tmp_path / "run"
    argv = ["simulate", "--agents", "2", "--experiences", "1", "--epochs", "1", "--quiet"]
    assert main([*argv, "--out", str(out), "--log", "mlflow"]) == 0
    assert store.exists()
    assert not (out / "mlflow.db").exists()
    assert not (out / "tensorboard").exists()
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    (run,) = client.search_runs([client.get_experiment_by_name("dkt").experiment_id])
    assert run.info.run_name == "run"
    assert (tmp_path / "elsewhere" / "mlartifacts").is_dir()  # beside the store
    assert not (tmp_path / "mlruns").exists()


def test_an_unknown_log_value_is_refused_with_the_choices(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["simulate", "--out", str(tmp_path / "x"), "--log", "tensorboard,wandb"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unknown --log value 'wandb': choose from tensorboard, mlflow" in err
    assert not (tmp_path / "x").exists()


def test_log_values_parse_to_known_trackers_once_each() -> None:
    assert parse_log("") == ()
    assert parse_log(" MLflow , tensorboard,mlflow") == ("mlflow", "tensorboard")
    assert Tracking(log="mlflow,tensorboard").trackers == ("mlflow", "tensorboard")
    with pytest.raises(ValueError, match="choose from tensorboard, mlflow"):
        Tracking(log="csv")


@pytest.mark.slow
def test_dkt_run_agents_write_their_own_events_and_the_conductor_the_mlflow_run(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    out = tmp_path / "flower-run"
    flags = ["--agents", "2", "--experiences", "2", "--epochs", "2", "--assignment", "disjoint"]
    proc = subprocess.run(
        [sys.executable, "-m", "dkt", "run", "--out", str(out), "--quiet", *flags,
         "--log", "tensorboard,mlflow"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["driver"] == "flower"
    for agent in ("0", "1"):
        # Written by the agent's own process, not by the conductor.
        events = list((out / "tensorboard" / f"agent-{agent}").glob("events.out.tfevents.*"))
        assert events, f"agent {agent} wrote no events"
        found = read_agent_events(out / "tensorboard" / f"agent-{agent}")
        records = metrics["agents"][agent]["experiences"]
        for head in ("cl", "st"):
            assert found[f"accuracy_{head}/all"] == [
                (r["experience"], r[f"acc_all_{head}"]) for r in records
            ]
            for j in range(2):
                assert found[f"accuracy_{head}/experience_{j}"] == [
                    (r["experience"], r[f"acc_{head}"][j]) for r in records
                ]
        assert found == expected_scalars(metrics, agent)
    # The MLflow run is the conductor's, from the same metrics.json as simulate's.
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("dkt").experiment_id])
    assert run.data.tags["dkt.driver"] == "flower"
    for agent in ("0", "1"):
        history = client.get_metric_history(run.info.run_id, f"agent_{agent}/accuracy_st/all")
        assert sorted((m.step, m.value) for m in history) == [
            (r["experience"], r["acc_all_st"]) for r in metrics["agents"][agent]["experiences"]
        ]


def test_dkt_compare_logs_each_run_to_the_grids_store_and_its_own_events(tmp_path: Path) -> None:
    out = tmp_path / "grid"
    tiny = ["--dataset", "synthetic", "--agents", "2", "--experiences", "1", "--epochs", "1",
            "--probe-size", "24", "--seeds", "0", "--vary", "kd_weight=0,1",
            "--workers", "1"]  # fmt: skip
    code = main(["compare", *tiny, "--out", str(out), "--quiet", "--log", "tensorboard,mlflow"])
    assert code == 0
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("dkt").experiment_id])
    by_cell = {r.data.tags["dkt.cell"]: r for r in runs}
    assert sorted(by_cell) == ["kd_weight=0.0", "kd_weight=1.0"]
    for cell, run in by_cell.items():
        assert run.data.tags["dkt.seed"] == "0"
        assert run.info.run_name == f"{cell}, seed 0"
        folder = out / "runs" / cell / "seed-0"
        metrics = json.loads((folder / "metrics.json").read_text())
        assert run.data.params["kd_weight"] == str(metrics["config"]["kd_weight"])
        for agent in ("0", "1"):
            assert read_agent_events(folder / "tensorboard" / f"agent-{agent}") == (
                expected_scalars(metrics, agent)
            )
            history = client.get_metric_history(run.info.run_id, f"agent_{agent}/accuracy_cl/all")
            assert [(m.step, m.value) for m in history] == [
                (0, metrics["agents"][agent]["experiences"][0]["acc_all_cl"])
            ]


def test_a_tracker_that_is_not_installed_is_refused_before_training(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    out = tmp_path / "run"
    assert main(["simulate", "--out", str(out), "--log", "tensorboard,mlflow"]) == 2
    err = capsys.readouterr().err
    assert (
        "--log mlflow needs the mlflow package: install it with: pip install 'dkt[tracking]'" in err
    )
    assert not out.exists()


def test_an_agent_writes_its_events_where_the_run_config_says_else_under_its_data_dir(
    tmp_path: Path,
) -> None:
    from dkt.client.agent_runtime import AgentPlacement, tensorboard_log
    from dkt.common.run.config import ExperimentConfig

    placement = AgentPlacement(agent_id=1, data_dir=tmp_path / "data", relay="h:1")
    config = ExperimentConfig(exchange="none")
    assert tensorboard_log(placement, config, "r", {"log": "mlflow"}) is None
    board = tensorboard_log(placement, config, "r", {"log": "tensorboard"})
    assert board is not None and board.folder == tmp_path / "data" / "r" / "tensorboard"
    assert board.heads == ("cl",)  # under exchange none the st head learns nothing
    given = {"log": "tensorboard,mlflow", "tensorboard-dir": str(tmp_path / "out" / "tb")}
    board = tensorboard_log(placement, config, "r", given)
    assert board is not None and board.folder == tmp_path / "out" / "tb"
