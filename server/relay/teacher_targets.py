"""FetchTeacherTargets: a student's peers' prediction sets combined at the relay with the
agents' own arithmetic (common/training/teacher.py), so both give the same targets:
"mean" and "coverage" one set at a time (`RunningTeacher`), "median" and "trimmed-mean"
on all sets in one tensor (`robust_aggregate`, which `aggregate` uses too).

Imported by the handler on its first call: it needs torch, which a relay that never
serves teacher targets does not load.
"""

from __future__ import annotations

import threading

import grpc
import torch

from dkt.common.choices import AGGREGATIONS
from dkt.common.hashing import sha256_hex
from dkt.common.training.predictions import Predictions
from dkt.common.training.teacher import (
    RUNNING_AGGREGATIONS,
    TEACHER_CLIP,
    RunningTeacher,
    Teacher,
    check_compatible,
    robust_aggregate,
)
from dkt.proto.dkt.v1 import relay_pb2
from dkt.proto.logits_encoding import bytes_per_value, decode_tensor, encoding_value
from dkt.server.relay import validation as check
from dkt.server.relay.rejection import Rejection
from dkt.server.relay.store import PredictionRecord, RelayStore, RunRecord

Code = grpc.StatusCode
MAX_PEERS = 1024
# Requests combined at once: "median" and "trimmed-mean" hold every peer's set as float32
# in memory, in one tensor ("mean" and "coverage" one set at a time).
_combining = threading.BoundedSemaphore(2)


def check_request(request: relay_pb2.FetchTeacherTargetsRequest, run: RunRecord) -> None:
    """A well-formed request within the bounds (relay.proto, FetchTeacherTargetsRequest)."""
    field = "FetchTeacherTargetsRequest"
    if request.agent_id < 0:
        raise Rejection(
            Code.INVALID_ARGUMENT, f"{field}.agent_id must be >= 0, got {request.agent_id}"
        )
    check.check_experience(request.experience, run, f"{field}.experience")
    if request.aggregation not in AGGREGATIONS:
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"{field}.aggregation {request.aggregation!r} is not one of {', '.join(AGGREGATIONS)}",
        )
    if len(request.peers) > MAX_PEERS:
        raise Rejection(
            Code.RESOURCE_EXHAUSTED,
            f"{field}.peers names {len(request.peers)} peers; at most {MAX_PEERS} per call",
        )
    seen: set[int] = set()
    for peer in request.peers:
        if peer.agent_id < 0 or peer.agent_id == request.agent_id or peer.agent_id in seen:
            raise Rejection(
                Code.INVALID_ARGUMENT,
                f"{field}.peers: agent {peer.agent_id} is negative, the student itself or "
                "named twice; name each teacher once",
            )
        seen.add(peer.agent_id)
        if peer.WhichOneof("selector") is None:
            raise Rejection(
                Code.INVALID_ARGUMENT,
                f"{field}.peers: say which set of agent {peer.agent_id} to use "
                "(TeacherPeer.experience or TeacherPeer.latest)",
            )
        if peer.WhichOneof("selector") == "experience":
            check.check_experience(peer.experience, run, "TeacherPeer.experience")


def find_sets(
    store: RelayStore, run: RunRecord, request: relay_pb2.FetchTeacherTargetsRequest
) -> tuple[list[PredictionRecord], list[int]]:
    """The stored set of each peer (as FetchPredictions finds it) and the peers without."""
    found, missing = [], []
    for peer in request.peers:
        if peer.WhichOneof("selector") == "experience":
            record = store.get_predictions(run.run_id, peer.agent_id, peer.experience)
        else:
            bound = peer.latest.max_experience if peer.latest.HasField("max_experience") else None
            record = store.latest_predictions(run.run_id, peer.agent_id, bound)
        if record is None:
            missing.append(peer.agent_id)
        else:
            found.append(record)
    return found, missing


def combine(
    store: RelayStore,
    run: RunRecord,
    request: relay_pb2.FetchTeacherTargetsRequest,
    max_bytes: int,
) -> tuple[relay_pb2.TeacherTargetsMeta, bytes]:
    """The targets' metadata and float32 payload (empty when no peer has a set)."""
    records, missing = find_sets(store, run, request)
    combined = sum(4 * r.payload_bytes // _bytes_per_value(r) for r in records)
    if combined > max_bytes:
        raise Rejection(
            Code.RESOURCE_EXHAUSTED,
            f"combining {len(records)} sets takes {combined} bytes of float32 logits, beyond "
            f"this relay's {max_bytes}; ask for fewer peers per call",
        )
    meta = relay_pb2.TeacherTargetsMeta(
        run_id=run.run_id,
        agent_id=request.agent_id,
        experience=request.experience,
        aggregation=request.aggregation,
        missing=missing,
        encoding=relay_pb2.ENCODING_FLOAT32,
    )
    if not records:
        meta.sha256 = sha256_hex(b"")
        return meta, b""
    try:
        check_compatible({r.probe_fingerprint for r in records}, {tuple(r.shape) for r in records})
    except ValueError as err:
        raise Rejection(Code.INVALID_ARGUMENT, f"{err}") from None
    with _combining:
        if request.aggregation in RUNNING_AGGREGATIONS:
            # One set in memory at a time (256 peers' sets would be 535 MB per call).
            running = RunningTeacher(request.aggregation)
            for record in records:
                running.add(_predictions(record, store.read_predictions(record)))
            teacher = running.result()
        else:  # the robust aggregations order every peer's value: all sets at once
            stacked = torch.empty((len(records), *records[0].shape), dtype=torch.float32)
            for i, record in enumerate(records):
                stacked[i] = _predictions(record, store.read_predictions(record)).logits
            stacked.clamp_(-TEACHER_CLIP, TEACHER_CLIP)
            teacher = Teacher(
                robust_aggregate(stacked, request.aggregation),
                tuple(sorted({c for r in records for c in r.classes_seen})),
                tuple((r.agent_id, r.experience) for r in records),
            )
        assert teacher is not None
        payload = teacher.logits.numpy().astype("<f4", copy=False).tobytes()
    meta.sources.extend(
        relay_pb2.TeacherSource(agent_id=a, experience=e) for a, e in teacher.sources
    )
    meta.classes.extend(teacher.classes)
    meta.coverage.extend(_coverage(records, run.num_classes))
    meta.probe_fingerprint = records[0].probe_fingerprint
    meta.shape.extend(teacher.logits.shape)
    meta.sha256 = sha256_hex(payload)
    meta.payload_bytes = len(payload)
    return meta, payload


def _coverage(records: list[PredictionRecord], num_classes: int) -> list[int]:
    """Per class, how many of the sets' agents have trained on it (what "coverage" divides
    by), from the records, without their logits."""
    counts = [0] * num_classes
    for record in records:
        for c in set(record.classes_seen):
            if 0 <= c < num_classes:
                counts[c] += 1
    return counts


def _bytes_per_value(record: PredictionRecord) -> int:
    return bytes_per_value(encoding_value(record.encoding))


def _predictions(record: PredictionRecord, payload: bytes) -> Predictions:
    logits: torch.Tensor = decode_tensor(
        payload, encoding_value(record.encoding), tuple(record.shape)
    )
    return Predictions(
        agent_id=record.agent_id,
        experience=record.experience,
        classes_seen=tuple(record.classes_seen),
        probe_fingerprint=record.probe_fingerprint,
        logits=logits,
        run_id=record.run_id,
    )
