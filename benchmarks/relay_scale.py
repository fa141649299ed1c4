"""Relay under many agents: N simulated agents on loopback, each publishing its prediction
sets and fetching its peers', bounded in count and in time.

    .venv/bin/python benchmarks/relay_scale.py                      # 32 agents, 15 s
    .venv/bin/python benchmarks/relay_scale.py --agents 256 --seconds 60 --processes 2

A real relay runs as a subprocess (port 0, a temporary store, `--workers` threads). Each
agent is a thread with its own `RelayClient` (its own connection, as on its own host),
split over `--processes` client processes so the clients' GIL is not what is measured.
An agent loops over experiences until the time is up: publish its set for experience
e, then fetch the newest set at or before e - 1 of each of its `--peers` peers (agents
a+1, a+2, ...; a peer with nothing published yet is a miss, not an error). Prints p50,
p95 and p99 latency of publish and fetch, throughput, errors by gRPC status code (after
RelayClient's own retries of UNAVAILABLE), and the relay's store size and memory.
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
from collections import Counter
from pathlib import Path

MB = 1e6


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


ADMIN_TOKEN = "benchmark-admin-token-0123456789"


def agent_token(agent_id: int) -> str:
    """A benchmark's (not secret) token of one simulated agent."""
    return f"benchmark-agent-{agent_id:06d}-token"


# -- one client process: a slice of the agents -------------------------------------------


def run_agents(args: argparse.Namespace) -> dict:
    """Run agents [first, last) until `deadline` (time.time()); their calls, as a dict."""
    import torch

    from dkt.common.training.predictions import Predictions
    from dkt.proto.relay_client import RelayClient, RelayError
    from dkt.proto.run_credential import run_credential

    base = torch.randn(args.probe_size, args.classes, generator=torch.Generator().manual_seed(0))
    publish_ms: list[float] = []
    fetch_ms: list[float] = []
    errors: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    clients = [
        RelayClient(
            args.address, run_credential(agent_token(a), a, args.run_id), timeout=args.timeout
        )
        for a in range(args.first, args.last)
    ]
    start = threading.Barrier(len(clients) + 1)

    def agent(agent_id: int, client: RelayClient) -> None:
        start.wait()
        peers = [(agent_id + k) % args.agents for k in range(1, args.peers + 1)]
        for experience in range(args.experiences):
            if time.time() >= args.deadline:
                return
            # Distinct content per (agent, experience): no two sets share a payload file
            # (and every logit stays within the relay's bound, --max-logit).
            logits = base + (agent_id * args.experiences + experience) * 1e-3
            predictions = Predictions(
                agent_id, experience, (0,), args.fingerprint, logits, args.run_id
            )
            t0 = time.perf_counter()
            try:
                client.publish(predictions)
                ok = True
            except RelayError as err:
                ok = False
                with lock:
                    errors[f"publish {err.code.name}"] += 1
            with lock:
                if ok:
                    publish_ms.append((time.perf_counter() - t0) * 1000)
            if experience == 0:
                continue
            for peer in peers:
                if time.time() >= args.deadline:
                    return
                t0 = time.perf_counter()
                try:
                    got = client.fetch_latest(args.run_id, peer, experience - 1)
                except RelayError as err:
                    with lock:
                        errors[f"fetch {err.code.name}"] += 1
                    continue
                elapsed = (time.perf_counter() - t0) * 1000
                with lock:
                    if got is None:
                        counts["fetch misses"] += 1
                    else:
                        fetch_ms.append(elapsed)

    threads = [
        threading.Thread(target=agent, args=(args.first + i, c), daemon=True)
        for i, c in enumerate(clients)
    ]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.time()
    for thread in threads:
        thread.join(max(0.0, args.deadline - time.time()) + args.timeout + 30)
    ended = time.time()
    for client in clients:
        client.close()
    return {
        "publish_ms": publish_ms,
        "fetch_ms": fetch_ms,
        "errors": dict(errors),
        "counts": dict(counts),
        "began": began,
        "ended": ended,
        "stuck": sum(t.is_alive() for t in threads),
    }


# -- the driver -----------------------------------------------------------------------


def start_relay(workdir: Path, workers: int, agents: int) -> tuple[subprocess.Popen[bytes], dict]:
    ready = workdir / "relay.json"
    command = [sys.executable, "-m", "dkt.server.relay", "--port", "0", "--status-port", "-1"]
    command += ["--data-dir", str(workdir / "data"), "--insecure", "--log-level", "WARNING"]
    command += ["--workers", str(workers), "--ready-file", str(ready)]
    # Every simulated agent has its own token, as real agents do (the relay limits the
    # streams of each credential).
    env = {
        **os.environ,
        "DKT_RELAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "DKT_RELAY_AGENT_TOKENS": ",".join(f"{a}={agent_token(a)}" for a in range(agents)),
    }
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the relay did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    return proc, json.loads(ready.read_text())


def relay_memory(pid: int) -> tuple[float, int]:
    """(resident MB, threads) of a process, from /proc (0s where there is none)."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
    except OSError:
        return 0.0, 0
    return int(fields["VmHWM"].split()[0]) * 1024 / MB, int(fields["Threads"])


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=32, help="simulated agents")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long they run")
    parser.add_argument("--peers", type=int, default=2, help="peers each agent fetches")
    parser.add_argument("--processes", type=int, default=1, help="client processes")
    parser.add_argument("--workers", type=int, default=64, help="the relay's --workers")
    parser.add_argument("--probe-size", type=int, default=5243, help="rows of a set")
    parser.add_argument("--classes", type=int, default=100, help="columns of a set")
    parser.add_argument("--experiences", type=int, default=1000, help="the run's experiences")
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline of each call")
    # Internal: one client process.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--address", "--run-id", "--fingerprint"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    for name in ("--first", "--last"):
        parser.add_argument(name, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_agents(args)))
        return 0
    if args.agents < 2 or args.peers >= args.agents or args.processes < 1:
        parser.error("need --agents >= 2, --peers < --agents and --processes >= 1")

    import torch

    from dkt.common.data.probe import ProbeSet
    from dkt.proto.relay_client import RelayClient

    workdir = Path(tempfile.mkdtemp(prefix="dkt-relay-scale-"))
    relay = None
    try:
        relay, ready = start_relay(workdir, args.workers, args.agents)
        address = f"127.0.0.1:{ready['port']}"
        probe = ProbeSet.from_inputs(torch.randn(args.probe_size, 1, 1, 1), "scale")
        with RelayClient(address, ADMIN_TOKEN) as admin:
            admin.create_run(
                "scale", probe, args.classes, args.experiences, expected_agents=args.agents
            )
        # The clients start together once every process has made its channels.
        deadline = time.time() + args.seconds + 2.0 + 0.02 * args.agents
        bounds = [round(i * args.agents / args.processes) for i in range(args.processes + 1)]
        procs = []
        for first, last in zip(bounds, bounds[1:], strict=False):
            command = [sys.executable, __file__, "--worker", "--address", address]
            command += ["--run-id", "scale", "--fingerprint", probe.fingerprint]
            command += ["--first", str(first), "--last", str(last), "--deadline", str(deadline)]
            command += ["--agents", str(args.agents), "--peers", str(args.peers)]
            command += ["--probe-size", str(args.probe_size), "--classes", str(args.classes)]
            command += ["--experiences", str(args.experiences), "--timeout", str(args.timeout)]
            procs.append(subprocess.Popen(command, stdout=subprocess.PIPE))
        results = [json.loads(p.communicate()[0]) for p in procs]
        rss_mb, threads = relay_memory(relay.pid)
        store_bytes = directory_bytes(workdir / "data")
    finally:
        if relay is not None:
            relay.send_signal(signal.SIGTERM)
            relay.wait(timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)

    size = args.probe_size * args.classes * 4
    began = min(r["began"] for r in results)
    wall = max(r["ended"] for r in results) - began
    errors: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
        counts.update(r["counts"])
    print(
        f"{args.agents} agents ({args.processes} client process(es)), {wall:.0f} s, "
        f"sets of {args.probe_size} x {args.classes} float32 = {size / MB:.2f} MB, "
        f"{args.peers} peers each, relay --workers {args.workers}, {os.cpu_count()} CPUs"
    )
    print(
        f"{'operation':<10}{'calls':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'max ms':>9}{'calls/s':>9}{'MB/s':>8}"
    )
    for name in ("publish", "fetch"):
        ordered = sorted(x for r in results for x in r[f"{name}_ms"])
        median = statistics.median(ordered) if ordered else float("nan")
        print(
            f"{name:<10}{len(ordered):>8}{median:>9.1f}{percentile(ordered, 0.95):>9.1f}"
            f"{percentile(ordered, 0.99):>9.1f}{(ordered or [float('nan')])[-1]:>9.1f}"
            f"{len(ordered) / wall:>9.1f}{len(ordered) * size / MB / wall:>8.1f}"
        )
    print(
        "errors by status: "
        + (", ".join(f"{k} {v}" for k, v in sorted(errors.items())) or "none")
        + f"; fetch misses (peer not published yet): {counts['fetch misses']}"
        + f"; agents still running at the end: {sum(r['stuck'] for r in results)}"
    )
    print(
        f"relay: peak RSS {rss_mb:.0f} MB, {threads} threads; store {store_bytes / MB:.0f} MB "
        f"({args.agents * size / MB:.0f} MB per experience of all agents)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
