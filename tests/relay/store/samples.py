"""Records and payloads the store tests put into a store."""

from __future__ import annotations

import hashlib

from dkt.server.relay.store import EvalSetRecord, PredictionRecord, RunRecord

PROBE = b"\x00\x00\x80?" * 12  # 12 float32 ones
EVAL = bytes(range(4 * 12)) + bytes(8 * 4)  # inputs 4 x 3 (float32 bytes), 4 int64 labels


def sha(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def run_record(run_id: str = "r1", **changes: object) -> RunRecord:
    fields: dict[str, object] = dict(
        run_id=run_id,
        num_classes=3,
        expected_agents=2,
        config_json="{}",
        probe_fingerprint="fp",
        probe_source="test",
        probe_shape=(4, 3),
        probe_sha256=sha(PROBE),
        probe_bytes=len(PROBE),
    )
    fields.update(changes)
    return RunRecord(**fields)  # type: ignore[arg-type]


def predictions(
    payload: bytes, agent_id: int = 0, experience: int = 0, run_id: str = "r1"
) -> PredictionRecord:
    return PredictionRecord(
        run_id=run_id,
        agent_id=agent_id,
        experience=experience,
        classes_seen=(0, 1),
        probe_fingerprint="fp",
        dtype="float32",
        shape=(4, 3),
        encoding="float32",
        sha256=sha(payload),
        payload_bytes=len(payload),
    )


def eval_set(payload: bytes = EVAL, run_id: str = "r1", **changes: object) -> EvalSetRecord:
    fields: dict[str, object] = dict(
        run_id=run_id,
        fingerprint="e" * 64,
        source="test",
        shape=(4, 3),
        sha256=sha(payload),
        payload_bytes=len(payload),
    )
    fields.update(changes)
    return EvalSetRecord(**fields)  # type: ignore[arg-type]
