"""Server and agents on separate hosts: one network namespace each, joined by veth
pairs on a bridge, talking over those addresses (not loopback), with the same
commands a user runs on separate machines (`dkt server`, `dkt agent`, `dkt launch`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import start, stop, wait_for_line
from tests.support.sites import write_sites

SERVER_IP = "10.213.0.1"
AGENTS = 2
TOKENS = {
    "admin": "multihost-admin-token-000001",
    0: "multihost-agent0-token-00001",
    1: "multihost-agent1-token-00001",
}


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Hosts:
    server: str
    agents: list[str]

    def exec(self, host: str, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", host, *cmd]


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    tag = f"d{os.getpid() % 100000}"
    server, agents = f"{tag}s", [f"{tag}a{i}" for i in range(AGENTS)]
    try:
        ip("netns", "add", server)
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or err
        pytest.skip(f"cannot create network namespaces here (needs root and iproute2): {detail}")
    made = [server]
    try:
        ip("-n", server, "link", "set", "lo", "up")
        ip("-n", server, "link", "add", "br0", "type", "bridge")
        ip("-n", server, "addr", "add", f"{SERVER_IP}/24", "dev", "br0")
        ip("-n", server, "link", "set", "br0", "up")
        for i, agent in enumerate(agents):
            ip("netns", "add", agent)
            made.append(agent)
            ip("-n", agent, "link", "set", "lo", "up")
            host_end, bridge_end = f"{tag}h{i}", f"{tag}b{i}"
            ip("link", "add", host_end, "type", "veth", "peer", "name", bridge_end)
            ip("link", "set", host_end, "netns", agent)
            ip("link", "set", bridge_end, "netns", server)
            ip("-n", server, "link", "set", bridge_end, "master", "br0", "up")
            ip("-n", agent, "addr", "add", f"10.213.0.{10 + i}/24", "dev", host_end)
            ip("-n", agent, "link", "set", host_end, "up")
        yield Hosts(server, agents)
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.mark.slow
def test_server_and_agents_on_separate_hosts_complete_a_run(hosts: Hosts, tmp_path: Path):
    _separate_hosts_run(hosts, tmp_path)


@pytest.mark.slow
def test_sites_with_their_own_data_on_separate_hosts_complete_a_run(hosts: Hosts, tmp_path: Path):
    # Each agent host reads only its own site's data (an .npz, a folder of images);
    # the server holds the class space and the public probe and evaluation sets, as in
    # README "Your own data"; the launch names none of them.
    sites = write_sites(tmp_path / "sites")
    run = _separate_hosts_run(
        hosts,
        tmp_path,
        server_flags=[
            "--classes", str(sites.classes_file), "--input-shape", "1,8,8",
            "--probe-from", str(sites.probe), "--eval-from", str(sites.eval_set),
        ],
        agent_flags={0: ["--data", str(sites.site0)], 1: ["--data", str(sites.site1)]},
        launch_flags=["--probe-size", "60", "--agent", "1:backbone=cnn"],
    )  # fmt: skip
    assert run["config"]["eval_from"] == str(sites.eval_set)
    assert run["agents"]["1"]["experiences"][1]["transfer_st"] is not None
    assert run["agent_data"] == {"0": "own", "1": "own"}
    assert run["agents"]["1"]["class_order"] == [[4, 5, 6], [7, 8, 9]]
    assert sorted(c for e in run["agents"]["0"]["class_order"] for c in e) == [0, 1, 2, 3, 4, 5, 6]


def _separate_hosts_run(
    hosts: Hosts,
    tmp_path: Path,
    agent_flags: dict[int, list[str]] | None = None,
    launch_flags: list[str] | None = None,
    server_flags: list[str] | None = None,
) -> dict:
    """Server, two agents and a launch on separate network namespaces; returns the
    run's metrics.json."""
    py = sys.executable
    token_file = tmp_path / "tokens.toml"
    token_file.write_text(
        f'admin = "{TOKENS["admin"]}"\n[agents]\n'
        + "".join(f'{i} = "{TOKENS[i]}"\n' for i in range(AGENTS))
    )
    procs: list[subprocess.Popen] = []
    try:
        server_log = tmp_path / "server.log"
        server = start(
            hosts.exec(hosts.server, py, "-m", "dkt", "server", "--host", SERVER_IP,
                       "--data-dir", str(tmp_path / "server"), "--token-file", str(token_file),
                       "--insecure", "--trusted-network", *(server_flags or [])),
            server_log,
        )  # fmt: skip
        procs.append(server)
        wait_for_line(server_log, "server ready", server, 60)
        for i, host in enumerate(hosts.agents):
            procs.append(
                start(
                    hosts.exec(
                        host,
                        py,
                        "-m",
                        "dkt",
                        "agent",
                        "--server",
                        SERVER_IP,
                        "--agent-id",
                        str(i),
                        "--data-dir",
                        str(tmp_path / f"agent-{i}"),
                        *(agent_flags or {}).get(i, []),
                    ),
                    tmp_path / f"agent-{i}.log",
                    env={"DKT_RELAY_TOKEN": TOKENS[i]},
                )  # fmt: skip
            )
        launch = subprocess.run(
            hosts.exec(hosts.agents[0], py, "-m", "dkt", "launch", "--server", SERVER_IP,
                       "--run-id", "multihost", "--dataset", "synthetic", "--agents", "2",
                       "--experiences", "2", "--probe-size", "30", "--wait-agents", "60",
                       *(launch_flags or [])),
            capture_output=True, text=True, timeout=400,
        )  # fmt: skip
        assert launch.returncode == 0, launch.stdout[-3000:] + launch.stderr[-3000:]
        assert "run multihost finished" in launch.stdout

        metrics = json.loads((tmp_path / "server/results/multihost/metrics.json").read_text())
        assert metrics["driver"] == "flower"
        assert metrics["missing_agents"] == []
        assert [len(metrics["agents"][str(a)]["experiences"]) for a in range(AGENTS)] == [2, 2]

        # The status endpoint, read from an agent host over the bridge: beyond loopback
        # it needs the admin token.
        read_status = hosts.exec(
            hosts.agents[1], py, "-c",
            f"import urllib.request as u; print(u.urlopen(u.Request("
            f"'http://{SERVER_IP}:7471/status', headers={{'Authorization': "
            f"'Bearer {TOKENS['admin']}'}}), timeout=10).read().decode())",
        )  # fmt: skip
        status = json.loads(subprocess.run(read_status, capture_output=True, text=True,
                                           check=True, timeout=60).stdout)  # fmt: skip
        (run,) = [r for r in status["runs"] if r["run_id"] == "multihost"]
        assert run["state"] == "finished"
        assert sorted(a["agent_id"] for a in run["agents"]) == [0, 1]
        assert all(a["last_seen"] > 0 for a in run["agents"])

        # An agent host's own loopback has no relay: the agents must have used the bridge.
        probe_loopback = hosts.exec(
            hosts.agents[1], py, "-c",
            "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7471/status', "
            "timeout=5)",
        )  # fmt: skip
        local = subprocess.run(probe_loopback, capture_output=True, text=True, timeout=60)
        assert local.returncode != 0
        assert "Connection refused" in local.stderr
        return metrics
    finally:
        for proc in reversed(procs):
            stop(proc)
