"""Store records to dkt.v1 messages and back: the one place where the relay's rows
become what it answers (and validated requests become rows)."""

from __future__ import annotations

from dkt.proto.dkt.v1 import relay_pb2
from dkt.proto.payload_encoding import ENCODINGS
from dkt.proto.status_json import run_state_value
from dkt.server.relay.store.records import AgentRecord, EvalSetRecord, PredictionRecord, RunRecord


def run_record(spec: relay_pb2.RunSpec, meta: relay_pb2.ProbeSetMeta) -> RunRecord:
    """The run a validated CreateRun describes."""
    return RunRecord(
        run_id=spec.run_id,
        num_classes=spec.num_classes,
        expected_agents=spec.expected_agents,
        config_json=spec.config_json,
        probe_fingerprint=meta.fingerprint,
        probe_source=meta.source,
        probe_shape=tuple(int(d) for d in meta.shape),
        probe_sha256=meta.sha256,
        probe_bytes=meta.payload_bytes,
        experiences=spec.experiences,
    )


def run_info(run: RunRecord, already_existed: bool = False) -> relay_pb2.RunInfo:
    return relay_pb2.RunInfo(
        spec=relay_pb2.RunSpec(
            run_id=run.run_id,
            num_classes=run.num_classes,
            expected_agents=run.expected_agents,
            config_json=run.config_json,
            experiences=run.experiences,
        ),
        probe=relay_pb2.ProbeSetMeta(
            fingerprint=run.probe_fingerprint,
            source=run.probe_source,
            shape=list(run.probe_shape),
            sha256=run.probe_sha256,
            payload_bytes=run.probe_bytes,
        ),
        state=run_state_value(run.state),
        current_experience=run.current_experience,
        created_at=run.created_at,
        already_existed=already_existed,
    )


def run_state_changed(run: RunRecord) -> relay_pb2.RunStateChanged:
    return relay_pb2.RunStateChanged(
        state=run_state_value(run.state), current_experience=run.current_experience
    )


def eval_set_record(run_id: str, meta: relay_pb2.EvalSetMeta) -> EvalSetRecord:
    """The eval set a validated PutEvalSet describes."""
    return EvalSetRecord(
        run_id=run_id,
        fingerprint=meta.fingerprint,
        source=meta.source,
        shape=tuple(int(d) for d in meta.shape),
        sha256=meta.sha256,
        payload_bytes=meta.payload_bytes,
    )


def eval_set_meta(record: EvalSetRecord) -> relay_pb2.EvalSetMeta:
    return relay_pb2.EvalSetMeta(
        fingerprint=record.fingerprint,
        source=record.source,
        shape=list(record.shape),
        num_rows=record.num_rows,
        sha256=record.sha256,
        payload_bytes=record.payload_bytes,
    )


def eval_set_info(record: EvalSetRecord, already_stored: bool) -> relay_pb2.EvalSetInfo:
    return relay_pb2.EvalSetInfo(
        run_id=record.run_id,
        meta=eval_set_meta(record),
        already_stored=already_stored,
        stored_at=record.stored_at,
    )


def prediction_record(
    meta: relay_pb2.PredictionMeta, run: RunRecord, encoding: str
) -> PredictionRecord:
    """The prediction set a validated publish describes."""
    return PredictionRecord(
        run_id=run.run_id,
        agent_id=meta.agent_id,
        experience=meta.experience,
        classes_seen=tuple(meta.classes_seen),
        probe_fingerprint=meta.probe_fingerprint,
        dtype=meta.dtype or encoding,
        shape=(int(meta.shape[0]), int(meta.shape[1])),
        encoding=encoding,
        sha256=meta.sha256,
        payload_bytes=meta.payload_bytes,
    )


def prediction_meta(record: PredictionRecord) -> relay_pb2.PredictionMeta:
    return relay_pb2.PredictionMeta(
        run_id=record.run_id,
        agent_id=record.agent_id,
        experience=record.experience,
        classes_seen=list(record.classes_seen),
        probe_fingerprint=record.probe_fingerprint,
        dtype=record.dtype,
        shape=list(record.shape),
        encoding=ENCODINGS[record.encoding],
        sha256=record.sha256,
        payload_bytes=record.payload_bytes,
    )


def stored_prediction(record: PredictionRecord) -> relay_pb2.StoredPrediction:
    return relay_pb2.StoredPrediction(
        id=record.id, meta=prediction_meta(record), published_at=record.published_at
    )


def publish_ack(record: PredictionRecord, already_stored: bool) -> relay_pb2.PublishAck:
    return relay_pb2.PublishAck(
        id=record.id,
        sha256=record.sha256,
        payload_bytes=record.payload_bytes,
        already_stored=already_stored,
    )


def run_status(
    run: RunRecord,
    records: list[PredictionRecord],
    agents: list[AgentRecord],
    eval_set: EvalSetRecord | None = None,
) -> relay_pb2.RunStatus:
    """A run's part of the status: its spec and state, what it stores (prediction sets,
    eval set), and every agent."""
    status = relay_pb2.RunStatus(
        run_id=run.run_id,
        state=run_state_value(run.state),
        current_experience=run.current_experience,
        experiences=run.experiences,
        num_classes=run.num_classes,
        probe_size=run.probe_size,
        probe_fingerprint=run.probe_fingerprint,
        expected_agents=run.expected_agents,
        created_at=run.created_at,
        prediction_sets=len(records),
        payload_bytes=sum(r.payload_bytes for r in records),
        eval_size=eval_set.num_rows if eval_set else 0,
        eval_fingerprint=eval_set.fingerprint if eval_set else "",
    )
    for agent in agents:
        mine = [r for r in records if r.agent_id == agent.agent_id]
        status.agents.add(
            agent_id=agent.agent_id,
            last_seen=agent.last_seen,
            experiences_published=[r.experience for r in mine],
            payload_bytes=sum(r.payload_bytes for r in mine),
            experience=agent.experience,
            state=agent.state,
            metrics=agent.metrics,
            reported_at=agent.reported_at,
            reason=agent.reason,
            history=[
                relay_pb2.ExperienceMetrics(experience=e, metrics=m)
                for e, m in sorted(agent.history.items())
            ],
        )
    return status
