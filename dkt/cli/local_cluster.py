"""Flower SuperLink and SuperNodes as real local processes (plus an in-process relay),
started and stopped as one: what `dkt run` stands on, and the commands that
`dkt server` and `dkt agent` run."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
import uuid
from pathlib import Path

from dkt.common.data.local_source import LocalSource
from dkt.common.threads import resolve_threads, thread_env
from dkt.flower.processes import (
    MARKER,
    dying_with_parent,
    flower_env,
    free_port,
    marked_processes,
    stop_process,
    superexec_command,
    superlink_command,
    supernode_command,
    wait_http_ok,
    write_secret,
)
from dkt.proto.relay_connection import TOKEN_ENV, without_relay_secrets
from dkt.server.relay.auth import TokenTable
from dkt.server.relay.server import RelayConfig, RelayServer


class LocalCluster:
    """A relay, a SuperLink and N SuperNodes (one per agent) on loopback."""

    def __init__(
        self,
        workdir: Path,
        agents: int,
        device: str = "cpu",
        threads: int | None = None,
        local: dict[int, LocalSource] | None = None,
        fresh_process: bool = False,
    ) -> None:
        self.workdir = workdir.resolve()
        self.fresh_process = fresh_process  # Flower's per-message ClientApp processes
        self.local = dict(local or {})  # agents with their own data
        self.agents = agents
        self.device = device
        # Each agent's share of this host's cores: N agents with torch's default (one
        # thread per core each) oversubscribe the CPU and run several times slower.
        self.threads = resolve_threads(threads, agents)
        self.marker = uuid.uuid4().hex
        self.admin_token = secrets.token_urlsafe(24)
        # What the ServerApps hold: it reaches only the runs they create.
        self.conductor_token = secrets.token_urlsafe(24)
        self.agent_tokens = {a: secrets.token_urlsafe(24) for a in range(agents)}
        self.relay: RelayServer | None = None
        self.superlink: subprocess.Popen | None = None
        self.superexec: subprocess.Popen | None = None
        self.supernodes: dict[int, subprocess.Popen] = {}
        self.superlink_port = free_port()
        self.node_ports = {a: free_port() for a in range(agents)}
        self.logs = self.workdir / "logs"

    @property
    def superlink_address(self) -> str:
        return f"127.0.0.1:{self.superlink_port}"

    @property
    def relay_address(self) -> str:
        assert self.relay is not None
        return self.relay.address

    def agent_dir(self, agent_id: int) -> Path:
        return self.workdir / "agents" / f"agent-{agent_id}"

    def _spawn(self, cmd: list[str], log_name: str, env: dict[str, str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / log_name, "ab") as log:
            return subprocess.Popen(
                dying_with_parent(cmd),  # gone with us, even after kill -9
                env={**env, MARKER: self.marker},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=True,  # own process group, so Ctrl-C reaches only us
            )

    def start(self, timeout: float = 60.0) -> LocalCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        tokens = TokenTable(self.admin_token, self.agent_tokens, self.conductor_token)
        # Loopback only, with tokens; plaintext is fine for a one-machine cluster.
        self.relay = RelayServer(
            RelayConfig(
                data_dir=self.workdir / "relay",
                port=0,
                status_port=0,
                tokens=tokens,
                insecure=True,
            )
        ).start()
        home = self.workdir / "flwr-home"
        home.mkdir(exist_ok=True)
        # Only our SuperExec may take the SuperLink's ServerApp tasks (the Runtime API
        # answers AcquireTask only to calls signed with this secret), and only it and
        # the ServerApps it starts hold the conductor's relay token: the SuperLink gets
        # none.
        secret = write_secret(self.workdir / "superexec.secret")
        self.superlink = self._spawn(
            superlink_command(
                "127.0.0.1", self.superlink_port, self.workdir / "superlink.db",
                superexec_secret=secret,
            ),
            "superlink.log",
            without_relay_secrets(flower_env(home), TOKEN_ENV),
        )  # fmt: skip
        wait_http_ok(f"http://{self.superlink_address}/health", timeout, self.superlink)
        self.superexec = self._spawn(
            superexec_command(self.superlink_address, secret),
            "superexec.log",
            without_relay_secrets(flower_env(home, **{TOKEN_ENV: self.conductor_token})),
        )
        for agent_id in range(self.agents):
            self.start_agent(agent_id)
        return self

    def start_agent(self, agent_id: int) -> subprocess.Popen:
        """Start (or restart) the SuperNode of one agent."""
        env = flower_env(
            self.workdir / "flwr-home",
            **{TOKEN_ENV: self.agent_tokens[agent_id]},
            **thread_env(self.threads),
        )
        cmd = supernode_command(
            self.superlink_address,
            self.node_ports[agent_id],
            agent_id,
            self.agent_dir(agent_id),
            self.relay_address,
            self.device,
            threads=self.threads,
            local=self.local.get(agent_id),
            fresh_process=self.fresh_process,
        )
        proc = self._spawn(cmd, f"agent-{agent_id}.log", env)
        self.supernodes[agent_id] = proc
        return proc

    def kill_agent(self, agent_id: int) -> None:
        """kill -9 an agent's worker, SuperNode and everything in its process group."""
        proc = self.supernodes[agent_id]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def shutdown(self, grace: float = 15.0) -> list[int]:
        """Stop everything; returns the pids that had to be killed at the end."""
        # Every SuperNode is told at once: each takes seconds to stop.
        signalled = [p for p in self.supernodes.values() if p.poll() is None]
        for proc in signalled:
            proc.send_signal(signal.SIGTERM)
        for proc in self.supernodes.values():
            stop_process(proc, signalled=proc in signalled)
        for server_process in (self.superexec, self.superlink):
            if server_process is not None:
                stop_process(server_process)
        deadline = time.monotonic() + grace
        while (left := marked_processes(self.marker)) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.relay is not None:
            self.relay.stop()
            self.relay = None
        return left

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
