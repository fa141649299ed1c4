"""Who may read the relay's status endpoint: beyond loopback, `/status` and `/metrics`
need the admin token and `/healthz` stays open; on loopback, or with `--status-open`,
all three are open. And what `/status` shows is bounded however much the store holds.

"Beyond loopback" is decided by the address the relay binds: these relays bind 0.0.0.0
(every interface) and are reached through 127.0.0.1."""

from __future__ import annotations

import argparse
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dkt.proto.dkt.v1 import relay_pb2
from dkt.proto.status_json import MAX_STATUS_AGENTS, MAX_STATUS_RUNS, status_to_dict
from dkt.server.relay.auth import TokenTable
from dkt.server.relay.server import (
    RelayConfig,
    RelayConfigError,
    RelayServer,
    add_relay_arguments,
    config_from_args,
    is_loopback,
    main,
)
from dkt.server.relay.status_http import UNAUTHORIZED_BODY

ADMIN = "status-admin-token-0123456789"
AGENT = "status-agent-0-token-0123456789"
TOKENS = TokenTable(admin=ADMIN, agents={0: AGENT})


@contextmanager
def serving(tmp_path: Path, host: str, **config: object) -> Iterator[str]:
    """A relay binding `host`, in this process; yields its status URL via loopback."""
    relay_config = RelayConfig(
        tmp_path / "data", host=host, port=0, status_port=0, insecure=True, **config
    )  # type: ignore[arg-type]
    with RelayServer(relay_config) as relay:
        yield f"http://127.0.0.1:{relay.status_port}"


def get(url: str, token: str | None = None, scheme: str = "Bearer") -> tuple[int, str, str]:
    """(status code, WWW-Authenticate header, body) of a GET."""
    headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, r.headers.get("WWW-Authenticate", ""), r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("WWW-Authenticate", ""), err.read().decode()


def test_beyond_loopback_status_and_metrics_need_the_admin_token_and_healthz_stays_open(
    tmp_path: Path,
) -> None:
    with serving(tmp_path, "0.0.0.0", tokens=TOKENS) as url:
        refused = 401, 'Bearer realm="dkt-relay"', UNAUTHORIZED_BODY.decode()
        for path in ("/status", "/metrics"):
            assert get(url + path) == refused
            assert get(url + path, "a-wrong-token-0123456789") == refused
            assert get(url + path, AGENT) == refused  # an agent's token is not the admin's
            assert get(url + path, ADMIN, scheme="Basic") == refused
            assert get(url + path, ADMIN)[0] == 200
        assert get(url + "/healthz") == (200, "", "ok\n")
        assert '"totals"' in get(url + "/status", ADMIN)[2]
        assert "dkt_relay_uptime_seconds" in get(url + "/metrics", ADMIN)[2]


def test_on_loopback_status_and_metrics_are_open(tmp_path: Path) -> None:
    with serving(tmp_path, "127.0.0.1", tokens=TOKENS) as url:
        assert [get(url + p)[0] for p in ("/status", "/metrics", "/healthz")] == [200, 200, 200]


def test_status_open_serves_beyond_loopback_without_a_token_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dkt.relay")
    no_admin = TokenTable(agents={0: AGENT})
    with serving(tmp_path, "0.0.0.0", tokens=no_admin, status_open=True) as url:
        assert [get(url + p)[0] for p in ("/status", "/metrics", "/healthz")] == [200, 200, 200]
    assert any(
        "OPEN: the status endpoint on 0.0.0.0 serves /status and /metrics to anyone" in m
        for m in caplog.messages
    ), caplog.messages


@pytest.mark.parametrize(
    "tokens", [TokenTable(agents={0: AGENT}), TokenTable()], ids=["agents-only", "none"]
)
def test_a_relay_without_an_admin_token_will_not_serve_status_beyond_loopback(
    tmp_path: Path, tokens: TokenTable
) -> None:
    config = RelayConfig(tmp_path / "data", host="0.0.0.0", port=0, status_port=0, tokens=tokens,
                         insecure=True)  # fmt: skip
    with pytest.raises(RelayConfigError) as refused:
        RelayServer(config)

    assert str(refused.value) == (
        "refusing to serve /status and /metrics on 0.0.0.0 (beyond loopback) without an "
        "admin token to ask readers for: set `admin` in --token-file (or "
        "DKT_RELAY_ADMIN_TOKEN), or pass --status-open to serve them to anyone, --host "
        "127.0.0.1 to listen on loopback only, or --status-port -1 to serve no status endpoint"
    )
    assert not (tmp_path / "data").exists()  # refused before the store was opened


def test_dkt_relay_exits_with_the_reason_when_status_would_be_unguarded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DKT_RELAY_ADMIN_TOKEN", "DKT_RELAY_AGENT_TOKENS", "DKT_RELAY_CONDUCTOR_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    argv = ["--host", "0.0.0.0", "--port", "0", "--status-port", "0", "--insecure",
            "--data-dir", str(tmp_path / "data")]  # fmt: skip

    assert main(argv) == 2
    assert "pass --status-open to serve them to anyone" in capsys.readouterr().err


def test_a_relay_without_a_status_endpoint_needs_no_admin_token(tmp_path: Path) -> None:
    config = RelayConfig(tmp_path / "data", host="0.0.0.0", port=0, status_port=None,
                         tokens=TokenTable(agents={0: AGENT}), insecure=True)  # fmt: skip
    with RelayServer(config) as relay:
        assert relay.status_port is None and relay.port > 0


def test_status_open_is_a_relay_flag_off_by_default() -> None:
    parser = argparse.ArgumentParser()
    add_relay_arguments(parser)

    assert config_from_args(parser.parse_args([])).status_open is False
    assert config_from_args(parser.parse_args(["--status-open"])).status_open is True


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.213.0.1", False),
        ("relay.example.org", False),
    ],
)
def test_loopback_is_the_bind_address_127_0_0_0_8_or_1_or_localhost(
    host: str, loopback: bool
) -> None:
    assert is_loopback(host) is loopback


def test_the_status_document_shows_the_newest_runs_and_the_first_agents_of_each() -> None:
    status = relay_pb2.RelayStatus(version="v")
    for r in range(MAX_STATUS_RUNS + 3):  # the store lists runs oldest first
        run = status.runs.add(run_id=f"run-{r}")
        for a in range(MAX_STATUS_AGENTS + 5 if r == MAX_STATUS_RUNS + 2 else 1):
            run.agents.add(agent_id=a)

    doc = status_to_dict(status)

    assert doc["runs_not_shown"] == 3
    assert [run["run_id"] for run in doc["runs"]] == [
        f"run-{r}" for r in range(3, MAX_STATUS_RUNS + 3)
    ]
    newest = doc["runs"][-1]
    assert [a["agent_id"] for a in newest["agents"]] == list(range(MAX_STATUS_AGENTS))
    assert newest["agents_not_shown"] == 5
    assert doc["runs"][0]["agents_not_shown"] == 0
