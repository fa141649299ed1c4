"""Time `dkt simulate` (the in-process driver) as the number of agents doubles, and
say where the time goes.

    python benchmarks/scale.py                                  # 2..32 agents on digits
    python benchmarks/scale.py --agents 2,4,8 --experiences 3 --epochs 2
    python benchmarks/scale.py --aggregation mean --schedule sequential

For each agent count it runs `simulate` (the fastest of `--repeats` rounds; mlp on
digits, peer policy `all`, so every agent distils from all N-1 others) and prints the
wall seconds, seconds per agent, the growth factor over the previous row, and the
exclusive time of each part: setup (`prepare`), building the agents, training
(`Agent.fit`), evaluation, probe prediction, fetching the teachers' predictions
(`teacher_predictions`), aggregating them (`aggregate`), the exchange (publish,
fetch, latest, encoded_size), and the results (`RunResult.of_run`, `build_metrics`,
`render_summary`), writing the results folder (`write_results`: metrics.json,
matrices, plots: `--plots`, as `dkt simulate --plots`; `--no-write` skips it), building
agent specs
(`ExperimentConfig.agent_spec`, wherever it is called) and the rest (`other`); then
the MB of data the agents' streams hold. Last, the split of each row: training
(`train`) against writing the results folder (`write`), which should stay under half of
training (issue 19: 33.8 s of plots against 3.7 s of training at 32 agents, before the
summary plot set became the default beyond 8 agents).
Linear scaling keeps seconds per agent flat (growth ×2.0 per doubling).

The timers wrap the library's functions here, in the benchmark (nothing in the
library changes); time in a part is exclusive of the parts it calls. One thread.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

import torch

import dkt.common.engine.simulation as simulation
import dkt.common.engine.step as step
from dkt.common.engine.setup import Setup
from dkt.common.evaluation.results import (
    ALL_PLOTS_UP_TO,
    PLOT_SETS,
    RunResult,
    build_metrics,
    plot_set,
    render_summary,
    write_results,
)
from dkt.common.run.config import ExperimentConfig
from dkt.common.training.agent import Agent
from dkt.common.training.exchange import InMemoryExchange

PARTS = (
    "setup",
    "agents",
    "train",
    "eval",
    "probe",
    "fetch",
    "aggregate",
    "exchange",
    "results",
    "write",
    "spec",
    "other",
)


class Timers:
    """Exclusive seconds per part: a part's time excludes the timed parts it calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[list[float]] = []  # per open part: [start, child seconds]

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        frame = [time.perf_counter(), 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            total = time.perf_counter() - frame[0]
            self.seconds[name] += total - frame[1]
            if self._stack:
                self._stack[-1][1] += total

    def wrap(self, name: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            with self.part(name):
                return fn(*args, **kwargs)

        return timed


@contextlib.contextmanager
def instrumented(timers: Timers) -> Iterator[None]:
    """Wrap the library functions each part is made of, and unwrap them afterwards."""
    targets = [
        (simulation, "prepare", "setup"),
        (Setup, "make_agent", "agents"),
        (Agent, "fit", "train"),
        (Agent, "_evaluate", "eval"),
        (Agent, "predict_probe", "probe"),
        (step, "teacher_predictions", "fetch"),
        (step, "fetch_teacher", "fetch"),  # the library's newer name for the same part
        (step, "aggregate", "aggregate"),
        (InMemoryExchange, "publish", "exchange"),
        (InMemoryExchange, "fetch", "exchange"),
        (InMemoryExchange, "latest", "exchange"),
        (InMemoryExchange, "encoded_size", "exchange"),
        (ExperimentConfig, "agent_spec", "spec"),
    ]
    # Only what this version of the library has (a renamed function leaves its part at 0).
    targets = [(owner, attr, name) for owner, attr, name in targets if attr in owner.__dict__]
    saved = [(owner, attr, owner.__dict__[attr]) for owner, attr, _ in targets]
    try:
        for owner, attr, name in targets:
            setattr(owner, attr, timers.wrap(name, getattr(owner, attr)))
        of_run = RunResult.__dict__["of_run"].__func__
        RunResult.of_run = classmethod(timers.wrap("results", of_run))
        saved.append((RunResult, "of_run", classmethod(of_run)))
        yield
    finally:
        for owner, attr, original in saved:
            setattr(owner, attr, original)


def stream_megabytes(setup: Setup) -> float:
    """MB held by the agents' streams (train and test rows of every experience), each
    tensor storage counted once however many experiences or agents share it."""
    storages = {}
    for stream in setup.streams:
        for exp in stream.experiences:
            for t in (exp.train.x, exp.train.y, exp.test.x, exp.test.y):
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values()) / 1e6


def run(
    config: ExperimentConfig, write: bool, plots: str = "auto"
) -> tuple[float, dict[str, float]]:
    """One simulated run plus its metrics document (and with `write` its results
    folder, as `dkt simulate` writes it): wall seconds, seconds per part and the MB of
    stream data (`mb`)."""
    timers = Timers()
    setups: list[Setup] = []
    prepare = simulation.prepare
    simulation.prepare = lambda *a, **k: setups.append(prepare(*a, **k)) or setups[-1]
    try:
        with instrumented(timers):
            start = time.perf_counter()
            result = simulation.simulate(config)
            with timers.part("results"):
                render_summary(build_metrics(result))
            if write:
                with tempfile.TemporaryDirectory() as folder, timers.part("write"):
                    write_results(result, folder, plots)
            wall = time.perf_counter() - start
    finally:
        simulation.prepare = prepare
    parts = dict(timers.seconds)
    parts["other"] = wall - sum(parts.values())
    parts["mb"] = stream_megabytes(setups[0])
    return wall, parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", default="2,4,8,16,32", help="agent counts, comma-separated")
    parser.add_argument("--experiences", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--aggregation", default="coverage")
    parser.add_argument("--peer-policy", default="all")
    parser.add_argument("--schedule", default="sync")
    parser.add_argument("--assignment", default="shuffled")
    parser.add_argument("--probe-size", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--no-write", action="store_true", help="skip the results folder (metrics, plots)"
    )
    parser.add_argument(
        "--plots",
        choices=PLOT_SETS,
        default="auto",
        help=f"plots written (auto: all up to {ALL_PLOTS_UP_TO} agents, summary beyond)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each row is the fastest")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    counts = [int(n) for n in args.agents.split(",")]
    base = ExperimentConfig(
        dataset="digits",
        experiences=args.experiences,
        epochs=args.epochs,
        aggregation=args.aggregation,
        peer_policy=args.peer_policy,
        schedule=args.schedule,
        assignment=args.assignment,
        probe_size=args.probe_size,
    )
    run(
        base.replace(agents=counts[0]), not args.no_write, args.plots
    )  # warm-up: imports, data set loading
    print(
        f"dkt simulate on digits, fastest of {args.repeats}: mlp, {args.experiences} "
        f"experiences, {args.epochs} epoch(s), assignment {args.assignment}, probe "
        f"{args.probe_size}, peers {args.peer_policy}, aggregation {args.aggregation}, "
        f"schedule {args.schedule}, {args.threads} thread(s), plots {args.plots}; seconds "
        "(parts exclusive)"
    )
    # Rounds over all counts, so that load from elsewhere hits every count alike; the
    # fastest round of each count is shown (its parts with it).
    best: dict[int, tuple[float, dict[str, float]]] = {}
    for _ in range(args.repeats):
        for n in counts:
            wall, parts = run(base.replace(agents=n), not args.no_write, args.plots)
            if n not in best or wall < best[n][0]:
                best[n] = (wall, parts)
    header = (
        f"{'agents':>6} {'wall s':>7} {'s/agent':>8} {'growth':>6} "
        + " ".join(f"{p:>9}" for p in PARTS)
        + f" {'stream MB':>9}"
    )
    print(header)
    previous = None
    for n in counts:
        wall, parts = best[n]
        growth = f"×{wall / previous:.2f}" if previous else "-"
        cells = " ".join(f"{parts.get(p, 0.0):>9.3f}" for p in PARTS)
        print(f"{n:>6} {wall:>7.2f} {wall / n:>8.3f} {growth:>6} {cells} {parts['mb']:>9.1f}")
        previous = wall
    print("growth: wall time over the previous row's; ×2.00 per doubling is linear")
    if args.no_write:
        return
    print("training (train) against writing the results folder (write); goal: write < 0.5× train")
    for n in counts:
        parts = best[n][1]
        print(
            f"{n:>6} agents: training {parts['train']:.2f} s, writing results "
            f"{parts['write']:.2f} s (plots {plot_set(args.plots, n)}) = "
            f"{parts['write'] / parts['train']:.2f}× training"
        )


if __name__ == "__main__":
    main()
