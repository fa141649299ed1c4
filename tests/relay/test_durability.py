"""An acknowledged prediction set survives `kill -9` of the relay; a payload corrupted
on disk is reported, never served."""

from __future__ import annotations

import hashlib
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from dkt.common.data.probe import ProbeSet
from dkt.proto.relay_client import DataLossError, RelayClient, RelayError
from tests.support.relay import (
    EXPERIENCES,
    NUM_CLASSES,
    RelayProcess,
    Tokens,
    client_for,
    make_predictions,
)

SETS = 24


@pytest.fixture
def relay_with_tokens(tmp_path: Path) -> Iterator[tuple[RelayProcess, Tokens]]:
    """A started relay of the test's own, which it may kill and restart, and its tokens."""
    tokens = Tokens.generate(4)
    args = ["--token-file", str(tokens.write(tmp_path / "tokens.toml")), "--insecure"]
    relay = RelayProcess(tmp_path / "data", args).start()
    yield relay, tokens
    relay.kill()


def _payload_file(relay: RelayProcess, sha256: str) -> Path:
    """Where the relay keeps the payload with this SHA-256."""
    return relay.data_dir / "payloads" / sha256[:2] / sha256


def test_acknowledged_predictions_survive_kill_9_and_restart(
    relay_with_tokens: tuple[RelayProcess, Tokens], probe: ProbeSet
) -> None:
    relay, tokens = relay_with_tokens
    published = {}
    with client_for(relay, tokens.admin) as admin:
        admin.create_run("durable", probe, NUM_CLASSES, EXPERIENCES)
        for i in range(SETS):
            agent, experience = i % 4, i // 4
            predictions = make_predictions("durable", probe, agent, experience)
            receipt = admin.publish(predictions, encoding="float16" if i % 3 == 0 else "float32")
            assert not receipt.already_stored
            published[(agent, experience)] = predictions

    relay.kill()  # SIGKILL right after the last acknowledgement: no shutdown code runs
    relay.start()

    with client_for(relay, tokens.credential(0, "durable")) as agent_0:
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
    relay_with_tokens: tuple[RelayProcess, Tokens], probe: ProbeSet
) -> None:
    relay, tokens = relay_with_tokens
    with client_for(relay, tokens.admin) as admin:
        admin.create_run("damaged", probe, NUM_CLASSES, EXPERIENCES)
        victim = admin.publish(make_predictions("damaged", probe, 0, 0))
        intact = make_predictions("damaged", probe, 1, 0)
        admin.publish(intact)
        path = _payload_file(relay, victim.sha256)
        damaged = bytearray(path.read_bytes())
        damaged[100] ^= 0xFF
        path.write_bytes(bytes(damaged))

        with pytest.raises(DataLossError) as failure:
            admin.fetch("damaged", 0, 0)
        still_intact = admin.fetch("damaged", 1, 0)

    assert failure.value.code == grpc.StatusCode.DATA_LOSS
    assert f"prediction set damaged/0/0 (SHA-256 {victim.sha256}) is corrupt" in (
        failure.value.details
    )
    assert "restore it from a backup or republish" in failure.value.details
    assert str(relay.data_dir) not in failure.value.details  # the path stays on the relay
    assert torch.equal(still_intact.logits, intact.logits)
    relay.stop()
    assert f"(file {path})" in relay.log()


def test_a_payload_corrupted_after_it_was_served_is_reported_on_the_next_fetch(
    relay_with_tokens: tuple[RelayProcess, Tokens], probe: ProbeSet
) -> None:
    relay, tokens = relay_with_tokens
    with client_for(relay, tokens.admin) as admin:
        admin.create_run("served", probe, NUM_CLASSES, EXPERIENCES)
        victim = admin.publish(make_predictions("served", probe, 0, 0))
        first = admin.fetch("served", 0, 0)
        path = _payload_file(relay, victim.sha256)
        damaged = bytearray(path.read_bytes())
        damaged[7] ^= 0x01
        with open(path, "r+b") as f:  # in place: same inode, same size
            f.write(damaged)

        with pytest.raises(DataLossError) as failure:
            admin.fetch("served", 0, 0)

    assert first.agent_id == 0
    assert failure.value.code == grpc.StatusCode.DATA_LOSS
    assert f"prediction set served/0/0 (SHA-256 {victim.sha256}) is corrupt" in (
        failure.value.details
    )


def test_a_missing_payload_file_is_data_loss_naming_the_set_not_the_file(
    relay_with_tokens: tuple[RelayProcess, Tokens], probe: ProbeSet
) -> None:
    relay, tokens = relay_with_tokens
    with client_for(relay, tokens.admin) as admin:
        admin.create_run("lost", probe, NUM_CLASSES, EXPERIENCES)
        victim = admin.publish(make_predictions("lost", probe, 2, 1))
        path = _payload_file(relay, victim.sha256)
        path.unlink()

        with pytest.raises(DataLossError) as failure:
            admin.fetch("lost", 2, 1)

    assert failure.value.details == (
        f"prediction set lost/2/1 (SHA-256 {victim.sha256}) is missing from the relay's disk; "
        "restore it from a backup or republish"
    )
    relay.stop()
    assert f"(file {path})" in relay.log()


def test_kill_9_in_the_middle_of_publishing_loses_no_acknowledged_set(
    relay_with_tokens: tuple[RelayProcess, Tokens], probe: ProbeSet
) -> None:
    relay, tokens = relay_with_tokens
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
        admin.create_run("crash", probe, NUM_CLASSES, 100_000)
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
    # A payload renamed into place before its row committed was removed on restart.
    with client_for(relay, tokens.admin) as admin:
        wanted = {p.sha256 for p in admin.list_predictions("crash")}
    wanted.add(probe_sha256(probe))
    assert {p.name for p in (relay.data_dir / "payloads").glob("*/*")} == wanted


def probe_sha256(probe: ProbeSet) -> str:
    return hashlib.sha256(probe.inputs.numpy().astype("<f4").tobytes()).hexdigest()


def _metric(relay: RelayProcess, name: str) -> float:
    with urllib.request.urlopen(f"{relay.status_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    (value,) = [line.split()[1] for line in text.splitlines() if line.startswith(name + " ")]
    return float(value)


def test_orphan_payload_files_are_removed_and_counted_at_start(
    relay_with_tokens: tuple[RelayProcess, Tokens], probe: ProbeSet
) -> None:
    relay, tokens = relay_with_tokens
    with client_for(relay, tokens.admin) as admin:
        admin.create_run("orphans", probe, NUM_CLASSES, EXPERIENCES)
        kept = admin.publish(make_predictions("orphans", probe, 0, 0))
    relay.kill()
    payloads = relay.data_dir / "payloads"
    # As a crash between the rename and the commit leaves them: named by their SHA-256.
    orphans = [hashlib.sha256(bytes([i])).hexdigest() for i in range(3)]
    for sha in orphans:
        _payload_file(relay, sha).parent.mkdir(exist_ok=True)
        _payload_file(relay, sha).write_bytes(b"never acknowledged")
    stray = payloads / kept.sha256[:2] / "notes.txt"  # not named like a payload: not ours
    stray.write_text("left by an operator")
    (relay.data_dir / "tmp" / f"{orphans[0]}.partial").write_bytes(b"half-written")

    relay.start()

    assert _metric(relay, "dkt_relay_orphan_payloads_removed_total") == 3
    assert not any(_payload_file(relay, sha).exists() for sha in orphans)
    assert list((relay.data_dir / "tmp").iterdir()) == []
    assert stray.exists()
    with client_for(relay, tokens.credential(1, "orphans")) as agent:
        fetched = agent.fetch("orphans", 0, 0)
        served_probe = agent.get_probe("orphans")
    assert torch.equal(fetched.logits, make_predictions("orphans", probe, 0, 0).logits)
    assert torch.equal(served_probe.inputs, probe.inputs)
    relay.stop()
    assert "removed 3 orphan payload files" in relay.log()
