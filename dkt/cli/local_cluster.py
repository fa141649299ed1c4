"""Flower SuperLink and SuperNodes as real local processes (plus an in-process relay),
started and stopped as one: what `dkt run` stands on, and the commands that
`dkt server` and `dkt agent` run."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from dkt.common.data.local_source import LocalSource
from dkt.common.threads import resolve_threads, thread_env
from dkt.proto.relay_connection import TOKEN_ENV
from dkt.server.relay.auth import TokenTable
from dkt.server.relay.server import RelayConfig, RelayServer

MARKER = "DKT_CLUSTER"  # inherited by every process a cluster starts, to find them all
BIN = Path(sys.executable).parent


def flower_env(flwr_home: Path, **extra: str) -> dict[str, str]:
    """The environment of Flower processes: the installed venv on PATH (Flower starts
    its helpers by bare name), no runtime dependency installation, no network calls."""
    env = dict(os.environ)
    env.update(
        {
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "FLWR_HOME": str(flwr_home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
    )
    return env


def superlink_command(
    host: str, port: int, database: Path, tls: tuple[Path, Path, Path] | None = None
) -> list[str]:
    """flower-superlink on one HTTP port (Fleet, Control and ServerAppIo APIs).
    `tls` is (CA certificate, server certificate, server key)."""
    cmd = [str(BIN / "flower-superlink"), "--host", host, "--port", str(port)]
    cmd += ["--database", str(database), "--disable-runtime-dependency-installation"]
    if tls is None:
        cmd.append("--insecure")
    else:
        ca, cert, key = tls
        cmd += [
            "--ssl-ca-certfile",
            str(ca),
            "--ssl-certfile",
            str(cert),
            "--ssl-keyfile",
            str(key),
        ]
    return cmd


def supernode_command(
    superlink: str,
    port: int,
    agent_id: int,
    data_dir: Path,
    relay: str,
    device: str = "cpu",
    host: str = "127.0.0.1",
    root_cert: Path | None = None,
    threads: int = 0,
    local: LocalSource | None = None,
    fresh_process: bool = False,
) -> list[str]:
    """The DKT agent: its long-lived worker (client/agent_worker.py), which starts a
    flower-supernode with the agent's identity in the node config and runs the ClientApp
    for each of its messages in-process; with `fresh_process`, a plain flower-supernode
    that starts a ClientApp process per message (Flower's subprocess isolation).
    `threads` > 0: the agent's torch threads; `local`: the agent's own data, read only by
    its ClientApps."""
    node_config = f"agent-id={agent_id} data-dir='{data_dir}' relay='{relay}' device='{device}'"
    if threads > 0:
        node_config += f" threads={threads}"
    if local is not None:
        for key, path in (("local-data", local.path), ("manifest", local.manifest)):
            if path is not None:
                if "'" in str(path):
                    raise ValueError(f"{key} path {path} contains a quote (')")
                node_config += f" {key}='{Path(path).resolve()}'"
    cmd = [str(BIN / "flower-supernode"), "--superlink", superlink]
    cmd += ["--host", host, "--port", str(port), "--node-config", node_config]
    cmd += ["--max-wait-time", "600"]
    cmd += ["--root-certificates", str(root_cert)] if root_cert else ["--insecure"]
    if fresh_process:
        return cmd
    runtime_api = f"{'127.0.0.1' if host in ('', '0.0.0.0') else host}:{port}"
    worker = [sys.executable, "-m", "dkt.client.agent_worker", "--runtime-api-address"]
    return [*worker, runtime_api, "--", *cmd, "--isolation", "process"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_http_ok(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers 200; fail early if `proc` exits. An https URL is
    checked for liveness only (the certificate is not verified)."""
    context = ssl._create_unverified_context() if url.startswith("https") else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def stop_process(proc: subprocess.Popen, grace: float = 10.0, signalled: bool = False) -> None:
    """SIGTERM (unless `signalled` already), wait, SIGKILL; then the same for what is
    left of its process group (a SuperNode's SuperExec and ClientApps)."""
    if proc.poll() is None:
        if not signalled:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)


def marked_processes(marker: str) -> list[int]:
    """Live processes whose environment carries `MARKER=marker` (zombies excluded)."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if needle not in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                continue
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(") ", 1)[1][0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            found.append(int(entry))
    return found


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
        self.agent_tokens = {a: secrets.token_urlsafe(24) for a in range(agents)}
        self.relay: RelayServer | None = None
        self.superlink: subprocess.Popen | None = None
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
                cmd,
                env={**env, MARKER: self.marker},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=True,  # own process group, so Ctrl-C reaches only us
            )

    def start(self, timeout: float = 60.0) -> LocalCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        tokens = TokenTable(admin=self.admin_token, agents=self.agent_tokens)
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
        env = flower_env(home, **{TOKEN_ENV: self.admin_token})
        self.superlink = self._spawn(
            superlink_command("127.0.0.1", self.superlink_port, self.workdir / "superlink.db"),
            "superlink.log",
            env,
        )
        wait_http_ok(f"http://{self.superlink_address}/health", timeout, self.superlink)
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
        if self.superlink is not None:
            stop_process(self.superlink)
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
