"""Memory per agent of each way to run a fleet: `dkt run`'s agent workers, the in-process
`dkt simulate`, and `dkt simulate --engine flower` (Flower's Simulation Engine) where
this installation has it.

    .venv/bin/python benchmarks/memory.py                      # 4 and 8 agents, digits
    .venv/bin/python benchmarks/memory.py --agents 4,8,16 --memory-gb 24,128
    .venv/bin/python benchmarks/memory.py --engines simulate -- --backbone cnn

Each engine runs the same job (mlp on digits, 2 experiences, plots none) at each agent
count as a child process, whose process tree is sampled every `--interval` seconds from
/proc (Linux; no psutil needed):

- `dkt run`: each agent is the tree of its worker (`python -m dkt.client.agent_worker`:
  its flower-supernode and everything they start), found by the `agent-id=N` of its node
  config; per agent is the mean of the agents' peak tree RSS. The relay, SuperLink,
  conductor and `dkt run` itself are the rest of the tree ("fixed");
- in-process `dkt simulate`: the process's peak RSS (the kernel's, from wait4) / agents;
- `dkt simulate --engine flower`: the whole tree's peak RSS (Ray's processes included)
  / agents.

RSS counts a shared page (torch's libraries, mapped by every worker) in every process
that maps it, so sums over processes overstate what they need together; PSS (each shared
page split between its sharers, from /proc/PID/smaps_rollup) is printed beside it and is
what the fit estimate uses. The fit: with two or more agent counts, the marginal memory
per agent is the slope of peak memory over agents and the fixed part its intercept;
agents that fit in M GB = (M GB - fixed) / marginal.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DKT = [sys.executable, "-m", "dkt"]
AGENT_ID = re.compile(r"agent-id=(\d+)")
NOISE = 50e6  # bytes: a smaller growth between the two agent counts is sampling noise


def proc_rss(pid: int) -> int:
    """Resident bytes of process `pid` (VmRSS of /proc/PID/status); 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0  # gone, or a kernel thread (no VmRSS)


def proc_pss(pid: int) -> int:
    """Proportional set size of `pid` in bytes (shared pages split between their
    sharers), from /proc/PID/smaps_rollup; 0 if it is gone or not readable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def children_of() -> dict[int, list[int]]:
    """Every process's children, from the parent pid in /proc/PID/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        # The command name (field 2) is in parentheses and may hold spaces: read after it.
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """`pid` and all its descendants."""
    children = children_of() if children is None else children
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def tree_rss(pid: int, children: dict[int, list[int]] | None = None) -> int:
    """Resident bytes of `pid` and its descendants, summed."""
    return sum(proc_rss(p) for p in process_tree(pid, children))


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


@dataclass
class Peaks:
    """The peaks seen while sampling one run's process tree."""

    rss: int = 0  # the whole tree
    pss: int = 0
    agent_rss: dict[int, int] = field(default_factory=dict)  # per agent (dkt run)
    agent_pss: dict[int, int] = field(default_factory=dict)
    samples: int = 0


def sample(root: int, peaks: Peaks, per_agent: bool) -> None:
    """One sample of the tree under `root`, folded into `peaks`."""
    children = children_of()
    tree = process_tree(root, children)
    peaks.rss = max(peaks.rss, sum(proc_rss(p) for p in tree))
    peaks.pss = max(peaks.pss, sum(proc_pss(p) for p in tree))
    peaks.samples += 1
    if not per_agent:
        return
    # An agent's root: the topmost process of the tree whose command names agent-id=N
    # (its worker; the supernode below it names it too).
    parent = {c: p for p, cs in children.items() for c in cs}
    for pid in tree:
        match = AGENT_ID.search(cmdline(pid))
        if match is None or AGENT_ID.search(cmdline(parent.get(pid, 0))):
            continue
        agent, sub = int(match.group(1)), process_tree(pid, children)
        rss, pss = sum(proc_rss(p) for p in sub), sum(proc_pss(p) for p in sub)
        peaks.agent_rss[agent] = max(peaks.agent_rss.get(agent, 0), rss)
        peaks.agent_pss[agent] = max(peaks.agent_pss.get(agent, 0), pss)


def measure(cmd: list[str], per_agent: bool, interval: float, timeout: float) -> Peaks:
    """Run `cmd`, sampling its process tree until it exits; the kernel's peak RSS of the
    top process (wait4) also counts toward the tree's peak."""
    peaks = Peaks()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            peaks.rss = max(peaks.rss, usage.ru_maxrss * 1024)  # kB on Linux
            break
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise TimeoutError(f"{' '.join(cmd)} ran past {timeout:.0f} s")
        sample(proc.pid, peaks, per_agent)
        time.sleep(interval)
    if proc.returncode != 0:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{err[-2000:]}")
    return peaks


def flower_engine_available() -> bool:
    """Whether this dkt's `simulate` offers `--engine flower`."""
    help_text = subprocess.run(
        [*DKT, "simulate", "--help"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    return re.search(r"--engine\b", help_text) is not None and "flower" in help_text


def gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", default="4,8", help="agent counts, comma-separated")
    parser.add_argument("--experiences", type=int, default=2)
    parser.add_argument(
        "--engines", default="run,simulate,flower", help="which of run, simulate, flower"
    )
    parser.add_argument("--memory-gb", default="24,128", help="machines to estimate the fit for")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between samples")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run at most")
    parser.add_argument("extra", nargs="*", help="more config flags for every run (after --)")
    args = parser.parse_args()
    counts = [int(n) for n in args.agents.split(",")]
    engines = args.engines.split(",")
    machines = [float(m) for m in args.memory_gb.split(",")]
    job = ["--dataset", "digits", "--backbone", "mlp", "--experiences", str(args.experiences)]
    job += ["--quiet", *args.extra]
    if "flower" in engines and not flower_engine_available():
        print("flower: `dkt simulate --engine flower` is not available in this installation")
        engines.remove("flower")

    print(
        f"peak memory (GB, 1e9 bytes) on digits, mlp, {args.experiences} experiences, "
        f"sampled every {args.interval} s; RSS sums count shared pages in every process, "
        "PSS splits them"
    )
    print(f"{'engine':>9} {'agents':>6} {'tree RSS':>9} {'tree PSS':>9} {'RSS/agent':>10} "
          f"{'PSS/agent':>10} {'agent RSS':>10} {'agent PSS':>10} {'samples':>7}")  # fmt: skip
    fits: dict[str, list[tuple[int, int]]] = {}
    for engine in engines:
        for n in counts:
            with tempfile.TemporaryDirectory() as out:
                out_flags = ["--out", str(Path(out) / "results"), "--agents", str(n)]
                if engine == "run":
                    cmd = [*DKT, "run", *out_flags, *job]
                else:
                    cmd = [*DKT, "simulate", *out_flags, "--plots", "none", *job]
                    cmd += ["--engine", "flower"] if engine == "flower" else []
                try:
                    peaks = measure(cmd, engine == "run", args.interval, args.timeout)
                except (RuntimeError, TimeoutError) as exc:
                    if engine != "flower":
                        raise
                    # The newest engine: its failure is reported, the others still run.
                    print(f"   flower {n:>6} failed: {str(exc).strip().splitlines()[-1]}")
                    continue
            agent_rss = agent_pss = "-"
            if peaks.agent_rss:
                agent_rss = gb(sum(peaks.agent_rss.values()) / len(peaks.agent_rss))
                agent_pss = gb(sum(peaks.agent_pss.values()) / len(peaks.agent_pss))
            print(
                f"{engine:>9} {n:>6} {gb(peaks.rss):>9} {gb(peaks.pss):>9} "
                f"{gb(peaks.rss / n):>10} {gb(peaks.pss / n):>10} {agent_rss:>10} "
                f"{agent_pss:>10} {peaks.samples:>7}",
                flush=True,
            )
            # The in-process engine is one process: its kernel peak RSS is exact, and
            # its PSS only sampled; the trees are fitted on their PSS.
            fits.setdefault(engine, []).append(
                (n, peaks.rss if engine == "simulate" else peaks.pss)
            )
    print("fit: marginal MB per agent (slope) and fixed GB (intercept) of peak memory "
          "(simulate: RSS; the others: PSS), and the agents that fit")  # fmt: skip
    for engine, points in fits.items():
        if len(points) < 2:
            print(f"{engine:>9}: needs two agent counts for a fit")
            continue
        (n0, m0), (n1, m1) = points[0], points[-1]
        slope = (m1 - m0) / (n1 - n0)
        fixed = m0 - slope * n0
        line = f"{engine:>9}: {slope / 1e6:.1f} MB/agent + {gb(fixed)} GB fixed"
        if m1 - m0 < NOISE:
            print(f"{line}: flat from {n0} to {n1} agents (within sampling noise); give "
                  "more agents (--agents 4,64) for a fit")  # fmt: skip
            continue
        fit = ", ".join(f"{int((m * 1e9 - fixed) // slope)} agents in {m:g} GB" for m in machines)
        print(f"{line} -> {fit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
