"""Relay throughput: publish and fetch of 2 MB prediction sets with 1 and 32 concurrent
clients, each next to its floors on the same machine in the same run.

    .venv/bin/python benchmarks/relay_throughput.py [--rounds 3] [--sets 8] [--per-client 1]

The relay and plain gRPC echo servers run as subprocesses on loopback. The floors:
- fetch: an echo server streams the same bytes back in 1 MiB chunks (no lookup,
  hashing or metadata);
- publish: an echo server takes the same bytes in 1 MiB chunks, writes them to a new
  file in the relay's data directory and fsyncs it before answering (what any durable
  store must at least do; no validation, hashing, rename or metadata commit).
Two more columns say what stands between the relay and those floors:
- "+SHA-256": the same floors doing the hashing relay.proto asks of each end (a fetch:
  the client checks the SHA-256 of what arrives; a publish: the client hashes before
  sending, as the first chunk carries the hash, and the server checks it on receipt);
- "aio": the plain floors served by gRPC's asyncio server (grpc.aio) instead of the
  thread-pool server the relay uses.
Rounds interleave relay and floor calls so all see the same machine load; MB/s is total
bytes over total wall time of all rounds. A second table gives the CPU milliseconds per
set of the clients' process and of the server's: with many clients on few cores,
throughput is about cores / (client + server CPU per set).
Not a test: prints two tables and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
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
_ECHO_DURABLE_UPLOAD = "/bench.Echo/DurableUpload"
_ECHO_HASHED_UPLOAD = "/bench.Echo/HashedDurableUpload"
_ECHO_DOWNLOAD = "/bench.Echo/Download"
_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 8 << 20),
    ("grpc.max_send_message_length", 8 << 20),
]


# -- the echo server -----------------------------------------------------------------


def serve_echo(ready_file: Path, durable_dir: Path, use_aio: bool) -> None:
    """A gRPC server that takes a chunked upload (optionally writing and fsyncing it to
    a new file in `durable_dir`, optionally checking its SHA-256 first) and streams a
    held buffer back; the thread-pool server or, with `use_aio`, the asyncio one."""
    held: dict[str, bytes] = {"payload": bytes(PROBE_SIZE * CLASSES * 4)}

    def store(payload: bytes, hashed: bool) -> bytes:
        if hashed:
            hashlib.sha256(payload).hexdigest()  # what a relay checks against the metadata
        with open(durable_dir / uuid.uuid4().hex, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        return len(payload).to_bytes(8, "little")

    def upload(chunks, _context):  # type: ignore[no-untyped-def]
        return store(b"".join(chunks), False)

    def hashed_upload(chunks, _context):  # type: ignore[no-untyped-def]
        return store(b"".join(chunks), True)

    def download(_request, _context):  # type: ignore[no-untyped-def]
        payload = held["payload"]
        for offset in range(0, len(payload), CHUNK):
            yield payload[offset : offset + CHUNK]

    async def aio_upload(chunks, _context):  # type: ignore[no-untyped-def]
        payload = b"".join([chunk async for chunk in chunks])
        return await asyncio.get_running_loop().run_in_executor(None, store, payload, False)

    async def aio_download(_request, _context):  # type: ignore[no-untyped-def]
        for chunk in download(_request, _context):
            yield chunk

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {
            "DurableUpload": grpc.stream_unary_rpc_method_handler(
                aio_upload if use_aio else upload
            ),
            "HashedDurableUpload": grpc.stream_unary_rpc_method_handler(hashed_upload),
            "Download": grpc.unary_stream_rpc_method_handler(aio_download if use_aio else download),
        },
    )
    if use_aio:
        asyncio.run(_serve_aio(handler, ready_file))
        return
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


async def _serve_aio(handler: grpc.GenericRpcHandler, ready_file: Path) -> None:
    server = grpc.aio.server(options=_GRPC_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ready_file.write_text(json.dumps({"port": port}))
    done = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, done.set)
    await done.wait()
    await server.stop(0)


class EchoClient:
    def __init__(self, address: str) -> None:
        self._channel = grpc.insecure_channel(address, options=_GRPC_OPTIONS)
        self._durable_upload = self._channel.stream_unary(_ECHO_DURABLE_UPLOAD)
        self._hashed_upload = self._channel.stream_unary(_ECHO_HASHED_UPLOAD)
        self._download = self._channel.unary_stream(_ECHO_DOWNLOAD)

    def upload(self, payload: bytes, hashed: bool = False) -> None:
        """A durable upload; `hashed`: hashed first here and checked there (relay.proto's
        SHA-256 on publish)."""
        if hashed:
            hashlib.sha256(payload).hexdigest()
        chunks = (payload[o : o + CHUNK] for o in range(0, len(payload), CHUNK))
        (self._hashed_upload if hashed else self._durable_upload)(chunks, timeout=60)

    def download(self, hashed: bool = False) -> bytes:
        """The held bytes; `hashed`: hashed as they arrive (relay.proto's SHA-256 on
        fetch)."""
        if not hashed:
            return b"".join(self._download(b"", timeout=60))
        digest = hashlib.sha256()
        parts = []
        for part in self._download(b"", timeout=60):
            digest.update(part)
            parts.append(part)
        digest.hexdigest()
        return b"".join(parts)

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
    parser.add_argument("--echo-server", choices=["sync", "aio"], help=argparse.SUPPRESS)
    parser.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--durable-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo_server:
        serve_echo(args.ready_file, args.durable_dir, args.echo_server == "aio")
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
        servers = {"relay": (f"127.0.0.1:{relay_ready['port']}", relay.pid)}
        for kind in ("sync", "aio"):
            ready = workdir / f"echo-{kind}.json"
            echo, echo_ready = start(
                [sys.executable, __file__, "--echo-server", kind, "--ready-file", str(ready)]
                + ["--durable-dir", str(floor_dir)],
                ready,
            )
            procs.append(echo)
            servers[kind] = (f"127.0.0.1:{echo_ready['port']}", echo.pid)
        rows = run_benchmark(servers, args.rounds, args.sets, args.per_client, args.clients)
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
        "directory; +SHA-256 = the floor with relay.proto's hashing; aio = the floor on "
        "grpc.aio"
    )
    header = f"{'operation':<10}{'clients':>8}{'sets':>6}{'relay MB/s':>12}{'p50 ms':>8}"
    header += f"{'floor MB/s':>12}{'p50 ms':>8}{'relay/floor':>13}"
    header += f"{'+SHA-256 MB/s':>15}{'relay/+SHA':>12}{'aio MB/s':>10}"
    print(header)
    for name, clients, sets, t in rows:
        relay_row, floor_row, hashed_row, aio_row = (
            t[k].summary() for k in ("relay", "floor", "hashed", "aio")
        )
        print(
            f"{name:<10}{clients:>8}{sets:>6}{relay_row[0]:>12.1f}{relay_row[1]:>8.1f}"
            f"{floor_row[0]:>12.1f}{floor_row[1]:>8.1f}{relay_row[0] / floor_row[0]:>13.2f}"
            f"{hashed_row[0]:>15.1f}{relay_row[0] / hashed_row[0]:>12.2f}{aio_row[0]:>10.1f}"
        )
    # Where the CPU goes: with many clients on few cores, throughput is about
    # cores / (client + server CPU per set).
    print("\nCPU ms per set: client process / server process")
    header = f"{'operation':<10}{'clients':>8}{'relay':>14}{'floor':>14}{'+SHA-256':>14}"
    header += f"{'aio':>14}"
    print(header)
    for name, clients, _, t in rows:
        cells = "".join(
            f"{f'{r[3]:.2f} / {r[4]:.2f}':>14}"
            for r in (t[k].summary() for k in ("relay", "floor", "hashed", "aio"))
        )
        print(f"{name:<10}{clients:>8}{cells}")
    return 0


def run_benchmark(
    servers: dict[str, tuple[str, int]], rounds: int, sets: int, per_client: int, clients: int
) -> list[tuple[str, int, int, dict[str, Tally]]]:
    """(operation, clients, sets, {relay, floor, hashed, aio: Tally}) for publish and fetch
    with 1 and `clients` clients; `servers`: address and pid of relay, sync and aio."""
    relay_address, relay_pid = servers["relay"]
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
    echo = {
        kind: [EchoClient(servers[kind][0]) for _ in range(clients)] for kind in ("sync", "aio")
    }
    size = PROBE_SIZE * CLASSES * 4

    def predictions(agent: int, experience: int) -> Predictions:
        logits = torch.randn(PROBE_SIZE, CLASSES, generator=gen)
        return Predictions(agent, experience, (0,), probe.fingerprint, logits, "bench")

    pids = {"relay": relay_pid, "floor": servers["sync"][1], "hashed": servers["sync"][1]}
    pids["aio"] = servers["aio"][1]
    rows = []
    # Agent ids 0 (1 client) and 1..clients (32 clients) keep the two settings' keys apart.
    for n_clients, n_sets, first_agent in ((1, sets, 0), (clients, per_client, 1)):
        tallies = {
            (op, kind): Tally(pids[kind])
            for op in ("publish", "fetch")
            for kind in ("relay", "floor", "hashed", "aio")
        }
        own = relay_clients[first_agent]
        sync, aio = echo["sync"], echo["aio"]
        for r in range(rounds):
            first = r * n_sets
            batches = {
                (c, i): predictions(first_agent + c, first + i)
                for c in range(n_clients)
                for i in range(n_sets)
            }
            operations = _operations(own, sync, aio, batches, first, first_agent)
            # Publishes before fetches (a fetch reads what was published); within each,
            # alternate the order so no side always runs on a warmer machine.
            for op in ("publish", "fetch"):
                kinds = ["relay", "floor", "hashed", "aio"]
                for kind in kinds if r % 2 == 0 else kinds[::-1]:
                    tallies[op, kind].measure(n_clients, n_sets, size, operations[op, kind])
        total = n_clients * n_sets * rounds
        for op in ("publish", "fetch"):
            rows.append((op, n_clients, total, {k: v for (o, k), v in tallies.items() if o == op}))
    for client in (admin, *relay_clients[0], *relay_clients[1], *echo["sync"], *echo["aio"]):
        client.close()
    return rows


def _operations(
    own: list[RelayClient],
    sync: list[EchoClient],
    aio: list[EchoClient],
    batches: dict[tuple[int, int], Predictions],
    first: int,
    first_agent: int,
) -> dict[tuple[str, str], Callable[[int, int], object]]:
    """(operation, kind) -> what client c does for its i-th set of a round."""
    payloads = {k: p.logits.numpy().tobytes() for k, p in batches.items()}
    return {
        ("publish", "relay"): lambda c, i: own[c].publish(batches[c, i]),
        ("publish", "floor"): lambda c, i: sync[c].upload(payloads[c, i]),
        ("publish", "hashed"): lambda c, i: sync[c].upload(payloads[c, i], True),
        ("publish", "aio"): lambda c, i: aio[c].upload(payloads[c, i]),
        ("fetch", "relay"): lambda c, i: own[c].fetch("bench", first_agent + c, first + i),
        ("fetch", "floor"): lambda c, i: sync[c].download(),
        ("fetch", "hashed"): lambda c, i: sync[c].download(True),
        ("fetch", "aio"): lambda c, i: aio[c].download(),
    }


if __name__ == "__main__":
    sys.exit(main())
