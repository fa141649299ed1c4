"""Flower's SuperLink and SuperNode as local processes: their command lines, their
environment (the installed venv, no runtime dependency installation, no network calls),
and starting, waiting for and stopping them. Imports neither torch nor the relay."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from dkt.common.data.local_source import LocalSource

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
    host: str,
    port: int,
    database: Path,
    tls: tuple[Path, Path, Path] | None = None,
    superexec_secret: Path | None = None,
    supernode_auth: bool = False,
) -> list[str]:
    """flower-superlink on one HTTP port (Fleet, Control and Runtime APIs).
    `tls` is (CA certificate, server certificate, server key). With `superexec_secret`
    the SuperLink runs no ServerApp itself (`--isolation process`): a SuperExec holding
    the same secret (`superexec_command`) takes its tasks, and no other caller of the
    Runtime API can. `supernode_auth`: only SuperNodes whose public keys were registered
    through the Control API may join (needs `tls`)."""
    cmd = [str(BIN / "flower-superlink"), "--host", host, "--port", str(port)]
    cmd += ["--database", str(database), "--disable-runtime-dependency-installation"]
    if superexec_secret is not None:
        cmd += ["--isolation", "process", "--superexec-auth-secret-file", str(superexec_secret)]
    if supernode_auth:
        cmd.append("--enable-supernode-auth")
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


def superexec_command(runtime_api: str, secret: Path, root_cert: Path | None = None) -> list[str]:
    """The SuperExec of a SuperLink started with `superexec_secret`: it takes the
    ServerApp tasks of the Runtime API at `runtime_api` (this host) and starts a ServerApp
    process for each, signing its calls with the shared secret."""
    # Flower's SuperExec, handing each ServerApp its task token in a file rather than on
    # its command line (dkt/flower/superexec.py).
    cmd = [sys.executable, "-m", "dkt.flower.superexec", "--runtime-api-address", runtime_api]
    cmd += ["--superexec-auth-secret-file", str(secret)]
    cmd += ["--root-certificates", str(root_cert)] if root_cert else ["--insecure"]
    return cmd


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to a new file only its owner can read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    path.chmod(0o600)


def write_secret(path: Path, nbytes: int = 32) -> Path:
    """A new random secret (hex) in a file only its owner can read."""
    import secrets

    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, secrets.token_hex(nbytes).encode())
    return path


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
    auth_key: Path | None = None,
) -> list[str]:
    """The DKT agent: its long-lived worker (client/agent_worker.py), which starts a
    flower-supernode with the agent's identity in the node config and runs the ClientApp
    for each of its messages in-process; with `fresh_process`, the same worker starts a
    fresh process of the installed dkt for each message (as Flower's subprocess
    isolation does, but never running code from the run's FAB).
    `threads` > 0: the agent's torch threads; `local`: the agent's own data, read only by
    its ClientApps; `auth_key`: the SuperNode's private key (Flower's SuperNode
    authentication)."""
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
    if auth_key is not None:  # Flower's SuperNode authentication (needs root_cert)
        cmd += ["--auth-supernode-private-key", str(auth_key)]
    runtime_api = f"{'127.0.0.1' if host in ('', '0.0.0.0') else host}:{port}"
    # Only this worker may take the SuperNode's tasks: it signs AcquireTask with a secret
    # it writes afresh at every start.
    secret = str(Path(data_dir) / "superexec.secret")
    worker = [sys.executable, "-m", "dkt.client.agent_worker", "--runtime-api-address"]
    worker += [runtime_api, "--superexec-secret-file", secret]
    if fresh_process:
        worker.append("--fresh-process")
    return [*worker, "--", *cmd, "--isolation", "process", "--superexec-auth-secret-file", secret]


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
            raise RuntimeError(f"{program_of(proc)} exited with code {proc.returncode}")
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


# Sets PR_SET_PDEATHSIG in the child after the fork, then becomes the command (exec keeps
# it); a parent that died in between is noticed by the changed parent pid.
_PDEATHSIG_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(143)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def dying_with_parent(cmd: list[str]) -> list[str]:
    """`cmd`, started so that it gets SIGTERM when this process dies, even by kill -9, so
    a SuperLink or SuperNode never outlives its `dkt` command (an orphaned SuperLink kept
    its port and took runs its dead relay could not serve). Linux; start it from the main
    thread: the signal follows the thread that started the child. Safe in a process with
    threads (nothing but exec runs in the child before the launcher)."""
    if not sys.platform.startswith("linux"):
        return cmd
    return [sys.executable, "-c", _PDEATHSIG_LAUNCHER, str(os.getpid()), *cmd]


def program_of(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> str:
    """The program `proc` runs (the command's, not the launcher's of `dying_with_parent`)."""
    args = proc.args
    if isinstance(args, str | bytes | os.PathLike):
        return os.fsdecode(args)
    parts = [os.fsdecode(a) for a in args]
    if parts[1:3] == ["-c", _PDEATHSIG_LAUNCHER] and len(parts) > 4:
        return parts[4]
    return parts[0]
