"""DKT on real Flower processes: `dkt run`, and a local cluster with agents killed."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dkt.cli.local_cluster import LocalCluster
from dkt.client.agent_app import QUERY_DELAY_ENV
from dkt.common.engine.simulation import simulate
from dkt.common.evaluation.results import ExperienceRecord
from dkt.common.run.config import ExperimentConfig
from dkt.flower.runs import run_config, submit_run, write_app
from dkt.proto.relay_client import RelayClient
from dkt.server.relay.server import RelayConfig, RelayServer
from tests.support.experiments import numbers
from tests.support.processes import wait_for


def records(metrics: dict, agent: int) -> list[dict]:
    history = [ExperienceRecord(**r) for r in metrics["agents"][str(agent)]["experiences"]]
    return numbers(history)


def flat(value: object, key: str = "") -> dict[str, object]:
    """Nested dicts and lists as one dict of leaves keyed by their path."""
    if isinstance(value, dict):
        return {
            k: v for name, item in value.items() for k, v in flat(item, f"{key}.{name}").items()
        }
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in flat(item, f"{key}[{i}]").items()}
    return {key: value}


def assert_same_numbers(got: list[dict], expected: list[dict]) -> None:
    """Equal up to float rounding: a loaded machine can change how a CPU kernel splits a
    sum across threads in another process, which moves the last bits of a float."""
    got_flat, expected_flat = flat(got), flat(expected)
    assert got_flat.keys() == expected_flat.keys()
    for key, value in expected_flat.items():
        if isinstance(value, float):
            assert got_flat[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
        else:
            assert got_flat[key] == value, key


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (e.g. a run's folder)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(") ", 1)[1][0]
            except (OSError, IndexError):
                continue
            if text in cmd and state != "Z":
                found.append(cmd)
    return found


def dkt_run(out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dkt", "run", "--out", str(out), "--quiet", *flags],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_dkt_run_trains_three_agents_and_matches_simulate(tmp_path):
    out = tmp_path / "digits-run"
    proc = dkt_run(out, "--experiences", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]

    for name in ("config.toml", "metrics.json", "summary.md", "plots/transfer.png",
                 "matrices/agent-2-st.csv", "plots/accuracy-matrix-agent-2.png"):  # fmt: skip
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["driver"] == "flower"
    assert metrics["missing_agents"] == []
    # This command's provenance, not the ServerApp process's; the status access file
    # (printed while it ran) is gone with the relay.
    assert metrics["provenance"]["command"].startswith(f"dkt run --out {out} --quiet")
    assert metrics["provenance"]["device"] == "cpu"
    assert f"dkt status --out {out} --watch" in proc.stderr
    assert not (out / "cluster" / "status.json").exists()
    expected = simulate(ExperimentConfig(experiences=3))
    for a in range(3):
        assert_same_numbers(records(metrics, a), numbers(expected.histories[a]))

    # The relay's store holds the run: reopen it and ask for the status.
    stored = RelayConfig(out / "cluster" / "relay", port=0, status_port=None, insecure=True)
    with RelayServer(stored) as relay, RelayClient(relay.address) as client:
        status = client.status()
    (run,) = [r for r in status["runs"] if r["run_id"] == "digits-run"]
    assert run["state"] == "finished"
    assert run["prediction_sets"] == 9
    assert {a["agent_id"]: a["experiences_published"] for a in run["agents"]} == {
        0: [0, 1, 2], 1: [0, 1, 2], 2: [0, 1, 2],
    }  # fmt: skip
    assert all(a["state"] == "trained" and "acc_all_cl" in a["metrics"] for a in run["agents"])
    assert all(a["last_seen"] > 0 for a in run["agents"])
    assert processes_mentioning(str(out)) == []
    # One long-lived worker per agent ran every message: no ClientApp process started.
    for a in range(3):
        log = (out / "cluster" / "logs" / f"agent-{a}.log").read_text()
        assert log.count("DKT agent worker ready") == 1, log[-2000:]
        assert FRESH_CLIENTAPP not in log
        assert log.count("Receiving: train message") == 3


FRESH_CLIENTAPP = "Start `flwr-clientapp` process"  # Flower's line for each ClientApp process
FRESH_DKT_PROCESS = "Start a fresh DKT ClientApp process"  # the worker's, with --fresh-process


@pytest.mark.slow
def test_dkt_run_sequential_matches_simulate_with_the_threads_asked_for(tmp_path):
    # Also the path of a fresh process per message (--fresh-process): DKT's own, never
    # Flower's flwr-clientapp, which would run code from the run's FAB.
    flags = ["--dataset", "synthetic", "--agents", "2", "--experiences", "2",
             "--probe-size", "30", "--schedule", "sequential", "--threads", "1",
             "--fresh-process", "--plots", "summary"]  # fmt: skip
    proc = dkt_run(tmp_path / "seq", *flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # --plots reached the conductor: the fleet plots only, no heatmap per agent.
    plots = sorted(p.name for p in (tmp_path / "seq" / "plots").iterdir())
    assert plots == ["accuracy.png", "transfer.png"]
    for a in (0, 1):
        log = (tmp_path / "seq" / "cluster" / "logs" / f"agent-{a}.log").read_text()
        assert "in a fresh process per message" in log
        assert FRESH_CLIENTAPP not in log
        assert log.count(FRESH_DKT_PROCESS) >= 3  # the query and two train messages
    assert "1 torch threads per agent" in " ".join(proc.stderr.split())
    # Each agent's ClientApp process reports torch's thread count when it joins.
    log = (tmp_path / "seq" / "cluster" / "logs" / "conductor.log").read_text()
    for a in (0, 1):
        assert re.search(rf"agent {a} joined on node \d+ \(device cpu, 1 threads\)", log), log
    metrics = json.loads((tmp_path / "seq" / "metrics.json").read_text())
    config = ExperimentConfig(
        dataset="synthetic", agents=2, experiences=2, probe_size=30, schedule="sequential"
    )
    expected = simulate(config)
    for a in range(2):
        assert_same_numbers(records(metrics, a), numbers(expected.histories[a]))


@pytest.mark.slow
def test_dkt_run_fedavg_moves_weights_in_flower_messages_and_matches_simulate(tmp_path):
    out = tmp_path / "fedavg"
    flags = ["--dataset", "synthetic", "--agents", "2", "--experiences", "2",
             "--probe-size", "30", "--exchange", "fedavg", "--threads", "1"]  # fmt: skip
    proc = dkt_run(out, *flags)
    assert proc.returncode == 0, proc.stderr[-3000:]

    config = ExperimentConfig.from_toml(out / "config.toml")
    assert config.exchange == "fedavg"
    metrics = json.loads((out / "metrics.json").read_text())
    expected = simulate(config)
    st = ("acc_st", "acc_all_st", "transfer_st")  # the st head learns nothing: null
    for a in range(2):
        got = metrics["agents"][str(a)]["experiences"]
        assert all(r[k] is None for r in got for k in st)
        assert_same_numbers(
            [{k: v for k, v in r.items() if k not in st} for r in records(metrics, a)],
            [{k: v for k, v in r.items() if k not in st} for r in numbers(expected.histories[a])],
        )
        # the weights went up in the train reply and the average came down in the
        # evaluate message: both counted, both the size of the model without its st head
        assert [(r["bytes_published"], r["bytes_fetched"]) for r in got] == [
            (r.bytes_published, r.bytes_fetched) for r in expected.histories[a]
        ]
        assert got[0]["bytes_published"] > 0
    log = (out / "cluster" / "logs" / "conductor.log").read_text()
    assert "experience 1: averaged the weights of agents 0, 1" in log
    assert log.count("the average for experience 1 sent") == 2
    # No logits were published: the relay's store holds the run and no prediction set.
    stored = RelayConfig(out / "cluster" / "relay", port=0, status_port=None, insecure=True)
    with RelayServer(stored) as relay, RelayClient(relay.address) as client:
        (run,) = [r for r in client.status()["runs"] if r["run_id"] == "fedavg"]
    assert run["state"] == "finished" and run["prediction_sets"] == 0


# Faults: a cluster driven from the test, so it can kill agents at the right moment.

FAULT_CONFIG = ExperimentConfig(
    dataset="synthetic", agents=3, experiences=3, probe_size=30, epochs=15, batch_size=8
)


def agent_status(client: RelayClient, run_id: str, agent_id: int) -> tuple[str, int, str] | None:
    """An agent's (state, experience, reason) in the relay's status, None before any."""
    for run in client.status()["runs"]:
        if run["run_id"] == run_id:
            for agent in run["agents"]:
                if agent["agent_id"] == agent_id:
                    return agent["state"], agent["experience"], agent.get("reason", "")
    return None


def agent_state(client: RelayClient, run_id: str, agent_id: int) -> tuple[str, int]:
    status = agent_status(client, run_id, agent_id)
    return status[:2] if status else ("", -1)


def start_run(cluster: LocalCluster, out: Path, **settings: float):
    values = run_config(
        FAULT_CONFIG, run_id=out.name, results_dir=out, relay=cluster.relay_address, **settings
    )
    run = submit_run(cluster.superlink_address, write_app(cluster.workdir / "app"), values)
    run.save_logs(cluster.logs / "conductor.log")
    return run


@pytest.fixture
def cluster(tmp_path):
    with LocalCluster(tmp_path / "cluster", FAULT_CONFIG.agents) as running:
        yield running
    assert processes_mentioning(str(tmp_path / "cluster")) == []


@pytest.mark.slow
def test_an_agent_killed_mid_experience_and_restarted_finishes_with_the_same_numbers(
    cluster, tmp_path
):
    out = tmp_path / "killed-and-back"
    seen: list[tuple[str, int, str]] = []  # agent 1 in the relay's status, as polled
    reports: list[tuple[str, int, str]] = []  # every progress report about agent 1

    def watch(state: str) -> bool:
        now = agent_status(client, out.name, 1)
        if now and (not seen or seen[-1] != now):
            seen.append(now)
        return now[0] == state if now else False

    def collect(events) -> None:
        with contextlib.suppress(Exception):  # ends when the stream is cancelled
            for event in events:
                if event.kind == "progress" and event.run_id == out.name and event.agent_id == 1:
                    reports.append((event.state, event.experience, event.reason))

    with RelayClient(cluster.relay_address, cluster.admin_token) as client:
        events = client.watch()  # every run: this one does not exist yet
        threading.Thread(target=collect, args=(events,), daemon=True).start()
        # A dead SuperNode is reported by Flower (NODE_UNAVAILABLE) about 45 s after the kill.
        run = start_run(cluster, out, agent_timeout=300.0, rejoin_wait=120.0)
        wait_for(lambda: agent_state(client, out.name, 1) == ("training", 1), 240,
                 "agent 1 to start experience 1")  # fmt: skip
        cluster.kill_agent(1)  # kill -9 of the SuperNode and its ClientApp
        cluster.start_agent(1)
        # During the fault the relay's status says what the conductor sees, and why.
        wait_for(lambda: watch("failed"), 240, "agent 1 reported failed")
        wait_for(lambda: run.status().startswith("finished"), 400, "the run to finish")
        final = agent_status(client, out.name, 1)
        events.cancel()
    assert run.status() == "finished:completed", run.details()
    (failed,) = [s for s in seen if s[0] == "failed"]
    assert failed[1] == 1 and failed[2].startswith("Flower error 5 (SuperNode unavailable)"), seen
    states = [state for state, _, _ in reports]
    assert states.index("failed") < states.index("rejoined") < states.index("retrying"), reports
    (rejoined,) = [r for r in reports if r[0] == "rejoined"]
    assert rejoined[1] == 1 and rejoined[2].startswith("node "), reports
    (retrying,) = [r for r in reports if r[0] == "retrying"]
    assert retrying[2].startswith("try 2 of 3 after: Flower error 5"), reports
    assert final == ("trained", 2, ""), final
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["missing_agents"] == []
    expected = simulate(FAULT_CONFIG)
    for a in range(FAULT_CONFIG.agents):
        assert_same_numbers(records(metrics, a), numbers(expected.histories[a]))
    log = (cluster.logs / "conductor.log").read_text()
    assert "agent 1: experience 1 failed:" in log
    assert re.search(r"agent 1 rejoined on node \d+", log), log


@pytest.mark.slow
def test_agents_that_take_over_a_minute_to_answer_the_query_still_join(tmp_path, monkeypatch):
    # Issue 11.1: a query lived 60 s, so on a loaded host where a ClientApp took longer
    # to start every answer expired, and the run failed after --wait-agents.
    monkeypatch.setenv(QUERY_DELAY_ENV, "65")  # inherited by the SuperNodes' ClientApps
    config = ExperimentConfig(dataset="synthetic", agents=2, experiences=1, probe_size=30)
    out = tmp_path / "slow-start"
    with LocalCluster(tmp_path / "cluster", config.agents) as cluster:
        values = run_config(config, run_id=out.name, results_dir=out,
                            relay=cluster.relay_address, wait_agents=240.0)  # fmt: skip
        run = submit_run(cluster.superlink_address, write_app(cluster.workdir / "app"), values)
        logs = run.save_logs(cluster.logs / "conductor.log")
        wait_for(lambda: run.status().startswith("finished"), 500, "the run to finish")
        logs.join(10)
        log = (cluster.logs / "conductor.log").read_text()
        assert run.status() == "finished:completed", run.details() + log[-3000:]
    for a in (0, 1):
        assert re.search(rf"agent {a} joined on node \d+", log), log
    assert "did not say which agent" not in log  # no query expired or was asked twice
    assert json.loads((out / "metrics.json").read_text())["missing_agents"] == []


@pytest.mark.slow
def test_an_agent_that_never_comes_back_is_named_missing_in_a_completed_run(cluster, tmp_path):
    out = tmp_path / "one-lost"
    run = start_run(cluster, out, agent_timeout=300.0, rejoin_wait=5.0, retries=1)
    with RelayClient(cluster.relay_address, cluster.admin_token) as client:
        wait_for(lambda: agent_state(client, out.name, 2)[1] >= 1, 240,
                 "agent 2 to reach experience 1")  # fmt: skip
        cluster.kill_agent(2)
        wait_for(lambda: run.status().startswith("finished"), 400, "the run to finish")
        state, _, reason = agent_status(client, out.name, 2) or ("", 0, "")
        assert state == "missing"
        assert reason.startswith("did not come back within 5 s after:"), reason
    assert run.status() == "finished:completed", run.details()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["missing_agents"] == [2]
    assert [len(metrics["agents"][str(a)]["experiences"]) for a in (0, 1)] == [3, 3]
    assert len(metrics["agents"]["2"]["experiences"]) < 3
    assert "**missing agents**: 2" in (out / "summary.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupting_dkt_run_stops_every_process(tmp_path, signum):
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dkt", "run", "--out", str(out), "--quiet", "--dataset",
         "synthetic", "--agents", "2", "--experiences", "3", "--probe-size", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # Interrupt once the agents have started working.
    wait_for(lambda: any(out.glob("cluster/agents/agent-*/*/probe.pt")), 240, "agents to start")
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, stderr[-2000:]  # as a shell reports it
    assert "stopped; logs in" in stderr
    assert not (out / "metrics.json").exists()
    assert processes_mentioning(str(out)) == []


@pytest.mark.slow
def test_dkt_run_async_gives_every_agent_every_experience(tmp_path):
    proc = dkt_run(tmp_path / "async", "--dataset", "synthetic", "--agents", "2",
                   "--experiences", "3", "--probe-size", "30", "--schedule", "async")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "async" / "metrics.json").read_text())
    used = []
    for a in ("0", "1"):
        history = metrics["agents"][a]["experiences"]
        assert [r["experience"] for r in history] == [0, 1, 2]
        for record in history:
            # The peer, at whatever experience it had published (if any yet): even at
            # experience 0, when the peer's first reply came before this agent's start.
            assert all(t == 1 - int(a) and 0 <= e <= 2 for t, e in record["teachers"])
            used += record["teachers"]
    assert used, "no agent learned from its peer in the whole run"


@pytest.mark.slow
def test_a_run_that_fails_says_why_and_leaves_nothing_running(tmp_path):
    out = tmp_path / "no-data"
    proc = dkt_run(out, "--dataset", "mnist", "--data-root", str(tmp_path / "empty"),
                   "--agents", "2", "--wait-agents", "30")  # fmt: skip
    assert proc.returncode == 1
    assert "the run ended finished:failed" in proc.stderr
    assert "--download" in proc.stderr  # the conductor's own error, passed on
    assert not (out / "metrics.json").exists()
    assert processes_mentioning(str(out)) == []
