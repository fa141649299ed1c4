"""Relay throughput: publish and fetch of 2 MB prediction sets with 1 and 32 concurrent
clients, next to a plain gRPC echo of the same bytes on the same machine.

    .venv/bin/python benchmarks/relay_throughput.py [--sets 16] [--per-client 2]

Both servers run as subprocesses on loopback. The echo server streams the same
1 MiB chunks with no validation, hashing, storage or fsync, so the ratio shows what
the relay's guarantees (validation, SHA-256, durable writes, metadata) cost.
Not a test: prints a table and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
import torch

from dkt.client.relay_client import RelayClient
from dkt.common.predictions import Predictions
from dkt.common.probe import ProbeSet

CLASSES = 100
PROBE_SIZE = 5243  # 5243 x 100 float32 = 2,097,200 bytes per prediction set
CHUNK = 1 << 20
MB = 1e6
_ECHO_UPLOAD = "/bench.Echo/Upload"
_ECHO_DOWNLOAD = "/bench.Echo/Download"


# -- the echo server -----------------------------------------------------------------


def serve_echo(ready_file: Path) -> None:
    """A gRPC server that takes a chunked upload and streams a held buffer back."""
    held: dict[str, bytes] = {"payload": b""}

    def upload(chunks, _context):  # type: ignore[no-untyped-def]
        held["payload"] = b"".join(chunks)
        return len(held["payload"]).to_bytes(8, "little")

    def download(_request, _context):  # type: ignore[no-untyped-def]
        payload = held["payload"]
        for offset in range(0, len(payload), CHUNK):
            yield payload[offset : offset + CHUNK]

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {
            "Upload": grpc.stream_unary_rpc_method_handler(upload),
            "Download": grpc.unary_stream_rpc_method_handler(download),
        },
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(64),
        options=[
            ("grpc.max_receive_message_length", 8 << 20),
            ("grpc.max_send_message_length", 8 << 20),
        ],
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ready_file.write_text(json.dumps({"port": port}))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    while not done.wait(1):
        pass
    server.stop(0)


class EchoClient:
    def __init__(self, address: str) -> None:
        self._channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", 8 << 20),
                ("grpc.max_send_message_length", 8 << 20),
            ],
        )
        self._upload = self._channel.stream_unary(_ECHO_UPLOAD)
        self._download = self._channel.unary_stream(_ECHO_DOWNLOAD)

    def upload(self, payload: bytes) -> None:
        chunks = (payload[o : o + CHUNK] for o in range(0, len(payload), CHUNK))
        self._upload(chunks, timeout=60)

    def download(self) -> bytes:
        return b"".join(self._download(b"", timeout=60))

    def close(self) -> None:
        self._channel.close()


# -- measurement -----------------------------------------------------------------------


def start(command: list[str], ready_file: Path) -> tuple[subprocess.Popen[bytes], dict]:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not ready_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{command[2:4]} did not start")
        time.sleep(0.05)
    return proc, json.loads(ready_file.read_text())


def measure(
    clients: int, per_client: int, operation: Callable[[int, int], None]
) -> tuple[float, list[float]]:
    """Run `operation(client, i)` per_client times on each of `clients` threads at once;
    returns (wall seconds, per-call latencies)."""
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def worker(client: int) -> None:
        barrier.wait()
        for i in range(per_client):
            t0 = time.perf_counter()
            operation(client, i)
            elapsed = time.perf_counter() - t0
            with lock:
                latencies.append(elapsed)

    start_time = time.perf_counter()
    with futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    return time.perf_counter() - start_time, latencies


def summary(nbytes: int, wall: float, latencies: list[float]) -> tuple[float, float, float]:
    """(MB/s, p50 ms, p95 ms)."""
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return nbytes / MB / wall, statistics.median(ordered) * 1000, p95 * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=int, default=16, help="sets published by 1 client")
    parser.add_argument("--per-client", type=int, default=2, help="sets per client at 32")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo_server:
        serve_echo(args.ready_file)
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="dkt-relay-bench-"))
    relay, relay_ready = start(
        [sys.executable, "-m", "dkt.server.relay", "--port", "0", "--status-port", "-1"]
        + ["--data-dir", str(workdir / "data"), "--insecure", "--log-level", "WARNING"]
        + ["--ready-file", str(workdir / "relay.json")],
        workdir / "relay.json",
    )
    echo, echo_ready = start(
        [sys.executable, __file__, "--echo-server", "--ready-file", str(workdir / "echo.json")],
        workdir / "echo.json",
    )
    try:
        rows = run_benchmark(
            f"127.0.0.1:{relay_ready['port']}",
            f"127.0.0.1:{echo_ready['port']}",
            args.sets,
            args.per_client,
            args.clients,
        )
    finally:
        for proc in (relay, echo):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    size = PROBE_SIZE * CLASSES * 4
    print(f"prediction set: {PROBE_SIZE} x {CLASSES} float32 = {size / MB:.2f} MB")
    print(f"{os.cpu_count()} CPUs; relay publishes fsync each set before acknowledging it")
    header = (
        f"{'operation':<10}{'clients':>8}{'sets':>6}{'relay MB/s':>12}{'p50 ms':>9}{'p95 ms':>9}"
    )
    header += f"{'echo MB/s':>11}{'p50 ms':>9}{'p95 ms':>9}{'relay/echo':>12}"
    print(header)
    for name, clients, sets, relay_row, echo_row in rows:
        print(
            f"{name:<10}{clients:>8}{sets:>6}{relay_row[0]:>12.1f}{relay_row[1]:>9.1f}"
            f"{relay_row[2]:>9.1f}{echo_row[0]:>11.1f}{echo_row[1]:>9.1f}{echo_row[2]:>9.1f}"
            f"{relay_row[0] / echo_row[0]:>12.2f}"
        )
    return 0


def run_benchmark(
    relay_address: str, echo_address: str, sets: int, per_client: int, clients: int
) -> list[tuple]:
    gen = torch.Generator().manual_seed(0)
    probe = ProbeSet.from_inputs(torch.randn(PROBE_SIZE, 1, 1, 1, generator=gen), "bench")
    admin = RelayClient(relay_address, timeout=120)
    admin.create_run("bench", probe, CLASSES, 1000 + max(sets, per_client))
    relay_clients = [RelayClient(relay_address, timeout=120) for _ in range(clients)]
    echo_clients = [EchoClient(echo_address) for _ in range(clients)]
    size = PROBE_SIZE * CLASSES * 4

    def predictions(agent: int, experience: int) -> Predictions:
        logits = torch.randn(PROBE_SIZE, CLASSES, generator=gen)
        return Predictions(agent, experience, (0,), probe.fingerprint, logits, "bench")

    rows = []
    for n_clients, n_sets, first_experience in ((1, sets, 0), (clients, per_client, 1000)):
        batches = {
            (c, i): predictions(c, first_experience + i)
            for c in range(n_clients)
            for i in range(n_sets)
        }
        payloads = {k: p.logits.numpy().tobytes() for k, p in batches.items()}
        total = size * n_clients * n_sets
        publish = summary(
            total,
            *measure(n_clients, n_sets, lambda c, i, b=batches: relay_clients[c].publish(b[c, i])),
        )
        upload = summary(
            total,
            *measure(n_clients, n_sets, lambda c, i, p=payloads: echo_clients[c].upload(p[c, i])),
        )
        fetch = summary(
            total,
            *measure(
                n_clients,
                n_sets,
                lambda c, i, e=first_experience: relay_clients[c].fetch("bench", c, e + i),
            ),
        )
        download = summary(
            total, *measure(n_clients, n_sets, lambda c, i: echo_clients[c].download())
        )
        rows.append(("publish", n_clients, n_clients * n_sets, publish, upload))
        rows.append(("fetch", n_clients, n_clients * n_sets, fetch, download))
    for client in (admin, *relay_clients, *echo_clients):
        client.close()
    return rows


if __name__ == "__main__":
    sys.exit(main())
