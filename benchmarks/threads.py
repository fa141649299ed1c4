"""Wall time of the default `dkt simulate` with torch's default thread count against
DKT's per-process share (`--threads` auto), on an idle host and under background load.

    .venv/bin/python benchmarks/threads.py                  # idle and loaded, 1 repeat
    .venv/bin/python benchmarks/threads.py --load 2 --repeats 3

Background load is `--load` busy processes (default: one per usable core), standing in
for other work on a shared machine. torch's default starts one OpenMP thread per core;
under load its spin-waiting threads fight the busy processes and each other, which is
what made the default run several times slower. The numbers of the runs are identical
(the benchmark checks it); only the time differs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dkt.common.threads import usable_cores


def _spin() -> None:
    while True:
        pass


def simulate(threads: int | None, out: Path, extra: list[str]) -> tuple[float, dict]:
    """Seconds of one `dkt simulate` (wall, including imports) and its accuracy matrices."""
    cmd = [sys.executable, "-m", "dkt", "simulate", "--quiet", "--out", str(out), *extra]
    env = {k: v for k, v in os.environ.items() if k not in {"OMP_NUM_THREADS", "DKT_THREADS"}}
    if threads is not None:
        cmd += ["--threads", str(threads)]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    seconds = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    return seconds, {a: v["accuracy_matrix"] for a, v in metrics["agents"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", type=int, default=usable_cores(), help="busy processes")
    parser.add_argument("--repeats", type=int, default=1, help="runs per cell (median shown)")
    parser.add_argument(
        "extra", nargs=argparse.REMAINDER, help="more `dkt simulate` options after --"
    )
    args = parser.parse_args()
    extra = [a for a in args.extra if a != "--"]
    cores = usable_cores()
    variants = {f"torch default ({cores} threads)": cores, "dkt auto (--threads)": None}
    print(f"usable cores: {cores}; background load: {args.load} busy processes")
    print(f"{'load':<8}{'threads':<28}{'seconds (median)':>18}")
    results: dict[tuple[str, str], float] = {}
    reference: dict | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for load_name, load in (("idle", 0), ("loaded", args.load)):
            spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(load)]
            for p in spinners:
                p.start()
            try:
                for name, threads in variants.items():
                    times = []
                    for r in range(args.repeats):
                        out = Path(tmp) / f"{load_name}-{threads}-{r}"
                        seconds, agents = simulate(threads, out, extra)
                        times.append(seconds)
                        reference = reference or agents
                        if agents != reference:
                            print("  warning: accuracies differ from the first run's")
                    results[(load_name, name)] = statistics.median(times)
                    print(f"{load_name:<8}{name:<28}{results[(load_name, name)]:>18.1f}")
            finally:
                for p in spinners:
                    p.terminate()
    for load_name in ("idle", "loaded"):
        default, auto = (results[(load_name, name)] for name in variants)
        print(f"{load_name}: torch default / dkt auto = {default / auto:.2f}x")


if __name__ == "__main__":
    main()
