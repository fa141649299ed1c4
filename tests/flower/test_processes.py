"""Specification of Flower's processes (dkt/flower/processes.py), with real child processes
and a real HTTP server: `free_port` gives a port that can be bound; `wait_http_ok` returns
once the URL answers 200, raises RuntimeError naming the program when the watched process
has exited and TimeoutError when nothing answers 200 in time; `stop_process` stops a child
with SIGTERM (SIGKILL after its grace) and then SIGTERMs what is left of its process group;
`flower_env` puts the venv's bin first on PATH and turns off runtime dependency
installation; `marked_processes` finds the live processes of a cluster; and the SuperLink's
and SuperNode's command lines."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dkt.common.data.local_source import LocalSource
from dkt.flower.processes import (
    MARKER,
    flower_env,
    free_port,
    marked_processes,
    stop_process,
    superlink_command,
    supernode_command,
    wait_http_ok,
)

BIN = str(Path(sys.executable).parent)
SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen]]:
    """Processes a test starts; killed (with their groups) and reaped afterwards."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def spawn(children: list[subprocess.Popen], cmd: list[str], **kwargs: object) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)  # type: ignore[call-overload]
    children.append(proc)
    return proc


def http_server(status: int) -> Iterator[str]:
    class Answer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/health"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def ok_url() -> Iterator[str]:
    yield from http_server(200)


@pytest.fixture
def unavailable_url() -> Iterator[str]:
    yield from http_server(503)


def gone(pid: int, timeout: float) -> bool:
    """Whether `pid` has ended (or is a zombie) within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
        except (OSError, IndexError):
            return True
        if state == "Z":
            return True
        time.sleep(0.02)
    return False


# --- free_port ------------------------------------------------------------------------------


def test_free_port_can_be_bound() -> None:
    port = free_port()

    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        assert s.getsockname() == ("127.0.0.1", port)
    assert 1024 <= port <= 65535


# --- wait_http_ok ---------------------------------------------------------------------------


def test_wait_http_ok_returns_once_the_url_answers_200(ok_url: str) -> None:
    assert wait_http_ok(ok_url, timeout=5) is None


def test_wait_http_ok_raises_naming_the_program_when_the_process_has_exited(
    children: list[subprocess.Popen],
) -> None:
    proc = spawn(children, [sys.executable, "-c", "import sys; sys.exit(3)"])
    proc.wait()

    with pytest.raises(RuntimeError) as caught:
        wait_http_ok(f"http://127.0.0.1:{free_port()}/health", timeout=5, proc=proc)

    assert str(caught.value) == f"{sys.executable} exited with code 3"


def test_wait_http_ok_times_out_when_nothing_answers() -> None:
    url = f"http://127.0.0.1:{free_port()}/health"
    start = time.monotonic()

    with pytest.raises(TimeoutError, match=rf"^{re.escape(url)} did not answer within \d+ s$"):
        wait_http_ok(url, timeout=0.5)

    assert 0.5 <= time.monotonic() - start < 2.5


def test_wait_http_ok_keeps_waiting_while_the_url_answers_an_error(unavailable_url: str) -> None:
    with pytest.raises(TimeoutError, match=re.escape(f"{unavailable_url} did not answer")):
        wait_http_ok(unavailable_url, timeout=0.5)


# --- stop_process ---------------------------------------------------------------------------


def test_stop_process_stops_a_sleeping_child_with_sigterm_within_its_grace(
    children: list[subprocess.Popen],
) -> None:
    proc = spawn(children, SLEEP)
    start = time.monotonic()

    assert stop_process(proc, grace=5) is None

    assert proc.returncode == -signal.SIGTERM
    assert time.monotonic() - start < 5


def test_stop_process_kills_a_child_that_ignores_sigterm_after_its_grace(
    children: list[subprocess.Popen],
) -> None:
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    stubborn += "print('ready', flush=True); time.sleep(60)"
    proc = spawn(children, [sys.executable, "-c", stubborn], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    start = time.monotonic()

    stop_process(proc, grace=0.3)

    assert proc.returncode == -signal.SIGKILL
    assert 0.3 <= time.monotonic() - start < 5


def test_stop_process_of_an_already_signalled_child_sends_no_second_sigterm(
    children: list[subprocess.Popen],
) -> None:
    proc = spawn(children, SLEEP)

    stop_process(proc, grace=0.3, signalled=True)

    assert proc.returncode == -signal.SIGKILL


def test_stop_process_of_an_exited_child_returns_at_once(
    children: list[subprocess.Popen],
) -> None:
    proc = spawn(children, [sys.executable, "-c", "import sys; sys.exit(4)"])
    proc.wait()

    stop_process(proc, grace=5)

    assert proc.returncode == 4


def test_stop_process_sigterms_what_is_left_of_the_process_group(
    children: list[subprocess.Popen],
) -> None:
    parent = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print(child.pid, flush=True); time.sleep(60)"
    )
    proc = spawn(children, [sys.executable, "-c", parent], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    grandchild = int(proc.stdout.readline())

    stop_process(proc, grace=5)

    ended = gone(grandchild, timeout=5)
    if not ended:
        os.kill(grandchild, signal.SIGKILL)
    assert proc.returncode == -signal.SIGTERM
    assert ended


# --- flower_env -----------------------------------------------------------------------------


def test_flower_env_puts_the_venv_first_and_disables_dependency_installation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("DKT_TEST_INHERITED", "kept")

    env = flower_env(tmp_path / "flwr", DKT_RELAY_ADDRESS="h:1")

    assert env["PATH"] == f"{BIN}{os.pathsep}/usr/bin:/bin"
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    assert env["FLWR_HOME"] == str(tmp_path / "flwr")
    assert env["DKT_TEST_INHERITED"] == "kept"
    assert env["DKT_RELAY_ADDRESS"] == "h:1"
    assert "DKT_RELAY_ADDRESS" not in os.environ


def test_flower_env_turns_off_flowers_network_calls(tmp_path: Path) -> None:
    env = flower_env(tmp_path)

    assert (env["FLWR_DISABLE_UPDATE_CHECK"], env["FLWR_TELEMETRY_ENABLED"]) == ("1", "0")


# --- marked_processes -----------------------------------------------------------------------


def test_marked_processes_finds_the_live_processes_carrying_the_marker(
    children: list[subprocess.Popen],
) -> None:
    marker = uuid.uuid4().hex
    proc = spawn(children, SLEEP, env={**os.environ, MARKER: marker})
    spawn(children, SLEEP, env={**os.environ, MARKER: marker + "-other"})

    assert marked_processes(marker) == [proc.pid]
    proc.kill()
    assert gone(proc.pid, timeout=5)
    assert marked_processes(marker) == []


# --- command lines --------------------------------------------------------------------------


def test_superlink_command_without_tls_is_insecure(tmp_path: Path) -> None:
    assert superlink_command("0.0.0.0", 9092, tmp_path / "state.db") == [
        f"{BIN}/flower-superlink", "--host", "0.0.0.0", "--port", "9092",
        "--database", str(tmp_path / "state.db"), "--disable-runtime-dependency-installation",
        "--insecure",
    ]  # fmt: skip


def test_superlink_command_with_tls_names_ca_certificate_and_key(tmp_path: Path) -> None:
    tls = (Path("ca.pem"), Path("server.pem"), Path("server.key"))

    cmd = superlink_command("127.0.0.1", 9092, tmp_path / "db", tls=tls)

    assert "--insecure" not in cmd
    assert cmd[-6:] == [
        "--ssl-ca-certfile", "ca.pem",
        "--ssl-certfile", "server.pem",
        "--ssl-keyfile", "server.key",
    ]  # fmt: skip


def test_supernode_command_runs_the_agent_worker_around_a_supernode(tmp_path: Path) -> None:
    cmd = supernode_command("link:9092", 9100, 3, tmp_path, "relay:50070", threads=2)

    node_config = f"agent-id=3 data-dir='{tmp_path}' relay='relay:50070' device='cpu' threads=2"
    secret = str(tmp_path / "superexec.secret")
    assert cmd == [
        sys.executable, "-m", "dkt.client.agent_worker", "--runtime-api-address",
        "127.0.0.1:9100", "--superexec-secret-file", secret,
        "--", f"{BIN}/flower-supernode", "--superlink", "link:9092",
        "--host", "127.0.0.1", "--port", "9100", "--node-config", node_config,
        "--max-wait-time", "600", "--insecure", "--isolation", "process",
        # Only the worker, which holds the same secret, may take the SuperNode's tasks.
        "--superexec-auth-secret-file", secret,
    ]  # fmt: skip


def test_supernode_command_with_fresh_process_is_the_worker_with_a_process_per_task(
    tmp_path: Path,
) -> None:
    local = LocalSource(tmp_path / "site.npz", tmp_path / "plan.toml")

    cmd = supernode_command(
        "link:9092", 9100, 0, tmp_path, "r:1", host="0.0.0.0", root_cert=Path("ca.pem"),
        local=local, fresh_process=True, auth_key=Path("node.key"),
    )  # fmt: skip

    # Never a plain SuperNode: its flwr-clientapp would run code from the run's FAB.
    assert cmd[:3] == [sys.executable, "-m", "dkt.client.agent_worker"]
    worker = cmd[: cmd.index("--")]
    assert "--fresh-process" in worker
    supernode = cmd[cmd.index("--") + 1 :]
    assert supernode[0] == f"{BIN}/flower-supernode"
    assert supernode[supernode.index("--node-config") + 1] == (
        f"agent-id=0 data-dir='{tmp_path}' relay='r:1' device='cpu' "
        f"local-data='{tmp_path / 'site.npz'}' manifest='{tmp_path / 'plan.toml'}'"
    )
    assert supernode[supernode.index("--root-certificates") + 1] == "ca.pem"
    assert supernode[supernode.index("--auth-supernode-private-key") + 1] == "node.key"
    assert supernode[supernode.index("--isolation") + 1] == "process"


def test_supernode_command_rejects_a_local_data_path_with_a_quote(tmp_path: Path) -> None:
    local = LocalSource(tmp_path / "it's.npz")

    with pytest.raises(ValueError, match=re.escape(f"local-data path {local.path} contains a")):
        supernode_command("link:9092", 9100, 0, tmp_path, "r:1", local=local)
