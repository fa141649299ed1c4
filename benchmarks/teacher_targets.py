"""Teacher targets fetched raw (each agent fetches its N - 1 peers' sets and combines
them) against combined at the relay (one FetchTeacherTargets call), with the `all` peer
policy: bytes per agent per experience and time.

    .venv/bin/python benchmarks/teacher_targets.py                       # 16 and 64 agents
    .venv/bin/python benchmarks/teacher_targets.py --agents 16,64,256 --students 2

For each N a real relay runs as a subprocess (port 0, a temporary store, token auth as
in relay_scale.py); N prediction sets of experience 0 (`--probe-size` x `--classes`
float32, 2.1 MB by default) are published. Then `--students` agents, spread over the
ids, each get their teacher for experience 1 both ways with their own run credential,
one after the other: "agents" fetches every peer's set (FetchPredictions) and
`aggregate`s them; "relay" makes one FetchTeacherTargets call. The two teachers are
checked to agree. Bytes per agent are exact (the logits received); time per agent is
the median over the students; time per experience is N x that, the relay serving one
agent at a time (on a machine with few cores the relay is the bottleneck either way).

    .venv/bin/python benchmarks/teacher_targets.py --combine-memory 256

prints instead what one FetchTeacherTargets call costs the relay at N - 1 peers for each
aggregation: the time of its combining step and the growth of peak RSS, each measured
in a fresh process on a real SQLite store in a temporary folder (a process's peak RSS
only grows, so one call per process).
Not a test: prints a table and exits.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from relay_scale import ADMIN_TOKEN, MB, agent_token, start_relay  # noqa: E402


def measure(agents: int, args: argparse.Namespace) -> dict[str, float]:
    """Bytes and seconds per agent, both ways, for a run of `agents` agents."""
    import torch

    from dkt.common.data.probe import ProbeSet
    from dkt.common.training.peers import PeerSet
    from dkt.common.training.predictions import Predictions
    from dkt.common.training.teacher import aggregate
    from dkt.proto.relay_client import RelayClient
    from dkt.proto.run_credential import run_credential

    workdir = Path(tempfile.mkdtemp(prefix="dkt-teacher-targets-"))
    relay = None
    gen = torch.Generator().manual_seed(0)
    try:
        relay, ready = start_relay(workdir, 64, agents)
        address = f"127.0.0.1:{ready['port']}"
        probe = ProbeSet.from_inputs(torch.randn(args.probe_size, 1, 1, 1), "teachers")
        base = torch.randn(args.probe_size, args.classes, generator=gen)
        with RelayClient(address, ADMIN_TOKEN, timeout=600) as admin:
            admin.create_run("teachers", probe, args.classes, 2, expected_agents=agents)
            for a in range(agents):
                classes = tuple(c for c in range(args.classes) if c % agents == a % agents)
                logits = base + 0.01 * a
                admin.publish(
                    Predictions(a, 0, classes or (0,), probe.fingerprint, logits, "teachers")
                )
            # The relay loads torch on its first FetchTeacherTargets: not part of a step.
            admin.fetch_teacher_targets("teachers", 0, 1, [PeerSet(1, 0)], args.aggregation)
        students = sorted({round(i * (agents - 1) / max(args.students - 1, 1))
                           for i in range(args.students)})  # fmt: skip
        raw_s, relay_s, raw_bytes, relay_bytes = [], [], [], []
        for s in students:
            peers = [p for p in range(agents) if p != s]
            credential = run_credential(agent_token(s), s, "teachers")
            with RelayClient(address, credential, timeout=600) as client:
                t0 = time.perf_counter()
                sets = [client.fetch("teachers", p, 0) for p in peers]
                own = aggregate(sets, args.aggregation)
                raw_s.append(time.perf_counter() - t0)
                raw_bytes.append(sum(p.logits.numel() * 4 for p in sets))
                del sets
                t0 = time.perf_counter()
                got = client.fetch_teacher_targets(
                    "teachers", s, 1, [PeerSet(p, 0) for p in peers], args.aggregation
                )
                relay_s.append(time.perf_counter() - t0)
                relay_bytes.append(got.payload_bytes)
            assert own is not None and got.teacher is not None
            torch.testing.assert_close(got.teacher.logits, own.logits, rtol=1e-6, atol=1e-5)
    finally:
        if relay is not None:
            relay.send_signal(signal.SIGTERM)
            relay.wait(timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "raw_bytes": statistics.median(raw_bytes),
        "relay_bytes": statistics.median(relay_bytes),
        "raw_s": statistics.median(raw_s),
        "relay_s": statistics.median(relay_s),
        "students": len(students),
    }


def combine_cost(agents: int, aggregation: str, probe_size: int, classes: int) -> str:
    """One FetchTeacherTargets combine over `agents` - 1 stored sets, in this process:
    a JSON line with its seconds and the growth of this process's peak RSS."""
    import hashlib
    import json
    import resource

    import numpy as np

    from dkt.proto.dkt.v1 import relay_pb2
    from dkt.server.relay import teacher_targets
    from dkt.server.relay.store import PredictionRecord, RunRecord
    from dkt.server.relay.store.sqlite import SqliteRelayStore

    folder = Path(tempfile.mkdtemp(prefix="dkt-combine-"))
    try:
        store = SqliteRelayStore(folder)
        probe = bytes(16)
        digest = hashlib.sha256(probe).hexdigest()
        store.create_run(
            RunRecord("t", classes, 0, "", "fp", "s", (probe_size, 1), digest, 16, 2), probe
        )
        base = np.random.default_rng(0).standard_normal((probe_size, classes), np.float32)
        for a in range(agents):
            payload = (base + 0.01 * a).astype("<f4").tobytes()
            record = PredictionRecord(
                "t", a, 0, (a % classes,), "fp", "float32", (probe_size, classes), "float32",
                hashlib.sha256(payload).hexdigest(), len(payload),
            )  # fmt: skip
            store.put_predictions(record, payload)
        request = relay_pb2.FetchTeacherTargetsRequest(
            run_id="t", agent_id=0, experience=1, aggregation=aggregation
        )
        for peer in range(1, agents):
            request.peers.add(agent_id=peer, experience=0)
        run = store.require_run("t")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        meta, _ = teacher_targets.combine(store, run, request, 1 << 40)
        seconds = time.perf_counter() - t0
        growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
        assert len(meta.sources) == agents - 1
        store.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return json.dumps({"seconds": seconds, "rss_growth_mb": growth / MB})


def print_combine_costs(agents: int, args: argparse.Namespace) -> None:
    import json
    import subprocess

    print(
        f"one FetchTeacherTargets combine over {agents - 1} peers' sets of {args.probe_size} "
        f"x {args.classes} float32, each in a fresh process"
    )
    print(f"{'aggregation':<14}{'s per call':>11}{'peak RSS growth MB':>20}")
    for aggregation in ("mean", "coverage", "median", "trimmed-mean"):
        child = [sys.executable, __file__, "--combine-child", aggregation, str(agents)]
        child += ["--probe-size", str(args.probe_size), "--classes", str(args.classes)]
        out = subprocess.run(child, capture_output=True, text=True, check=True).stdout
        cost = json.loads(out.splitlines()[-1])
        print(
            f"{aggregation:<14}{cost['seconds']:>11.2f}{cost['rss_growth_mb']:>20.0f}", flush=True
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", default="16,64", help="comma-separated numbers of agents")
    parser.add_argument("--students", type=int, default=3, help="agents timed per N")
    parser.add_argument("--probe-size", type=int, default=5243, help="rows of a set")
    parser.add_argument("--classes", type=int, default=100, help="columns of a set")
    parser.add_argument("--aggregation", default="coverage", help="how teachers are combined")
    parser.add_argument(
        "--combine-memory",
        type=int,
        metavar="N",
        help="instead: the relay's combining at N agents, per aggregation (time, peak RSS)",
    )
    parser.add_argument("--combine-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.combine_child:
        aggregation, agents = args.combine_child
        print(combine_cost(int(agents), aggregation, args.probe_size, args.classes))
        return 0
    if args.combine_memory:
        print_combine_costs(args.combine_memory, args)
        return 0
    sizes = [int(n) for n in args.agents.split(",")]
    set_mb = args.probe_size * args.classes * 4 / MB
    print(
        f"all peers, sets of {args.probe_size} x {args.classes} float32 = {set_mb:.2f} MB, "
        f"aggregation {args.aggregation}; per agent: median of --students agents"
    )
    print(
        f"{'agents':>6} {'MB/agent raw':>13} {'MB/agent relay':>15} {'s/agent raw':>12} "
        f"{'s/agent relay':>14} {'s/exp raw':>10} {'s/exp relay':>12}"
    )
    for n in sizes:
        r = measure(n, args)
        print(
            f"{n:>6} {r['raw_bytes'] / MB:>13.1f} {r['relay_bytes'] / MB:>15.2f} "
            f"{r['raw_s']:>12.2f} {r['relay_s']:>14.2f} {n * r['raw_s']:>10.1f} "
            f"{n * r['relay_s']:>12.1f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
