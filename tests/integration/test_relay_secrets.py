"""The relay's secrets stay with the relay: the SuperLink of `dkt server` and of `dkt run`'s
LocalCluster holds no relay token, and the SuperExec, whose ServerApps conduct the runs,
holds the conductor token, never the admin's; that token reaches only the runs it
creates. Read from /proc/PID/environ of the real processes."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from dkt.cli.local_cluster import LocalCluster
from dkt.flower.processes import MARKER, free_port, marked_processes
from dkt.proto.relay_client import PermissionDeniedError, RelayClient
from dkt.proto.relay_connection import ADMIN_TOKEN_ENV, RELAY_SECRETS_ENV, TOKEN_ENV
from tests.support.processes import (
    command_of,
    environment_of,
    start,
    stop,
    wait_for,
    wait_for_line,
)
from tests.support.processes import dkt_command as dkt
from tests.support.relay import NUM_CLASSES, make_probe

ADMIN = "secrets-admin-token-0123456789"
AGENT = "secrets-agent-0-token-0123456"
CONDUCTOR = "secrets-conductor-token-01234"
# How their command lines name them (dkt's SuperExec wraps Flower's).
FLOWER_SERVERS = {
    "superlink": ("flower-superlink",),
    "superexec": ("dkt.flower.superexec", "flower-superexec"),
}


def _flower_servers(pids: list[int]) -> dict[str, dict[str, str]]:
    """The environment of the SuperLink and of the SuperExec among `pids`, by name."""
    found = {}
    for pid in pids:
        try:
            command, environment = command_of(pid), environment_of(pid)
        except OSError:  # gone meanwhile
            continue
        for name, spellings in FLOWER_SERVERS.items():
            if any(spelling in command for spelling in spellings) and name not in found:
                found[name] = environment
                break
    return found


def _conductor_reaches_only_its_runs(relay: str, admin: str, conductor: str) -> list[str]:
    """Create a run with each token; the conductor's SetRunState on the admin's run must
    be refused. Returns the run ids the conductor's GetStatus shows."""
    probe = make_probe()
    with RelayClient(relay, admin, timeout=20) as as_admin:
        as_admin.create_run("by-the-admin", probe, NUM_CLASSES, 2)
    with RelayClient(relay, conductor, timeout=20) as as_conductor:
        as_conductor.create_run("by-the-conductor", probe, NUM_CLASSES, 2)
        with pytest.raises(PermissionDeniedError, match="was created by the admin"):
            as_conductor.set_run_state("by-the-admin", "failed")
        return [r["run_id"] for r in as_conductor.status()["runs"]]


@pytest.mark.parametrize("in_file", [False, True], ids=["made-up", "from-the-token-file"])
def test_dkt_server_gives_its_serverapps_the_conductor_token_and_its_superlink_none(
    in_file: bool, tmp_path: Path
) -> None:
    conductor_line = f'conductor = "{CONDUCTOR}"\n' if in_file else ""
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'{conductor_line}[agents]\n0 = "{AGENT}"\n')
    marker = uuid.uuid4().hex
    superlink, relay, status = free_port(), free_port(), free_port()
    log = tmp_path / "server.log"
    # The admin token where the Compose demo's server has it: in the environment, also as
    # the token of `dkt status`.
    env = {MARKER: marker, ADMIN_TOKEN_ENV: ADMIN, TOKEN_ENV: ADMIN}
    server: subprocess.Popen | None = None
    try:
        server = start(
            dkt("server", "--insecure", "--host", "127.0.0.1", "--superlink-port",
                str(superlink), "--port", str(relay), "--status-port", str(status),
                "--data-dir", str(tmp_path / "srv"), "--token-file", str(tokens)),
            log, env,
        )  # fmt: skip
        wait_for_line(log, "server ready", server, 90)
        wait_for(
            lambda: len(_flower_servers(marked_processes(marker))) == 2,
            30,
            "the SuperLink and the SuperExec",
        )
        envs = _flower_servers(marked_processes(marker))
        conductor = envs["superexec"][TOKEN_ENV]
        seen = _conductor_reaches_only_its_runs(f"127.0.0.1:{relay}", ADMIN, conductor)
    finally:
        if server is not None:
            stop(server)

    superlink_env, superexec_env = envs["superlink"], envs["superexec"]
    assert not {*RELAY_SECRETS_ENV, TOKEN_ENV} & set(superlink_env)
    assert not set(RELAY_SECRETS_ENV) & set(superexec_env)
    assert ADMIN not in superlink_env.values() and ADMIN not in superexec_env.values()
    if in_file:
        assert conductor == CONDUCTOR
    else:
        assert len(conductor) >= 32 and conductor not in (ADMIN, AGENT, CONDUCTOR)
    assert seen == ["by-the-conductor"]


def test_a_local_cluster_gives_its_serverapps_the_conductor_token_and_its_superlink_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A relay token in the environment of `dkt run` stays out of the Flower processes.
    monkeypatch.setenv(ADMIN_TOKEN_ENV, ADMIN)
    with LocalCluster(tmp_path / "cluster", agents=0) as cluster:
        assert cluster.superlink is not None and cluster.superexec is not None
        pids = [cluster.superlink.pid, cluster.superexec.pid]
        # Until both have exec'd their command (before, /proc shows the parent's).
        wait_for(lambda: len(_flower_servers(pids)) == 2, 30, "the SuperLink and the SuperExec")
        envs = _flower_servers(pids)
        seen = _conductor_reaches_only_its_runs(
            cluster.relay_address, cluster.admin_token, cluster.conductor_token
        )

    superlink_env, superexec_env = envs["superlink"], envs["superexec"]
    assert not {*RELAY_SECRETS_ENV, TOKEN_ENV} & set(superlink_env)
    assert not set(RELAY_SECRETS_ENV) & set(superexec_env)
    assert superexec_env[TOKEN_ENV] == cluster.conductor_token
    for secret in (cluster.admin_token, ADMIN):
        assert secret not in superlink_env.values() and secret not in superexec_env.values()
    assert seen == ["by-the-conductor"]
