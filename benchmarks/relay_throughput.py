"""Relay throughput: publish and fetch of 2 MB prediction sets with 1 and 32 concurrent
clients, each next to its floor on the same machine in the same run.

    .venv/bin/python benchmarks/relay_throughput.py [--rounds 3] [--sets 8] [--per-client 1]

The relay and a plain gRPC echo server run as subprocesses on loopback. The floors:
- fetch: the echo server streams the same bytes back in 1 MiB chunks (no lookup,
  hashing or metadata);
- publish: the echo server takes the same bytes in 1 MiB chunks, writes them to a new
  file in the relay's data directory and fsyncs it before answering (what any durable
  store must at least do; no validation, hashing, rename or metadata commit).
The plain echo upload is shown too. Rounds interleave relay and floor calls so both see
the same machine load; MB/s is total bytes over total wall time of all rounds.
Not a test: prints a table and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
import torch

from dkt.common.data.probe import ProbeSet
from dkt.common.training.predictions import Predictions
from dkt.proto.relay_client import RelayClient
from dkt.proto.run_credential import run_credential

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relay_scale import ADMIN_TOKEN, agent_token, start_relay  # noqa: E402

CLASSES = 100
PROBE_SIZE = 5243  # 5243 x 100 float32 = 2,097,200 bytes per prediction set
CHUNK = 1 << 20
MB = 1e6
_ECHO_UPLOAD = "/bench.Echo/Upload"
_ECHO_DURABLE_UPLOAD = "/bench.Echo/DurableUpload"
_ECHO_DOWNLOAD = "/bench.Echo/Download"
_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 8 << 20),
    ("grpc.max_send_message_length", 8 << 20),
]


# -- the echo server -----------------------------------------------------------------


def serve_echo(ready_file: Path, durable_dir: Path) -> None:
    """A gRPC server that takes a chunked upload (optionally writing and fsyncing it to
    a new file in `durable_dir`) and streams a held buffer back."""
    held: dict[str, bytes] = {"payload": b""}

    def upload(chunks, _context):  # type: ignore[no-untyped-def]
        held["payload"] = b"".join(chunks)
        return len(held["payload"]).to_bytes(8, "little")

    def durable_upload(chunks, _context):  # type: ignore[no-untyped-def]
        payload = b"".join(chunks)
        with open(durable_dir / uuid.uuid4().hex, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        return len(payload).to_bytes(8, "little")

    def download(_request, _context):  # type: ignore[no-untyped-def]
        payload = held["payload"]
        for offset in range(0, len(payload), CHUNK):
            yield payload[offset : offset + CHUNK]

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {
            "Upload": grpc.stream_unary_rpc_method_handler(upload),
            "DurableUpload": grpc.stream_unary_rpc_method_handler(durable_upload),
            "Download": grpc.unary_stream_rpc_method_handler(download),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(64), options=_GRPC_OPTIONS)
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
        self._channel = grpc.insecure_channel(address, options=_GRPC_OPTIONS)
        self._upload = self._channel.stream_unary(_ECHO_UPLOAD)
        self._durable_upload = self._channel.stream_unary(_ECHO_DURABLE_UPLOAD)
        self._download = self._channel.unary_stream(_ECHO_DOWNLOAD)

    def upload(self, payload: bytes, durable: bool = False) -> None:
        chunks = (payload[o : o + CHUNK] for o in range(0, len(payload), CHUNK))
        (self._durable_upload if durable else self._upload)(chunks, timeout=60)

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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Tally:
    """Wall time, per-call latencies and CPU time (the clients' process and the server's)
    of one operation, summed over rounds."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.wall = 0.0
        self.nbytes = 0
        self.calls = 0
        self.client_cpu = 0.0
        self.server_cpu = 0.0
        self.latencies: list[float] = []

    def measure(
        self, clients: int, per_client: int, nbytes: int, operation: Callable[[int, int], None]
    ) -> None:
        """Run `operation(client, i)` per_client times on each of `clients` threads at once."""
        lock = threading.Lock()
        barrier = threading.Barrier(clients)

        def worker(client: int) -> None:
            barrier.wait()
            for i in range(per_client):
                t0 = time.perf_counter()
                operation(client, i)
                elapsed = time.perf_counter() - t0
                with lock:
                    self.latencies.append(elapsed)

        with futures.ThreadPoolExecutor(clients) as pool:
            # Threads started before the clock and the CPU counters start.
            list(pool.map(lambda _: None, range(clients)))
            server_cpu, client_cpu = cpu_seconds(self.server_pid), cpu_seconds(os.getpid())
            start_time = time.perf_counter()
            list(pool.map(worker, range(clients)))
            self.wall += time.perf_counter() - start_time
            self.client_cpu += cpu_seconds(os.getpid()) - client_cpu
            self.server_cpu += cpu_seconds(self.server_pid) - server_cpu
        self.nbytes += nbytes * clients * per_client
        self.calls += clients * per_client

    def summary(self) -> tuple[float, float, float, float, float]:
        """(MB/s, p50 ms, p95 ms, client CPU ms per call, server CPU ms per call)."""
        ordered = sorted(self.latencies)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        return (
            self.nbytes / MB / self.wall,
            statistics.median(ordered) * 1000,
            p95 * 1000,
            self.client_cpu * 1000 / self.calls,
            self.server_cpu * 1000 / self.calls,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--sets", type=int, default=8, help="sets per round with 1 client")
    parser.add_argument("--per-client", type=int, default=1, help="sets per client per round")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--durable-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo_server:
        serve_echo(args.ready_file, args.durable_dir)
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="dkt-relay-bench-"))
    data_dir = workdir / "data"
    floor_dir = data_dir / "floor"  # the echo's durable files, next to the relay's store
    floor_dir.mkdir(parents=True)
    procs = []
    try:
        # Token auth as deployed: each client is an agent with its own run credential
        # (the relay caps the streams of one credential).
        relay, relay_ready = start_relay(workdir, 64, args.clients + 1)
        procs.append(relay)
        echo, echo_ready = start(
            [sys.executable, __file__, "--echo-server", "--ready-file", str(workdir / "echo.json")]
            + ["--durable-dir", str(floor_dir)],
            workdir / "echo.json",
        )
        procs.append(echo)
        rows = run_benchmark(
            f"127.0.0.1:{relay_ready['port']}",
            f"127.0.0.1:{echo_ready['port']}",
            relay.pid,
            echo.pid,
            args.rounds,
            args.sets,
            args.per_client,
            args.clients,
        )
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)
    size = PROBE_SIZE * CLASSES * 4
    print(f"prediction set: {PROBE_SIZE} x {CLASSES} float32 = {size / MB:.2f} MB")
    print(
        f"{os.cpu_count()} CPUs, {args.rounds} interleaved rounds; floors: fetch = gRPC echo "
        "download, publish = gRPC echo upload + write + fsync of a new file in the store's "
        "directory"
    )
    header = f"{'operation':<10}{'clients':>8}{'sets':>6}{'relay MB/s':>12}{'p50 ms':>8}"
    header += f"{'p95 ms':>8}{'floor':>12}{'MB/s':>8}{'p50 ms':>8}{'p95 ms':>8}"
    header += f"{'relay/floor':>13}{'echo up MB/s':>14}"
    print(header)
    for name, clients, sets, relay_row, floor_name, floor_row, echo_up in rows:
        print(
            f"{name:<10}{clients:>8}{sets:>6}{relay_row[0]:>12.1f}{relay_row[1]:>8.1f}"
            f"{relay_row[2]:>8.1f}{floor_name:>12}{floor_row[0]:>8.1f}{floor_row[1]:>8.1f}"
            f"{floor_row[2]:>8.1f}{relay_row[0] / floor_row[0]:>13.2f}"
            f"{f'{echo_up[0]:.1f}' if echo_up else '':>14}"
        )
    # Where the CPU goes: with many clients on few cores, throughput is about
    # cores / (client + server CPU per set).
    print("\nCPU ms per set (the clients' process; the server's process)")
    header = f"{'operation':<10}{'clients':>8}{'relay client':>14}{'relay server':>14}"
    header += f"{'floor':>12}{'floor client':>14}{'floor server':>14}"
    print(header)
    for name, clients, _, relay_row, floor_name, floor_row, _ in rows:
        print(
            f"{name:<10}{clients:>8}{relay_row[3]:>14.2f}{relay_row[4]:>14.2f}"
            f"{floor_name:>12}{floor_row[3]:>14.2f}{floor_row[4]:>14.2f}"
        )
    return 0


def run_benchmark(
    relay_address: str,
    echo_address: str,
    relay_pid: int,
    echo_pid: int,
    rounds: int,
    sets: int,
    per_client: int,
    clients: int,
) -> list[tuple]:
    gen = torch.Generator().manual_seed(0)
    probe = ProbeSet.from_inputs(torch.randn(PROBE_SIZE, 1, 1, 1, generator=gen), "bench")
    experiences = rounds * max(sets, per_client)
    admin = RelayClient(relay_address, ADMIN_TOKEN, timeout=120)
    admin.create_run("bench", probe, CLASSES, experiences)
    # Client c publishes as agent c (1 client) or 1 + c (32 clients): its own credential.
    relay_clients = {
        first: [
            RelayClient(
                relay_address,
                run_credential(agent_token(first + c), first + c, "bench"),
                timeout=120,
            )
            for c in range(n)
        ]
        for first, n in ((0, 1), (1, clients))
    }
    echo_clients = [EchoClient(echo_address) for _ in range(clients)]
    size = PROBE_SIZE * CLASSES * 4

    def predictions(agent: int, experience: int) -> Predictions:
        logits = torch.randn(PROBE_SIZE, CLASSES, generator=gen)
        return Predictions(agent, experience, (0,), probe.fingerprint, logits, "bench")

    rows = []
    # Agent ids 0 (1 client) and 1..clients (32 clients) keep the two settings' keys apart.
    for n_clients, n_sets, first_agent in ((1, sets, 0), (clients, per_client, 1)):
        tallies = {
            name: Tally(relay_pid if name in ("publish", "fetch") else echo_pid)
            for name in ("publish", "durable", "upload", "fetch", "download")
        }
        for r in range(rounds):
            first = r * n_sets
            batches = {
                (c, i): predictions(first_agent + c, first + i)
                for c in range(n_clients)
                for i in range(n_sets)
            }
            payloads = {k: p.logits.numpy().tobytes() for k, p in batches.items()}
            own = relay_clients[first_agent]
            operations: dict[str, Callable[[int, int], object]] = {
                "publish": lambda c, i, b=batches, own=own: own[c].publish(b[c, i]),
                "durable": lambda c, i, p=payloads: echo_clients[c].upload(p[c, i], True),
                "upload": lambda c, i, p=payloads: echo_clients[c].upload(p[c, i]),
                "fetch": lambda c, i, f=first, a=first_agent, own=own: own[c].fetch(
                    "bench", a + c, f + i
                ),
                "download": lambda c, i: echo_clients[c].download(),
            }
            # Alternate the order so neither side always runs on a warmer machine.
            order = list(operations) if r % 2 == 0 else ["durable", "publish", "upload"]
            order += [] if r % 2 == 0 else ["download", "fetch"]
            for name in order:
                tallies[name].measure(n_clients, n_sets, size, operations[name])
        total = n_clients * n_sets * rounds
        upload = tallies["upload"].summary()
        rows.append(
            (
                "publish",
                n_clients,
                total,
                tallies["publish"].summary(),
                "echo+fsync",
                tallies["durable"].summary(),
                upload,
            )
        )
        rows.append(
            (
                "fetch",
                n_clients,
                total,
                tallies["fetch"].summary(),
                "echo",
                tallies["download"].summary(),
                None,
            )
        )
    for client in (admin, *relay_clients[0], *relay_clients[1], *echo_clients):
        client.close()
    return rows


if __name__ == "__main__":
    sys.exit(main())
