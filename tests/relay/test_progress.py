"""Progress reports: the states an agent can be in, why (the reason), and where they show
(GET /status, `dkt status`, the watch)."""

from __future__ import annotations

import argparse
import json
import urllib.request
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from dkt.proto.relay_client import FailedPreconditionError, InvalidArgumentError, RelayClient
from dkt.proto.status_json import (
    AGENT_STATES,
    MAX_METRIC_NAME_CHARS,
    MAX_METRICS,
    MAX_REASON_CHARS,
)
from tests.support.relay import RelayProcess, Tokens, dkt_parser


def _agent(status: dict[str, Any], run_id: str, agent_id: int) -> dict[str, Any]:
    (run,) = [r for r in status["runs"] if r["run_id"] == run_id]
    (agent,) = [a for a in run["agents"] if a["agent_id"] == agent_id]
    return agent


def _http_status(relay: RelayProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"{relay.status_url}/status", timeout=10) as response:
        return json.load(response)


def _dkt_status(relay: RelayProcess, token: str, *flags: str) -> argparse.Namespace:
    return dkt_parser().parse_args(["status", "--server", relay.address, "--token", token, *flags])


def test_a_reported_state_and_reason_show_in_get_status(
    run_id: str, relay: RelayProcess, admin: RelayClient
) -> None:
    admin.report_progress(run_id, 4, 2, "failed", {"loss_ce": 1.5}, reason="CUDA out of memory")

    agent = _agent(_http_status(relay), run_id, 4)

    assert (agent["state"], agent["reason"], agent["experience"]) == (
        "failed",
        "CUDA out of memory",
        2,
    )
    assert agent["metrics"] == {"loss_ce": 1.5}


def test_a_later_report_replaces_the_reason(run_id: str, admin: RelayClient) -> None:
    admin.report_progress(run_id, 4, 1, "missing", reason="no reply in 60 s")
    admin.report_progress(run_id, 4, 1, "rejoined")

    agent = _agent(admin.status(), run_id, 4)

    assert (agent["state"], agent["reason"]) == ("rejoined", "")


def test_dkt_status_shows_state_and_reason_in_the_table_and_the_json(
    run_id: str,
    relay: RelayProcess,
    relay_tokens: Tokens,
    admin: RelayClient,
    capsys: pytest.CaptureFixture[str],
) -> None:
    admin.report_progress(run_id, 8, 0, "retrying", reason="node lost")

    table_code = (args := _dkt_status(relay, relay_tokens.admin)).func(args)
    table = capsys.readouterr().out
    json_code = (args := _dkt_status(relay, relay_tokens.admin, "--json")).func(args)
    document = json.loads(capsys.readouterr().out)

    assert (table_code, json_code) == (0, 0)
    this_run = table.split(f"run {run_id}:")[1].split("\nrun ")[0]
    (row,) = [line for line in this_run.splitlines() if line.startswith("│     8 ")]
    assert "retrying" in row and "node lost" in row
    (header,) = [line for line in this_run.splitlines() if "agent" in line and "state" in line]
    assert header.split("┃")[-2].strip() == "reason"
    agent = _agent(document, run_id, 8)
    assert (agent["state"], agent["reason"]) == ("retrying", "node lost")


def test_every_documented_agent_state_is_accepted(run_id: str, admin: RelayClient) -> None:
    seen = []
    for state in AGENT_STATES:
        admin.report_progress(run_id, 9, 0, state, reason=f"now {state}")
        agent = _agent(admin.status(), run_id, 9)
        seen.append((agent["state"], agent["reason"]))

    assert seen == [(s, f"now {s}") for s in AGENT_STATES]
    assert {"training", "trained", "failed", "retrying", "rejoined", "missing"} <= set(AGENT_STATES)


@pytest.mark.parametrize("state", ["sleeping", "", "Training"])
def test_an_unknown_agent_state_is_invalid_and_changes_nothing(
    state: str, run_id: str, admin: RelayClient
) -> None:
    admin.report_progress(run_id, 2, 0, "training")

    with pytest.raises(InvalidArgumentError) as failure:
        admin.report_progress(run_id, 2, 1, state, reason="should not be stored")

    assert failure.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"ReportProgressRequest.state {state!r} is not an agent state" in failure.value.details
    assert "training, publishing, trained, done, failed, retrying, rejoined, missing" in (
        failure.value.details
    )
    agent = _agent(admin.status(), run_id, 2)
    assert (agent["state"], agent["experience"], agent["reason"]) == ("training", 0, "")


def test_a_reason_longer_than_the_limit_is_invalid(run_id: str, admin: RelayClient) -> None:
    with pytest.raises(InvalidArgumentError) as failure:
        admin.report_progress(run_id, 2, 0, "failed", reason="x" * (MAX_REASON_CHARS + 1))

    assert f"ReportProgressRequest.reason has {MAX_REASON_CHARS + 1} characters" in (
        failure.value.details
    )
    assert all(a["agent_id"] != 2 for a in _run(admin.status(), run_id)["agents"])


def test_a_report_with_more_metrics_than_the_limit_is_invalid(
    run_id: str, admin: RelayClient
) -> None:
    """150,000 metrics made every /status megabytes long; at most MAX_METRICS are kept."""
    metrics = {f"m{i}": float(i) for i in range(MAX_METRICS + 1)}

    with pytest.raises(InvalidArgumentError) as failure:
        admin.report_progress(run_id, 3, 0, "training", metrics)

    assert (
        f"ReportProgressRequest.metrics has {MAX_METRICS + 1} entries; report at most "
        f"{MAX_METRICS}" in failure.value.details
    )
    assert all(a["agent_id"] != 3 for a in _run(admin.status(), run_id)["agents"])


def test_a_report_with_the_most_metrics_allowed_is_stored(run_id: str, admin: RelayClient) -> None:
    metrics = {f"{i:0{MAX_METRIC_NAME_CHARS}d}": float(i) for i in range(MAX_METRICS)}

    admin.report_progress(run_id, 3, 0, "training", metrics)

    assert _agent(admin.status(), run_id, 3)["metrics"] == metrics


def test_a_metric_name_longer_than_the_limit_is_invalid(run_id: str, admin: RelayClient) -> None:
    with pytest.raises(InvalidArgumentError) as failure:
        admin.report_progress(run_id, 3, 0, "training", {"x" * (MAX_METRIC_NAME_CHARS + 1): 1.0})

    assert (
        f"ReportProgressRequest.metrics: 1 names are longer than {MAX_METRIC_NAME_CHARS} "
        "characters" in failure.value.details
    )


@pytest.mark.parametrize("state", ["finished", "failed"])
def test_progress_into_a_closed_run_fails_the_precondition(
    run_id: str, admin: RelayClient, agent_client: Callable[[int], RelayClient], state: str
) -> None:
    agent_client(4, run_id).report_progress(run_id, 4, 0, "training")
    admin.set_run_state(run_id, state)

    with pytest.raises(FailedPreconditionError) as failure:
        agent_client(4, run_id).report_progress(run_id, 4, 0, "done", {"acc": 1.0}, reason="late")

    assert f"run {run_id!r} is {state}; it takes no more progress reports" in (
        failure.value.details
    )
    agent = _agent(admin.status(), run_id, 4)
    assert (agent["state"], agent["metrics"], agent["reason"]) == ("training", {}, "")


def _run(status: dict[str, Any], run_id: str) -> dict[str, Any]:
    (run,) = [r for r in status["runs"] if r["run_id"] == run_id]
    return run


def test_watchers_hear_the_reason_of_a_progress_report(run_id: str, admin: RelayClient) -> None:
    with admin.watch(run_id, timeout=20) as events:
        admin.report_progress(run_id, 3, 1, "missing", reason="did not connect within 60 s")
        progress = next(e for e in events if e.kind == "progress")

    assert (progress.agent_id, progress.state, progress.reason) == (
        3,
        "missing",
        "did not connect within 60 s",
    )
