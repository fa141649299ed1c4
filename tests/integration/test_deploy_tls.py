"""`dkt server`, `dkt agent` and `dkt launch` as separate processes with TLS and tokens:
the SuperLink and the relay both serve certificates the test generates."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from dkt.flower.processes import free_port
from tests.support.processes import dkt_command as dkt
from tests.support.processes import start, stop, wait_for_line
from tests.support.relay import TlsMaterial

ADMIN = "tls-admin-token-0123456789"
AGENT_TOKENS = {0: "tls-agent0-token-012345678", 1: "tls-agent1-token-012345678"}


@pytest.mark.slow
def test_a_run_over_tls_with_tokens_completes(tmp_path: Path):
    tls = TlsMaterial.generate()
    (tmp_path / "ca.pem").write_bytes(tls.ca_cert)
    (tmp_path / "server.pem").write_bytes(tls.server_cert)
    (tmp_path / "server-key.pem").write_bytes(tls.server_key)
    (tmp_path / "tokens.toml").write_text(
        f'admin = "{ADMIN}"\n[agents]\n'
        + "".join(f'{a} = "{t}"\n' for a, t in AGENT_TOKENS.items())
    )
    superlink, relay, status = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen] = []
    try:
        server_log = tmp_path / "server.log"
        procs.append(
            start(
                dkt(
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--superlink-port",
                    str(superlink),
                    "--port",
                    str(relay),
                    "--status-port",
                    str(status),
                    "--data-dir",
                    str(tmp_path / "srv"),
                    "--token-file",
                    str(tmp_path / "tokens.toml"),
                    "--tls-cert",
                    str(tmp_path / "server.pem"),
                    "--tls-key",
                    str(tmp_path / "server-key.pem"),
                    "--tls-ca",
                    str(tmp_path / "ca.pem"),
                ),
                server_log,
            )  # fmt: skip
        )
        wait_for_line(server_log, "server ready", procs[0], 60)
        assert f"status https://127.0.0.1:{status}/status" in server_log.read_text()
        for a, token in AGENT_TOKENS.items():
            procs.append(
                start(
                    dkt(
                        "agent",
                        "--server",
                        f"127.0.0.1:{superlink}",
                        "--relay",
                        f"127.0.0.1:{relay}",
                        "--agent-id",
                        str(a),
                        "--port",
                        str(free_port()),
                        "--data-dir",
                        str(tmp_path / f"agent-{a}"),
                        "--root-cert",
                        str(tmp_path / "ca.pem"),
                    ),
                    tmp_path / f"agent-{a}.log",
                    env={"DKT_RELAY_TOKEN": token},
                )  # fmt: skip
            )
        common = [
            "--server", f"127.0.0.1:{superlink}", "--agents", "2", "--experiences", "2",
            "--dataset", "synthetic", "--probe-size", "30", "--wait-agents", "60",
        ]  # fmt: skip

        # Without the CA, the launcher cannot even reach the SuperLink.
        refused = subprocess.run(dkt("launch", *common, "--run-id", "plain"),
                                 capture_output=True, text=True, timeout=120)  # fmt: skip
        assert refused.returncode != 0

        launch = subprocess.run(
            dkt("launch", *common, "--run-id", "tls", "--root-cert", str(tmp_path / "ca.pem")),
            capture_output=True, text=True, timeout=400,
        )  # fmt: skip
        assert launch.returncode == 0, launch.stdout[-3000:] + launch.stderr[-3000:]
        # The launcher ends with the summary table, as `dkt run` does, and where it is.
        assert "DKT results (accuracies in %)" in launch.stdout
        assert f"results: {tmp_path / 'srv/results/tls'} on the server host" in launch.stdout
        assert "dkt-summary" not in launch.stdout  # the machine-readable line is not echoed
        metrics = json.loads((tmp_path / "srv/results/tls/metrics.json").read_text())
        assert metrics["missing_agents"] == []
        assert [len(metrics["agents"][a]["experiences"]) for a in ("0", "1")] == [2, 2]
        assert not (tmp_path / "srv/results/plain").exists()
    finally:
        for proc in reversed(procs):
            stop(proc)
