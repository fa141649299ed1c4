"""An agent that published is seen: its status row has a real last-seen time, also on
a relay with authentication off (every caller anonymous)."""

from __future__ import annotations

import time
from pathlib import Path

from dkt.proto.relay_client import RelayClient
from dkt.server.relay.server import RelayConfig, RelayServer
from tests.support.relay import EXPERIENCES, NUM_CLASSES, make_predictions, make_probe


def test_an_agent_that_published_on_an_open_relay_has_a_last_seen_time(tmp_path: Path) -> None:
    probe = make_probe()
    config = RelayConfig(data_dir=tmp_path, port=0, status_port=None, insecure=True)
    before = time.time()
    with RelayServer(config) as relay, RelayClient(relay.address, timeout=20) as client:
        client.create_run("open", probe, NUM_CLASSES, EXPERIENCES)
        client.publish(make_predictions("open", probe, agent_id=2, experience=0))
        (run,) = [r for r in client.status()["runs"] if r["run_id"] == "open"]

    (agent,) = run["agents"]
    assert agent["agent_id"] == 2
    assert agent["experiences_published"] == [0]
    assert before <= agent["last_seen"] <= time.time()
