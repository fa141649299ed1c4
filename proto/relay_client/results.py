"""What relay calls return: receipts, run and prediction-set metadata, watch events."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

import grpc

from dkt.proto.dkt.v1 import relay_pb2
from dkt.proto.payload_encoding import encoding_name
from dkt.proto.prediction_record import PredictionRecord
from dkt.proto.relay_client.errors import relay_error
from dkt.proto.status_json import run_state_name

if TYPE_CHECKING:
    from dkt.common.training.teacher import Teacher


@dataclass(frozen=True)
class TeacherTargets:
    """FetchTeacherTargets' answer: the combined teacher (None when no peer had a set),
    the peers without a set, per class how many sources had seen it, and the bytes of
    logits downloaded."""

    teacher: Teacher | None
    missing: tuple[int, ...]
    coverage: tuple[int, ...]
    payload_bytes: int


@dataclass(frozen=True)
class PublishReceipt:
    """The relay's acknowledgement: the prediction set is durable under `id`."""

    id: str
    sha256: str
    payload_bytes: int
    already_stored: bool


@dataclass(frozen=True)
class PredictionInfo(PredictionRecord):
    """Metadata of one stored prediction set (no logits), as the relay returns it: the
    fields of `PredictionRecord` (proto/prediction_record.py), one definition for both
    sides of the wire; `id` is RUN/AGENT/EXPERIENCE."""

    @classmethod
    def from_message(cls, stored: relay_pb2.StoredPrediction) -> PredictionInfo:
        m = stored.meta
        return cls(
            run_id=m.run_id,
            agent_id=m.agent_id,
            experience=m.experience,
            classes_seen=tuple(m.classes_seen),
            probe_fingerprint=m.probe_fingerprint,
            dtype=m.dtype,
            shape=(int(m.shape[0]), int(m.shape[1])),
            encoding=encoding_name(m.encoding),
            sha256=m.sha256,
            payload_bytes=m.payload_bytes,
            published_at=stored.published_at,
        )


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    num_classes: int
    experiences: int
    expected_agents: int | None
    config: dict[str, Any] | None
    probe_fingerprint: str
    probe_size: int
    state: str
    current_experience: int
    created_at: float
    already_existed: bool = False

    @classmethod
    def from_message(cls, info: relay_pb2.RunInfo) -> RunInfo:
        return cls(
            run_id=info.spec.run_id,
            num_classes=info.spec.num_classes,
            experiences=info.spec.experiences,
            expected_agents=info.spec.expected_agents or None,
            config=json.loads(info.spec.config_json) if info.spec.config_json else None,
            probe_fingerprint=info.probe.fingerprint,
            probe_size=int(info.probe.shape[0]) if info.probe.shape else 0,
            state=run_state_name(info.state),
            current_experience=info.current_experience,
            created_at=info.created_at,
            already_existed=info.already_existed,
        )


class _EventBase(TypedDict):
    """The fields every RelayEvent has, whatever its kind."""

    seq: int
    time: float
    run_id: str
    kind: str


@dataclass(frozen=True)
class RelayEvent:
    """One event of a watch: `kind` is published, agent_seen, run_state_changed or progress."""

    seq: int
    time: float
    run_id: str
    kind: str
    agent_id: int | None = None
    experience: int | None = None
    state: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    prediction: PredictionInfo | None = None
    reason: str = ""

    @classmethod
    def from_message(cls, event: relay_pb2.Event) -> RelayEvent:
        kind = event.WhichOneof("kind") or "unknown"
        base = _EventBase(seq=event.seq, time=event.time, run_id=event.run_id, kind=kind)
        if kind == "published":
            info = PredictionInfo.from_message(event.published.prediction)
            return cls(**base, agent_id=info.agent_id, experience=info.experience, prediction=info)
        if kind == "agent_seen":
            return cls(**base, agent_id=event.agent_seen.agent_id)
        if kind == "run_state_changed":
            change = event.run_state_changed
            return cls(
                **base,
                state=run_state_name(change.state),
                experience=change.current_experience,
            )
        if kind == "progress":
            p = event.progress.progress
            return cls(
                **base,
                agent_id=p.agent_id,
                experience=p.experience,
                state=p.state,
                metrics=dict(p.metrics),
                reason=p.reason,
            )
        return cls(**base)


class EventStream:
    """The events of a watch, as an iterator; `cancel()` (or leaving `with`) ends it."""

    def __init__(self, call: Any, method: str) -> None:
        self._call = call
        self._method = method
        self._cancelled = False

    def __iter__(self) -> Iterator[RelayEvent]:
        return self

    def __next__(self) -> RelayEvent:
        try:
            return RelayEvent.from_message(next(self._call))
        except grpc.RpcError as err:
            if self._cancelled or err.code() == grpc.StatusCode.CANCELLED:
                raise StopIteration from None
            raise relay_error(err, self._method) from None

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


@dataclass(frozen=True)
class IdentityCheck:
    """The relay's answer to `verify_identity`: whether the proof is the agent's, and
    whether the relay has tokens at all (without them there is nothing to prove)."""

    valid: bool
    auth_enabled: bool
