"""The relay server process: the gRPC service, health checking, reflection and the HTTP
status endpoint around one store.

Start it with `dkt relay ...` or `python -m dkt.server.relay ...`; embed it with
`RelayServer(RelayConfig(...)).start()`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import math
import os
import signal
import ssl
import sys
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from dkt import __version__
from dkt.proto.dkt.v1 import relay_pb2, relay_pb2_grpc
from dkt.proto.relay_connection import (
    ADMIN_TOKEN_ENV,
    AGENT_TOKENS_ENV,
    CONDUCTOR_TOKEN_ENV,
    DEFAULT_PORT,
    DEFAULT_STATUS_PORT,
)
from dkt.proto.status_json import DEFAULT_MAX_ABS_LOGIT, status_to_dict
from dkt.server.relay.admission import StreamAdmission, StreamLimits
from dkt.server.relay.auth import AuthInterceptor, TokenConfigError, TokenTable
from dkt.server.relay.events import EventBus
from dkt.server.relay.metrics import RelayMetrics
from dkt.server.relay.service import EncodedChunks, RelayLimits, RelayService
from dkt.server.relay.status_http import StatusHttpServer
from dkt.server.relay.store import StoreError, open_store

log = logging.getLogger("dkt.relay")

SERVICE_NAME = relay_pb2.DESCRIPTOR.services_by_name["Relay"].full_name
MIB = 1 << 20
# gRPC framing and the metadata fields of a chunk need room next to its data.
_MESSAGE_OVERHEAD = 64 * 1024


class RelayConfigError(ValueError):
    """The relay cannot start with this configuration."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the server's certificate and key, and optionally a CA for client certs."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        try:
            return (
                self.cert.read_bytes(),
                self.key.read_bytes(),
                self.client_ca.read_bytes() if self.client_ca else None,
            )
        except OSError as err:
            raise RelayConfigError(f"cannot read TLS file: {err}") from None


@dataclass(frozen=True)
class RelayConfig:
    """Everything a relay needs to start. `port`/`status_port` 0 picks a free port;
    `status_port` None serves no HTTP endpoint."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    status_port: int | None = DEFAULT_STATUS_PORT
    tokens: TokenTable = field(default_factory=TokenTable)
    tls: TlsFiles | None = None
    # Plaintext transport and/or no tokens are refused unless this is set.
    insecure: bool = False
    # Serve /status and /metrics without the admin token beyond loopback (`--status-open`).
    status_open: bool = False
    max_message_bytes: int = 8 * MIB
    max_payload_bytes: int = 1024 * MIB
    max_workers: int = 64
    grace_seconds: float = 5.0
    # Largest |logit| a published prediction set may hold (`--max-logit`).
    max_abs_logit: float = DEFAULT_MAX_ABS_LOGIT
    # Streams one agent credential may have open at once (`--streams-per-agent`).
    streams_per_credential: int = StreamLimits.per_credential
    # A client stream that sends nothing for this long is ended (`--stream-idle-timeout`).
    stream_idle_seconds: float = StreamLimits.idle_seconds


class RelayServer:
    """A running relay: gRPC service, health, reflection and the HTTP status endpoint."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self._check_security()
        self._status_needs_admin = self._check_status_access()
        if config.max_message_bytes <= _MESSAGE_OVERHEAD:
            raise RelayConfigError(
                f"max message size must exceed {_MESSAGE_OVERHEAD} bytes, "
                f"got {config.max_message_bytes}"
            )
        if config.max_payload_bytes < 1:
            raise RelayConfigError(
                f"max payload size must be positive, got {config.max_payload_bytes} bytes"
            )
        if not (math.isfinite(config.max_abs_logit) and config.max_abs_logit > 0):
            raise RelayConfigError(
                f"--max-logit must be a positive number, got {config.max_abs_logit}"
            )
        if config.streams_per_credential < 1 or not config.stream_idle_seconds > 0:
            raise RelayConfigError(
                "--streams-per-agent must be at least 1 and --stream-idle-timeout positive, "
                f"got {config.streams_per_credential} and {config.stream_idle_seconds}"
            )
        if config.max_workers < 2:
            raise RelayConfigError(f"workers must be at least 2, got {config.max_workers}")
        self.store = open_store(config.data_dir)
        self.metrics = RelayMetrics()
        self.metrics.orphan_payloads_removed.inc(self.store.orphans_removed)
        if self.store.orphans_removed:
            log.warning(
                "removed %d orphan payload files from %s: written before a crash, never "
                "acknowledged",
                self.store.orphans_removed,
                config.data_dir,
            )
        self.events = EventBus()
        chunk = min(MIB, config.max_message_bytes - _MESSAGE_OVERHEAD)
        self.service = RelayService(
            self.store,
            RelayLimits(
                max_payload_bytes=config.max_payload_bytes,
                max_abs_logit=config.max_abs_logit,
                chunk_bytes=chunk,
                # A watch holds a worker for as long as it lasts; keep half of them
                # for the calls that publish and fetch.
                max_watches=config.max_workers // 2,
            ),
            self.metrics,
            self.events,
            __version__,
            tokens=config.tokens,
        )
        # Agents' streams leave an eighth of the workers free for the admin and for unary
        # calls such as GetStatus.
        reserved = max(1, config.max_workers // 8)
        self.admission = StreamAdmission(
            StreamLimits(
                per_credential=config.streams_per_credential,
                agent_streams=config.max_workers - reserved,
                idle_seconds=config.stream_idle_seconds,
            )
        )
        self.health = health.HealthServicer()
        self._server: grpc.Server | None = None
        self._executor: futures.ThreadPoolExecutor | None = None
        self._http: StatusHttpServer | None = None
        self.port = 0
        self.status_port: int | None = None
        self._stopped = threading.Event()

    def _check_security(self) -> None:
        c = self.config
        problems = []
        if c.tls is None:
            problems.append("without TLS (pass --tls-cert and --tls-key)")
        if not c.tokens.enabled:
            problems.append(
                f"without authentication (pass --token-file, or set {ADMIN_TOKEN_ENV} "
                f"and {AGENT_TOKENS_ENV}; see --help)"
            )
        if problems and not c.insecure:
            raise RelayConfigError(
                f"refusing to serve {' and '.join(problems)}; pass --insecure to do so anyway "
                "(only on a trusted network or loopback)"
            )
        for problem in problems:
            log.warning("INSECURE: the relay serves %s", problem.split(" (")[0])

    def _check_status_access(self) -> bool:
        """Whether /status and /metrics need the admin token: where the endpoint listens
        beyond loopback (what they show is every run's agents, states and reasons), unless
        `--status-open` says to serve them to anyone. /healthz is always open."""
        c = self.config
        if c.status_port is None or is_loopback(c.host):
            return False
        if c.status_open:
            log.warning(
                "OPEN: the status endpoint on %s serves /status and /metrics to anyone who "
                "reaches it, without a token (--status-open)",
                c.host,
            )
            return False
        if not c.tokens.has_admin:
            raise RelayConfigError(
                f"refusing to serve /status and /metrics on {c.host} (beyond loopback) "
                f"without an admin token to ask readers for: set `admin` in --token-file "
                f"(or {ADMIN_TOKEN_ENV}), or pass --status-open to serve them to anyone, "
                "--host 127.0.0.1 to listen on loopback only, or --status-port -1 to serve "
                "no status endpoint"
            )
        return True

    @property
    def address(self) -> str:
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "") else self.config.host
        return f"{host}:{self.port}"

    def start(self) -> RelayServer:
        """Serve; raises RelayConfigError (and holds nothing open) if it cannot."""
        try:
            self._start()
        except BaseException:
            if self._server is not None:
                self._server.stop(0)
            if self._executor is not None:
                self._executor.shutdown(wait=False)
            self.store.close()
            raise
        return self

    def _start(self) -> None:
        c = self.config
        options = [
            ("grpc.max_receive_message_length", c.max_message_bytes),
            ("grpc.max_send_message_length", c.max_message_bytes),
            # Keepalive: ping idle connections so dead peers are noticed, and accept
            # the clients' pings (RelayClient pings every 30 s during calls).
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
            # Never share a port with another process (e.g. a second relay).
            ("grpc.so_reuseport", 0),
        ]
        ssl_context = _server_ssl_context(c.tls) if c.tls is not None else None
        self._executor = futures.ThreadPoolExecutor(
            max_workers=c.max_workers, thread_name_prefix="relay"
        )
        auth = AuthInterceptor(
            c.tokens,
            SERVICE_NAME,
            on_rejected=self.service.record_unauthenticated,
            admission=self.admission,
        )
        server = grpc.server(
            self._executor, interceptors=[auth, EncodedChunks(SERVICE_NAME)], options=options
        )
        self._server = server
        relay_pb2_grpc.add_RelayServicer_to_server(self.service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        bind = f"{c.host}:{c.port}"
        try:
            if c.tls is not None:
                cert, key, client_ca = c.tls.read()
                credentials = grpc.ssl_server_credentials(
                    [(key, cert)],
                    root_certificates=client_ca,
                    require_client_auth=client_ca is not None,
                )
                self.port = server.add_secure_port(bind, credentials)
            else:
                self.port = server.add_insecure_port(bind)
        except RuntimeError:  # grpc >= 1.50 raises where older versions returned 0
            self.port = 0
        if not self.port:
            raise RelayConfigError(
                f"cannot listen on {bind}: the port is in use or the host is not an address "
                "of this machine; pick another --port or --host"
            )
        server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if c.status_port is not None:
            try:
                self._http = StatusHttpServer(
                    c.host,
                    c.status_port,
                    status=lambda: status_to_dict(self.service.status()),
                    healthy=self.healthy,
                    metrics=self._metrics_text,
                    tls=ssl_context,
                    authorize=self._is_admin_token if self._status_needs_admin else None,
                )
            except OSError as err:
                raise RelayConfigError(
                    f"cannot serve the status endpoint on {c.host}:{c.status_port}: {err}"
                ) from None
            self._http.start()
            self.status_port = self._http.port
        log.info(
            "relay %s serving on %s:%s (status %s), data in %s",
            __version__,
            c.host,
            self.port,
            f"port {self.status_port}" if self.status_port else "off",
            c.data_dir,
        )

    def healthy(self) -> bool:
        """The store answers and the server is not shutting down."""
        if self._stopped.is_set():
            return False
        try:
            self.store.totals()
        except Exception:
            return False
        return True

    def _is_admin_token(self, token: str) -> bool:
        """Whether `token` is the admin's (compared as digests in constant time, auth.py)."""
        principal = self.config.tokens.authenticate(token)
        return principal is not None and principal.kind == "admin"

    def _metrics_text(self) -> bytes:
        # Refreshes the store gauges and uptime, and the training series from the store.
        self.metrics.training.update(self.service.status())
        return self.metrics.exposition()

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let running ones finish for `grace` seconds, close."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self.service.stop_watches()
        if self._http is not None:
            self._http.stop()
        if self._server is not None:
            self._server.stop(self.config.grace_seconds if grace is None else grace).wait()
        if self._executor is not None:
            # grpc leaves its worker threads to the executor's owner.
            self._executor.shutdown(wait=False)
        self.store.close()
        log.info("relay stopped")

    def wait(self) -> None:
        if self._server is not None:
            self._server.wait_for_termination()

    def __enter__(self) -> RelayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def is_loopback(host: str) -> bool:
    """Whether a bind address is loopback only: 127.0.0.0/8, ::1 or `localhost`. Every
    other one, 0.0.0.0 and host names included, reaches beyond this machine."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def _server_ssl_context(tls: TlsFiles) -> ssl.SSLContext:
    """The HTTP endpoint's TLS context; also checks the PEM files before grpc sees them
    (grpc only says that it failed to bind)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(tls.cert, tls.key)
        if tls.client_ca is not None:
            ssl.create_default_context(cafile=tls.client_ca)
    except (OSError, ssl.SSLError) as err:
        raise RelayConfigError(
            f"cannot use the TLS files (--tls-cert {tls.cert}, --tls-key {tls.key}"
            f"{f', --tls-client-ca {tls.client_ca}' if tls.client_ca else ''}): {err}; "
            "pass PEM files of a certificate and its private key"
        ) from None
    return context


# -- command line --------------------------------------------------------------------


def add_relay_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `dkt relay` and `python -m dkt.server.relay`."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="gRPC port (0: any free port)"
    )
    parser.add_argument(
        "--status-port",
        type=int,
        default=DEFAULT_STATUS_PORT,
        help="HTTP port for /status, /healthz, /metrics (0: any free port, -1: none)",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path("relay-data"), help="where the store lives"
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        help='TOML file with `admin = "..."`, `conductor = "..."` and an [agents] table of '
        f'`0 = "..."` (also read: {ADMIN_TOKEN_ENV}, {CONDUCTOR_TOKEN_ENV}, '
        f'{AGENT_TOKENS_ENV}="0=tok,1=tok"); agents send run credentials derived from '
        "their tokens (relay.proto)",
    )
    parser.add_argument("--tls-cert", type=Path, help="server certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    parser.add_argument(
        "--tls-client-ca", type=Path, help="CA (PEM) that client certificates must chain to"
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow serving without TLS and/or without tokens (trusted networks only)",
    )
    parser.add_argument(
        "--status-open",
        action="store_true",
        help="serve /status and /metrics to anyone who reaches the status port; without it, "
        "beyond loopback they need `Authorization: Bearer <admin token>` (/healthz is "
        "always open)",
    )
    parser.add_argument(
        "--max-message-mb", type=float, default=8, help="largest gRPC message (MiB)"
    )
    parser.add_argument(
        "--max-payload-mb",
        type=float,
        default=1024,
        help="largest prediction set, probe set or eval set accepted (MiB)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=64,
        help="concurrent RPCs handled (at most half watches); further calls wait in gRPC's "
        "queue, not refused (benchmarks/relay_scale.py: more workers do not help on 2 CPUs)",
    )
    parser.add_argument(
        "--max-logit",
        type=float,
        default=DEFAULT_MAX_ABS_LOGIT,
        metavar="X",
        help="largest |logit| a published prediction set may hold; beyond it the publish is "
        f"INVALID_ARGUMENT and nothing is stored (default: {DEFAULT_MAX_ABS_LOGIT:g})",
    )
    parser.add_argument(
        "--streams-per-agent",
        type=int,
        default=StreamLimits.per_credential,
        metavar="N",
        help="streams one agent credential may have open at once; one more is "
        f"RESOURCE_EXHAUSTED (default: {StreamLimits.per_credential})",
    )
    parser.add_argument(
        "--stream-idle-timeout",
        type=float,
        default=StreamLimits.idle_seconds,
        metavar="SECONDS",
        help="end a client stream that sends no chunk for this long "
        f"(default: {StreamLimits.idle_seconds:g})",
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        help='write {"port", "status_port", "pid"} as JSON here once serving (dkt server: '
        'once the SuperLink is up too, with its "superlink_port")',
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")


def config_from_args(args: argparse.Namespace) -> RelayConfig:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise RelayConfigError("pass both --tls-cert and --tls-key, or neither")
    if args.tls_client_ca is not None and args.tls_cert is None:
        raise RelayConfigError("--tls-client-ca needs --tls-cert and --tls-key")
    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    return RelayConfig(
        data_dir=args.data_dir,
        host=args.host,
        port=args.port,
        status_port=None if args.status_port < 0 else args.status_port,
        tokens=TokenTable.load(args.token_file),
        tls=tls,
        insecure=args.insecure,
        status_open=args.status_open,
        max_message_bytes=int(args.max_message_mb * MIB),
        max_payload_bytes=int(args.max_payload_mb * MIB),
        max_workers=args.workers,
        max_abs_logit=args.max_logit,
        streams_per_credential=args.streams_per_agent,
        stream_idle_seconds=args.stream_idle_timeout,
    )


def run_relay(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; the exit code of `dkt relay`."""
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        relay = RelayServer(config_from_args(args)).start()
    except (RelayConfigError, TokenConfigError, StoreError) as err:
        print(f"dkt relay: {err}", file=sys.stderr)
        return 2
    done = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        done.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if args.ready_file is not None:
        ready = {"port": relay.port, "status_port": relay.status_port, "pid": os.getpid()}
        tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
        tmp.write_text(json.dumps(ready))
        os.replace(tmp, args.ready_file)
    status_url = ""
    if relay.status_port:
        scheme = "https" if relay.config.tls else "http"
        status_url = f", status {scheme}://{relay.config.host}:{relay.status_port}/status"
    print(f"relay ready: grpc {relay.address}{status_url}", flush=True)
    while not done.wait(1.0):
        pass
    relay.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dkt.server.relay", description="Run the DKT relay server."
    )
    add_relay_arguments(parser)
    return run_relay(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
