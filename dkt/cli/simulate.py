"""`dkt simulate`: every agent in this process (the fast research loop), with an
in-memory exchange or a real relay, then a results folder."""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from dkt.cli.flags import positive_int
from dkt.proto.relay_connection import TOKEN_ENV


def run_simulate(args: argparse.Namespace) -> int:

    from dkt.cli.flags import config_from_args, tracking
    from dkt.cli.out_folder import check_out, clear_out
    from dkt.cli.progress import AgentProgress
    from dkt.common.engine.setup import prepare
    from dkt.common.engine.simulation import simulate
    from dkt.common.evaluation.provenance import provenance
    from dkt.common.evaluation.results import reported_heads, write_results
    from dkt.common.run.config import ExperimentConfig
    from dkt.common.threads import apply_threads, resolve_threads
    from dkt.common.training.listeners import Listeners

    console = Console(stderr=True)
    track = tracking(args)
    track.check_installed()
    out: Path = args.out or Path("runs") / time.strftime("simulate-%Y%m%d-%H%M%S")
    check_out(out, resume=args.resume, overwrite=args.overwrite)
    saved = out / "config.toml"
    base = None
    if args.resume and saved.exists() and args.config is None:
        base = ExperimentConfig.from_toml(saved)
    config = config_from_args(args, base)
    if args.resume and saved.exists() and ExperimentConfig.from_toml(saved) != config:
        before = ExperimentConfig.from_toml(saved).to_dict()
        changed = [k for k, v in config.to_dict().items() if before.get(k) != v]
        console.print(
            f"[red]error:[/] {out} was started with a different config (changed: "
            f"{', '.join(changed)}); resume without changing flags, or pick a new --out",
            soft_wrap=True,
        )
        return 2
    if getattr(args, "engine", "in-process") == "flower":
        from dkt.cli.fleet import simulate_on_flower

        return simulate_on_flower(args, config, out, console)
    # Before any torch work: every agent shares this process, so it takes the host's share.
    threads = apply_threads(resolve_threads(args.threads, config.agents))
    checkpoints = args.checkpoint_dir or out / "checkpoints"
    from dkt.cli.run import agent_data_flags, data_words

    local = agent_data_flags(args.agent_data, config.agents)
    console.print(
        f"[bold]dkt simulate[/]: {config.agents} agents × {config.experiences} experiences on "
        f"{data_words(config, local)} ({config.assignment}), backbone {config.backbone}, "
        f"λ={config.kd_weight}, strategy {config.strategy}, "
        f"{threads} CPU thread{'s' if threads != 1 else ''}"
    )
    for agent_id, table in config.agent_overrides.items():
        changes = ", ".join(f"{k}={list(v) if k == 'teachers' else v}" for k, v in table.items())
        console.print(f"  agent {agent_id}: {changes}", soft_wrap=True)
    from dkt.common.run.exchange_kinds import exchange_kind

    setup = prepare(config, local)
    # Only now, with the config and its data checked, is anything written.
    if args.overwrite:
        clear_out(out)
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(config.to_toml())
    pretrained = _cached_teachers(args, setup, checkpoints, console)
    progress = (
        None
        if args.quiet
        else AgentProgress(
            config.agents,
            config.experiences,
            config.epochs,
            console,
            show_st=exchange_kind(config.exchange).reports_st_head,
        )
    )
    with contextlib.ExitStack() as stack:
        exchange, reporter = None, None
        if args.relay:
            from dkt.client.relay_exchange import RelayProgress, open_relay_exchange

            client = stack.enter_context(relay_client(args))
            run_id = args.run_id or out.resolve().name
            encoding = args.relay_encoding or config.exchange_dtype
            exchange = open_relay_exchange(
                client, run_id, setup.probe, setup.num_classes, config, encoding
            )
            reporter = RelayProgress(client, run_id)
            console.print(f"exchanging predictions through relay {args.relay}, run [bold]{run_id}")
        if progress is not None:
            stack.enter_context(progress)
        board = track.tensorboard(out, reported_heads(config))
        if board is not None:
            stack.enter_context(board)
        result = simulate(
            config,
            exchange=exchange,
            checkpoint_dir=checkpoints,
            resume=args.resume,
            device=args.device,
            listener=Listeners(progress, reporter, board),
            setup=setup,
            pretrained=pretrained,
        )
        if args.relay:
            client.set_run_state(run_id, "finished", config.experiences - 1)
    result.extra["threads"] = threads
    result.extra["provenance"] = provenance(command=getattr(args, "argv", None), device=args.device)
    _keep_teachers(args, setup, checkpoints, pretrained, console)
    write_results(result, out, args.plots)
    logged = track.finish(out)
    if logged:
        console.print(logged, soft_wrap=True)
    if not args.quiet:
        import json

        from dkt.cli.report import print_summary

        print_summary(json.loads((out / "metrics.json").read_text()), Console())
    console.print(f"results: [bold]{out}[/] ({result.seconds:.1f} s)", soft_wrap=True)
    return 0


def _cached_teachers(args: argparse.Namespace, setup, checkpoints: Path, console) -> dict:
    """The preset's teacher stages found in --teacher-cache, rebased into `checkpoints`
    for `simulate(pretrained=...)`; says which agents are restored and which not kept."""
    from dkt.common.engine.teacher_cache import entry_dir, learns_alone, restore_teachers
    from dkt.common.run.presets import preset

    if args.preset is None or args.teacher_cache is None:
        return {}
    agents = preset(args.preset).cached_teachers
    found = restore_teachers(setup, agents, args.teacher_cache, checkpoints)
    for agent_id in agents:
        if agent_id in found:
            where = entry_dir(args.teacher_cache, setup, agent_id)
            console.print(f"agent {agent_id}: teacher restored from {where}, not retrained",
                          soft_wrap=True)  # fmt: skip
        elif not learns_alone(setup, agent_id):
            console.print(f"agent {agent_id}: has teachers of its own, so its stage is "
                          "trained and not kept in the teacher cache", soft_wrap=True)  # fmt: skip
    return found


def _keep_teachers(args, setup, checkpoints: Path, pretrained: dict, console) -> None:
    """Store the preset's lone teachers trained by this run in --teacher-cache."""
    from dkt.common.engine.teacher_cache import store_teachers
    from dkt.common.run.presets import preset

    if args.preset is None or args.teacher_cache is None:
        return
    agents = tuple(a for a in preset(args.preset).cached_teachers if a not in pretrained)
    for agent_id, entry in store_teachers(setup, agents, args.teacher_cache, checkpoints).items():
        console.print(f"agent {agent_id}: teacher kept in {entry} for later runs", soft_wrap=True)


def relay_client(args: argparse.Namespace):  # -> RelayClient
    from dkt.proto.relay_client import RelayClient

    token = args.relay_token or os.environ.get(TOKEN_ENV)
    root_cert = args.relay_ca.read_bytes() if args.relay_ca else None
    return RelayClient(args.relay, token, root_cert=root_cert)


def add_simulate_parser(sub: Any) -> argparse.ArgumentParser:
    from dkt.cli.flags import add_config_flags, add_tracking_flags
    from dkt.cli.fleet import add_engine_flags
    from dkt.cli.out_folder import add_out_flags, add_plots_flag

    sim = sub.add_parser(
        "simulate",
        help="run every agent in this process (fast research loop)",
        description="Run N agents in one process with an in-memory exchange (or a real "
        "relay with --relay), then write a results folder.",
    )
    sim.add_argument(
        "--out", type=Path, metavar="DIR", help="results folder (default: runs/simulate-DATE-TIME)"
    )
    sim.add_argument(
        "--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ... (default: cpu)"
    )
    sim.add_argument(
        "--checkpoint-dir",
        type=Path,
        metavar="DIR",
        help="where agents checkpoint after each experience (default: OUT/checkpoints)",
    )
    add_out_flags(
        sim,
        resume_help="continue an interrupted run in --out from its checkpoints (--out must exist)",
    )
    sim.add_argument(
        "--relay",
        metavar="HOST:PORT",
        help="exchange predictions through a running relay instead of in memory",
    )
    sim.add_argument(
        "--relay-token",
        metavar="TOKEN",
        help="admin token of the relay (default: $DKT_RELAY_TOKEN)",
    )
    sim.add_argument("--relay-ca", type=Path, metavar="FILE", help="CA certificate (PEM) for TLS")
    sim.add_argument(
        "--relay-encoding",
        choices=("float32", "float16"),
        help="logits encoding on the wire; float16 halves the bytes (default: the run's "
        "--exchange-dtype, which also rounds the logits in memory)",
    )
    sim.add_argument("--run-id", help="run id on the relay (default: the --out folder's name)")
    sim.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="CPU threads for torch in this process (default: $DKT_THREADS, else this host's "
        "usable cores // agents); a setting of this host, not of the experiment, so it is "
        "recorded in metrics.json but not in config.toml",
    )
    sim.add_argument("--quiet", action="store_true", help="no progress bars or summary table")
    add_plots_flag(sim)
    sim.add_argument(
        "--agent-data",
        action="append",
        default=[],
        metavar="N=PATH",
        help="agent N learns its own data instead of the shared data set (repeatable), as "
        "with dkt run: a folder of class-named image folders or an .npz with x and y; its "
        "experiences from experiences.toml beside it, else a seeded split; give the run's "
        "classes with --classes (see docs/how-to/own-data.md)",
    )
    sim.add_argument(
        "--teacher-cache",
        type=Path,
        default=Path("runs/teacher-cache"),
        metavar="DIR",
        help="where a --preset's teacher stage (seed-exp1, seed-exp2: agent 0) is kept after "
        "it is trained and restored from by later runs with the same teacher, data and probe "
        "set (default: runs/teacher-cache; delete an entry to retrain it)",
    )
    sim.add_argument(
        "--no-teacher-cache",
        dest="teacher_cache",
        action="store_const",
        const=None,
        help="train a preset's teacher stage every time and keep nothing",
    )
    add_engine_flags(sim)
    add_tracking_flags(sim)
    add_config_flags(sim)
    sim.set_defaults(func=run_simulate)
    return sim
