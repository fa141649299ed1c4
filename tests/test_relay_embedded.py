"""A relay embedded in the calling process (as `dkt run` will start it), and its limits."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import torch
from relay_fixtures import NUM_CLASSES, make_predictions, make_probe

from dkt.client.relay_client import RelayClient, ResourceExhaustedError
from dkt.client.relay_exchange import RelayExchange
from dkt.common.predictions import Predictions
from dkt.common.probe import ProbeSet
from dkt.server.relay import RelayConfig, RelayConfigError, RelayServer


def test_an_embedded_relay_serves_a_relay_exchange(tmp_path: Path) -> None:
    probe = make_probe()
    config = RelayConfig(data_dir=tmp_path, port=0, status_port=None, insecure=True)
    with RelayServer(config) as relay, RelayClient(relay.address, timeout=20) as client:
        client.create_run("embedded", probe, NUM_CLASSES)
        exchange = RelayExchange(client, "embedded")
        published = make_predictions("embedded", probe, agent_id=1, experience=0)
        exchange.publish(published)
        fetched = exchange.fetch(1, 0)

    assert torch.equal(fetched.logits, published.logits)
    assert relay.status_port is None


def test_a_prediction_set_over_the_configured_payload_limit_is_refused(tmp_path: Path) -> None:
    probe = make_probe()
    config = RelayConfig(
        data_dir=tmp_path, port=0, status_port=None, insecure=True, max_payload_bytes=1000
    )
    with RelayServer(config) as relay, RelayClient(relay.address, timeout=20) as client:
        client.create_run("limited", make_probe(size=4), NUM_CLASSES)
        predictions = make_predictions("limited", make_probe(size=4), num_classes=NUM_CLASSES)
        client.publish(predictions)  # 4 x 10 float32 = 160 bytes: fine
        with pytest.raises(ResourceExhaustedError) as failure:
            client.create_run("too-big", probe, NUM_CLASSES)  # 32 x 16 float32 = 2048 bytes

    assert failure.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "probe set of 2048 bytes exceeds this relay's limit of 1000 bytes" in (
        failure.value.details
    )


def test_an_embedded_relay_refuses_to_run_unprotected_unless_told(tmp_path: Path) -> None:
    with pytest.raises(RelayConfigError, match="pass --insecure"):
        RelayServer(RelayConfig(data_dir=tmp_path, port=0, status_port=None))


def test_sets_larger_than_one_chunk_travel_intact_both_ways(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(3)
    probe = ProbeSet.from_inputs(torch.randn(3000, 1, 16, 16, generator=gen), "big")  # 3 MB
    logits = torch.randn(3000, 300, generator=gen)  # 3.6 MB
    predictions = Predictions(0, 0, (0, 1), probe.fingerprint, logits, "big")
    config = RelayConfig(data_dir=tmp_path, port=0, status_port=None, insecure=True)
    with RelayServer(config) as relay, RelayClient(relay.address, timeout=30) as client:
        client.create_run("big", probe, 300)
        client.publish(predictions)
        fetched_probe = client.get_probe("big")
        fetched = client.fetch("big", 0, 0)

    assert torch.equal(fetched_probe.inputs, probe.inputs)
    assert torch.equal(fetched.logits, logits)
