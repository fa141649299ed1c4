"""nginx in front of the SuperLink: who may reach which of its APIs.

Flower 1.42 serves three APIs on the SuperLink's one HTTP port: the Fleet API
(`/v1/fleet/*`, SuperNodes), the Control API (`/v1/control/*`: start and stop runs,
read their logs, register and unregister nodes) and the Runtime API (`/v1/runtime/*`,
the ServerApp and its SuperExec). The Control API has no authentication in the
open-source release, and a SuperNode's HTTP client cannot present a client certificate.
So the SuperLink listens on loopback only, and nginx — the real, well-kept component
for this — listens on the public address with TLS and:

- passes `/v1/fleet/*` and `/health` to the SuperLink (agents are authenticated there by
  Flower's SuperNode authentication);
- passes `/v1/control/*` only to a client that presented a certificate signed by the
  operators' CA (`ssl_verify_client optional`, then 403 without one);
- answers 404 for everything else, the Runtime API included: it is reachable on the
  server host's loopback only (and there it needs the SuperExec secret).

This module writes the configuration and starts nginx in the foreground; it imports
neither Flower nor torch.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

NGINX_HINT = "install nginx (Debian/Ubuntu: apt install nginx)"
CONTROL_REFUSED = (
    "the Control API needs an operator's client certificate (dkt launch --keys OPERATOR_KIT)"
)


def find_nginx() -> str | None:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@dataclass(frozen=True)
class Gateway:
    """nginx listening on `host:port` (TLS with `cert`/`key`), in front of the SuperLink
    at `upstream` (loopback, TLS verified against `ca`); control paths only for client
    certificates signed by `operator_ca`."""

    host: str
    port: int
    upstream: str  # 127.0.0.1:PORT of the SuperLink
    cert: Path
    key: Path
    ca: Path  # the CA of the SuperLink's own certificate (nginx verifies the upstream)
    operator_ca: Path
    folder: Path  # configuration, pid, logs, temp files

    def config(self) -> str:
        f = self.folder
        listen = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        proxy = f"""
            proxy_pass https://{self.upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {self.ca};
            proxy_ssl_name localhost;
            proxy_ssl_server_name off;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 1d;
            proxy_send_timeout 1d;"""
        return f"""# Written by `dkt server` (dkt/flower/gateway.py); rewritten at every start.
daemon off;
worker_processes 1;
pid {f / "nginx.pid"};
error_log {f / "error.log"} notice;
events {{ worker_connections 1024; }}
http {{
    access_log {f / "access.log"};
    client_body_temp_path {f / "tmp-body"};
    proxy_temp_path {f / "tmp-proxy"};
    fastcgi_temp_path {f / "tmp-fastcgi"};
    uwsgi_temp_path {f / "tmp-uwsgi"};
    scgi_temp_path {f / "tmp-scgi"};
    client_max_body_size 0;
    server_tokens off;
    server {{
        listen {listen} ssl;
        ssl_certificate {self.cert};
        ssl_certificate_key {self.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_client_certificate {self.operator_ca};
        ssl_verify_client optional;
        ssl_verify_depth 2;

        # Agents: Flower's Fleet API (SuperNodes authenticate with their keys there).
        location /v1/fleet/ {{{proxy}
        }}
        location = /health {{{proxy}
        }}
        # Operators only: a client certificate signed by the operators' CA.
        location /v1/control/ {{
            if ($ssl_client_verify != SUCCESS) {{
                return 403 "{CONTROL_REFUSED}\\n";
            }}{proxy}
        }}
        # The Runtime API and anything else: not from outside this host.
        location / {{
            return 404 "not served here\\n";
        }}
    }}
}}
"""

    def write(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o700)
        path = self.folder / "nginx.conf"
        path.write_text(self.config())
        return path

    def command(self, nginx: str) -> list[str]:
        conf = self.write()
        return [
            nginx,
            "-p",
            str(self.folder),
            "-c",
            str(conf),
            "-e",
            str(self.folder / "error.log"),
        ]

    def check(self, nginx: str) -> None:
        """`nginx -t` on the configuration; raises RuntimeError with nginx's words."""
        cmd = [*self.command(nginx), "-t", "-q"]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"nginx refused its configuration: {done.stderr.strip()}")
