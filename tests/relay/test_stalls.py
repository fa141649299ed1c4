"""No credential can stall the relay: one agent's token opening 64 publish streams that
never send a chunk gets 4 of them (the rest RESOURCE_EXHAUSTED at once), the admin's
GetStatus still answers, the idle streams are ended after the idle timeout, and then
the same agent publishes as usual. A real relay process; hand-made gRPC streams."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from dkt.proto.dkt.v1 import relay_pb2, relay_pb2_grpc
from dkt.proto.relay_connection import authorization_metadata
from tests.support.relay import (
    EXPERIENCES,
    NUM_CLASSES,
    Tokens,
    client_for,
    make_predictions,
    make_probe,
    running_relay,
)

IDLE_S = 3.0


def _silent(stop: threading.Event) -> Iterator[relay_pb2.PredictionChunk]:
    """A publish stream that sends nothing until `stop`."""
    stop.wait()
    return
    yield  # a generator


@pytest.mark.slow
def test_64_idle_streams_of_one_agent_do_not_stall_the_relay(tmp_path: Path) -> None:
    tokens = Tokens.generate(2)
    token_file = tokens.write(tmp_path / "tokens.toml")
    args = ["--token-file", str(token_file), "--insecure", "--stream-idle-timeout", str(IDLE_S)]
    stop = threading.Event()
    with (
        running_relay(tmp_path / "data", args) as relay,
        grpc.insecure_channel(relay.address) as channel,
    ):
        admin = client_for(relay, tokens.admin, timeout=5.0)
        probe = make_probe()
        admin.create_run("stall", probe, NUM_CLASSES, EXPERIENCES, expected_agents=2)
        stub = relay_pb2_grpc.RelayStub(channel)
        calls = [
            stub.PublishPredictions.future(
                _silent(stop),
                timeout=60,
                metadata=authorization_metadata(tokens.credential(1, "stall")),
            )
            for _ in range(64)
        ]
        refused_by = time.monotonic() + 10
        while sum(c.done() for c in calls) < 60 and time.monotonic() < refused_by:
            time.sleep(0.05)
        refused = [c for c in calls if c.done()]
        held = [c for c in calls if not c.done()]

        started = time.perf_counter()
        status = admin.status()
        answered_s = time.perf_counter() - started

        assert len(held) == 4
        assert {c.code() for c in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert "agent 1 already has 4 streams open" in refused[0].details()
        assert [r["run_id"] for r in status["runs"]] == ["stall"]
        print(f"GetStatus answered in {answered_s:.3f} s with 4 idle streams held")

        for call in held:  # the idle deadline ends them; their workers are free again
            assert call.exception(timeout=IDLE_S + 10) is not None
        assert {c.code() for c in held} == {grpc.StatusCode.CANCELLED}
        with client_for(relay, tokens.credential(1, "stall")) as agent:
            receipt = agent.publish(make_predictions("stall", probe, agent_id=1))
        assert receipt.already_stored is False
        stop.set()
        admin.close()
