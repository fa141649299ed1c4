"""What the relay store holds: a run, a prediction set, an eval set, an agent's progress,
and the errors a store raises. Shared by every store implementation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dkt.proto.prediction_record import PredictionRecord
from dkt.proto.status_json import HISTORY_METRICS

RUN_STATES = ("created", "running", "finished", "failed")
# Who created a run: the admin token (or anyone, with authentication off) or the conductor
# token, which reaches only the runs it created (server/relay/auth.py).
RUN_CREATORS = ("admin", "conductor")
# Largest experience count a run can have (RunSpec.experiences is an int32).
MAX_EXPERIENCES = 2**31 - 1


class StoreError(Exception):
    """A request the store cannot satisfy."""


class RunNotFoundError(StoreError):
    pass


class RunExistsError(StoreError):
    """A run with that id exists with a different probe set or spec."""


class PredictionsExistError(StoreError):
    """Different predictions are already stored for that (run, agent, experience)."""


class EvalSetExistsError(StoreError):
    """A different eval set is already stored for that run."""


class CorruptPayloadError(StoreError):
    """A payload file is missing or does not match its SHA-256.

    The message (what callers of the relay see) names the payload and its hash; `path`,
    the file on the relay's disk, is for the relay's own log."""

    def __init__(self, what: str, sha256: str, path: Path | None, problem: str) -> None:
        super().__init__(
            f"{what} (SHA-256 {sha256}) {problem}; restore it from a backup or republish"
        )
        # None where the store keeps no files (the in-memory store).
        self.path = path


# The errors every store raises for the same situations, with the same messages.


def store_closed() -> StoreError:
    return StoreError("the relay store is closed")


def run_not_found(run_id: str) -> RunNotFoundError:
    return RunNotFoundError(f"run {run_id!r} does not exist on this relay; create it first (admin)")


def run_exists(run_id: str) -> RunExistsError:
    return RunExistsError(
        f"run {run_id!r} already exists with a different probe set or spec; choose a new run id"
    )


def check_run_creator(created_by: str) -> None:
    """Raise ValueError unless `created_by` is one of RUN_CREATORS."""
    if created_by not in RUN_CREATORS:
        raise ValueError(
            f"unknown run creator {created_by!r}; use one of {', '.join(RUN_CREATORS)}"
        )


def check_run_state(state: str) -> None:
    """Raise ValueError unless `state` is one of RUN_STATES."""
    if state not in RUN_STATES:
        raise ValueError(f"unknown run state {state!r}; use one of {', '.join(RUN_STATES)}")


def predictions_exist(
    existing: PredictionRecord, record: PredictionRecord
) -> PredictionsExistError:
    return PredictionsExistError(
        f"agent {record.agent_id} already published different predictions for "
        f"experience {record.experience} of run {record.run_id!r} "
        f"(stored SHA-256 {existing.sha256}, got {record.sha256}); "
        "predictions are immutable once acknowledged"
    )


def eval_set_exists(existing: EvalSetRecord, record: EvalSetRecord) -> EvalSetExistsError:
    return EvalSetExistsError(
        f"run {record.run_id!r} already has a different eval set (fingerprint "
        f"{existing.fingerprint}, got {record.fingerprint}); a run's eval set is "
        "immutable once stored: create a new run for another one"
    )


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    num_classes: int
    expected_agents: int
    config_json: str
    probe_fingerprint: str
    probe_source: str
    probe_shape: tuple[int, ...]
    probe_sha256: str
    probe_bytes: int
    experiences: int = 1
    state: str = "created"
    current_experience: int = 0
    created_at: float = 0.0
    created_by: str = "admin"  # one of RUN_CREATORS

    @property
    def probe_size(self) -> int:
        return self.probe_shape[0]

    def same_definition(self, other: RunRecord) -> bool:
        """Whether `other` describes the same run (ignoring state, timestamps and creator)."""
        return (
            self.num_classes == other.num_classes
            and self.experiences == other.experiences
            and self.expected_agents == other.expected_agents
            and self.config_json == other.config_json
            and self.probe_fingerprint == other.probe_fingerprint
            and self.probe_shape == other.probe_shape
            and self.probe_sha256 == other.probe_sha256
        )


@dataclass(frozen=True)
class EvalSetRecord:
    """A run's labeled eval set: inputs of `shape` (float32) then `shape[0]` int64 labels."""

    run_id: str
    fingerprint: str
    source: str
    shape: tuple[int, ...]
    sha256: str
    payload_bytes: int
    stored_at: float = 0.0

    @property
    def num_rows(self) -> int:
        return self.shape[0]

    def same_content(self, other: EvalSetRecord) -> bool:
        """Whether `other` is the same eval set (ignoring its source and time)."""
        return (
            self.fingerprint == other.fingerprint
            and self.shape == other.shape
            and self.sha256 == other.sha256
        )


@dataclass(frozen=True)
class AgentRecord:
    run_id: str
    agent_id: int
    last_seen: float = 0.0
    state: str = ""
    experience: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    reported_at: float = 0.0
    reason: str = ""
    # experience -> its HISTORY_METRICS (proto/status_json.py) from the latest report for
    # it that carried metrics.
    history: dict[int, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class StoreTotals:
    runs: int
    prediction_sets: int
    payload_bytes: int


def history_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The part of a progress report's metrics kept per experience (HISTORY_METRICS)."""
    return {name: metrics[name] for name in HISTORY_METRICS if name in metrics}
