"""`dkt run` against `dkt simulate` on the same config: both wall times, their ratio,
and where `dkt run`'s time goes.

    .venv/bin/python benchmarks/run_overhead.py                  # the default job
    .venv/bin/python benchmarks/run_overhead.py --experiences 2  # a smaller one
    .venv/bin/python benchmarks/run_overhead.py -- --backbone cnn  # any config flags

Runs simulate, run, simulate (interleaved: the machine's load is shared by both) and
compares the run with the mean of the two simulations. The breakdown comes from the
timing lines the conductor and the agents log when $DKT_TIMINGS is set (wall-clock
marks; every process is on this host, so their clocks agree):

- cluster start: `dkt run` launched -> the conductor starts (relay, SuperLink,
  SuperNodes, the app built and submitted, the ServerApp process and its imports);
- agents join: the conductor prepares the run and asks every SuperNode which agent
  it runs (one ClientApp process each);
- per train message (sent -> reply pulled), summed over messages (agent-seconds; the
  agents run in parallel, so these add up to more than the wall time):
  delivery (the SuperNode polls the SuperLink; the agent's worker acquires the task),
  task input (the worker pulls the message, context and run from the SuperNode),
  Flower hand-off; with --fresh-process (a ClientApp process per message) instead:
  delivery (up to the SuperExec starting the ClientApp), process start (Python and
  Flower), imports (dkt, torch), Flower hand-off; then for both: probe
  (relay connection, cached probe set), prepare (data set and streams), progress
  reports, relay (teachers' fetch, publish), checkpoint load/save, train (model
  build, training, evaluation, predictions) and reply (ClientApp -> SuperNode ->
  SuperLink -> the conductor's poll);
- barrier: the last reply of experience e -> the first message of e+1;
- finish: results written, the cluster shut down, `dkt run` exits.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKER_PHASES = (  # one long-lived process per agent (the default)
    ("delivery", "acquired", "sent"),
    ("task input", "pulled", "acquired"),
    ("Flower hand-off", "handler_start", "pulled"),
)
PHASES = (  # a fresh ClientApp process per message (--fresh-process)
    ("delivery", "process_start", "sent"),
    ("process start", "imports_start", "process_start"),
    ("imports", "imports_done", "imports_start"),
    ("Flower hand-off", "handler_start", "imports_done"),
)
STEP_PHASES = ("probe", "prepare", "progress", "relay", "checkpoint")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--experiences", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per agent")
    parser.add_argument("--keep", type=Path, help="keep both results folders here")
    parser.add_argument(
        "--also-fresh",
        action="store_true",
        help="also time `dkt run --fresh-process` (a ClientApp process per message, "
        "Flower's default) in the same session, for a before/after ratio",
    )
    parser.add_argument("flags", nargs="*", help="more config flags (after --)")
    args = parser.parse_args()
    config = [f"--agents={args.agents}", f"--experiences={args.experiences}"]
    config += [f"--threads={args.threads}", "--quiet", *args.flags]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep.resolve() if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        sim1 = _timed(["simulate", "--out", str(work / "simulate-1"), *config])
        launched = time.time()
        run = _timed(["run", "--out", str(work / "run"), *config], timings=True)
        ended = time.time()
        fresh = None
        if args.also_fresh:
            fresh = _timed(["run", "--fresh-process", "--out", str(work / "fresh"), *config])
            _check_same_numbers(work / "simulate-1", work / "fresh")
        sim2 = _timed(["simulate", "--out", str(work / "simulate-2"), *config])
        simulate = statistics.mean([sim1, sim2])
        _check_same_numbers(work / "simulate-1", work / "run")
        print(f"config: {' '.join(config)}")
        print(f"dkt simulate  {sim1:7.1f} s, {sim2:7.1f} s (mean {simulate:.1f} s)")
        print(f"dkt run       {run:7.1f} s")
        if fresh is not None:
            print(f"dkt run --fresh-process {fresh:7.1f} s")
        print(f"ratio run / simulate: {run / simulate:.2f}x")
        if fresh is not None:
            print(f"ratio run --fresh-process / simulate: {fresh / simulate:.2f}x")
        print()
        _breakdown(work / "run" / "cluster" / "logs", launched, ended, args.agents)
    return 0


def _timed(argv: list[str], timings: bool = False) -> float:
    env = dict(os.environ)
    if timings:
        env["DKT_TIMINGS"] = "1"
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "dkt", *argv], env=env, capture_output=True, text=True, cwd=ROOT
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"dkt {argv[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def _check_same_numbers(simulated: Path, run: Path) -> None:
    """The run's accuracy matrices must be the simulation's (the point of the exercise)."""
    a = json.loads((simulated / "metrics.json").read_text())["agents"]
    b = json.loads((run / "metrics.json").read_text())["agents"]
    for agent in a:
        for key in ("accuracy_matrix",):
            if key in a[agent] and a[agent][key] != b[agent].get(key):
                print(f"WARNING: agent {agent} {key} differs between run and simulate")


def _lines(path: Path, prefix: str) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        at = line.find(prefix)
        if at >= 0:
            out.append(json.loads(line[at + len(prefix) :]))
    return out


def _breakdown(logs: Path, launched: float, ended: float, agents: int) -> None:
    marks = _lines(logs / "conductor.log", "dkt-timing: ")
    event = {m["event"]: m["t"] for m in marks if "agent" not in m}
    sent = {(m["agent"], m["experience"]): m["t"] for m in marks if m["event"] == "sent"}
    reply = {(m["agent"], m["experience"]): m["t"] for m in marks if m["event"] == "reply"}
    agent_lines = {}
    for a in range(agents):
        for line in _lines(logs / f"agent-{a}.log", "dkt-timings: "):
            agent_lines[(line["agent"], line["experience"])] = line  # the last try wins
    total = ended - launched
    rows: list[tuple[str, float]] = [
        ("cluster start (to the conductor's start)", event["run_start"] - launched),
        ("agents join (prepare, queries)", event["agents_ready"] - event["run_start"]),
        ("experiences (first sent -> last reply)", max(reply.values()) - min(sent.values())),
        ("finish (results, shutdown, exit)", ended - max(reply.values())),
    ]
    print(f"dkt run wall time, {total:.1f} s:")
    for name, seconds in rows:
        print(f"  {name:44s} {seconds:7.1f} s  {100 * seconds / total:5.1f}%")
    experiences = sorted({e for _, e in sent})
    barrier = [
        min(t for (_, e), t in sent.items() if e == x + 1)
        - max(t for (_, e), t in reply.items() if e == x)
        for x in experiences[:-1]
    ]
    print(f"  of which barriers between experiences      {sum(barrier):7.1f} s")
    per: dict[str, list[float]] = {}
    for key, line in agent_lines.items():
        if key not in sent or key not in reply:
            continue
        line = {**line, "sent": sent[key]}
        phases = WORKER_PHASES if "acquired" in line else PHASES
        parts = {name: line[a] - line[b] for name, a, b in phases if line.get(b)}
        parts.update({p: line.get(p, 0.0) for p in STEP_PHASES})
        step = line.get("step", 0.0)
        parts["train (model, train, eval)"] = (
            step - line.get("relay", 0) - line.get("checkpoint", 0)
        )
        parts["reply"] = reply[key] - line["handler_end"]
        handler = line["handler_end"] - line["handler_start"]
        timed = ("probe", "prepare", "progress", "step")  # relay, checkpoint: inside step
        parts["handler, untimed"] = handler - sum(line.get(p, 0.0) for p in timed)
        parts["relay"] = line.get("relay", 0.0)
        parts["total (sent -> reply)"] = reply[key] - sent[key]
        for name, seconds in parts.items():
            per.setdefault(name, []).append(seconds)
    n = len(next(iter(per.values()), []))
    print(f"\nper train message ({n} messages; seconds):")
    print(f"  {'phase':30s} {'mean':>7s} {'max':>7s} {'sum':>8s}")
    for name, values in per.items():
        print(f"  {name:30s} {statistics.mean(values):7.2f} {max(values):7.2f} {sum(values):8.1f}")


if __name__ == "__main__":
    raise SystemExit(main())
