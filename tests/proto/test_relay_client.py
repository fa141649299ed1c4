"""Prediction sets and probe sets come back from a real relay as they were published."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable

import torch

from dkt.client.relay_exchange import RelayExchange
from dkt.common.data.probe import ProbeSet
from dkt.common.training.exchange import PredictionExchange
from dkt.proto.relay_client import RelayClient
from tests.support.relay import EXPERIENCES, NUM_CLASSES, RelayProcess, make_predictions


def test_float32_predictions_come_back_bit_exact(
    run_id: str, probe: ProbeSet, agent_client: Callable[[int], RelayClient]
) -> None:
    agent = agent_client(1, run_id)
    published = make_predictions(run_id, probe, agent_id=1, experience=0)

    receipt = agent.publish(published)
    fetched = agent.fetch(run_id, 1, 0)

    assert receipt.id == f"{run_id}/1/0" and not receipt.already_stored
    assert receipt.payload_bytes == len(probe) * NUM_CLASSES * 4
    assert fetched.logits.dtype == torch.float32
    assert torch.equal(fetched.logits, published.logits)
    assert (fetched.agent_id, fetched.experience, fetched.run_id) == (1, 0, run_id)
    assert fetched.classes_seen == published.classes_seen
    assert fetched.probe_fingerprint == probe.fingerprint


def test_float16_predictions_come_back_within_half_precision_rounding(
    run_id: str, probe: ProbeSet, agent_client: Callable[[int], RelayClient]
) -> None:
    agent = agent_client(2, run_id)
    published = make_predictions(run_id, probe, agent_id=2, experience=3)

    receipt = agent.publish(published, encoding="float16")
    fetched = agent.fetch(run_id, 2, 3)

    assert receipt.payload_bytes == len(probe) * NUM_CLASSES * 2  # half the float32 bytes
    assert fetched.logits.dtype == torch.float32
    assert torch.equal(fetched.logits, published.logits.half().float())
    assert torch.allclose(fetched.logits, published.logits, rtol=2**-11, atol=0)


def test_publishing_the_same_predictions_again_is_acknowledged_as_already_stored(
    run_id: str, probe: ProbeSet, agent_client: Callable[[int], RelayClient]
) -> None:
    agent = agent_client(0, run_id)
    predictions = make_predictions(run_id, probe)

    first = agent.publish(predictions)
    second = agent.publish(predictions)

    assert (first.already_stored, second.already_stored) == (False, True)
    assert second.sha256 == first.sha256
    assert len(agent.list_predictions(run_id)) == 1


def test_fetch_latest_returns_the_newest_experience_within_the_bound(
    run_id: str, probe: ProbeSet, agent_client: Callable[[int], RelayClient]
) -> None:
    agent = agent_client(3, run_id)
    for experience in (0, 1, 4):
        agent.publish(make_predictions(run_id, probe, agent_id=3, experience=experience))

    assert agent.fetch_latest(run_id, 3).experience == 4
    assert agent.fetch_latest(run_id, 3, max_experience=3).experience == 1
    assert agent.fetch_latest(run_id, 5) is None


def test_list_and_status_show_what_was_published(
    run_id: str,
    probe: ProbeSet,
    admin: RelayClient,
    agent_client: Callable[[int], RelayClient],
    relay: RelayProcess,
) -> None:
    agent = agent_client(4, run_id)
    agent.publish(make_predictions(run_id, probe, agent_id=4, experience=0))
    agent.publish(make_predictions(run_id, probe, agent_id=4, experience=1), encoding="float16")
    admin.report_progress(run_id, 4, 1, "training", {"accuracy": 0.75, "loss": 0.5})

    listed = admin.list_predictions(run_id)
    status = admin.status()
    with urllib.request.urlopen(f"{relay.status_url}/status", timeout=10) as response:
        http_status = json.load(response)

    assert [(p.agent_id, p.experience, p.encoding) for p in listed] == [
        (4, 0, "float32"),
        (4, 1, "float16"),
    ]
    assert listed[0].shape == (len(probe), NUM_CLASSES)
    for doc in (status, http_status):
        (run,) = [r for r in doc["runs"] if r["run_id"] == run_id]
        assert run["state"] == "running" and run["current_experience"] == 1
        assert run["prediction_sets"] == 2
        assert run["payload_bytes"] == len(probe) * NUM_CLASSES * (4 + 2)
        (agent_status,) = run["agents"]
        assert agent_status["agent_id"] == 4
        assert agent_status["experiences_published"] == [0, 1]
        assert agent_status["metrics"] == {"accuracy": 0.75, "loss": 0.5}
        assert agent_status["state"] == "training"
        assert agent_status["last_seen"] > 0
        assert doc["totals"]["prediction_sets"] >= 2


def test_the_probe_set_comes_back_with_its_fingerprint(
    run_id: str, probe: ProbeSet, agent_client: Callable[[int], RelayClient]
) -> None:
    fetched = agent_client(0, run_id).get_probe(run_id)

    assert fetched.fingerprint == probe.fingerprint
    assert torch.equal(fetched.inputs, probe.inputs)
    assert fetched.source == "test"


def test_creating_an_identical_run_again_reports_that_it_existed(
    run_id: str, probe: ProbeSet, admin: RelayClient
) -> None:
    info = admin.create_run(
        run_id, probe, NUM_CLASSES, EXPERIENCES, config={"test": True}, expected_agents=40
    )

    assert info.already_existed
    assert (info.run_id, info.num_classes, info.probe_size) == (run_id, NUM_CLASSES, len(probe))
    assert info.config == {"test": True}


def test_relay_exchange_implements_the_prediction_exchange(
    run_id: str, probe: ProbeSet, admin: RelayClient
) -> None:
    exchange: PredictionExchange = RelayExchange(admin, run_id, encoding="float16")
    predictions = make_predictions("", probe, agent_id=6, experience=2)

    exchange.publish(predictions)

    assert exchange.fetch(6, 1) is None
    assert torch.equal(exchange.fetch(6, 2).logits, predictions.logits.half().float())
    assert exchange.latest(6).experience == 2
    assert exchange.latest(6, max_experience=1) is None
    assert exchange.encoded_size(predictions) == len(probe) * NUM_CLASSES * 2
