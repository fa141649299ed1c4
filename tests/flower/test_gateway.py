"""The nginx gateway in front of the SuperLink: its configuration, checked by nginx
itself, and who it lets through (tests/integration/test_hostile_hosts.py drives it)."""

from __future__ import annotations

import re
from pathlib import Path

from dkt.cli.keys import provision
from dkt.flower.gateway import CONTROL_REFUSED, Gateway, find_nginx


def _gateway(tmp_path: Path) -> Gateway:
    provision(tmp_path / "kits", 1, ["localhost"])
    server = tmp_path / "kits" / "server"
    return Gateway(
        host="0.0.0.0", port=18000, upstream="127.0.0.1:18001", cert=server / "server.pem",
        key=server / "server.key", ca=server / "ca.pem", operator_ca=server / "ca.pem",
        folder=tmp_path / "gateway",
    )  # fmt: skip


def _location(config: str, path: str) -> str:
    match = re.search(r"location " + re.escape(path) + r" \{(.*?)\n        \}", config, re.S)
    assert match, f"no location {path}"
    return match.group(1)


def test_control_needs_a_verified_client_certificate_fleet_does_not(tmp_path: Path) -> None:
    config = _gateway(tmp_path).config()
    assert "ssl_verify_client optional;" in config
    control = _location(config, "/v1/control/")
    assert "if ($ssl_client_verify != SUCCESS)" in control
    assert f'return 403 "{CONTROL_REFUSED}' in control
    fleet = _location(config, "/v1/fleet/")
    assert "ssl_client_verify" not in fleet
    assert "proxy_pass https://127.0.0.1:18001;" in fleet
    assert "proxy_ssl_verify on;" in fleet


def test_everything_else_including_the_runtime_api_is_not_served(tmp_path: Path) -> None:
    config = _gateway(tmp_path).config()
    assert "/v1/runtime" not in config
    assert 'return 404 "not served here' in _location(config, "/")
    proxied = re.findall(r"location (=? ?\S+) \{[^}]*proxy_pass", config)
    assert proxied == ["/v1/fleet/", "= /health"]


def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    gateway = _gateway(tmp_path)
    nginx = find_nginx()
    assert nginx is not None
    gateway.check(nginx)
    assert (tmp_path / "gateway" / "nginx.conf").read_text() == gateway.config()
    assert (tmp_path / "gateway").stat().st_mode & 0o777 == 0o700
