"""`dkt server --ready-file`: written once the relay and the SuperLink both serve."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from dkt.flower.processes import free_port
from tests.support.processes import dkt_command, start, stop


@pytest.mark.slow
def test_server_writes_its_ready_file_with_the_ports_once_up(tmp_path: Path):
    superlink, relay, status = free_port(), free_port(), free_port()
    ready = tmp_path / "ready.json"
    log = tmp_path / "server.log"
    server = start(
        dkt_command("server", "--insecure", "--host", "127.0.0.1", "--superlink-port",
                    str(superlink), "--port", str(relay), "--status-port", str(status),
                    "--data-dir", str(tmp_path / "srv"), "--ready-file", str(ready)),
        log,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not ready.exists() and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ready.exists(), log.read_text()[-2000:]
        assert "server ready" in log.read_text()  # written after the SuperLink is up
        assert json.loads(ready.read_text()) == {
            "port": relay,
            "status_port": status,
            "superlink_port": superlink,
            "pid": server.pid,
        }
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
    finally:
        stop(server)
