"""A client written from relay.proto alone (generated stubs, hashlib and numpy; no dkt
client code, no torch) can create a run, publish to it and store and fetch its eval set:
the fingerprint recipes documented on `ProbeSetMeta.fingerprint` and
`EvalSetMeta.fingerprint`, and the agents' run credentials of the header, are the ones
the relay checks."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from dkt.common.data.probe import ProbeSet
from dkt.proto.dkt.v1 import relay_pb2, relay_pb2_grpc
from tests.support.relay import RelayProcess, Tokens, new_run_id

PROTO = Path(__file__).resolve().parents[2] / "proto" / "dkt" / "v1" / "relay.proto"
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


# -- the eval set ----------------------------------------------------------------------

EVAL_SHAPE = (7, 3, 2, 2)
EVAL_CLASSES = 4  # RunSpec.num_classes of the runs _create_run_chunks makes


def documented_python_recipe() -> str:
    """The Python expression relay.proto gives on `EvalSetMeta.fingerprint`, as written."""
    block = PROTO.read_text().split("message EvalSetMeta {", 1)[1].split("\n}", 1)[0]
    lines = [line.strip().removeprefix("//").strip() for line in block.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.endswith("In Python:")) + 1
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("PutEvalSet"))
    return " ".join(lines[start:end])


def documented_eval_fingerprint(inputs: np.ndarray, labels: np.ndarray) -> str:
    """The recipe of relay.proto, step by step: "eval:float32:", the dimensions joined by
    ",", ":", the inputs' little-endian float32 bytes, "int64:", N, ":", the labels'
    little-endian int64 bytes; hex SHA-256."""
    values = np.ascontiguousarray(inputs, dtype="<f4")
    targets = np.ascontiguousarray(labels, dtype="<i8")
    header = "eval:float32:" + ",".join(str(d) for d in values.shape) + ":"
    middle = "int64:" + str(len(targets)) + ":"
    return hashlib.sha256(
        header.encode("ascii") + values.tobytes() + middle.encode("ascii") + targets.tobytes()
    ).hexdigest()


def _eval_arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs = rng.standard_normal(EVAL_SHAPE).astype(np.float32)
    return inputs, rng.integers(0, EVAL_CLASSES, EVAL_SHAPE[0]).astype(np.int64)


def _put_eval_set_chunks(
    run_id: str, inputs: np.ndarray, labels: np.ndarray
) -> Iterator[relay_pb2.EvalSetChunk]:
    payload = (
        np.ascontiguousarray(inputs, dtype="<f4").tobytes()
        + np.ascontiguousarray(labels, dtype="<i8").tobytes()
    )
    meta = relay_pb2.EvalSetMeta(
        fingerprint=documented_eval_fingerprint(inputs, labels),
        source="independent",
        shape=list(inputs.shape),
        num_rows=len(labels),
        sha256=hashlib.sha256(payload).hexdigest(),
        payload_bytes=len(payload),
    )
    for offset in range(0, len(payload), CHUNK):
        chunk = relay_pb2.EvalSetChunk(offset=offset, data=payload[offset : offset + CHUNK])
        if offset == 0:
            chunk.run_id = run_id
            chunk.meta.CopyFrom(meta)
        yield chunk


def test_the_proto_documents_the_eval_fingerprint_recipe_as_runnable_python() -> None:
    inputs, labels = _eval_arrays(seed=2)
    shape = inputs.shape

    recipe = documented_python_recipe()
    computed = eval(
        recipe, {"hashlib": hashlib, "np": np, "shape": shape, "inputs": inputs, "labels": labels}
    )

    assert recipe.startswith('hashlib.sha256(b"eval:float32:"')
    assert computed == documented_eval_fingerprint(inputs, labels)
    assert "immediately followed by the labels as little-endian int64" in PROTO.read_text()


def test_the_documented_eval_recipe_is_what_the_dkt_eval_set_computes() -> None:
    import torch

    from dkt.common.data.eval_set import EvalSet

    inputs, labels = _eval_arrays(seed=5)

    eval_set = EvalSet.from_tensors(torch.from_numpy(inputs), torch.from_numpy(labels), "same")

    assert eval_set.fingerprint == documented_eval_fingerprint(inputs, labels)


def test_an_eval_set_stored_with_the_documented_fingerprint_is_served_back(
    stub: relay_pb2_grpc.RelayStub, relay_tokens: Tokens
) -> None:
    run_id = new_run_id()
    admin = (("authorization", f"Bearer {relay_tokens.admin}"),)
    credential = documented_run_credential(relay_tokens.agents[0], 0, run_id)
    agent = (("authorization", f"Bearer {credential}"),)
    stub.CreateRun(
        _create_run_chunks(run_id, _inputs(), documented_fingerprint(_inputs())),
        timeout=10,
        metadata=admin,
    )
    inputs, labels = _eval_arrays(seed=3)

    info = stub.PutEvalSet(_put_eval_set_chunks(run_id, inputs, labels), timeout=10, metadata=admin)
    again = stub.PutEvalSet(
        _put_eval_set_chunks(run_id, inputs, labels), timeout=10, metadata=admin
    )
    first, *rest = stub.GetEvalSet(
        relay_pb2.GetEvalSetRequest(run_id=run_id), timeout=10, metadata=agent
    )

    assert (info.run_id, info.already_stored, again.already_stored) == (run_id, False, True)
    assert info.meta.fingerprint == documented_eval_fingerprint(inputs, labels)
    assert first.run_id == run_id and not any(c.run_id or c.HasField("meta") for c in rest)
    received = b"".join(c.data for c in [first, *rest])
    assert hashlib.sha256(received).hexdigest() == first.meta.sha256
    split = 4 * int(np.prod(first.meta.shape))
    got_inputs = np.frombuffer(received[:split], dtype="<f4").reshape(tuple(first.meta.shape))
    got_labels = np.frombuffer(received[split:], dtype="<i8")
    assert first.meta.num_rows == len(got_labels) == EVAL_SHAPE[0]
    assert documented_eval_fingerprint(got_inputs, got_labels) == first.meta.fingerprint
    assert np.array_equal(got_inputs, inputs) and np.array_equal(got_labels, labels)


# -- an agent's run credential ------------------------------------------------------------


def documented_run_credential(token: str, agent_id: int, run_id: str) -> str:
    """The recipe of relay.proto's header, step by step: key = SHA-256 of the token;
    mac = hex HMAC-SHA256 over "dkt-run-credential-v1" NUL agent id NUL run id;
    "dkt-run." agent id "." unpadded base64url of the run id "." mac."""
    key = hashlib.sha256(token.encode("utf-8")).digest()
    message = b"dkt-run-credential-v1\x00" + str(agent_id).encode("ascii") + b"\x00"
    mac = hmac.new(key, message + run_id.encode("utf-8"), hashlib.sha256).hexdigest()
    run = base64.urlsafe_b64encode(run_id.encode("utf-8")).decode("ascii").rstrip("=")
    return f"dkt-run.{agent_id}.{run}.{mac}"


def test_the_proto_gives_an_example_credential_that_the_recipe_reproduces() -> None:
    example = documented_run_credential("an-agent-token-0123456789", 0, "run-1")

    assert f"Bearer {example}" in PROTO.read_text()
    assert example.startswith("dkt-run.0.cnVuLTE.")


def test_the_documented_credential_is_what_dkt_agents_send() -> None:
    from dkt.proto.run_credential import run_credential

    for agent_id, run_id in [(0, "run-1"), (7, "ümlaut run ✓"), (2**31 - 1, "r" * 128)]:
        token = f"token-of-agent-{agent_id}-0123456789"
        assert run_credential(token, agent_id, run_id) == documented_run_credential(
            token, agent_id, run_id
        )


def test_an_agent_with_the_documented_credential_publishes_and_reads_in_its_run(
    stub: relay_pb2_grpc.RelayStub, relay_tokens: Tokens
) -> None:
    run_id = new_run_id()
    admin = (("authorization", f"Bearer {relay_tokens.admin}"),)
    credential = documented_run_credential(relay_tokens.agents[0], 0, run_id)
    agent = (("authorization", f"Bearer {credential}"),)
    inputs = _inputs(seed=6)
    info = stub.CreateRun(
        _create_run_chunks(run_id, inputs, documented_fingerprint(inputs)),
        timeout=10,
        metadata=admin,
    )
    logits = np.ones((SHAPE[0], 4), dtype="<f4").tobytes()
    meta = relay_pb2.PredictionMeta(
        run_id=run_id,
        agent_id=0,
        experience=0,
        classes_seen=[0, 1],
        probe_fingerprint=info.probe.fingerprint,
        dtype="float32",
        shape=[SHAPE[0], 4],
        encoding=relay_pb2.ENCODING_FLOAT32,
        sha256=hashlib.sha256(logits).hexdigest(),
        payload_bytes=len(logits),
    )

    ack = stub.PublishPredictions(
        iter([relay_pb2.PredictionChunk(meta=meta, offset=0, data=logits)]),
        timeout=10,
        metadata=agent,
    )
    listed = stub.ListPredictions(
        relay_pb2.ListPredictionsRequest(run_id=run_id), timeout=10, metadata=agent
    )

    assert ack.already_stored is False
    assert [(p.meta.agent_id, p.meta.experience) for p in listed.predictions] == [(0, 0)]
