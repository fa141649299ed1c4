"""`dkt server` beyond loopback: without a kit (nginx, operator CA, SuperNode keys) it
refuses to start and says how; nothing is listening afterwards."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.processes import dkt_command


def test_server_beyond_loopback_without_a_kit_refuses_and_says_how(tmp_path: Path) -> None:
    done = subprocess.run(
        dkt_command("server", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "srv"),
                    "--insecure", "--port", "0", "--status-port", "0", "--superlink-port", "0"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "exposes the SuperLink beyond this host" in done.stderr
    assert "dkt keys init DIR --agents N --server-name HOST" in done.stderr
    assert "--trusted-network" in done.stderr
    assert not (tmp_path / "srv" / "superlink.db").exists()


def test_supernode_keys_without_tls_are_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "agent-0.pub").write_text("ecdsa-sha2-nistp384 AAAA x\n")
    done = subprocess.run(
        dkt_command("server", "--host", "127.0.0.1", "--data-dir", str(tmp_path / "srv"),
                    "--insecure", "--supernode-keys", str(keys)),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "SuperNode authentication (--supernode-keys) needs TLS" in done.stderr
    assert not (tmp_path / "srv" / "superlink.db").exists()
