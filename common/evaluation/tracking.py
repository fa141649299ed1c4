"""Experiment tracking in the libraries researchers already use: TensorBoard event
files (one run directory per agent, written where the agent trains) and an MLflow run
(written where the results folder is, from metrics.json). Both libraries are optional
(`pip install 'dkt[tracking]'`) and imported only when a run asks for them."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # results.py imports torch; the CLI's flags are built without it
    from dkt.common.evaluation.results import ExperienceRecord

TRACKERS = ("tensorboard", "mlflow")
TENSORBOARD_DIR = "tensorboard"  # OUT/tensorboard/agent-N
MLFLOW_DB = "mlflow.db"  # the default store: sqlite:///OUT/mlflow.db
MLFLOW_ARTIFACTS = "mlartifacts"  # the default store's artifacts: OUT/mlartifacts
MLFLOW_URI_ENV = "MLFLOW_TRACKING_URI"
MLFLOW_EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
MLFLOW_EXPERIMENT = "dkt"
# Not sent as artifacts: the checkpoints (large; the run's state, not its results), the
# default MLflow store itself, and dkt run's process logs and agent working folders.
NOT_ARTIFACTS = frozenset({"checkpoints", MLFLOW_DB, MLFLOW_ARTIFACTS, "cluster"})
INSTALL_HINT = "install it with: pip install 'dkt[tracking]'"


def parse_log(text: str) -> tuple[str, ...]:
    """`--log tensorboard,mlflow` as ("tensorboard", "mlflow"); empty text: nothing."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ValueError(
            f"unknown --log value {', '.join(map(repr, unknown))}: choose from "
            f"{', '.join(TRACKERS)}, comma-separated (e.g. --log tensorboard,mlflow)"
        )
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class Tracking:
    """Where a run's numbers are logged besides the results folder. Like the failure
    policy it changes no number of the experiment, so it is not part of its config
    (and not of its checkpoints)."""

    log: str = field(
        default="",
        metadata={"help": "log the run to these trackers too, comma-separated: "
                  f"{', '.join(TRACKERS)} (TensorBoard events in OUT/{TENSORBOARD_DIR}/agent-N; "
                  f"an MLflow run, by default in sqlite:///OUT/{MLFLOW_DB})"},
    )  # fmt: skip
    mlflow_uri: str = field(
        default="",
        metadata={"help": f"MLflow tracking URI for --log mlflow (default: ${MLFLOW_URI_ENV}, "
                  f"else sqlite:///OUT/{MLFLOW_DB})"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        object.__setattr__(self, "log", ",".join(parse_log(self.log)))

    @property
    def trackers(self) -> tuple[str, ...]:
        return parse_log(self.log)

    def tensorboard(
        self, out: str | Path, heads: tuple[str, ...] | None = None
    ) -> TensorBoardLog | None:
        """The TensorBoard listener of a run writing its results to `out`, if asked for."""
        if "tensorboard" not in self.trackers:
            return None
        return TensorBoardLog(Path(out) / TENSORBOARD_DIR, heads)

    def check_installed(self) -> None:
        """Refuse, before any training, trackers whose package is not installed."""
        import importlib.util

        packages = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
        for tracker in self.trackers:
            if importlib.util.find_spec(packages[tracker]) is None:
                raise ValueError(
                    f"--log {tracker} needs the {packages[tracker]} package: {INSTALL_HINT}"
                )

    def finish(
        self,
        out: str | Path,
        tags: dict[str, str] | None = None,
        store_folder: str | Path | None = None,
        run_name: str = "",
    ) -> str | None:
        """Log the finished results folder `out` (its metrics.json) to MLflow if asked
        for; returns a line saying where it went, else None."""
        if "mlflow" not in self.trackers:
            return None
        metrics = json.loads((Path(out) / "metrics.json").read_text())
        uri, run_id = log_mlflow(out, metrics, self.mlflow_uri, tags, store_folder, run_name)
        return f"MLflow run {run_id} in {uri}"


def agent_log_dir(folder: str | Path, agent_id: int) -> Path:
    """Agent `agent_id`'s TensorBoard run directory under a TensorBoard folder."""
    return Path(folder) / f"agent-{agent_id}"


def epoch_step(record: ExperienceRecord, epoch: int) -> int:
    """The global epoch of `epoch` (0-based) of the record's experience: the x axis of
    the per-epoch losses (an agent trains the same number of epochs every experience)."""
    return record.experience * len(record.epoch_loss_ce) + epoch


def record_scalars(
    record: ExperienceRecord, heads: tuple[str, ...] | None = None
) -> Iterator[tuple[str, float, int]]:
    """(tag, value, step) of everything one experience's record holds worth plotting:
    the per-epoch losses (step: the global epoch), then per experience (step: the
    experience) the mean losses, each reported head's accuracy on every experience of
    the stream and on all classes, transfer, and the bytes moved."""
    for i, (ce, kd) in enumerate(zip(record.epoch_loss_ce, record.epoch_loss_kd, strict=True)):
        yield "loss_epoch/ce", ce, epoch_step(record, i)
        yield "loss_epoch/kd", kd, epoch_step(record, i)
    e = record.experience
    yield "loss/ce", record.loss_ce, e
    yield "loss/kd", record.loss_kd, e
    for head in heads if heads is not None else _all_heads():
        for j, value in enumerate(getattr(record, f"acc_{head}")):
            yield f"accuracy_{head}/experience_{j}", value, e
        yield f"accuracy_{head}/all", getattr(record, f"acc_all_{head}"), e
        transfer = getattr(record, f"transfer_{head}")
        if transfer is not None:
            yield f"transfer/{head}", transfer, e
    yield "bytes/published", float(record.bytes_published), e
    yield "bytes/fetched", float(record.bytes_fetched), e


class TensorBoardLog:
    """A run listener that writes each agent's records as TensorBoard scalars into its
    own run directory, `folder/agent-N`, in float64 (what metrics.json holds)."""

    def __init__(self, folder: str | Path, heads: tuple[str, ...] | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # torch's writer needs the tensorboard package
            raise ValueError(f"--log tensorboard needs the tensorboard package: "
                             f"{INSTALL_HINT}") from err  # fmt: skip
        self._writer_class = SummaryWriter
        self.folder = Path(folder)
        self.heads = heads
        self.writers: dict[int, Any] = {}

    def experience_started(self, agent_id: int, experience: int, teachers: list[int]) -> None:
        pass

    def epoch_done(self, agent_id: int, experience: int, epoch: int, epochs: int) -> None:
        pass

    def experience_done(self, agent_id: int, record: ExperienceRecord) -> None:
        writer = self.writers.get(agent_id)
        if writer is None:
            writer = self._writer_class(str(agent_log_dir(self.folder, agent_id)))
            self.writers[agent_id] = writer
        for tag, value, step in record_scalars(record, self.heads):
            writer.add_scalar(tag, value, step, new_style=True, double_precision=True)
        writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def mlflow_uri(folder: str | Path, given: str = "") -> str:
    """The tracking URI: the one given, else $MLFLOW_TRACKING_URI, else a SQLite store
    in the results folder."""
    return (
        given
        or os.environ.get(MLFLOW_URI_ENV, "")
        or f"sqlite:///{(Path(folder) / MLFLOW_DB).resolve()}"
    )


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A config mapping as MLflow params: nested tables as dotted keys, values as text."""
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


def mlflow_metrics(metrics: dict[str, Any]) -> list[tuple[str, float, int]]:
    """(key, value, step) of a metrics.json document for MLflow: each agent's records as
    `agent_N/TAG` (the TensorBoard tags, step = experience or global epoch), and the
    means over agents as `mean/KEY` at step 0."""
    from dkt.common.evaluation.results import ExperienceRecord

    heads = tuple(h for h in _all_heads() if _reported(metrics, h))
    found: list[tuple[str, float, int]] = []
    for agent_id, agent in sorted(metrics["agents"].items(), key=lambda a: int(a[0])):
        for raw in agent["experiences"]:
            record = ExperienceRecord(**raw)
            for tag, value, step in record_scalars(record, heads):
                found.append((f"agent_{agent_id}/{tag}", value, step))
    for key, value in metrics.get("mean_over_agents", {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            found.append((f"mean/{key}", float(value), 0))
    return found


def _all_heads() -> tuple[str, ...]:
    from dkt.common.evaluation.results import HEADS

    return HEADS


def _reported(metrics: dict[str, Any], head: str) -> bool:
    """Whether the run reports `head` (metrics.json nulls the st head where it learns
    nothing)."""
    return any(
        r[f"acc_all_{head}"] is not None
        for a in metrics["agents"].values()
        for r in a["experiences"]
    )


def log_mlflow(
    folder: str | Path,
    metrics: dict[str, Any],
    uri: str = "",
    tags: dict[str, str] | None = None,
    store_folder: str | Path | None = None,
    run_name: str = "",
) -> tuple[str, str]:
    """One MLflow run of a finished results folder: the config as params, the records as
    metrics, the folder's files as artifacts. The store: `uri`, else $MLFLOW_TRACKING_URI,
    else SQLite in `store_folder` (default: the results folder). Returns (URI, run id)."""
    try:
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param
    except ImportError as err:
        raise ValueError(f"--log mlflow needs the mlflow package: {INSTALL_HINT}") from err
    import time

    folder = Path(folder)
    uri = mlflow_uri(folder if store_folder is None else store_folder, uri)
    client = MlflowClient(tracking_uri=uri)
    name = os.environ.get(MLFLOW_EXPERIMENT_ENV) or MLFLOW_EXPERIMENT
    found = client.get_experiment_by_name(name)
    if found is not None:
        experiment = found.experiment_id
    else:
        # A SQLite store keeps its artifacts beside it (MLflow's default is ./mlruns
        # in whatever folder the run was started from).
        db = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
        where = (db.parent / MLFLOW_ARTIFACTS).resolve().as_uri() if db else None
        experiment = client.create_experiment(name, artifact_location=where)
    run = client.create_run(
        experiment,
        run_name=run_name or folder.resolve().name,
        tags={
            "dkt.driver": str(metrics.get("driver", "")),
            "dkt.results": str(folder.resolve()),
            **(tags or {}),
        },
    )
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    params = [Param(k, v[:6000]) for k, v in flat_params(metrics["config"]).items()]
    values = [Metric(k, v, now, s) for k, v, s in mlflow_metrics(metrics)]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i : i + 100])
    for i in range(0, len(values), 1000):
        client.log_batch(run_id, metrics=values[i : i + 1000])
    for path in sorted(folder.iterdir()):
        if path.name in NOT_ARTIFACTS:
            continue
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=path.name)
        else:
            client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")
    return uri, run_id
