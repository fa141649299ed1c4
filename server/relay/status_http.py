"""The relay's HTTP endpoint: `GET /` (the live dashboard, dashboard.py), `GET /status`
(JSON), `GET /healthz`, `GET /metrics` (Prometheus text format). Read-only; served over
TLS when the relay has a certificate. `/healthz` and the dashboard page (code, no data)
are open to anyone; `/status` and `/metrics` need `Authorization: Bearer <admin token>`
when the relay says so (beyond loopback, server.py), and are open otherwise."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from dkt.server.relay import dashboard

log = logging.getLogger("dkt.relay.http")

# A client that opens a connection and then says nothing holds one thread this long.
_IDLE_TIMEOUT_S = 10.0
# The paths that tell what the relay holds; /healthz tells only that it answers.
GUARDED_PATHS = ("/status", "/metrics")
UNAUTHORIZED_BODY = (
    b"unauthorized: send the relay's admin token as `Authorization: Bearer <admin token>`; "
    b"only /healthz and the dashboard page at / are open\n"
)


class _Server(ThreadingHTTPServer):
    """Threaded HTTP server whose TLS handshake happens in the request's own thread:
    wrapping the listening socket would do it in the accept loop, where one client
    that connects and sends nothing blocks every other request (health checks too)."""

    daemon_threads = True
    tls: ssl.SSLContext | None = None

    def finish_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        assert isinstance(request, socket.socket)  # a TCP server's requests are sockets
        request.settimeout(_IDLE_TIMEOUT_S)
        with self.tls.wrap_socket(request, server_side=True) as secure:
            super().finish_request(secure, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Failed handshakes, resets and timeouts: the client's problem, not the relay's.
        log.debug("status request from %s failed", client_address, exc_info=True)


class StatusHttpServer:
    """A threaded HTTP server answering from three callables. With `authorize`, a
    request for /status or /metrics must carry a bearer token it accepts (401 otherwise)."""

    def __init__(
        self,
        host: str,
        port: int,
        status: Callable[[], dict],
        healthy: Callable[[], bool],
        metrics: Callable[[], bytes],
        tls: ssl.SSLContext | None = None,
        authorize: Callable[[str], bool] | None = None,
    ) -> None:
        class Handler(BaseHTTPRequestHandler):
            server_version = "dkt-relay"
            timeout = _IDLE_TIMEOUT_S

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0].rstrip("/") or "/"
                try:
                    if path in GUARDED_PATHS and not self._authorized():
                        self._reply(
                            401,
                            "text/plain",
                            UNAUTHORIZED_BODY,
                            {"WWW-Authenticate": 'Bearer realm="dkt-relay"'},
                        )
                    elif path == "/status":
                        body = json.dumps(status(), indent=2).encode() + b"\n"
                        self._reply(200, "application/json", body)
                    elif path == "/":
                        self._reply(
                            200, "text/html; charset=utf-8", dashboard.PAGE, dashboard.HEADERS
                        )
                    elif path == "/healthz":
                        if healthy():
                            self._reply(200, "text/plain", b"ok\n")
                        else:
                            self._reply(503, "text/plain", b"unhealthy\n")
                    elif path == "/metrics":
                        self._reply(200, CONTENT_TYPE_LATEST, metrics())
                    else:
                        self._reply(
                            404, "text/plain", b"not found; try /, /status, /healthz or /metrics\n"
                        )
                except Exception:
                    log.exception("status endpoint failed on %s", path)
                    self._reply(500, "text/plain", b"internal error; see the relay log\n")

            def _authorized(self) -> bool:
                if authorize is None:
                    return True
                scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
                return scheme.lower() == "bearer" and authorize(token.strip())

            def _reply(
                self,
                code: int,
                content_type: str,
                body: bytes,
                headers: dict[str, str] | None = None,
            ) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("%s " + format, self.address_string(), *args)

        self._httpd = _Server((host, port), Handler)
        self._httpd.tls = tls
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="relay-status-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
