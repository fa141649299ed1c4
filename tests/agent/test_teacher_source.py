"""An agent's teacher from the relay (teacher_source "relay": one combined set fetched)
equals, to float32 tolerance, the one it combines itself from its peers' raw sets
(teacher_source "agents"), for every aggregation and schedule; only the bytes differ."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dkt.client.relay_exchange import RelayExchange
from dkt.common.data.probe import ProbeSet
from dkt.common.engine.step import fetch_teacher
from dkt.common.training.exchange import InMemoryExchange
from dkt.common.training.peers import teacher_sets
from dkt.common.training.predictions import Predictions
from dkt.proto.relay_client import RelayClient
from dkt.server.relay.server import RelayConfig, RelayServer
from tests.support.relay import EXPERIENCES, NUM_CLASSES, make_predictions, make_probe

PEERS = (1, 2, 3, 4, 5)
SET_BYTES = 32 * NUM_CLASSES * 4  # make_probe()'s 32 rows, float32


def _sets(run_id: str, probe: ProbeSet) -> list[Predictions]:
    """Experiences 0 and 1 of every peer, each having seen its own classes."""
    sets = []
    for agent in PEERS:
        for experience in (0, 1):
            p = make_predictions(run_id, probe, agent_id=agent, experience=experience)
            classes = tuple(sorted({agent % NUM_CLASSES, (2 * agent + experience) % NUM_CLASSES}))
            sets.append(Predictions(agent, experience, classes, p.probe_fingerprint, p.logits))
    return sets


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayExchange]:
    probe = make_probe()
    config = RelayConfig(
        data_dir=tmp_path_factory.mktemp("relay"), port=0, status_port=None, insecure=True
    )
    with RelayServer(config) as relay, RelayClient(relay.address, timeout=20) as client:
        client.create_run("teachers", probe, NUM_CLASSES, EXPERIENCES)
        exchange = RelayExchange(client, "teachers")
        for p in _sets("teachers", probe):
            exchange.publish(p)
        yield exchange


@pytest.mark.parametrize("aggregation", ["mean", "coverage", "median", "trimmed-mean"])
@pytest.mark.parametrize("schedule", ["sync", "sequential", "async"])
def test_relay_and_agent_aggregation_agree(
    exchange: RelayExchange, aggregation: str, schedule: str
) -> None:
    peers = teacher_sets(3, PEERS[:2] + PEERS[3:], 2, schedule)

    own, own_bytes = fetch_teacher(exchange, 3, 2, peers, aggregation, "agents")
    relayed, relayed_bytes = fetch_teacher(exchange, 3, 2, peers, aggregation, "relay")

    assert own is not None and relayed is not None
    torch.testing.assert_close(relayed.logits, own.logits, rtol=1e-6, atol=1e-5)
    assert relayed.classes == own.classes
    assert relayed.sources == own.sources
    assert own_bytes == 4 * SET_BYTES
    assert relayed_bytes == SET_BYTES


def test_relay_source_fetches_one_set_whatever_the_number_of_peers(
    exchange: RelayExchange,
) -> None:
    fetched = [
        fetch_teacher(exchange, 0, 1, teacher_sets(0, PEERS[:n], 1, "sync"), "mean", "relay")[1]
        for n in (1, 3, 5)
    ]

    assert fetched == [SET_BYTES, SET_BYTES, SET_BYTES]


def test_in_memory_exchange_counts_the_one_set_the_relay_would_send(tmp_path: Path) -> None:
    memory = InMemoryExchange()
    for p in _sets("", make_probe()):
        memory.publish(p)
    peers = teacher_sets(0, PEERS, 1, "sync")

    own, own_bytes = fetch_teacher(memory, 0, 1, peers, "coverage", "agents")
    relayed, relayed_bytes = fetch_teacher(memory, 0, 1, peers, "coverage", "relay")

    assert own is not None and relayed is not None
    assert torch.equal(relayed.logits, own.logits)
    assert (own_bytes, relayed_bytes) == (5 * SET_BYTES, SET_BYTES)


def test_no_teacher_at_the_first_sync_experience(exchange: RelayExchange) -> None:
    assert fetch_teacher(exchange, 0, 0, teacher_sets(0, PEERS, 0, "sync"), "mean", "relay") == (
        None,
        0,
    )


def test_a_dkt_run_agent_fetches_its_teacher_from_the_relay_as_relay_time(
    exchange: RelayExchange,
) -> None:
    from dkt.client.agent_runtime import StepTimings, _TimedExchange

    timings = StepTimings()
    timed = _TimedExchange(exchange, timings)

    teacher, fetched = fetch_teacher(
        timed, 0, 1, teacher_sets(0, PEERS, 1, "sync"), "coverage", "relay"
    )

    assert teacher is not None and teacher.sources == tuple((a, 0) for a in PEERS)
    assert fetched == SET_BYTES
    assert timings.seconds["relay"] > 0
