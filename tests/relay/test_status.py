"""What the relay tells about itself: HTTP status, health and metrics, gRPC health and
reflection, the event watch, deadlines, and `dkt status`."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from dkt.common.data.probe import ProbeSet
from dkt.proto.relay_client import DeadlineExceededError, RelayClient
from tests.support.relay import RelayProcess, Tokens, dkt_parser, make_predictions


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def test_healthz_answers_ok(relay: RelayProcess) -> None:
    assert _get(f"{relay.status_url}/healthz")[::2] == (200, "ok\n")


def test_status_reports_version_uptime_and_totals(relay: RelayProcess) -> None:
    code, content_type, body = _get(f"{relay.status_url}/status")
    status = json.loads(body)

    assert (code, content_type) == (200, "application/json")
    assert status["version"] == "0.1.0"
    assert status["uptime_seconds"] > 0
    assert set(status["totals"]) == {"runs", "prediction_sets", "payload_bytes"}


def test_metrics_count_publishes_fetches_bytes_and_latency(
    run_id: str, probe: ProbeSet, relay: RelayProcess, agent_client: Callable
) -> None:
    agent = agent_client(0, run_id)
    receipt = agent.publish(make_predictions(run_id, probe))
    agent.fetch(run_id, 0, 0)

    code, content_type, text = _get(f"{relay.status_url}/metrics")

    assert code == 200 and content_type.startswith("text/plain")
    metrics = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert metrics['dkt_relay_publishes_total{outcome="stored"}'] >= 1
    assert metrics['dkt_relay_fetches_total{outcome="served"}'] >= 1
    assert metrics["dkt_relay_published_bytes_total"] >= receipt.payload_bytes
    assert metrics["dkt_relay_fetched_bytes_total"] >= receipt.payload_bytes
    assert metrics['dkt_relay_request_seconds_count{method="PublishPredictions"}'] >= 1
    assert metrics['dkt_relay_requests_total{code="OK",method="FetchPredictions"}'] >= 1


def _open_store_files(relay: RelayProcess) -> int:
    fd_dir = Path(f"/proc/{relay.proc.pid}/fd")
    return sum(1 for fd in fd_dir.iterdir() if "relay.sqlite3" in str(fd.readlink()))


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")
def test_status_requests_leave_no_store_files_open(relay: RelayProcess) -> None:
    _get(f"{relay.status_url}/status")
    before = _open_store_files(relay)

    for _ in range(25):  # every request is served by a thread of its own
        _get(f"{relay.status_url}/healthz")
        _get(f"{relay.status_url}/metrics")

    assert _open_store_files(relay) <= before + 2


def test_unknown_paths_are_not_found(relay: RelayProcess) -> None:
    code, _, body = _get(f"{relay.status_url}/nope")

    assert code == 404 and "/status" in body


def test_grpc_health_and_reflection_report_the_relay_service(relay: RelayProcess) -> None:
    with grpc.insecure_channel(relay.address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="dkt.v1.Relay"), timeout=10
        )
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        (answer,) = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )

    assert health.status == health_pb2.HealthCheckResponse.SERVING
    services = {s.name for s in answer.list_services_response.service}
    assert {"dkt.v1.Relay", "grpc.health.v1.Health"} <= services


def test_watch_streams_publish_progress_state_and_agent_events(
    run_id: str, probe: ProbeSet, admin: RelayClient, agent_client: Callable
) -> None:
    agent = agent_client(5, run_id)
    with admin.watch(run_id, timeout=20) as events:
        agent.publish(make_predictions(run_id, probe, agent_id=5, experience=0))
        admin.report_progress(run_id, 5, 1, "training", {"accuracy": 0.5})
        admin.set_run_state(run_id, "finished", current_experience=1)
        received = []
        for event in events:
            received.append(event)
            if event.state == "finished":
                break

    kinds = [e.kind for e in received]
    assert kinds == ["agent_seen", "published", "run_state_changed", "progress"] + [
        "run_state_changed"
    ]
    assert all(e.run_id == run_id for e in received)
    assert [e.seq for e in received] == sorted(e.seq for e in received)
    published, started, progress, finished = received[1:]
    assert (published.agent_id, published.experience) == (5, 0)
    assert published.prediction.id == f"{run_id}/5/0"
    assert (started.state, started.experience) == ("running", 0)  # the first publish
    assert progress.metrics == {"accuracy": 0.5} and progress.state == "training"
    assert (finished.state, finished.experience) == ("finished", 1)


def test_a_watch_ends_at_its_deadline(run_id: str, admin: RelayClient) -> None:
    start = time.monotonic()

    with pytest.raises(DeadlineExceededError), admin.watch(run_id, timeout=1.0) as events:
        list(events)

    assert 0.9 < time.monotonic() - start < 5


def test_dkt_status_prints_a_table_of_runs_and_agents(
    run_id: str,
    probe: ProbeSet,
    relay: RelayProcess,
    relay_tokens: Tokens,
    agent_client: Callable,
    capsys: pytest.CaptureFixture[str],
) -> None:
    agent_client(3, run_id).publish(make_predictions(run_id, probe, agent_id=3, experience=0))
    agent_client(3, run_id).publish(make_predictions(run_id, probe, agent_id=3, experience=1))
    args = dkt_parser().parse_args(
        ["status", "--server", relay.address, "--token", relay_tokens.admin]
    )

    code = args.func(args)

    out = capsys.readouterr().out
    assert code == 0
    assert "relay 0.1.0" in out
    assert f"run {run_id}: running, experience 1" in out
    this_run = out.split(f"run {run_id}:")[1].split("\nrun ")[0]
    (row,) = [line for line in this_run.splitlines() if line.startswith("│     3 ")]
    assert "0-1" in row and "ago" in row


def test_dkt_status_json_is_the_status_document(
    relay: RelayProcess, relay_tokens: Tokens, capsys: pytest.CaptureFixture[str]
) -> None:
    args = dkt_parser().parse_args(
        ["status", "--server", relay.address, "--token", relay_tokens.admin, "--json"]
    )

    code = args.func(args)

    status = json.loads(capsys.readouterr().out)
    assert code == 0
    assert status["version"] == "0.1.0" and "runs" in status


def test_dkt_status_says_what_went_wrong_with_a_bad_token(
    relay: RelayProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    args = dkt_parser().parse_args(["status", "--server", relay.address, "--token", "y" * 20])

    code = args.func(args)

    assert code == 1
    assert "UNAUTHENTICATED: invalid token" in capsys.readouterr().err


def test_dkt_relay_parses_its_options() -> None:
    args = dkt_parser().parse_args(
        ["relay", "--port", "0", "--data-dir", "/tmp/x", "--max-payload-mb", "2", "--insecure"]
    )

    assert (args.port, str(args.data_dir), args.max_payload_mb, args.insecure) == (
        0,
        "/tmp/x",
        2.0,
        True,
    )
    assert callable(args.func)


def test_publishing_a_newer_experience_moves_the_run_and_watchers_hear_it(
    run_id: str, probe: ProbeSet, admin: RelayClient, agent_client: Callable
) -> None:
    agent = agent_client(6, run_id)
    with admin.watch(run_id, timeout=20) as events:
        for experience in (0, 2, 1):
            agent.publish(make_predictions(run_id, probe, agent_id=6, experience=experience))
        admin.set_run_state(run_id, "finished")
        changes = []
        for event in events:
            if event.kind == "run_state_changed":
                changes.append((event.state, event.experience))
            if event.state == "finished":
                break

    assert changes == [("running", 0), ("running", 2), ("finished", 2)]


def test_dkt_status_says_what_to_check_when_the_relay_is_unreachable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = dkt_parser().parse_args(["status", "--server", "127.0.0.1:1", "--timeout", "2"])

    code = args.func(args)

    err = capsys.readouterr().err
    assert code == 1
    assert "UNAVAILABLE" in err and "is the relay running there?" in err
    assert "If it serves TLS, pass --tls-ca" in err
