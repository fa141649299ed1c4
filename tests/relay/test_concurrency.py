"""32 agents publishing and fetching at once: nothing lost, nothing mixed up."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from dkt.common.training.predictions import Predictions
from dkt.proto.relay_client import AlreadyExistsError, RelayClient
from tests.support.relay import (
    NUM_CLASSES,
    RelayProcess,
    Tokens,
    client_for,
    make_predictions,
    make_probe,
    new_run_id,
)

AGENTS = 32
EXPERIENCES = 3
PEERS = 4
CLASSES = 100
PROBE_SIZE = 256  # 100 kB of float32 logits, sent in 16 kB chunks


def test_32_clients_publish_and_fetch_concurrently_without_loss_or_mixing(
    relay: RelayProcess, relay_tokens: Tokens, admin: RelayClient
) -> None:
    probe = make_probe(seed=11, size=PROBE_SIZE)
    run_id = new_run_id()
    admin.create_run(run_id, probe, CLASSES, EXPERIENCES, expected_agents=AGENTS)

    def expected(agent: int, experience: int) -> torch.Tensor:
        return make_predictions(run_id, probe, agent, experience, CLASSES).logits

    barrier = threading.Barrier(AGENTS, timeout=60)

    def agent_life(agent: int) -> int:
        checked = 0
        peers = [(agent + k) % AGENTS for k in range(1, PEERS + 1)]
        with client_for(
            relay, relay_tokens.credential(agent, run_id), chunk_bytes=16 * 1024
        ) as client:
            for experience in range(EXPERIENCES):
                client.publish(make_predictions(run_id, probe, agent, experience, CLASSES))
                for peer in peers:  # peers are publishing at the same time
                    latest = client.fetch_latest(run_id, peer)
                    if latest is not None:
                        assert latest.agent_id == peer
                        assert torch.equal(latest.logits, expected(peer, latest.experience))
                        checked += 1
            barrier.wait()
            for peer in peers:
                for experience in range(EXPERIENCES):
                    fetched = client.fetch(run_id, peer, experience)
                    assert (fetched.agent_id, fetched.experience) == (peer, experience)
                    assert torch.equal(fetched.logits, expected(peer, experience))
                    checked += 1
        return checked

    with ThreadPoolExecutor(AGENTS) as pool:
        checked = list(pool.map(agent_life, range(AGENTS)))

    listed = admin.list_predictions(run_id)
    assert sorted((p.agent_id, p.experience) for p in listed) == [
        (a, e) for a in range(AGENTS) for e in range(EXPERIENCES)
    ]
    assert all(c >= PEERS * EXPERIENCES for c in checked)
    (run,) = [r for r in admin.status()["runs"] if r["run_id"] == run_id]
    assert run["prediction_sets"] == AGENTS * EXPERIENCES
    assert sorted(a["agent_id"] for a in run["agents"]) == list(range(AGENTS))


def test_racing_publishes_of_one_key_store_exactly_one_set(
    relay: RelayProcess, relay_tokens: Tokens, admin: RelayClient
) -> None:
    probe = make_probe()
    run_id = new_run_id()
    admin.create_run(run_id, probe, NUM_CLASSES, EXPERIENCES, expected_agents=1)
    same = make_predictions(run_id, probe, experience=0)
    barrier = threading.Barrier(8, timeout=30)

    # As the admin: one agent credential may have only 4 streams open (admission.py).
    def publish(predictions: Predictions) -> str:
        with client_for(relay, relay_tokens.admin) as client:
            barrier.wait()
            try:
                return "duplicate" if client.publish(predictions).already_stored else "stored"
            except AlreadyExistsError:
                return "refused"

    with ThreadPoolExecutor(8) as pool:
        identical = list(pool.map(publish, [same] * 8))
        rivals = [make_predictions(run_id, probe, experience=1, seed=s) for s in range(8)]
        different = list(pool.map(publish, rivals))

    assert sorted(identical) == ["duplicate"] * 7 + ["stored"]
    assert sorted(different) == ["refused"] * 7 + ["stored"]
    winner = rivals[different.index("stored")]
    assert torch.equal(admin.fetch(run_id, 0, 1).logits, winner.logits)
    assert len(admin.list_predictions(run_id)) == 2
