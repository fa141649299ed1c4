"""`docker stop` sends SIGTERM: `dkt launch` must stop its Flower run as on Ctrl-C, and
`dkt agent` / `dkt server` must take their Flower processes with them."""

from __future__ import annotations

import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from dkt.flower.processes import MARKER, free_port, marked_processes
from dkt.flower.runs import connect_run
from tests.support.processes import dkt_command as dkt
from tests.support.processes import start as start_process
from tests.support.processes import wait_for_line


def start(cmd: list[str], log: Path, marker: str) -> subprocess.Popen:
    """A process marked with `marker` (inherited by all it starts, to find them after)."""
    return start_process(cmd, log, env={MARKER: marker})


@pytest.mark.slow
def test_sigterm_stops_a_launched_run_and_the_agent_and_server_leave_nothing(tmp_path: Path):
    marker = uuid.uuid4().hex  # inherited by every process started below, and theirs
    superlink, relay, status = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen] = []
    try:
        server_log = tmp_path / "server.log"
        server = start(
            dkt("server", "--insecure", "--host", "127.0.0.1", "--superlink-port",
                str(superlink), "--port", str(relay), "--status-port", str(status),
                "--data-dir", str(tmp_path / "srv")),
            server_log, marker,
        )  # fmt: skip
        procs.append(server)
        wait_for_line(server_log, "server ready", server, 90)
        agent = start(
            dkt("agent", "--server", f"127.0.0.1:{superlink}", "--relay",
                f"127.0.0.1:{relay}", "--agent-id", "0", "--port", str(free_port()),
                "--data-dir", str(tmp_path / "agent-0"), "--threads", "1"),
            tmp_path / "agent.log", marker,
        )  # fmt: skip
        procs.append(agent)
        launch_log = tmp_path / "launch.log"
        launch = start(
            dkt("launch", "--server", f"127.0.0.1:{superlink}", "--run-id", "sig",
                "--agents", "1", "--experiences", "3", "--dataset", "synthetic",
                "--probe-size", "30", "--epochs", "200", "--wait-agents", "240"),
            launch_log, marker,
        )  # fmt: skip
        procs.append(launch)
        # Stop it while the agent is training.
        wait_for_line(launch_log, "agent 0: experience 0 sent", launch, 300)
        launch.send_signal(signal.SIGTERM)
        assert launch.wait(60) == 128 + signal.SIGTERM, launch_log.read_text()[-2000:]
        text = launch_log.read_text()
        found = re.search(r"\(Flower run (\d+)\)", text)
        assert found, text
        assert f"run sig stopped (Flower run {found[1]})" in text
        assert "\x1b[" not in text  # Flower's colour codes stay out of a piped log
        run = connect_run(f"127.0.0.1:{superlink}", int(found[1]))
        try:
            assert run.status() == "finished:stopped", run.details()
        finally:
            run.close()

        # `dkt agent` and `dkt server` stop their SuperNode, SuperExec, ClientApps,
        # SuperLink and ServerApps on SIGTERM, and exit 0.
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(60) == 0, (tmp_path / "agent.log").read_text()[-2000:]
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0, server_log.read_text()[-2000:]
        deadline = time.monotonic() + 30
        while marked_processes(marker) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = marked_processes(marker)
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in left]
        assert left == [], commands
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for pid in marked_processes(marker):
            subprocess.run(["kill", "-9", str(pid)], check=False)


@pytest.mark.slow
def test_a_dkt_server_killed_with_sigkill_takes_its_superlink_and_restarts_on_its_ports(
    tmp_path: Path,
):
    """An orphaned SuperLink once kept the port, so the restarted `dkt server` failed
    ("address already in use") while the orphan took runs its dead relay could not serve."""
    marker = uuid.uuid4().hex
    superlink, relay, status = free_port(), free_port(), free_port()
    command = dkt(
        "server", "--insecure", "--host", "127.0.0.1", "--superlink-port", str(superlink),
        "--port", str(relay), "--status-port", str(status), "--data-dir", str(tmp_path / "srv"),
    )  # fmt: skip
    first_log, second_log = tmp_path / "server-1.log", tmp_path / "server-2.log"
    server = start(command, first_log, marker)
    second = None
    try:
        wait_for_line(first_log, "server ready", server, 90)
        assert len(marked_processes(marker)) >= 2  # dkt server and its SuperLink

        server.send_signal(signal.SIGKILL)
        server.wait(10)
        deadline = time.monotonic() + 20
        while marked_processes(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marked_processes(marker) == []

        second = start(command, second_log, marker)
        wait_for_line(second_log, "server ready", second, 90)
    finally:
        for proc in (second, server):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
    assert second.returncode == 0, second_log.read_text()[-2000:]
