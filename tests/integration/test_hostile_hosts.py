"""Hostile agent hosts against a deployment made the documented way: `dkt keys init`
kits, `dkt server --keys` (nginx in front of the SuperLink, Flower's SuperNode
authentication, the SuperExec secret, TLS), `dkt agent --keys` and `dkt launch --keys`,
each in a network namespace of its own (separate hosts, joined by a bridge).

From an agent host, an attacker who holds that host's kit (its relay token, its
SuperNode key, the CA) but no operator certificate tries:
- to submit a foreign FAB (`StartRun`), to list and unregister nodes and to read run
  logs through the Control API: nginx answers 403;
- to take the SuperLink's ServerApp tasks through the Runtime API: not served (404)
  beyond the server host; on the server host's loopback, without the SuperExec secret,
  Flower answers 401;
- to join with a SuperNode whose key was never registered: the SuperLink refuses it;
- after the run, to use agent 0's credential of that run in another run (list, fetch,
  publish) or to send its raw token: PERMISSION_DENIED / UNAUTHENTICATED over TLS,
  nothing stored.

The operator's run finishes with no agent missing and the numbers of `dkt simulate`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dkt.common.engine.simulation import simulate
from dkt.common.evaluation.results import ExperienceRecord
from dkt.common.run.config import ExperimentConfig
from tests.integration.test_multihost import SERVER_IP, Hosts, hosts  # noqa: F401 (fixture)
from tests.support.experiments import numbers
from tests.support.processes import start, stop, wait_for_line

CONFIG = ExperimentConfig(dataset="synthetic", agents=2, experiences=2, probe_size=30)

# Calls to the gateway from a host, with the given client certificate (or none); prints
# the HTTP status and the first line of the body.
_POST = """
import ssl, sys, urllib.request, urllib.error
ctx = ssl.create_default_context(cafile=sys.argv[2])
if len(sys.argv) > 4:
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
req = urllib.request.Request(sys.argv[1], data=b"", method="POST",
                             headers={"Content-Type": "application/protobuf"})
try:
    with urllib.request.urlopen(req, context=ctx, timeout=20) as r:
        print(r.status, r.read()[:100])
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode(errors="replace").splitlines()[0])
"""


# From an agent host, over TLS: agent 0's credential of run "honest" in run "other".
_CROSS_RUN = """
import sys, torch
from pathlib import Path
from dkt.common.data.probe import ProbeSet
from dkt.common.training.predictions import Predictions
from dkt.proto.relay_client import RelayClient, PermissionDeniedError, UnauthenticatedError
from dkt.proto.run_credential import run_credential
relay, kits = sys.argv[1], Path(sys.argv[2])
ca = (kits / "agent-0" / "ca.pem").read_bytes()
token = (kits / "agent-0" / "token").read_text().strip()
admin = (kits / "operator" / "admin.token").read_text().strip()
probe = ProbeSet.from_inputs(torch.zeros(30, 1, 8, 8), "test")
with RelayClient(relay, admin, root_cert=ca, retries=1) as client:
    client.create_run("other", probe, 10, 2, config={}, expected_agents=2)
stolen = run_credential(token, 0, "honest")
with RelayClient(relay, stolen, root_cert=ca, retries=1) as client:
    assert len(client.list_predictions("honest", agent_id=0)) == 2  # its own run: fine
    for name, call in [
        ("list", lambda: client.list_predictions("other")),
        ("publish", lambda: client.publish(Predictions(0, 0, (0,), probe.fingerprint,
                                                       torch.zeros(30, 10), run_id="other"))),
    ]:
        try:
            call()
        except PermissionDeniedError as err:
            print(name, "PERMISSION_DENIED", err.details)
with RelayClient(relay, token, root_cert=ca, retries=1) as client:
    try:
        client.list_predictions("honest")
    except UnauthenticatedError:
        print("raw token UNAUTHENTICATED")
with RelayClient(relay, admin, root_cert=ca, retries=1) as client:
    print("stored in other:", len(client.list_predictions("other")))
"""


@pytest.mark.slow
def test_an_agent_host_cannot_launch_steal_tasks_or_join_unregistered(
    hosts: Hosts,  # noqa: F811
    tmp_path: Path,
) -> None:
    py = sys.executable
    kits = tmp_path / "kits"
    made = subprocess.run(
        [py, "-m", "dkt", "keys", "init", str(kits), "--agents", "2", "--server-name", SERVER_IP],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "kits/server" in made.stdout
    attacker = hosts.agents[0]  # an agent host: its kit, no operator certificate
    ca = str(kits / "agent-0" / "ca.pem")
    procs: list[subprocess.Popen] = []
    try:
        server_log = tmp_path / "server.log"
        procs.append(
            start(
                hosts.exec(
                    hosts.server,
                    py,
                    "-m",
                    "dkt",
                    "server",
                    "--host",
                    SERVER_IP,
                    "--data-dir",
                    str(tmp_path / "srv"),
                    "--keys",
                    str(kits / "server"),
                ),
                server_log,
            )  # fmt: skip
        )
        wait_for_line(server_log, "server ready", procs[0], 90)
        assert "SuperNode authentication on: 2 agent keys" in server_log.read_text()
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
                        "--keys",
                        str(kits / f"agent-{i}"),
                    ),
                    tmp_path / f"agent-{i}.log",
                )  # fmt: skip
            )

        def post(host: str, path: str, *cert: str) -> str:
            cmd = hosts.exec(host, py, "-c", _POST, f"https://{SERVER_IP}:8000{path}", ca, *cert)
            return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout

        # The Control API from an agent host: nothing without an operator certificate.
        for call in ("start-run", "list-nodes", "unregister-node", "stream-logs", "stop-run"):
            answer = post(attacker, f"/v1/control/{call}")
            assert answer.startswith("403 the Control API needs an operator's client"), answer
        # An agent's own kit holds no operator certificate; a self-made one is refused
        # by the gateway's CA check (TLS handshake or 403).
        foreign = subprocess.run(
            hosts.exec(attacker, py, "-m", "dkt", "launch", "--server", SERVER_IP,
                       "--root-cert", ca, "--agents", "2", "--dataset", "synthetic"),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert foreign.returncode != 0
        assert "403" in foreign.stderr, foreign.stderr[-2000:]
        # The Runtime API is not served beyond the server host...
        answer = post(attacker, "/v1/runtime/acquire-task")
        assert answer.startswith("404"), answer
        # ... and on the server host's loopback a caller without the SuperExec secret gets
        # no task.
        ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
        link_port = re.search(rf"flower-superlink --host 127.0.0.1 --port (\d+).*{tmp_path}", ps)
        assert link_port is not None, ps
        theft = subprocess.run(
            hosts.exec(hosts.server, py, "-c", _POST,
                       f"https://127.0.0.1:{link_port.group(1)}/v1/runtime/acquire-task", ca),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert theft.stdout.startswith("401"), theft.stdout + theft.stderr

        # A SuperNode whose key was never registered (an attacker's own kit).
        other = tmp_path / "other-kits"
        subprocess.run([py, "-m", "dkt", "keys", "init", str(other), "--agents", "1",
                        "--server-name", SERVER_IP], capture_output=True, check=True)  # fmt: skip
        rogue_log = tmp_path / "rogue.log"
        rogue = start(
            hosts.exec(attacker, py, "-m", "dkt", "agent", "--server", SERVER_IP,
                       "--agent-id", "0", "--data-dir", str(tmp_path / "rogue"), "--port", "9190",
                       "--root-cert", ca, "--auth-key", str(other / "agent-0" / "supernode.key"),
                       "--token", "not-the-token-of-agent-0"),
            rogue_log,
        )  # fmt: skip
        assert rogue.wait(120) != 0
        assert "the SuperNode exited" in rogue_log.read_text(errors="replace")

        # The operator's run, from the other agent host with the operator kit.
        launch = subprocess.run(
            hosts.exec(hosts.agents[1], py, "-m", "dkt", "launch", "--server", SERVER_IP,
                       "--keys", str(kits / "operator"), "--run-id", "honest",
                       "--dataset", "synthetic", "--agents", "2", "--experiences", "2",
                       "--probe-size", "30", "--wait-agents", "90"),
            capture_output=True, text=True, timeout=400,
        )  # fmt: skip
        assert launch.returncode == 0, launch.stdout[-3000:] + launch.stderr[-3000:]

        cross = subprocess.run(
            hosts.exec(attacker, py, "-c", _CROSS_RUN, f"{SERVER_IP}:7470", str(kits)),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert cross.returncode == 0, cross.stderr[-3000:]
        lines = cross.stdout.splitlines()
        assert lines[0].startswith("list PERMISSION_DENIED the credential of agent 0 is for run")
        assert lines[1].startswith("publish PERMISSION_DENIED")
        assert lines[2:] == ["raw token UNAUTHENTICATED", "stored in other: 0"]
    finally:
        for proc in reversed(procs):
            stop(proc)

    metrics = json.loads((tmp_path / "srv/results/honest/metrics.json").read_text())
    assert metrics["missing_agents"] == []
    expected = simulate(CONFIG)
    for a in range(CONFIG.agents):
        got = [ExperienceRecord(**r) for r in metrics["agents"][str(a)]["experiences"]]
        for g, w in zip(numbers(got), numbers(expected.histories[a]), strict=True):
            assert g["acc_cl"] == pytest.approx(w["acc_cl"], abs=1e-6)
            assert g["acc_st"] == pytest.approx(w["acc_st"], abs=1e-6)
    # The gateway's access log shows the refusals, and no Control API call got through
    # without a certificate.
    access = (tmp_path / "srv/gateway/access.log").read_text()
    assert '"POST /v1/control/start-run HTTP/1.1" 403' in access
    assert '"POST /v1/control/start-run HTTP/1.1" 200' in access  # the operator's
