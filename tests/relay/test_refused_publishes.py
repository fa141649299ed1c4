"""Every publish the relay refuses gets its own status code and message, and leaves the
store exactly as it was."""

from __future__ import annotations

import functools
import hashlib
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
import torch

from dkt.common.data.probe import ProbeSet
from dkt.proto.dkt.v1 import relay_pb2, relay_pb2_grpc
from dkt.proto.relay_client import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    NotPublishedError,
    RelayClient,
)
from dkt.proto.relay_connection import authorization_metadata
from tests.support.relay import (
    EXPERIENCES,
    NUM_CLASSES,
    RelayProcess,
    Tokens,
    logits_payload,
    make_predictions,
    make_probe,
    prediction_chunks,
    prediction_meta,
    publish_refused,
)


@pytest.fixture
def raw_publish(
    relay: RelayProcess, relay_tokens: Tokens
) -> Callable[[list[relay_pb2.PredictionChunk]], grpc.RpcError]:
    """Sends hand-made chunks as the admin's publish stream and returns the error it must
    end with."""
    return functools.partial(publish_refused, relay, relay_tokens.admin)


def test_a_shape_other_than_probe_size_by_classes_is_invalid(
    run_id: str, probe: ProbeSet, relay: RelayProcess, raw_publish: Callable
) -> None:
    payload = np.zeros((len(probe), NUM_CLASSES + 1), dtype="<f4").tobytes()
    meta = prediction_meta(run_id, probe, payload, shape=[len(probe), NUM_CLASSES + 1])
    before = relay.store_snapshot()

    err = raw_publish(prediction_chunks(meta, payload))

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"logits shape ({len(probe)}, {NUM_CLASSES + 1}) does not match" in err.details()
    assert relay.store_snapshot() == before


def test_predictions_on_another_probe_set_fail_the_precondition(
    run_id: str, probe: ProbeSet, relay: RelayProcess, agent_client: Callable
) -> None:
    other = make_probe(seed=99)
    before = relay.store_snapshot()

    with pytest.raises(FailedPreconditionError) as failure:
        agent_client(0, run_id).publish(make_predictions(run_id, other))

    assert failure.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "fetch the run's probe set and predict on it" in failure.value.details
    assert relay.store_snapshot() == before


def test_non_finite_logits_are_invalid(
    run_id: str, probe: ProbeSet, relay: RelayProcess, raw_publish: Callable
) -> None:
    values = np.ones((len(probe), NUM_CLASSES), dtype="<f4")
    values[3, 4], values[5, 6] = np.nan, np.inf
    payload = values.tobytes()
    before = relay.store_snapshot()

    err = raw_publish(prediction_chunks(prediction_meta(run_id, probe, payload), payload))

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "logits contain 2 non-finite values" in err.details()
    assert relay.store_snapshot() == before


def test_logits_beyond_the_relays_bound_are_invalid_and_store_nothing(
    run_id: str, probe: ProbeSet, relay: RelayProcess, agent_client: Callable
) -> None:
    """One credential's 1e30 logits would make every peer's KD loss infinite."""
    poisoned = make_predictions(run_id, probe)
    poisoned.logits[2, 3] = 1e30
    poisoned.logits[4, 1] = -2000.0
    before = relay.store_snapshot()

    with pytest.raises(InvalidArgumentError) as failure:
        agent_client(0, run_id).publish(poisoned)

    assert (
        "logits reach |x| = 1e+30 (2 values beyond this relay's bound of 1000, "
        "`dkt relay --max-logit`)" in failure.value.details
    )
    assert relay.store_snapshot() == before


def test_logits_at_the_bound_are_stored(
    run_id: str, probe: ProbeSet, agent_client: Callable
) -> None:
    at_bound = make_predictions(run_id, probe)
    at_bound.logits[0, 0], at_bound.logits[1, 1] = 1000.0, -1000.0

    receipt = agent_client(0, run_id).publish(at_bound)

    assert receipt.already_stored is False
    assert agent_client(0, run_id).fetch(run_id, 0, 0).logits.abs().max().item() == 1000.0


def test_the_client_refuses_non_finite_logits_before_sending(
    run_id: str, probe: ProbeSet, agent_client: Callable
) -> None:
    predictions = make_predictions(run_id, probe)
    predictions.logits[0, 0] = float("nan")

    with pytest.raises(ValueError, match="NaN or infinity"):
        agent_client(0, run_id).publish(predictions)


def test_logits_beyond_float16_range_are_refused_for_float16(
    run_id: str, probe: ProbeSet, agent_client: Callable
) -> None:
    predictions = make_predictions(run_id, probe)
    predictions.logits[0, 0] = 1e6

    with pytest.raises(ValueError, match="encoding='float32'"):
        agent_client(0, run_id).publish(predictions, encoding="float16")


def test_chunks_out_of_order_are_invalid(
    run_id: str, probe: ProbeSet, relay: RelayProcess, raw_publish: Callable
) -> None:
    payload = logits_payload(probe)
    chunks = prediction_chunks(prediction_meta(run_id, probe, payload), payload)
    chunks[1], chunks[2] = chunks[2], chunks[1]
    before = relay.store_snapshot()

    err = raw_publish(chunks)

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "chunk 1 is out of order: expected offset 512, got 1024" in err.details()
    assert relay.store_snapshot() == before


def test_a_stream_that_ends_early_is_incomplete(
    run_id: str, probe: ProbeSet, relay: RelayProcess, raw_publish: Callable
) -> None:
    payload = logits_payload(probe)
    chunks = prediction_chunks(prediction_meta(run_id, probe, payload), payload)
    sent = len(payload) - len(chunks[-1].data)
    before = relay.store_snapshot()

    err = raw_publish(chunks[:-1])

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"payload is incomplete: received {sent} of {len(payload)} bytes" in err.details()
    assert relay.store_snapshot() == before


def test_a_stream_without_metadata_first_is_invalid(
    run_id: str, probe: ProbeSet, relay: RelayProcess, raw_publish: Callable
) -> None:
    before = relay.store_snapshot()

    err = raw_publish([relay_pb2.PredictionChunk(offset=0, data=b"1234")])

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must start with a chunk that carries the metadata" in err.details()
    assert relay.store_snapshot() == before


def test_metadata_in_a_later_chunk_is_invalid(
    run_id: str, probe: ProbeSet, relay: RelayProcess, raw_publish: Callable
) -> None:
    payload = logits_payload(probe)
    meta = prediction_meta(run_id, probe, payload)
    chunks = prediction_chunks(meta, payload)
    chunks[1].meta.CopyFrom(meta)
    before = relay.store_snapshot()

    err = raw_publish(chunks)

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "only the first chunk may carry metadata" in err.details()
    assert relay.store_snapshot() == before


@pytest.mark.parametrize(
    ("changes", "code", "message"),
    [
        pytest.param(
            {"sha256": hashlib.sha256(b"other").hexdigest()},
            grpc.StatusCode.INVALID_ARGUMENT,
            "SHA-256 of the received bytes is",
            id="a_payload_that_does_not_match_its_hash_is_invalid",
        ),
        pytest.param(
            {"payload_bytes": 2 << 30},
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"prediction set of {2 << 30} bytes exceeds this relay's limit",
            id="a_prediction_set_over_the_size_limit_is_resource_exhausted",
        ),
        pytest.param(
            {"classes_seen": [0, NUM_CLASSES]},
            grpc.StatusCode.INVALID_ARGUMENT,
            f"classes_seen must be distinct classes in 0..{NUM_CLASSES - 1}",
            id="classes_outside_the_run_are_invalid",
        ),
        pytest.param(
            {"agent_id": 40},
            grpc.StatusCode.INVALID_ARGUMENT,
            "agent 40 is not part of run",
            id="an_agent_beyond_the_expected_agents_is_invalid",
        ),
    ],
)
def test_metadata_the_run_cannot_take_is_refused_with_its_code(
    changes: dict[str, object],
    code: grpc.StatusCode,
    message: str,
    run_id: str,
    probe: ProbeSet,
    relay: RelayProcess,
    raw_publish: Callable,
) -> None:
    payload = logits_payload(probe)
    meta = prediction_meta(run_id, probe, payload, **changes)
    before = relay.store_snapshot()

    err = raw_publish(prediction_chunks(meta, payload))

    assert err.code() == code
    assert message in err.details()
    assert relay.store_snapshot() == before


def test_different_predictions_for_a_stored_experience_already_exist(
    run_id: str, probe: ProbeSet, relay: RelayProcess, agent_client: Callable
) -> None:
    agent = agent_client(0, run_id)
    original = make_predictions(run_id, probe, seed=1)
    agent.publish(original)
    before = relay.store_snapshot()

    with pytest.raises(AlreadyExistsError) as failure:
        agent.publish(make_predictions(run_id, probe, seed=2))

    assert failure.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert "predictions are immutable once acknowledged" in failure.value.details
    assert relay.store_snapshot() == before
    assert torch.equal(agent.fetch(run_id, 0, 0).logits, original.logits)


def test_publishing_to_an_unknown_run_is_not_found(
    probe: ProbeSet, relay: RelayProcess, agent_client: Callable
) -> None:
    before = relay.store_snapshot()

    with pytest.raises(NotFoundError) as failure:
        agent_client(0, "no-such-run").publish(make_predictions("no-such-run", probe))

    assert failure.value.code == grpc.StatusCode.NOT_FOUND
    assert "run 'no-such-run' does not exist on this relay" in failure.value.details
    assert relay.store_snapshot() == before


def test_publishing_to_a_finished_run_fails_the_precondition(
    run_id: str, probe: ProbeSet, relay: RelayProcess, admin: RelayClient, agent_client: Callable
) -> None:
    admin.set_run_state(run_id, "finished")
    before = relay.store_snapshot()

    with pytest.raises(FailedPreconditionError) as failure:
        agent_client(0, run_id).publish(make_predictions(run_id, probe))

    assert f"run {run_id!r} is finished; it accepts no more predictions" in failure.value.details
    assert relay.store_snapshot() == before


def test_fetching_predictions_never_published_is_not_found(
    run_id: str, agent_client: Callable
) -> None:
    with pytest.raises(NotFoundError) as failure:
        agent_client(0, run_id).fetch(run_id, 7, 2)

    assert failure.value.code == grpc.StatusCode.NOT_FOUND
    assert f"agent 7 has not published predictions for experience 2 in run {run_id!r}" in (
        failure.value.details
    )


def test_not_published_yet_and_no_such_run_are_told_apart_by_a_typed_error(
    run_id: str, agent_client: Callable
) -> None:
    client = agent_client(0, run_id)
    in_no_run = agent_client(0, "no-such-run")

    with pytest.raises(NotPublishedError):
        client.fetch(run_id, 0, 1)
    with pytest.raises(NotFoundError) as no_run:
        in_no_run.fetch("no-such-run", 0, 1)

    assert not isinstance(no_run.value, NotPublishedError)
    assert client.fetch_latest(run_id, 0) is None  # "not yet" is an answer, not an error
    with pytest.raises(NotFoundError):
        in_no_run.fetch_latest("no-such-run", 0)


@pytest.mark.parametrize(("run", "missing"), [("mine", "predictions"), ("no-such-run", "run")])
def test_a_not_found_fetch_names_what_is_missing_in_its_trailing_metadata(
    relay: RelayProcess, relay_tokens: Tokens, run_id: str, run: str, missing: str
) -> None:
    request = relay_pb2.FetchPredictionsRequest(
        run_id=run_id if run == "mine" else run, agent_id=0, experience=1
    )
    with grpc.insecure_channel(relay.address) as channel, pytest.raises(grpc.RpcError) as failure:
        for _ in relay_pb2_grpc.RelayStub(channel).FetchPredictions(
            request, timeout=10, metadata=authorization_metadata(relay_tokens.admin)
        ):
            pass

    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    assert dict(failure.value.trailing_metadata())["dkt-missing"] == missing


def test_a_run_whose_probe_fingerprint_does_not_match_its_inputs_is_invalid(
    relay: RelayProcess, admin: RelayClient
) -> None:
    probe = make_probe(seed=5)
    forged = ProbeSet(probe.inputs, probe.source, make_probe(seed=6).fingerprint)
    before = relay.store_snapshot()

    with pytest.raises(InvalidArgumentError) as failure:
        admin.create_run("forged-run", forged, NUM_CLASSES, EXPERIENCES)

    assert "does not match its inputs" in failure.value.details
    assert relay.store_snapshot() == before


def test_a_different_run_under_an_existing_id_already_exists(
    run_id: str, relay: RelayProcess, admin: RelayClient
) -> None:
    before = relay.store_snapshot()

    with pytest.raises(AlreadyExistsError) as failure:
        admin.create_run(run_id, make_probe(seed=7), NUM_CLASSES, EXPERIENCES)

    assert f"run {run_id!r} already exists with a different probe set" in failure.value.details
    assert relay.store_snapshot() == before


def test_a_run_state_outside_the_enum_is_invalid(
    run_id: str, relay: RelayProcess, relay_tokens: Tokens
) -> None:
    with grpc.insecure_channel(relay.address) as channel, pytest.raises(grpc.RpcError) as failure:
        relay_pb2_grpc.RelayStub(channel).SetRunState(
            relay_pb2.SetRunStateRequest(run_id=run_id, state=99),
            timeout=10,
            metadata=(("authorization", f"Bearer {relay_tokens.admin}"),),
        )

    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "state 99 is not a run state; use created, running" in failure.value.details()


def test_a_publish_abandoned_mid_stream_is_cancelled_not_an_internal_error(
    run_id: str, probe: ProbeSet, relay: RelayProcess, relay_tokens: Tokens, admin: RelayClient
) -> None:
    payload = logits_payload(probe)
    chunks = prediction_chunks(prediction_meta(run_id, probe, payload, agent_id=7), payload)
    token = relay_tokens.credential(7, run_id)
    gave_up = threading.Event()

    def stalling() -> Iterator[relay_pb2.PredictionChunk]:
        yield chunks[0]
        gave_up.wait(10)  # the rest never comes

    def relay_is_reading_the_stream() -> bool:
        (run,) = [r for r in admin.status()["runs"] if r["run_id"] == run_id]
        return any(a["agent_id"] == 7 and a["last_seen"] for a in run["agents"])

    before = relay.store_snapshot()
    failed = _client_side_publish_failures(relay)
    try:
        with grpc.insecure_channel(relay.address) as channel:
            call = relay_pb2_grpc.RelayStub(channel).PublishPredictions.future(
                stalling(), timeout=10, metadata=(("authorization", f"Bearer {token}"),)
            )
            assert _eventually(relay_is_reading_the_stream)
            call.cancel()  # as a deadline would; the stream stays open, never completed
            # The server sees either the cancellation or a stream that ended incomplete,
            # depending on timing; both are the client's doing, never an internal error.
            assert _eventually(lambda: _client_side_publish_failures(relay) == failed + 1)
    finally:
        gave_up.set()

    assert call.cancelled()
    assert "INTERNAL" not in _metrics(relay) and "internal error" not in relay.log()
    assert relay.store_snapshot() == before


def _client_side_publish_failures(relay: RelayProcess) -> float:
    """Publishes counted as CANCELLED or INVALID_ARGUMENT so far."""
    total = 0.0
    for line in _metrics(relay).splitlines():
        if line.startswith("dkt_relay_publishes_total{") and (
            'outcome="CANCELLED"' in line or 'outcome="INVALID_ARGUMENT"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _metrics(relay: RelayProcess) -> str:
    with urllib.request.urlopen(f"{relay.status_url}/metrics", timeout=5) as response:
        return response.read().decode()


def _eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- hostile bytes on the wire -------------------------------------------------------------


def _raw_stream_error(relay: RelayProcess, token: str, messages: list[bytes]) -> grpc.RpcError:
    """Sends `messages` as they are (no protobuf on this side) as a publish stream."""
    with grpc.insecure_channel(relay.address) as channel, pytest.raises(grpc.RpcError) as failure:
        publish = channel.stream_unary(
            "/dkt.v1.Relay/PublishPredictions",
            request_serializer=None,
            response_deserializer=relay_pb2.PublishAck.FromString,
        )
        publish(iter(messages), timeout=30, metadata=authorization_metadata(token))
    return failure.value


def test_bytes_that_are_no_chunk_are_invalid_and_store_nothing(
    run_id: str, probe: ProbeSet, relay: RelayProcess, relay_tokens: Tokens
) -> None:
    """A hostile host's malformed chunk, first or later in the stream, is INVALID_ARGUMENT
    (not gRPC's INTERNAL for a request it cannot parse), and the relay keeps serving."""
    payload = logits_payload(probe)
    good = [
        c.SerializeToString()
        for c in prediction_chunks(prediction_meta(run_id, probe, payload), payload)
    ]
    truncated = good[0][:-3]  # the first chunk's data cut short
    before = relay.store_snapshot()

    first_bad = _raw_stream_error(relay, relay_tokens.admin, [truncated, *good[1:]])
    later_bad = _raw_stream_error(relay, relay_tokens.admin, [good[0], b"\x0c"])

    assert first_bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the first chunk: PredictionChunk is not a valid message" in first_bad.details()
    assert later_bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "chunk 1: PredictionChunk is not a valid message" in later_bad.details()
    assert relay.store_snapshot() == before


def test_a_chunk_of_many_tiny_fields_is_refused_and_the_relay_keeps_serving(
    run_id: str, probe: ProbeSet, relay: RelayProcess, relay_tokens: Tokens, admin: RelayClient
) -> None:
    """Close to 8 MiB of unknown one-byte fields: valid protobuf with no metadata. It is
    parsed by protobuf's C parser (chunks.parse walks 16 fields at most), refused, and an
    honest publish goes through right after."""
    flood = b"\xf8\x07\x00" * (2_700_000)  # field 127 = 0, 2.7 million times (8.1 MB)
    before = relay.store_snapshot()

    err = _raw_stream_error(relay, relay_tokens.admin, [flood])

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must start with a chunk that carries the metadata" in err.details()
    assert relay.store_snapshot() == before
    assert not admin.publish(make_predictions(run_id, probe)).already_stored
