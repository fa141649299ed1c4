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

prints instead what one FetchTeacherTargets call over N - 1 peers costs the relay, for
each aggregation: seconds per call (the faster of two) and the growth of the relay's peak
RSS over the calls, each aggregation on a fresh relay (a process's peak only grows) after
one small call that loads torch there.
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

from relay_scale import ADMIN_TOKEN, MB, agent_token, relay_memory, start_relay  # noqa: E402


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


def combine_cost(agents: int, aggregation: str, args: argparse.Namespace) -> dict[str, float]:
    """What one FetchTeacherTargets call over `agents` - 1 peers costs a fresh relay:
    seconds per call (the faster of two) and the growth of the relay's peak RSS."""
    import torch

    from dkt.common.data.probe import ProbeSet
    from dkt.common.training.peers import PeerSet
    from dkt.common.training.predictions import Predictions
    from dkt.proto.relay_client import RelayClient

    workdir = Path(tempfile.mkdtemp(prefix="dkt-combine-"))
    relay = None
    try:
        relay, ready = start_relay(workdir, 64, agents)
        gen = torch.Generator().manual_seed(0)
        probe = ProbeSet.from_inputs(torch.randn(args.probe_size, 1, 1, 1), "teachers")
        base = torch.randn(args.probe_size, args.classes, generator=gen)
        with RelayClient(f"127.0.0.1:{ready['port']}", ADMIN_TOKEN, timeout=600) as admin:
            admin.create_run("teachers", probe, args.classes, 2, expected_agents=agents)
            for a in range(agents):
                logits = base + 0.01 * a
                admin.publish(
                    Predictions(a, 0, (a % args.classes,), probe.fingerprint, logits, "teachers")
                )
            # The first call loads torch in the relay: before the peak is read.
            admin.fetch_teacher_targets("teachers", 0, 1, [PeerSet(1, 0)], aggregation)
            before, _ = relay_memory(relay.pid)
            peers = [PeerSet(p, 0) for p in range(1, agents)]
            seconds = []
            for _ in range(2):
                t0 = time.perf_counter()
                admin.fetch_teacher_targets("teachers", 0, 1, peers, aggregation)
                seconds.append(time.perf_counter() - t0)
            after, _ = relay_memory(relay.pid)
    finally:
        if relay is not None:
            relay.send_signal(signal.SIGTERM)
            relay.wait(timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)
    return {"seconds": min(seconds), "rss_growth_mb": after - before}


def print_combine_costs(agents: int, args: argparse.Namespace) -> None:
    print(
        f"one FetchTeacherTargets call over {agents - 1} peers' sets of {args.probe_size} x "
        f"{args.classes} float32, a fresh relay for each aggregation"
    )
    print(f"{'aggregation':<14}{'s per call':>11}{'relay peak RSS growth MB':>26}")
    for aggregation in ("mean", "coverage", "median", "trimmed-mean"):
        cost = combine_cost(agents, aggregation, args)
        print(f"{aggregation:<14}{cost['seconds']:>11.2f}{cost['rss_growth_mb']:>26.0f}")


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
    args = parser.parse_args(argv)
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
