"""A client written from relay.proto alone (generated stubs, hashlib and numpy; no dkt
client code, no torch) can create a run and publish to it: the fingerprint recipe
documented on `ProbeSetMeta.fingerprint` is the one the relay checks."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from relay_fixtures import RelayProcess, Tokens, new_run_id

from dkt.common.probe import ProbeSet
from dkt.proto.dkt.v1 import relay_pb2, relay_pb2_grpc

PROTO = Path(__file__).resolve().parents[1] / "proto" / "dkt" / "v1" / "relay.proto"
SHAPE = (6, 3, 2, 2)
CHUNK = 40  # bytes, so the probe set travels in several chunks


def documented_fingerprint(inputs: np.ndarray) -> str:
    """The recipe of relay.proto, step by step: "float32:", the decimal dimensions
    joined by ",", ":", then the row-major little-endian float32 bytes; hex SHA-256."""
    values = np.ascontiguousarray(inputs, dtype="<f4")
    header = "float32:" + ",".join(str(d) for d in values.shape) + ":"
    return hashlib.sha256(header.encode("ascii") + values.tobytes()).hexdigest()


def _inputs(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


def _create_run_chunks(
    run_id: str, inputs: np.ndarray, fingerprint: str
) -> Iterator[relay_pb2.ProbeSetChunk]:
    payload = np.ascontiguousarray(inputs, dtype="<f4").tobytes()
    spec = relay_pb2.RunSpec(run_id=run_id, num_classes=4, experiences=2, expected_agents=1)
    meta = relay_pb2.ProbeSetMeta(
        fingerprint=fingerprint,
        source="independent",
        shape=list(inputs.shape),
        sha256=hashlib.sha256(payload).hexdigest(),
        payload_bytes=len(payload),
    )
    for offset in range(0, len(payload), CHUNK):
        chunk = relay_pb2.ProbeSetChunk(offset=offset, data=payload[offset : offset + CHUNK])
        if offset == 0:
            chunk.spec.CopyFrom(spec)
            chunk.meta.CopyFrom(meta)
        yield chunk


@pytest.fixture
def stub(relay: RelayProcess) -> Iterator[relay_pb2_grpc.RelayStub]:
    with grpc.insecure_channel(relay.address) as channel:
        yield relay_pb2_grpc.RelayStub(channel)


def test_the_proto_documents_the_fingerprint_recipe() -> None:
    text = PROTO.read_text()

    assert '"float32:" + shape + ":" + the payload bytes' in text
    assert "lowercase hex SHA-256" in text
    assert "row-major little-endian float32" in text


def test_a_run_created_with_the_documented_fingerprint_is_accepted(
    stub: relay_pb2_grpc.RelayStub, relay_tokens: Tokens
) -> None:
    inputs = _inputs()
    run_id = new_run_id()
    metadata = (("authorization", f"Bearer {relay_tokens.admin}"),)

    info = stub.CreateRun(
        _create_run_chunks(run_id, inputs, documented_fingerprint(inputs)),
        timeout=10,
        metadata=metadata,
    )
    first, *rest = stub.GetProbeSet(
        relay_pb2.GetProbeSetRequest(run_id=run_id), timeout=10, metadata=metadata
    )

    assert info.spec.run_id == run_id and info.spec.experiences == 2
    assert info.probe.fingerprint == documented_fingerprint(inputs)
    received = b"".join(c.data for c in [first, *rest])
    assert np.array_equal(np.frombuffer(received, dtype="<f4").reshape(SHAPE), inputs)


def test_the_documented_recipe_is_what_the_dkt_probe_set_computes() -> None:
    import torch

    inputs = _inputs(seed=4)

    probe = ProbeSet.from_inputs(torch.from_numpy(inputs), source="same")

    assert probe.fingerprint == documented_fingerprint(inputs)


def test_a_wrong_fingerprint_is_rejected_naming_the_proto_field(
    stub: relay_pb2_grpc.RelayStub, relay_tokens: Tokens, relay: RelayProcess
) -> None:
    inputs = _inputs(seed=1)
    wrong = documented_fingerprint(inputs[:, ::-1])  # the same values, another layout
    before = relay.store_snapshot()

    with pytest.raises(grpc.RpcError) as failure:
        stub.CreateRun(
            _create_run_chunks(new_run_id(), inputs, wrong),
            timeout=10,
            metadata=(("authorization", f"Bearer {relay_tokens.admin}"),),
        )

    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = failure.value.details()
    assert f"ProbeSetMeta.fingerprint {wrong!r} does not match its inputs" in details
    assert "ProbeSet." not in details.replace("ProbeSetMeta.", "")  # no Python class names
    assert relay.store_snapshot() == before
