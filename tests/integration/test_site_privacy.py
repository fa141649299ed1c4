"""Nothing identifying leaves a site, end to end: a site whose folder holds a corrupt
image at `digit-7/patient-4711-jane-doe-positive.png` joins a real deployment (`dkt
server`, `dkt agent --data`, `dkt launch`). Its agent fails on that file; the file name
and its place in the site's class folders are then found in the agent's own log and
nowhere outside the site: not in the SuperLink's database, the server's logs, the
relay's store, the results folder or what `dkt launch` printed."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import dkt_command, start, stop, wait_for_line
from tests.support.sites import write_sites

REVEALING = ("patient-4711", "jane-doe", "digit-7/patient")


def _found(path: Path) -> list[str]:
    """Files under `path` (or `path` itself) that hold any revealing string."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    hits = []
    for file in files:
        data = file.read_bytes()
        if any(word.encode() in data for word in REVEALING):
            hits.append(str(file))
    return hits


@pytest.mark.slow
def test_a_corrupt_revealingly_named_file_is_named_only_at_its_site(tmp_path: Path) -> None:
    from dkt.flower.processes import free_port

    sites = write_sites(tmp_path / "sites")
    bad = sites.site1 / "digit-7" / "patient-4711-jane-doe-positive.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    superlink, relay, status = free_port(), free_port(), free_port()
    server_dir, agents_dir = tmp_path / "server", tmp_path / "agents"
    agents_dir.mkdir()
    procs: list[subprocess.Popen] = []
    try:
        server_log = tmp_path / "server.log"
        procs.append(
            start(
                dkt_command(
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--insecure",
                    "--superlink-port",
                    str(superlink),
                    "--port",
                    str(relay),
                    "--status-port",
                    str(status),
                    "--data-dir",
                    str(server_dir),
                    "--classes",
                    str(sites.classes_file),
                    "--input-shape",
                    "1,8,8",
                    "--probe-from",
                    str(sites.probe),
                    "--eval-from",
                    str(sites.eval_set),
                ),
                server_log,
            )  # fmt: skip
        )
        wait_for_line(server_log, "server ready", procs[0], 90)
        for agent, site in ((0, sites.site0), (1, sites.site1)):
            procs.append(
                start(
                    dkt_command(
                        "agent",
                        "--server",
                        f"127.0.0.1:{superlink}",
                        "--relay",
                        f"127.0.0.1:{relay}",
                        "--agent-id",
                        str(agent),
                        "--port",
                        str(free_port()),
                        "--data",
                        str(site),
                        "--data-dir",
                        str(agents_dir / f"agent-{agent}"),
                        "--threads",
                        "1",
                    ),
                    agents_dir / f"agent-{agent}.log",
                )  # fmt: skip
            )
        launch = subprocess.run(
            dkt_command("launch", "--server", f"127.0.0.1:{superlink}", "--run-id", "private",
                        "--agents", "2", "--experiences", "2", "--probe-size", "60",
                        "--wait-agents", "60", "--retries", "0", "--rejoin-wait", "5"),
            capture_output=True, text=True, timeout=400,
        )  # fmt: skip
    finally:
        for proc in reversed(procs):
            stop(proc)

    # The site's own log names the file; the conductor heard of a failure and a hash.
    site_log = (agents_dir / "agent-1.log").read_text(errors="replace")
    assert "patient-4711-jane-doe-positive.png" in site_log
    printed = launch.stdout + launch.stderr
    assert "this site's data or the run's configuration was refused" in printed, printed[-3000:]
    assert re.search(r"\(error [0-9a-f]{12}; the detail is in this agent's log\)", printed)
    # Outside the site: the server's whole data folder (SuperLink database, its logs,
    # the relay's store, the results) and what the launch printed.
    assert (server_dir / "superlink.db").exists() and (server_dir / "relay").is_dir()
    assert _found(server_dir) == []
    assert _found(server_log) == []
    assert not any(word in printed for word in REVEALING), printed[-3000:]
    # The other site's agent folder is its own disk, but it holds nothing of site 1.
    assert _found(agents_dir / "agent-0") == []
    # The honest site's agent finished the run without it.
    assert "agent 1 is missing" in printed and "run private finished" in printed
