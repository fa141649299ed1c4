"""Hostile participants against a real run: a real SuperLink, relay and SuperNodes on
loopback (LocalCluster, as `dkt run`), plus a rogue.

- A rogue SuperNode with a guessed relay token claims agent 0 and answers the
  conductor's query first, while the real agent 0 is slow: it gets none of agent 0's
  orders.
- Agent 1's credential publishes 1e30 logits for every experience the moment the run
  exists: each is refused, nothing is stored, and the real agent 1 publishes its own.

The run finishes with no agent missing and the numbers of `dkt simulate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dkt.cli.local_cluster import LocalCluster
from dkt.client.agent_app import QUERY_DELAY_ENV
from dkt.common.engine.setup import prepare
from dkt.common.engine.simulation import simulate
from dkt.common.evaluation.results import ExperienceRecord
from dkt.common.run.config import ExperimentConfig
from dkt.common.training.predictions import Predictions
from dkt.flower.processes import flower_env, free_port, supernode_command
from dkt.flower.runs import run_config, submit_run, write_app
from dkt.proto.relay_client import InvalidArgumentError, NotFoundError, RelayClient
from dkt.proto.relay_connection import TOKEN_ENV
from dkt.proto.run_credential import run_credential
from tests.support.experiments import numbers
from tests.support.processes import start, stop, wait_for

CONFIG = ExperimentConfig(dataset="synthetic", agents=2, experiences=2, probe_size=30, epochs=5)


def _run_exists(client: RelayClient, run_id: str) -> bool:
    try:
        client.get_probe(run_id)
    except NotFoundError:
        return False
    return True


@pytest.mark.slow
def test_a_rogue_supernode_and_poisoned_logits_do_not_change_an_honest_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(QUERY_DELAY_ENV, "12")  # the real agents answer the query slowly
    out = tmp_path / "red-team"
    rogue_dir = tmp_path / "rogue"
    with LocalCluster(tmp_path / "cluster", CONFIG.agents) as cluster:
        env = flower_env(
            cluster.workdir / "flwr-home",
            **{TOKEN_ENV: "a-guessed-token-0123456789abcdef", QUERY_DELAY_ENV: "0"},
        )
        rogue_cmd = supernode_command(
            cluster.superlink_address, free_port(), 0, rogue_dir, cluster.relay_address, "cpu",
            threads=1,
        )  # fmt: skip
        rogue = start(rogue_cmd, tmp_path / "rogue.log", env)
        try:
            values = run_config(
                CONFIG, run_id=out.name, results_dir=out, relay=cluster.relay_address,
                wait_agents=240.0,
            )  # fmt: skip
            run = submit_run(cluster.superlink_address, write_app(cluster.workdir / "app"), values)
            logs = run.save_logs(cluster.logs / "conductor.log")
            credential = run_credential(cluster.agent_tokens[1], 1, out.name)
            with RelayClient(cluster.relay_address, credential) as agent1:
                wait_for(lambda: _run_exists(agent1, out.name), 240, "the run on the relay")
                probe = agent1.get_probe(out.name)
                classes = prepare(CONFIG, agents=()).num_classes
                refusals = []
                for experience in range(CONFIG.experiences):
                    poison = torch.full((len(probe), classes), 1e30)
                    poisoned = Predictions(
                        1, experience, (0, 1), probe.fingerprint, poison, run_id=out.name
                    )
                    with pytest.raises(InvalidArgumentError) as refused:
                        agent1.publish(poisoned)
                    refusals.append(refused.value.details)
            wait_for(lambda: run.status().startswith("finished"), 600, "the run to finish")
            logs.join(10)
            status = run.status()
        finally:
            stop(rogue)

    assert status == "finished:completed", run.details()
    assert len(refusals) == CONFIG.experiences
    assert all("beyond this relay's bound of 1000" in r for r in refusals), refusals
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["missing_agents"] == []
    expected = simulate(CONFIG)
    for a in range(CONFIG.agents):
        got = [ExperienceRecord(**r) for r in metrics["agents"][str(a)]["experiences"]]
        want = numbers(expected.histories[a])
        for g, w in zip(numbers(got), want, strict=True):
            assert g["acc_cl"] == pytest.approx(w["acc_cl"], abs=1e-6)
            assert g["acc_st"] == pytest.approx(w["acc_st"], abs=1e-6)
            assert g["loss_ce"] == pytest.approx(w["loss_ce"], rel=1e-5)
    log = (cluster.logs / "conductor.log").read_text()
    assert "claims to run agent 0 but sent a proof the relay does not accept" in log, log
    assert not list(rogue_dir.rglob("*.pt"))  # the rogue trained nothing
    rogue_log = (tmp_path / "rogue.log").read_text(errors="replace")
    assert "experience 0" not in rogue_log
