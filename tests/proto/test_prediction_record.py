"""Specification of a stored prediction set's metadata (proto/prediction_record.py): its id
is RUN/AGENT/EXPERIENCE; `same_content` compares what the set holds (classes seen, probe
fingerprint, shape, encoding, SHA-256) and ignores when it was published; and the relay
client's `PredictionInfo` is a `PredictionRecord` with exactly its fields."""

from __future__ import annotations

import dataclasses

import pytest

from dkt.proto.prediction_record import PredictionRecord
from dkt.proto.relay_client import PredictionInfo

RECORD = PredictionRecord(
    run_id="run-7",
    agent_id=3,
    experience=12,
    classes_seen=(0, 1, 4),
    probe_fingerprint="f" * 64,
    dtype="float16",
    shape=(200, 10),
    encoding="zstd",
    sha256="a" * 64,
    payload_bytes=4000,
    published_at=1700000000.5,
)


def test_id_is_run_agent_experience() -> None:
    assert RECORD.id == "run-7/3/12"
    assert dataclasses.replace(RECORD, experience=0, agent_id=0).id == "run-7/0/0"


def test_published_at_defaults_to_zero() -> None:
    fields = {f.name: getattr(RECORD, f.name) for f in dataclasses.fields(PredictionRecord)}
    del fields["published_at"]

    assert PredictionRecord(**fields).published_at == 0.0


def test_same_content_ignores_the_publish_time() -> None:
    republished = dataclasses.replace(RECORD, published_at=1800000000.0)

    assert RECORD.same_content(republished)
    assert republished.same_content(RECORD)
    assert republished != RECORD


@pytest.mark.parametrize(
    "change",
    [
        {"sha256": "b" * 64},
        {"shape": (200, 11)},
        {"classes_seen": (0, 1)},
        {"encoding": "raw"},
        {"probe_fingerprint": "e" * 64},
    ],
    ids=["sha256", "shape", "classes", "encoding", "probe-fingerprint"],
)
def test_same_content_tells_a_different_set_apart(change: dict[str, object]) -> None:
    other = dataclasses.replace(RECORD, **change)  # type: ignore[arg-type]

    assert not RECORD.same_content(other)
    assert not other.same_content(RECORD)


def test_prediction_info_is_a_prediction_record_with_the_same_fields() -> None:
    info = PredictionInfo(**{f.name: getattr(RECORD, f.name) for f in dataclasses.fields(RECORD)})

    assert issubclass(PredictionInfo, PredictionRecord)
    assert dataclasses.fields(PredictionInfo) == dataclasses.fields(PredictionRecord)
    assert info.id == "run-7/3/12"
    assert info.same_content(RECORD)
