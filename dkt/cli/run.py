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
from rich.markup import escape

from dkt.cli.flags import (
    FRESH_PROCESS_HELP,
    add_deployment_flags,
    add_threads_flag,
    add_tracking_flags,
    failure_policy,
    tracking,
)
from dkt.cli.signals import exit_code, ignore_signals, interrupt_on_signals


def add_run_parser(subparsers: Any) -> argparse.ArgumentParser:
    from dkt.cli.flags import add_config_flags
    from dkt.cli.out_folder import add_out_flags, add_plots_flag

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
    add_plots_flag(parser)
    parser.add_argument(
        "--agent-data",
        action="append",
        default=[],
        metavar="N=PATH",
        help="agent N learns its own data instead of the shared data set (repeatable): a "
        "folder of class-named image folders or an .npz with x and y; its experiences from "
        "experiences.toml beside it, else a seeded split (see docs/how-to/own-data.md)",
    )
    add_out_flags(parser)
    add_threads_flag(parser, "agents")
    parser.add_argument("--fresh-process", action="store_true", help=FRESH_PROCESS_HELP)
    add_deployment_flags(parser)
    add_tracking_flags(parser)
    add_config_flags(parser)
    parser.set_defaults(func=run_local)
    return parser


def run_local(args: argparse.Namespace) -> int:
    """`dkt run`; returns the exit code."""
    from dkt.cli.flags import config_from_args
    from dkt.cli.local_cluster import LocalCluster
    from dkt.cli.out_folder import check_out, clear_out
    from dkt.cli.report import print_summary
    from dkt.cli.status import ACCESS_FILE, write_access_file
    from dkt.flower.runs import run_config, submit_run, write_app
    from dkt.proto.relay_client import RelayClient

    console = Console(stderr=True)
    if args.threads < 0:
        console.print("[red]error:[/] --threads must be 1 or more (0: automatic)")
        return 2
    config = absolute_paths(config_from_args(args))
    tracking(args).check_installed()
    try:
        local = agent_data_flags(args.agent_data, config.agents)
        if local:
            # Each site's data checked before anything starts: one line, nothing published.
            from dkt.common.engine.setup import local_plan

            for agent_id, source in local.items():
                local_plan(config, agent_id, source)
    except (ValueError, OSError) as err:
        console.print(f"[red]error:[/] {escape(str(err))}", soft_wrap=True)
        return 2
    out: Path = (args.out or Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")).resolve()
    try:
        check_out(out, overwrite=args.overwrite)
    except ValueError as err:
        console.print(f"[red]error:[/] {escape(str(err))}", soft_wrap=True)
        return 2
    if args.overwrite:
        clear_out(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.toml").write_text(config.to_toml())
    cluster = LocalCluster(
        out / "cluster", config.agents, args.device, args.threads or None, local=local,
        fresh_process=args.fresh_process,
    )  # fmt: skip
    console.print(
        f"[bold]dkt run[/]: {config.agents} agents × {config.experiences} experiences on "
        f"{data_words(config, local)}, schedule {config.schedule}, "
        f"{cluster.threads} torch threads per agent; "
        f"starting relay, SuperLink and {config.agents} SuperNodes "
        f"(logs in {out / 'cluster' / 'logs'})"
    )
    run = None
    # SIGTERM (docker stop, kill) cleans up like Ctrl-C: the cluster's processes run in
    # sessions of their own and would otherwise outlive us.
    interrupt_on_signals()
    try:
        cluster.start()
        assert cluster.relay is not None
        access = write_access_file(
            out, cluster.relay_address,
            f"http://127.0.0.1:{cluster.relay.status_port}/status",
            cluster.conductor_token, out.name,
        )  # fmt: skip
        console.print(f"watch it from another shell: dkt status --out {out} --watch "
                      f"(its token for this run is in {access}, owner-only)",
                      soft_wrap=True)  # fmt: skip
        console.print(
            f"relay {cluster.relay_address} (live dashboard: http://127.0.0.1:"
            f"{cluster.relay.status_port}/ , status JSON at /status), "
            f"SuperLink {cluster.superlink_address}",
            soft_wrap=True,
        )
        values = run_config(
            config,
            run_id=out.name,
            results_dir=out,
            relay=cluster.relay_address,
            plots=args.plots,
            **failure_policy(args),
            **tracking_keys(args, out),
        )
        run = submit_run(cluster.superlink_address, write_app(cluster.workdir / "app"), values)
        conductor_log = cluster.logs / "conductor.log"
        log_thread = run.save_logs(conductor_log)
        with RelayClient(cluster.relay_address, cluster.admin_token) as relay:
            status = _follow(run, relay, out.name, config, console, args.quiet)
        if status != "finished:completed":
            log_thread.join(10)  # the conductor's last lines say why
            tail = conductor_log.read_text().splitlines()[-15:] if conductor_log.exists() else []
            console.print(f"[red]the run ended {status}[/]: {run.details()}")
            for line in tail:
                console.print(f"  [dim]{line}[/]", highlight=False)
            return 1
        run.close()
        run = None
    except KeyboardInterrupt as err:
        ignore_signals()  # a second Ctrl-C must not cut the clean-up short
        if run is not None:
            console.print("interrupted: stopping the run and every process")
            run.stop()
        cluster.shutdown()
        console.print(f"stopped; logs in {cluster.logs}")
        return exit_code(err)
    finally:
        ignore_signals()
        (out / ACCESS_FILE).unlink(missing_ok=True)  # its token dies with the relay
        left = cluster.shutdown()
        if left:
            console.print(f"[yellow]had to kill {len(left)} leftover processes[/]")
    metrics = record_provenance(out, getattr(args, "argv", None), args.device)
    if not args.quiet:
        print_summary(metrics, Console())
    console.print(f"results: [bold]{out}[/]", soft_wrap=True)
    return 0


def record_provenance(out: Path, command: list[str] | None, device: str) -> dict[str, Any]:
    """Put this command's provenance (its command line, the agents' device) into the
    results the conductor wrote (whose own is the ServerApp process's); returns the
    metrics."""
    from dkt.common.evaluation.provenance import provenance, provenance_toml
    from dkt.common.run.config import ExperimentConfig

    metrics = json.loads((out / "metrics.json").read_text())
    metrics["provenance"] = provenance(command=command, device=device)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    config = ExperimentConfig.from_toml(out / "config.toml")
    (out / "config.toml").write_text(config.to_toml() + provenance_toml(metrics["provenance"]))
    return metrics


def data_words(config: Any, local: dict[int, Any]) -> str:
    """`digits`, or the sites' own data where every agent brings its own."""
    if not local:
        return str(config.dataset)
    sites = ", ".join(map(str, sorted(local)))
    if len(local) >= config.agents:
        return f"their own data (agents {sites})"
    return f"{config.dataset} (own data at agents {sites})"


def tracking_keys(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The run-config keys of --log and --mlflow-uri: the conductor logs the MLflow run
    where it writes the results; every agent writes its TensorBoard events into
    OUT/tensorboard/agent-N (all on this machine)."""
    import os

    from dkt.common.evaluation.tracking import MLFLOW_URI_ENV, TENSORBOARD_DIR

    track = tracking(args)
    if not track.log:
        return {}
    return {
        "log": track.log,
        "mlflow_uri": track.mlflow_uri or os.environ.get(MLFLOW_URI_ENV, ""),
        "tensorboard_dir": out / TENSORBOARD_DIR,
    }


def absolute_paths(config: Any) -> Any:
    """The config with its host paths (data root, public probe and evaluation sets)
    absolute: the conductor and the agents run in other folders."""
    changes = {
        name: str(Path(getattr(config, name)).expanduser().resolve())
        for name in ("data_root", "probe_from", "eval_from")
        if getattr(config, name)
    }
    return config.replace(**changes) if changes else config


def agent_data_flags(flags: list[str], agents: int) -> dict[int, Any]:
    """`--agent-data N=PATH` flags as {agent id: LocalSource}; one clear error each."""
    from dkt.common.data.local_source import LocalSource

    found: dict[int, Any] = {}
    for text in flags:
        agent, sep, path = text.partition("=")
        if not sep or not agent.strip().isdigit() or not path:
            raise ValueError(f"--agent-data takes N=PATH, got {text!r}")
        agent_id = int(agent)
        if not 0 <= agent_id < agents:
            raise ValueError(
                f"--agent-data {text}: there is no agent {agent_id}; agents are 0 to {agents - 1}"
            )
        if agent_id in found:
            raise ValueError(f"--agent-data names agent {agent_id} twice")
        source = Path(path).expanduser().resolve()
        if not source.exists():
            raise ValueError(f"--agent-data {text}: {source} does not exist")
        found[agent_id] = LocalSource(source)
    return found


def _follow(run: Any, relay: Any, run_id: str, config: Any, console: Console, quiet: bool) -> str:
    """Wait for the run to finish, drawing progress from the relay's status."""
    from dkt.cli.progress import AgentProgress

    progress = None if quiet else AgentProgress(config.agents, config.experiences, 1, console)
    if progress is not None:
        progress.progress.start()
    try:
        while True:
            status = run.status()
            if progress is not None:
                runs = [r for r in relay.status()["runs"] if r["run_id"] == run_id]
                if runs:
                    progress.update_from_status(runs[0])
            if status.startswith("finished"):
                return status
            time.sleep(0.5)
    finally:
        if progress is not None:
            progress.progress.stop()
