"""The in-process driver exchanging predictions through a real relay process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from dkt.client.relay_exchange import open_relay_exchange
from dkt.common.engine.setup import prepare
from dkt.common.engine.simulation import simulate
from dkt.proto.relay_client import RelayClient
from tests.support.experiments import SMALL, numbers
from tests.support.relay import new_run_id


def test_relay_exchange_gives_the_same_numbers_as_in_memory(admin: RelayClient):
    config = SMALL.replace(schedule="sequential")
    setup = prepare(config)
    in_memory = simulate(config, setup=setup)
    run_id = new_run_id()
    exchange = open_relay_exchange(admin, run_id, setup.probe, setup.data.num_classes, config)
    through_relay = simulate(config, setup=setup, exchange=exchange)

    for a in range(config.agents):
        assert numbers(through_relay.histories[a]) == numbers(in_memory.histories[a])
    stored = admin.list_predictions(run_id)
    assert len(stored) == config.agents * config.experiences
    back = admin.fetch(run_id, 1, 2)
    assert torch.equal(back.logits, exchange.fetch(1, 2).logits)


def test_float16_on_the_wire_halves_the_bytes_exchanged(admin: RelayClient):
    config = SMALL.replace(experiences=2)
    setup = prepare(config)
    exchange = open_relay_exchange(
        admin, new_run_id(), setup.probe, setup.data.num_classes, config, encoding="float16"
    )
    result = simulate(config, setup=setup, exchange=exchange)
    # 36 probe inputs x 6 classes x 2 bytes.
    assert [r.bytes_published for r in result.histories[0]] == [36 * 6 * 2] * 2


@pytest.mark.slow
def test_dkt_simulate_with_relay_reports_the_run_in_status(relay, relay_tokens, tmp_path):
    out = tmp_path / "relay-run"
    env = {**os.environ, "DKT_RELAY_TOKEN": relay_tokens.admin}
    args = ["--dataset", "synthetic", "--agents", "2", "--experiences", "2", "--epochs", "1",
            "--probe-size", "24"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "dkt", "simulate", *args, "--relay", relay.address,
         "--out", str(out), "--quiet"],  # fmt: skip
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with RelayClient(relay.address, relay_tokens.admin) as client:
        status = client.status()
    run = next(r for r in status["runs"] if r["run_id"] == "relay-run")
    assert run["state"] == "finished"
    assert sorted(int(a["agent_id"]) for a in run["agents"]) == [0, 1]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["agents"]["0"]["summary"]["bytes_published"] == 2 * 24 * 6 * 4


def test_dkt_simulate_with_a_wrong_token_fails_cleanly(relay, tmp_path):
    env = {**os.environ, "DKT_RELAY_TOKEN": "not-a-valid-token-at-all"}
    proc = subprocess.run(
        [sys.executable, "-m", "dkt", "simulate", "--dataset", "synthetic", "--probe-size", "24",
         "--relay", relay.address, "--out", str(tmp_path / "r"), "--quiet"],  # fmt: skip
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "relay error" in proc.stderr
    assert "Traceback" not in proc.stderr
