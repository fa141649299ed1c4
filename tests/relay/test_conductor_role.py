"""The conductor token (what the Flower ServerApp holds): it creates and drives its own
runs, and reaches no run the admin created; the admin reaches the conductor's runs."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
import torch

from dkt.common.data.probe import ProbeSet
from dkt.proto.identity_proof import identity_proof, token_key
from dkt.proto.relay_client import IdentityCheck, PermissionDeniedError, RelayClient
from tests.conftest import RELAY_AGENTS
from tests.support.relay import (
    EXPERIENCES,
    NUM_CLASSES,
    RelayProcess,
    Tokens,
    client_for,
    make_eval_set,
    make_predictions,
    make_probe,
    new_run_id,
)

NONCE = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def conductor(relay: RelayProcess, relay_tokens: Tokens) -> Iterator[RelayClient]:
    assert relay_tokens.conductor is not None
    with client_for(relay, relay_tokens.conductor) as client:
        yield client


def test_the_conductor_creates_and_drives_its_run(
    conductor: RelayClient,
    probe: ProbeSet,
    relay_tokens: Tokens,
    agent_client: Callable[[int, str], RelayClient],
) -> None:
    run = new_run_id()
    info = conductor.create_run(run, probe, NUM_CLASSES, EXPERIENCES, expected_agents=4)
    again = conductor.create_run(run, probe, NUM_CLASSES, EXPERIENCES, expected_agents=4)
    stored = conductor.put_eval_set(run, make_eval_set(seed=8))
    with conductor.watch(run, timeout=10) as events:
        conductor.set_run_state(run, "running", 0)
        agent_client(2, run).publish(make_predictions(run, probe, agent_id=2))
        kinds = []
        for event in events:
            kinds.append(event.kind)
            if event.kind == "published":
                break
    proof = identity_proof(token_key(relay_tokens.agents[2]), run, 2, NONCE)
    check = conductor.verify_identity(run, 2, NONCE, proof)
    conductor.report_progress(run, 3, 0, "missing", reason="no node answered")
    fetched = conductor.fetch(run, 2, 0)
    listed = conductor.list_predictions(run)
    finished = conductor.set_run_state(run, "finished", EXPERIENCES - 1)
    (status,) = [r for r in conductor.status()["runs"] if r["run_id"] == run]

    assert (info.already_existed, again.already_existed, stored) == (False, True, True)
    assert kinds == ["run_state_changed", "agent_seen", "published"]
    assert check == IdentityCheck(valid=True, auth_enabled=True)
    assert torch.equal(fetched.logits, make_predictions(run, probe, agent_id=2).logits)
    assert [(p.agent_id, p.experience) for p in listed] == [(2, 0)]
    assert finished.state == "finished"
    assert conductor.get_probe(run).fingerprint == probe.fingerprint
    assert conductor.get_eval_set(run).fingerprint == make_eval_set(seed=8).fingerprint
    agents = {a["agent_id"]: a for a in status["agents"]}
    assert (agents[3]["state"], agents[3]["reason"]) == ("missing", "no node answered")


# What the conductor may do in a run of its own, tried in a run the admin created.
ACTIONS: dict[str, Callable[[RelayClient, str, ProbeSet], object]] = {
    "CreateRun again": lambda c, run, probe: c.create_run(
        run, probe, NUM_CLASSES, EXPERIENCES, config={"test": True}, expected_agents=RELAY_AGENTS
    ),
    "PutEvalSet": lambda c, run, probe: c.put_eval_set(run, make_eval_set(seed=9)),
    "SetRunState": lambda c, run, probe: c.set_run_state(run, "failed"),
    "VerifyIdentity": lambda c, run, probe: c.verify_identity(run, 0, NONCE, "0" * 64),
    "ReportProgress": lambda c, run, probe: c.report_progress(run, 0, 0, "missing"),
    "FetchPredictions": lambda c, run, probe: c.fetch(run, 0, 0),
    "ListPredictions": lambda c, run, probe: c.list_predictions(run),
    "GetProbeSet": lambda c, run, probe: c.get_probe(run),
    "GetEvalSet": lambda c, run, probe: c.get_eval_set(run),
    "Watch": lambda c, run, probe: c.watch(run, timeout=5),
}


@pytest.mark.parametrize("method", list(ACTIONS))
def test_the_conductor_reaches_no_run_the_admin_created(
    method: str,
    run_id: str,
    probe: ProbeSet,
    admin: RelayClient,
    conductor: RelayClient,
    relay: RelayProcess,
) -> None:
    admin.put_eval_set(run_id, make_eval_set(seed=3))
    admin.publish(make_predictions(run_id, probe))
    before = (relay.store_snapshot(), admin.status()["runs"])

    with pytest.raises(PermissionDeniedError) as failure:
        ACTIONS[method](conductor, run_id, probe)

    assert failure.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert (
        f"run {run_id!r} was created by the admin; the conductor token reaches only the "
        "runs the conductor created"
    ) in failure.value.details
    after = admin.status()["runs"]
    assert relay.store_snapshot() == before[0]
    assert [(r["run_id"], r["state"], r["agents"]) for r in after] == [
        (r["run_id"], r["state"], r["agents"]) for r in before[1]
    ]


def test_the_conductor_may_not_publish_and_sees_only_its_runs(
    run_id: str, conductor: RelayClient, relay: RelayProcess
) -> None:
    own = new_run_id()
    probe = make_probe(seed=5)
    conductor.create_run(own, probe, NUM_CLASSES, EXPERIENCES, expected_agents=2)
    before = relay.store_snapshot()

    with pytest.raises(PermissionDeniedError) as publish:
        conductor.publish(make_predictions(own, probe, agent_id=1))
    with pytest.raises(PermissionDeniedError) as watch_all:
        conductor.watch("", timeout=5)
    status = conductor.status()

    assert "the conductor token cannot publish predictions of agent 1" in publish.value.details
    assert "watching every run needs the admin token" in watch_all.value.details
    assert relay.store_snapshot() == before
    seen = [r["run_id"] for r in status["runs"]]
    assert own in seen and run_id not in seen
    assert status["totals"]["runs"] == len(seen)


def test_the_admin_drives_a_run_the_conductor_created(
    conductor: RelayClient, admin: RelayClient, probe: ProbeSet
) -> None:
    run = new_run_id()
    conductor.create_run(run, probe, NUM_CLASSES, EXPERIENCES, expected_agents=2)

    again = admin.create_run(run, probe, NUM_CLASSES, EXPERIENCES, expected_agents=2)
    admin.put_eval_set(run, make_eval_set(seed=4))
    failed = admin.set_run_state(run, "failed")
    # The admin's identical CreateRun left the run the conductor's.
    still_reachable = conductor.list_predictions(run)

    assert again.already_existed is True
    assert failed.state == "failed"
    assert still_reachable == []
