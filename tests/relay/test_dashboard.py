"""The live dashboard at `GET /` and the training numbers: the page itself (served,
self-contained, open while the data stays guarded), the per-experience history in
`/status`, and the training series of `/metrics` with their caps."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from dkt.proto.dkt.v1 import relay_pb2
from dkt.proto.relay_client import RelayClient
from dkt.proto.status_json import MAX_STATUS_HISTORY, MAX_STATUS_HISTORY_RUNS, status_to_dict
from dkt.server.relay import dashboard
from dkt.server.relay.metrics import (
    MAX_TRAINING_AGENTS,
    MAX_TRAINING_EXPERIENCES,
    MAX_TRAINING_RUNS,
    RelayMetrics,
)
from dkt.server.relay.status_http import StatusHttpServer
from tests.support.relay import RelayProcess

ADMIN_TOKEN = "admin-token-for-the-dashboard-test"


def _get(url: str, token: str | None = None) -> tuple[int, dict[str, str], str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def _samples(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def _series(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(name, labels) -> value of each sample in a Prometheus exposition."""
    series = {}
    for key, value in _samples(text).items():
        name, _, rest = key.partition("{")
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', rest))
        series[(name, labels)] = value
    return series


def _labels(at: dict[str, str], **more: str) -> frozenset[tuple[str, str]]:
    return frozenset({**at, **more}.items())


@pytest.fixture
def guarded_endpoint() -> Iterator[str]:
    """A status endpoint that, like one beyond loopback, wants the admin token."""
    server = StatusHttpServer(
        "127.0.0.1",
        0,
        status=lambda: {"runs": []},
        healthy=lambda: True,
        metrics=lambda: b"",
        authorize=lambda token: token == ADMIN_TOKEN,
    )
    server.start()
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


def test_the_dashboard_is_an_html_page_at_the_root(relay: RelayProcess) -> None:
    code, headers, body = _get(f"{relay.status_url}/")

    assert (code, headers["Content-Type"]) == (200, "text/html; charset=utf-8")
    assert body.startswith("<!doctype html>")
    assert 'fetch("status"' in body


def test_the_dashboard_loads_nothing_from_elsewhere(relay: RelayProcess) -> None:
    _, headers, body = _get(f"{relay.status_url}/")

    links = re.findall(r"""(?:src|href|action)\s*=\s*["']?([^"'\s>]*)""", body, re.I)
    urls = re.findall(r"""https?://[^\s"'<>]+""", body)

    assert links == []
    assert not re.search(r"<(link|img|iframe|object|embed)\b|@import|url\(", body, re.I)
    # The one URL is the SVG namespace, an identifier that is never fetched.
    assert urls == ["http://www.w3.org/2000/svg"]
    policy = headers["Content-Security-Policy"]
    assert policy.startswith("default-src 'none'; script-src 'sha256-")
    assert "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy


def test_the_page_is_open_beyond_loopback_but_its_data_needs_the_admin_token(
    guarded_endpoint: str,
) -> None:
    page = _get(f"{guarded_endpoint}/")
    without = _get(f"{guarded_endpoint}/status")
    wrong = _get(f"{guarded_endpoint}/status", token="not-the-admin")
    right = _get(f"{guarded_endpoint}/status", token=ADMIN_TOKEN)

    assert page[0] == 200 and "DKT relay" in page[2]
    assert ADMIN_TOKEN not in page[2]
    assert (without[0], wrong[0], right[0]) == (401, 401, 200)
    assert json.loads(right[2]) == {"runs": []}


def test_the_page_takes_its_token_from_the_fragment_and_sends_it_as_a_header() -> None:
    script = dashboard.SCRIPT

    assert 'hash.get("token")' in script
    assert "history.replaceState" in script  # the token leaves the address bar at once
    assert 'Authorization: "Bearer " + token' in script
    assert "innerHTML" not in script  # reported text goes in as text, never as markup


def _agent(doc: dict[str, Any], run_id: str, agent_id: int) -> dict[str, Any]:
    (run,) = [r for r in doc["runs"] if r["run_id"] == run_id]
    (agent,) = [a for a in run["agents"] if a["agent_id"] == agent_id]
    return agent


def test_status_holds_each_agents_curve_per_experience(
    run_id: str, relay: RelayProcess, admin: RelayClient
) -> None:
    admin.report_progress(run_id, 1, 0, "trained", {"acc_all_cl": 0.9, "acc_all_st": 0.2})
    admin.report_progress(run_id, 1, 1, "training")
    admin.report_progress(
        run_id, 1, 1, "trained", {"acc_all_cl": 0.6, "transfer_st": 0.4, "steps": 3.0}
    )

    agent = _agent(json.loads(_get(f"{relay.status_url}/status")[2]), run_id, 1)

    assert agent["history"] == [
        {"experience": 0, "metrics": {"acc_all_cl": 0.9, "acc_all_st": 0.2}},
        {"experience": 1, "metrics": {"acc_all_cl": 0.6, "transfer_st": 0.4}},
    ]


def test_the_status_document_shows_an_agents_newest_experiences_only() -> None:
    status = relay_pb2.RelayStatus()
    agent = status.runs.add(run_id="r").agents.add(agent_id=0)
    for e in range(MAX_STATUS_HISTORY + 5):
        agent.history.add(experience=e, metrics={"acc_all_cl": 0.5})

    (shown,) = status_to_dict(status)["runs"][0]["agents"]

    assert len(shown["history"]) == MAX_STATUS_HISTORY
    assert shown["history"][0]["experience"] == 5


def test_metrics_export_accuracy_transfer_loss_and_bytes_per_agent_and_experience(
    run_id: str, relay: RelayProcess, admin: RelayClient
) -> None:
    admin.report_progress(
        run_id,
        2,
        1,
        "trained",
        {
            "acc_all_cl": 0.75,
            "acc_all_st": 0.5,
            "transfer_st": 0.25,
            "transfer_cl": 0.0,
            "loss_ce": 1.5,
            "loss_kd": 0.125,
            "bytes_published": 4096.0,
        },
    )

    samples = _series(_get(f"{relay.status_url}/metrics")[2])

    at = {"run": run_id, "agent": "2", "experience": "1"}
    assert samples[("dkt_agent_accuracy", _labels(at, head="cl"))] == 0.75
    assert samples[("dkt_agent_accuracy", _labels(at, head="st"))] == 0.5
    assert samples[("dkt_agent_transfer", _labels(at, head="st"))] == 0.25
    assert samples[("dkt_agent_transfer", _labels(at, head="cl"))] == 0.0
    assert samples[("dkt_agent_loss", _labels(at, term="ce"))] == 1.5
    assert samples[("dkt_agent_loss", _labels(at, term="kd"))] == 0.125
    assert samples[("dkt_agent_bytes", _labels(at, direction="published"))] == 4096.0
    assert ("dkt_agent_bytes", _labels(at, direction="fetched")) not in samples


def test_the_training_series_are_capped_in_runs_agents_and_experiences() -> None:
    status = relay_pb2.RelayStatus()
    for r in range(MAX_TRAINING_RUNS + 2):
        run = status.runs.add(run_id=f"run-{r}")
        for a in range(MAX_TRAINING_AGENTS + 3):
            agent = run.agents.add(agent_id=a)
            for e in range(MAX_TRAINING_EXPERIENCES + 4):
                agent.history.add(experience=e, metrics={"acc_all_cl": 0.5})
    metrics = RelayMetrics()

    metrics.training.update(status)
    series = [
        key for key in _samples(metrics.exposition().decode()) if key.startswith("dkt_agent_")
    ]

    assert len(series) == MAX_TRAINING_RUNS * MAX_TRAINING_AGENTS * MAX_TRAINING_EXPERIENCES
    runs = {re.search(r'run="([^"]+)"', key).group(1) for key in series}  # type: ignore[union-attr]
    assert runs == {f"run-{r}" for r in range(2, MAX_TRAINING_RUNS + 2)}  # the newest
    assert not any(f'agent="{MAX_TRAINING_AGENTS}"' in key for key in series)  # lowest ids
    assert not any('experience="3"' in key for key in series)  # each agent's newest


def test_only_the_newest_runs_carry_history_in_the_status_document() -> None:
    status = relay_pb2.RelayStatus()
    for r in range(MAX_STATUS_HISTORY_RUNS + 2):
        agent = status.runs.add(run_id=f"run-{r}").agents.add(agent_id=0)
        agent.history.add(experience=0, metrics={"acc_all_cl": 0.5})

    runs = status_to_dict(status)["runs"]

    with_history = [run["run_id"] for run in runs if run["agents"][0]["history"]]
    assert with_history == [f"run-{r}" for r in range(2, MAX_STATUS_HISTORY_RUNS + 2)]
