"""An acknowledged prediction set survives `kill -9` of the relay; a payload corrupted
on disk is reported, never served."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from relay_fixtures import (
    NUM_CLASSES,
    RelayProcess,
    Tokens,
    client_for,
    make_predictions,
    make_probe,
)

from dkt.client.relay_client import DataLossError, RelayClient, RelayError

SETS = 24


@pytest.fixture
def relay_with_tokens(tmp_path: Path) -> Iterator[tuple[RelayProcess, Tokens]]:
    tokens = Tokens.generate(4)
    args = ["--token-file", str(tokens.write(tmp_path / "tokens.toml")), "--insecure"]
    relay = RelayProcess(tmp_path / "data", args)
    yield relay, tokens
    relay.kill()


def test_acknowledged_predictions_survive_kill_9_and_restart(
    relay_with_tokens: tuple[RelayProcess, Tokens],
) -> None:
    relay, tokens = relay_with_tokens
    probe = make_probe()
    relay.start()
    published = {}
    with client_for(relay, tokens.admin) as admin:
        admin.create_run("durable", probe, NUM_CLASSES)
        for i in range(SETS):
            agent, experience = i % 4, i // 4
            predictions = make_predictions("durable", probe, agent, experience)
            receipt = admin.publish(predictions, encoding="float16" if i % 3 == 0 else "float32")
            assert not receipt.already_stored
            published[(agent, experience)] = predictions

    relay.kill()  # SIGKILL right after the last acknowledgement: no shutdown code runs
    relay.start()

    with client_for(relay, tokens.agents[0]) as agent_0:
        listed = agent_0.list_predictions("durable")
        fetched = {key: agent_0.fetch("durable", *key) for key in published}
        status = agent_0.status()
    assert len(listed) == SETS
    assert status["totals"]["prediction_sets"] == SETS
    for i, (key, predictions) in enumerate(published.items()):
        expected = predictions.logits.half().float() if i % 3 == 0 else predictions.logits
        assert torch.equal(fetched[key].logits, expected), key
        assert fetched[key].classes_seen == predictions.classes_seen


def test_a_payload_corrupted_on_disk_is_reported_and_not_served(
    relay_with_tokens: tuple[RelayProcess, Tokens],
) -> None:
    relay, tokens = relay_with_tokens
    probe = make_probe()
    relay.start()
    with client_for(relay, tokens.admin) as admin:
        admin.create_run("damaged", probe, NUM_CLASSES)
        victim = admin.publish(make_predictions("damaged", probe, 0, 0))
        intact = make_predictions("damaged", probe, 1, 0)
        admin.publish(intact)
        path = relay.data_dir / "payloads" / victim.sha256[:2] / victim.sha256
        damaged = bytearray(path.read_bytes())
        damaged[100] ^= 0xFF
        path.write_bytes(bytes(damaged))

        with pytest.raises(DataLossError) as failure:
            admin.fetch("damaged", 0, 0)
        still_intact = admin.fetch("damaged", 1, 0)

    assert failure.value.code == grpc.StatusCode.DATA_LOSS
    assert f"payload file {path} is corrupt" in failure.value.details
    assert "restore it from a backup or republish" in failure.value.details
    assert torch.equal(still_intact.logits, intact.logits)
    relay.stop()
    assert "is corrupt" in relay.log()


def test_kill_9_in_the_middle_of_publishing_loses_no_acknowledged_set(
    relay_with_tokens: tuple[RelayProcess, Tokens],
) -> None:
    relay, tokens = relay_with_tokens
    probe = make_probe()
    relay.start()
    acknowledged: dict[int, torch.Tensor] = {}
    stop = threading.Event()

    def publish_until_the_relay_dies(client: RelayClient) -> None:
        for experience in range(10_000):
            predictions = make_predictions("crash", probe, 0, experience)
            try:
                client.publish(predictions)
            except RelayError:
                return
            acknowledged[experience] = predictions.logits
            if stop.is_set():
                return

    with client_for(relay, tokens.admin, retries=0, timeout=5) as admin:
        admin.create_run("crash", probe, NUM_CLASSES)
        publisher = threading.Thread(target=publish_until_the_relay_dies, args=(admin,))
        publisher.start()
        while len(acknowledged) < 10 and publisher.is_alive():
            time.sleep(0.01)
        relay.kill()
        stop.set()
        publisher.join(timeout=30)
    relay.start()

    with client_for(relay, tokens.admin) as admin:
        stored = {p.experience for p in admin.list_predictions("crash")}
        fetched = {e: admin.fetch("crash", 0, e).logits for e in sorted(stored)}
    assert set(acknowledged) <= stored
    assert len(stored - set(acknowledged)) <= 1  # committed while the ack was in flight
    for experience, logits in acknowledged.items():
        assert torch.equal(fetched[experience], logits), experience
