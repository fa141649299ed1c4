"""An agent's run credential acts in its run only: a credential of run A is refused in run
B by every method and leaves nothing behind; an agent's token on the wire, a tampered
MAC and a credential made over for another agent are refused; the admin still reaches
every run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
import torch

from dkt.common.data.probe import ProbeSet
from dkt.proto.relay_client import (
    PermissionDeniedError,
    RelayClient,
    RelayError,
    UnauthenticatedError,
)
from dkt.proto.run_credential import run_credential
from tests.conftest import RELAY_AGENTS
from tests.support.relay import (
    EXPERIENCES,
    NUM_CLASSES,
    RelayProcess,
    Tokens,
    client_for,
    make_eval_set,
    make_predictions,
    new_run_id,
)


@pytest.fixture
def run_b(admin: RelayClient, probe: ProbeSet) -> str:
    """A second run of the admin's, with an eval set and agent 1's predictions of
    experience 0: what a credential of another run must not reach."""
    rid = new_run_id()
    admin.create_run(rid, probe, NUM_CLASSES, EXPERIENCES, expected_agents=RELAY_AGENTS)
    admin.put_eval_set(rid, make_eval_set(seed=2))
    admin.publish(make_predictions(rid, probe, agent_id=1))
    return rid


def _run_status(admin: RelayClient, run_id: str) -> dict[str, Any]:
    (run,) = [r for r in admin.status()["runs"] if r["run_id"] == run_id]
    return run


# What agent 0 may do in its own run, tried in run B (`probe` gives what a publish needs).
ACTIONS: dict[str, Callable[[RelayClient, str, ProbeSet], object]] = {
    "PublishPredictions": lambda c, run, probe: c.publish(make_predictions(run, probe)),
    "FetchPredictions": lambda c, run, probe: c.fetch(run, 1, 0),
    "FetchPredictions latest": lambda c, run, probe: c.fetch_latest(run, 1),
    "ListPredictions": lambda c, run, probe: c.list_predictions(run),
    "GetProbeSet": lambda c, run, probe: c.get_probe(run),
    "GetEvalSet": lambda c, run, probe: c.get_eval_set(run),
    "Watch": lambda c, run, probe: c.watch(run, timeout=5),
    "ReportProgress": lambda c, run, probe: c.report_progress(run, 0, 0, "training"),
}


@pytest.mark.parametrize("method", list(ACTIONS))
def test_a_credential_of_run_a_is_refused_in_run_b_and_leaves_nothing_there(
    method: str,
    run_id: str,
    run_b: str,
    probe: ProbeSet,
    relay: RelayProcess,
    admin: RelayClient,
    agent_client: Callable[[int, str], RelayClient],
) -> None:
    in_run_a = agent_client(0, run_id)
    before = (relay.store_snapshot(), _run_status(admin, run_b)["agents"])

    with pytest.raises(PermissionDeniedError) as failure:
        ACTIONS[method](in_run_a, run_b, probe)

    assert failure.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert f"the credential of agent 0 is for run {run_id!r}, not run {run_b!r}" in (
        failure.value.details
    )
    # Nothing stored, no progress and not even a last-seen time in run B.
    assert (relay.store_snapshot(), _run_status(admin, run_b)["agents"]) == before


def test_the_same_agent_reaches_run_b_with_run_bs_credential(
    run_b: str, probe: ProbeSet, agent_client: Callable[[int, str], RelayClient]
) -> None:
    in_run_b = agent_client(0, run_b)

    receipt = in_run_b.publish(make_predictions(run_b, probe))
    fetched = in_run_b.fetch(run_b, 1, 0)

    assert receipt.already_stored is False
    assert torch.equal(fetched.logits, make_predictions(run_b, probe, agent_id=1).logits)


def test_an_agents_token_sent_as_it_is_is_unauthenticated_and_says_what_to_send(
    run_id: str, relay: RelayProcess, relay_tokens: Tokens, probe: ProbeSet
) -> None:
    before = relay.store_snapshot()

    with (
        client_for(relay, relay_tokens.agents[0]) as raw,
        pytest.raises(UnauthenticatedError) as failure,
    ):
        raw.publish(make_predictions(run_id, probe))

    details = failure.value.details
    assert "the token of agent 0 was sent as it is" in details
    assert "dkt-run.<agent id>.<base64url run id>.<hex HMAC-SHA256>" in details
    assert "proto/dkt/v1/relay.proto" in details
    assert relay.store_snapshot() == before


def test_a_tampered_mac_is_unauthenticated(
    run_id: str, relay: RelayProcess, relay_tokens: Tokens
) -> None:
    credential = relay_tokens.credential(0, run_id)
    tampered = credential[:-1] + ("0" if credential[-1] != "0" else "1")

    with client_for(relay, tampered) as client, pytest.raises(UnauthenticatedError) as failure:
        client.list_predictions(run_id)

    assert "invalid run credential: it is not derived from the token this relay holds for " in (
        failure.value.details
    )


def test_a_credential_of_agent_1_cannot_act_as_agent_0(
    run_id: str, probe: ProbeSet, relay: RelayProcess, relay_tokens: Tokens
) -> None:
    agent_1 = relay_tokens.credential(1, run_id)
    # Agent 1's MAC under agent 0's name: the relay recomputes it with agent 0's key.
    renamed = "dkt-run.0." + agent_1.split(".", 2)[2]
    # Agent 1's token, used to derive a credential that claims agent 0.
    derived = run_credential(relay_tokens.agents[1], 0, run_id)
    before = relay.store_snapshot()

    with client_for(relay, agent_1) as as_1, pytest.raises(PermissionDeniedError) as publish:
        as_1.publish(make_predictions(run_id, probe, agent_id=0))
    with client_for(relay, agent_1) as as_1, pytest.raises(PermissionDeniedError) as progress:
        as_1.report_progress(run_id, 0, 0, "failed")
    refused = []
    for credential in (renamed, derived):
        with client_for(relay, credential) as forged, pytest.raises(UnauthenticatedError) as e:
            forged.publish(make_predictions(run_id, probe, agent_id=0))
        refused.append(e.value.details)

    assert "the credential of agent 1 cannot publish predictions of agent 0" in (
        publish.value.details
    )
    assert "the credential of agent 1 cannot report progress for agent 0" in (
        progress.value.details
    )
    assert all("invalid run credential" in d and "for agent 0" in d for d in refused)
    assert relay.store_snapshot() == before


@pytest.mark.parametrize(
    ("credential", "message"),
    [
        ("dkt-run.0.not-a-credential", "malformed run credential: expected dkt-run.<agent id>."),
        (run_credential("a-token-the-relay-never-saw", 99, "r"), "holds for agent 99"),
    ],
    ids=["malformed", "agent-without-a-token"],
)
def test_a_malformed_or_unknown_credential_is_unauthenticated(
    credential: str, message: str, run_id: str, relay: RelayProcess
) -> None:
    with client_for(relay, credential) as client, pytest.raises(UnauthenticatedError) as failure:
        client.list_predictions(run_id)

    assert message in failure.value.details


def test_an_agent_sees_only_its_run_in_the_status_and_cannot_watch_every_run(
    run_id: str,
    run_b: str,
    probe: ProbeSet,
    agent_client: Callable[[int, str], RelayClient],
) -> None:
    agent = agent_client(2, run_id)
    agent.publish(make_predictions(run_id, probe, agent_id=2))

    status = agent.status()
    with pytest.raises(PermissionDeniedError) as watch_all:
        agent.watch("", timeout=5)

    assert [r["run_id"] for r in status["runs"]] == [run_id]
    assert status["totals"]["runs"] == 1
    assert status["totals"]["prediction_sets"] == 1
    assert "watching every run needs the admin token" in watch_all.value.details


def test_the_admin_still_reaches_every_run(
    run_id: str, run_b: str, probe: ProbeSet, admin: RelayClient
) -> None:
    for run in (run_id, run_b):
        admin.publish(make_predictions(run, probe, agent_id=5))
        admin.report_progress(run, 5, 0, "trained")
    with admin.watch("", timeout=5) as events:
        admin.set_run_state(run_b, "running", 1)
        state = next(e for e in events if e.kind == "run_state_changed" and e.run_id == run_b)

    runs = {r["run_id"] for r in admin.status()["runs"]}
    fetched = admin.fetch(run_b, 1, 0)

    assert {run_id, run_b} <= runs
    assert [p.agent_id for p in admin.list_predictions(run_id)] == [5]
    assert [p.agent_id for p in admin.list_predictions(run_b)] == [1, 5]
    assert torch.equal(fetched.logits, make_predictions(run_b, probe, agent_id=1).logits)
    assert (state.state, state.experience) == ("running", 1)
    assert admin.get_probe(run_b).fingerprint == probe.fingerprint
    assert admin.get_eval_set(run_b).fingerprint == make_eval_set(seed=2).fingerprint


def test_every_refusal_is_a_relay_error_with_its_method(
    run_id: str, run_b: str, agent_client: Callable[[int, str], RelayClient]
) -> None:
    with pytest.raises(RelayError) as failure:
        agent_client(0, run_id).list_predictions(run_b)

    assert str(failure.value).startswith("ListPredictions: PERMISSION_DENIED: ")
