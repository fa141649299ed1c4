"""Watching a run: `dkt status --out RUN_FOLDER` gets in with the owner-only file that
`dkt run` leaves, `--watch` redraws until Ctrl-C, and the table fits the width."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest
from rich.console import Console

from dkt.cli import main
from dkt.cli.status import (
    ACCESS_FILE,
    read_access_file,
    status_renderables,
    write_access_file,
)
from dkt.proto.relay_client import RelayClient
from dkt.server.relay.auth import TokenTable
from dkt.server.relay.server import RelayConfig, RelayServer
from tests.support.relay import EXPERIENCES, NUM_CLASSES, make_probe

ADMIN, CONDUCTOR = "a" * 32, "c" * 32


@pytest.fixture
def running(tmp_path: Path):
    """A relay with tokens, one run created by its conductor, and the access file of a
    `dkt run --out tmp_path/run` beside it."""
    config = RelayConfig(
        data_dir=tmp_path / "relay",
        port=0,
        status_port=0,
        insecure=True,
        tokens=TokenTable(ADMIN, {}, CONDUCTOR),
    )
    out = tmp_path / "run"
    with RelayServer(config) as relay, RelayClient(relay.address, CONDUCTOR) as conductor:
        conductor.create_run("run", make_probe(), NUM_CLASSES, EXPERIENCES)
        conductor.report_progress("run", 0, 0, "training", {"acc_cl": 0.5})
        url = f"http://127.0.0.1:{relay.status_port}/status"
        write_access_file(out, relay.address, url, CONDUCTOR, "run")
        yield out


def test_the_access_file_is_owner_only_and_names_relay_url_token_and_run(tmp_path):
    path = write_access_file(tmp_path, "127.0.0.1:5", "http://127.0.0.1:6/status", "t" * 32, "r")

    assert path == tmp_path / ACCESS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_access_file(tmp_path) == {
        "relay": "127.0.0.1:5",
        "status_url": "http://127.0.0.1:6/status",
        "token": "t" * 32,
        "run_id": "r",
    }


def test_status_of_a_folder_with_no_running_run_says_why(tmp_path, capsys):
    code = main(["status", "--out", str(tmp_path)])

    assert code == 2
    err = capsys.readouterr().err
    assert f"no {ACCESS_FILE} there" in err and "removes it at its end" in err


def test_status_gets_into_a_running_dkt_run_with_its_folder(running, capsys):
    code = main(["status", "--out", str(running), "--json"])

    assert code == 0
    (run,) = json.loads(capsys.readouterr().out)["runs"]
    assert run["run_id"] == "run"
    assert run["agents"][0]["state"] == "training"


def test_watch_redraws_until_ctrl_c_and_exits_0(running, capsys, monkeypatch):
    naps = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr("dkt.cli.status.time.sleep", sleep)

    code = main(["status", "--out", str(running), "--watch", "0.5"])

    assert code == 0
    assert naps == [0.5, 0.5, 0.5]
    assert "run run: created" in capsys.readouterr().out


def test_watch_without_seconds_redraws_every_2_seconds():
    from dkt.cli import build_parser

    args = build_parser().parse_args(["status", "--watch"])

    assert args.watch == 2.0


# The table's width -------------------------------------------------------------------


def _status(reason: str = "-") -> dict:
    agent = {
        "agent_id": 0, "state": "failed", "experience": 3, "reported_at": time.time(),
        "experiences_published": [0, 1, 2, 3], "payload_bytes": 123456,
        "last_seen": time.time() - 5, "reason": reason,
        "metrics": {"acc_cl": 0.91234, "acc_st": 0.8, "transfer_st": 0.7, "loss_ce": 0.123},
    }  # fmt: skip
    run = {
        "run_id": "run-20261206-120000", "state": "running", "current_experience": 3,
        "experiences": 5, "prediction_sets": 4, "payload_bytes": 123456,
        "expected_agents": 3, "agents": [agent],
    }  # fmt: skip
    return {
        "version": "0.1.0",
        "uptime_seconds": 61,
        "totals": {"runs": 1, "prediction_sets": 4, "payload_bytes": 123456},
        "runs": [run],
    }


def _render(width: int, status: dict) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    for renderable in status_renderables(status, width):
        console.print(renderable)
    return console.export_text()


def test_a_wide_terminal_shows_every_column():
    text = _render(200, _status())

    header = next(line for line in text.splitlines() if "agent" in line and "state" in line)
    for column in ("exp", "published", "bytes", "last seen", "metrics", "reason"):
        assert column in header
    assert "acc_cl=0.9123" in text and "5s ago" in text


def test_a_narrow_terminal_drops_columns_and_says_which():
    text = _render(60, _status())

    assert max(len(line) for line in text.splitlines()) <= 60
    header = next(line for line in text.splitlines() if "agent" in line and "state" in line)
    assert "metrics" not in header and "reason" in header
    assert "not shown at this width: " in " ".join(text.split())
    assert "metrics" in text.split("not shown at this width:")[1]


def test_piped_status_is_not_cut_at_80_columns(running, capsys, monkeypatch):
    long_reason = "the agent's host ran out of disk while writing experience 3 " * 2
    with RelayClient(read_access_file(running)["relay"], CONDUCTOR) as conductor:
        conductor.report_progress("run", 0, 1, "failed", {"acc_cl": 0.5}, reason=long_reason)

    code = main(["status", "--out", str(running)])

    out = capsys.readouterr().out
    assert code == 0
    assert long_reason.strip() in out  # on one line: nothing folded at 80 columns
