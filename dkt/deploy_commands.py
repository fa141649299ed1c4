"""`dkt run`: the whole system on one machine — a relay, a Flower SuperLink and one
SuperNode per agent as local processes on loopback, one run submitted and followed
to the end, a results folder, and nothing left running afterwards."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

RUN_DEFAULTS = {"agent_timeout": 900.0, "retries": 2, "wait_agents": 120.0, "rejoin_wait": 120.0}


def add_deployment_flags(parser: argparse.ArgumentParser) -> None:
    """How the conductor treats slow, failing and absent agents."""
    group = parser.add_argument_group("failures")
    group.add_argument(
        "--agent-timeout",
        type=float,
        default=900.0,
        metavar="S",
        help="seconds one experience may take before it is retried (default: 900)",
    )
    group.add_argument(
        "--retries",
        type=int,
        default=2,
        metavar="N",
        help="re-sends of an experience to an agent that failed (default: 2)",
    )
    group.add_argument(
        "--wait-agents",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds to wait for all agents to connect (default: 120)",
    )
    group.add_argument("--rejoin-wait", type=float, default=120.0, metavar="S",
                       help="seconds a failed agent has to come back (default: 120)")  # fmt: skip


def add_run_parser(subparsers: Any) -> argparse.ArgumentParser:
    from dkt.config_flags import add_config_flags

    parser = subparsers.add_parser(
        "run",
        help="the main job: relay, SuperLink and N agents on this machine, one run",
        description="Start a relay, a Flower SuperLink and one SuperNode per agent as local "
        "processes on loopback, run the experiment through them, write a results folder "
        "and shut everything down (also on Ctrl-C or failure).",
    )
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="results folder (default: runs/run-DATE-TIME)")  # fmt: skip
    parser.add_argument(
        "--device", default="cpu", help="torch device of every agent: cpu, cuda, cuda:1"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    add_deployment_flags(parser)
    add_config_flags(parser)
    parser.set_defaults(func=run_local)
    return parser


class RunProgress:
    """One bar per agent over its experiences, from the relay's status."""

    def __init__(self, agents: int, experiences: int, console: Console) -> None:
        self.experiences = experiences
        self.progress = Progress(
            TextColumn("[bold]agent {task.fields[agent]}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.tasks = {
            a: self.progress.add_task("", total=experiences, agent=a, note="waiting")
            for a in range(agents)
        }

    def update(self, run: dict[str, Any]) -> None:
        for agent in run.get("agents", []):
            task = self.tasks.get(int(agent["agent_id"]))
            if task is None:
                continue
            state, e, metrics = agent["state"], int(agent["experience"]), agent["metrics"]
            done = e + 1 if state == "trained" else e if state else 0
            note = f"{state or 'connected'} exp {e + 1}/{self.experiences}"
            if "transfer_st" in metrics:
                note += f" transfer st {100 * metrics['transfer_st']:.0f}%"
            if "acc_all_cl" in metrics:
                note += f" acc cl {100 * metrics['acc_all_cl']:.0f}%"
            if state == "missing":
                note = "[red]missing[/]"
            self.progress.update(task, completed=done, note=note)


def run_local(args: argparse.Namespace) -> int:
    """`dkt run`; returns the exit code."""
    from dkt.client.relay_client import RelayClient
    from dkt.config_flags import config_from_args
    from dkt.flower_runs import run_config, submit_run, write_app
    from dkt.local_cluster import LocalCluster
    from dkt.report import print_summary

    console = Console(stderr=True)
    config = config_from_args(args)
    out: Path = (args.out or Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")).resolve()
    if (out / "metrics.json").exists():
        console.print(f"[red]error:[/] {out} already holds a finished run; choose another --out")
        return 2
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.toml").write_text(config.to_toml())
    console.print(
        f"[bold]dkt run[/]: {config.agents} agents × {config.experiences} experiences on "
        f"{config.dataset}, schedule {config.schedule}; starting relay, SuperLink and "
        f"{config.agents} SuperNodes (logs in {out / 'cluster' / 'logs'})"
    )
    cluster = LocalCluster(out / "cluster", config.agents, args.device)
    run = None
    try:
        cluster.start()
        values = run_config(
            config,
            run_id=out.name,
            results_dir=out,
            relay=cluster.relay_address,
            agent_timeout=args.agent_timeout,
            retries=args.retries,
            wait_agents=args.wait_agents,
            rejoin_wait=args.rejoin_wait,
        )
        run = submit_run(cluster.superlink_address, write_app(cluster.workdir / "app"), values)
        conductor_log = cluster.logs / "conductor.log"
        run.save_logs(conductor_log)
        with RelayClient(cluster.relay_address, cluster.admin_token) as relay:
            status = _follow(run, relay, out.name, config, console, args.quiet)
        if status != "finished:completed":
            tail = conductor_log.read_text().splitlines()[-15:] if conductor_log.exists() else []
            console.print(f"[red]the run ended {status}[/]: {run.details()}")
            for line in tail:
                console.print(f"  [dim]{line}[/]", highlight=False)
            return 1
        run.close()
        run = None
    except KeyboardInterrupt:
        if run is not None:
            console.print("interrupted: stopping the run and every process")
            run.stop()
        raise
    finally:
        left = cluster.shutdown()
        if left:
            console.print(f"[yellow]had to kill {len(left)} leftover processes[/]")
    if not args.quiet:
        print_summary(json.loads((out / "metrics.json").read_text()), Console())
    console.print(f"results: [bold]{out}[/]", soft_wrap=True)
    return 0


def _follow(run: Any, relay: Any, run_id: str, config: Any, console: Console, quiet: bool) -> str:
    """Wait for the run to finish, drawing progress from the relay's status."""
    progress = None if quiet else RunProgress(config.agents, config.experiences, console)
    if progress is not None:
        progress.progress.start()
    try:
        while True:
            status = run.status()
            if progress is not None:
                runs = [r for r in relay.status()["runs"] if r["run_id"] == run_id]
                if runs:
                    progress.update(runs[0])
            if status.startswith("finished"):
                return status
            time.sleep(0.5)
    finally:
        if progress is not None:
            progress.progress.stop()
