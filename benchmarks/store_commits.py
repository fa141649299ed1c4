"""The relay store's commit path under concurrency: N threads each publish small prediction
sets to one SqliteRelayStore (a real SQLite file, WAL, synchronous=FULL, in a temporary
folder), so the payload files are tiny and what is timed is the metadata commit.

    .venv/bin/python benchmarks/store_commits.py [--threads 32] [--sets 20]

Prints commits per second and the latency percentiles of one publish
(`put_predictions`). Not a test: prints one line per setting and exits.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

from dkt.server.relay.store import PredictionRecord, RunRecord
from dkt.server.relay.store.sqlite import SqliteRelayStore


def run(threads: int, sets: int) -> str:
    folder = Path(tempfile.mkdtemp(prefix="dkt-store-bench-"))
    try:
        store = SqliteRelayStore(folder)
        probe = bytes(16)
        run = RunRecord(
            "bench", 10, 0, "", "fp", "bench", (4, 1), hashlib.sha256(probe).hexdigest(), 16,
            experiences=sets,
        )  # fmt: skip
        store.create_run(run, probe)
        latencies: list[float] = []
        lock = threading.Lock()

        def publish(agent: int) -> None:
            for experience in range(sets):
                payload = os.urandom(64)
                record = PredictionRecord(
                    "bench", agent, experience, (0,), "fp", "float32", (4, 4), "float32",
                    hashlib.sha256(payload).hexdigest(), len(payload),
                )  # fmt: skip
                t0 = time.perf_counter()
                store.put_predictions(record, payload)
                with lock:
                    latencies.append(time.perf_counter() - t0)

        with futures.ThreadPoolExecutor(threads) as pool:
            start = time.perf_counter()
            list(pool.map(publish, range(threads)))
            wall = time.perf_counter() - start
        store.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    latencies.sort()
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    return (
        f"{threads:>8}{len(latencies) / wall:>12.0f}{statistics.median(latencies) * 1000:>10.1f}"
        f"{p95 * 1000:>10.1f}{latencies[-1] * 1000:>10.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--sets", type=int, default=20, help="publishes per thread")
    args = parser.parse_args(argv)
    print(f"{'threads':>8}{'commits/s':>12}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}")
    for threads in args.threads:
        print(run(threads, args.sets), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
