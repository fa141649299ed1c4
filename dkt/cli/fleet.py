"""`dkt simulate --engine flower`: the conductor ServerApp and the agent ClientApp under
Flower's Simulation Engine (Ray, dkt/flower/simulation.py), for simulated fleets of
hundreds of agents spread over every core and GPU of a node or a Ray cluster, with a
relay in this process for the data plane.

Virtual SuperNode N (its partition-id) runs agent N, with DATA_ROOT/agent-N as its data
dir and agent N's relay token. Agent state lives on disk (a checkpoint per experience in
DATA_ROOT/agent-N), so whichever Ray worker takes an agent's next message finds it there:
on a multi-node Ray cluster DATA_ROOT must be a folder every node shares."""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from dkt.proto.relay_connection import TOKEN_ENV

if TYPE_CHECKING:
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp

    from dkt.flower.simulation import FleetResources

    Handler = Callable[[Message, Context], Message]

ENGINES = ("in-process", "flower")
# Seconds one experience may take before the conductor retries it: a virtual SuperNode's
# message waits in Ray's queue behind the other agents' (256 agents on a few workers), so
# the deployed default (900 s) would time out agents that are only queued.
QUEUED_AGENT_TIMEOUT = 24 * 3600.0


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """--engine and the Simulation Engine's options (Ray resources and address)."""
    group = parser.add_argument_group(
        "engine", "where the agents run (see docs/how-to/many-agents.md)"
    )
    group.add_argument(
        "--engine",
        choices=ENGINES,
        default="in-process",
        help="in-process: every agent in this process, one after another (default); "
        "flower: the conductor ServerApp and agent ClientApp under Flower's Simulation "
        "Engine (Ray), agents in parallel; needs pip install 'dkt[simulation]'",
    )
    group.add_argument(
        "--num-cpus",
        type=_positive_float,
        default=1.0,
        metavar="X",
        help="with --engine flower: CPUs Ray reserves for each agent, a fraction allowed "
        "(0.25: four agents train at once per core; default 1)",
    )
    group.add_argument(
        "--num-gpus",
        type=_fraction,
        default=0.0,
        metavar="X",
        help="with --engine flower: GPUs Ray reserves for each agent (0.5: two agents per "
        "GPU; needs --device cuda; default 0)",
    )
    group.add_argument(
        "--ray-address",
        default="",
        metavar="ADDRESS",
        help="with --engine flower: an existing Ray cluster to join (HOST:6379 or auto), "
        "left running afterwards; default: $RAY_ADDRESS's cluster when set, else a local "
        "Ray started (and stopped) for this run",
    )
    group.add_argument(
        "--relay-host",
        default="127.0.0.1",
        metavar="HOST",
        help="with --engine flower: the address of this host that the Ray nodes reach the "
        "run's relay at (default 127.0.0.1: one machine)",
    )


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def fleet_app(
    data_root: Path, relay: str, tokens: dict[int, str], device: str = "cpu", threads: int = 1
) -> ClientApp:
    """The agent ClientApp (client/agent_app.py) for virtual SuperNodes: partition-id N
    runs agent N with DATA_ROOT/agent-N as its data dir and agent N's relay token."""
    from flwr.clientapp import ClientApp

    from dkt.client import agent_app

    app = ClientApp()

    def as_agent(handler: Handler) -> Handler:
        def run(msg: Message, context: Context) -> Message:
            agent = agent_context(context, data_root, relay, device, threads)
            # A Ray worker runs one message at a time: the token is this message's agent's.
            os.environ[TOKEN_ENV] = tokens[int(agent.node_config["agent-id"])]
            return handler(msg, agent)

        return run

    app.query()(as_agent(agent_app.identify))
    app.train()(as_agent(agent_app.train))
    app.evaluate()(as_agent(agent_app.evaluate))
    return app


def agent_context(
    context: Context, data_root: Path, relay: str, device: str, threads: int
) -> Context:
    """Virtual SuperNode N's context as agent N sees it: the node config `dkt agent` gives
    a real SuperNode (client/agent_runtime.py's AgentPlacement reads it)."""
    from flwr.app import Context

    from dkt.flower.simulation import PARTITION_ID

    agent_id = int(str(context.node_config[PARTITION_ID]))
    node_config: dict[str, bool | float | int | str] = {
        "agent-id": agent_id,
        "data-dir": str(data_root / f"agent-{agent_id}"),
        "relay": relay,
        "device": device,
        "threads": threads,
    }
    # Flower keeps the node's context between messages: the agent's view is a copy.
    return Context(
        run_id=context.run_id,
        node_id=context.node_id,
        node_config=node_config,
        state=context.state,
        run_config=context.run_config,
    )


def run_fleet(
    run_config: dict[str, Any],
    agents: int,
    data_root: Path,
    relay_dir: Path,
    resources: FleetResources,
    device: str = "cpu",
    threads: int = 1,
    relay_host: str = "127.0.0.1",
) -> None:
    """Run the conductor and `agents` virtual SuperNodes under the Simulation Engine,
    with a relay in this process (tokens on, loopback); `run_config` as `dkt run`
    submits it, without the relay address (filled in here; `relay_host`: the address the
    Ray nodes reach this host at). Raises when the run fails."""
    from dkt.flower.simulation import run_on_simulation_engine
    from dkt.server.conductor.app import app as conductor_app
    from dkt.server.relay.auth import TokenTable
    from dkt.server.relay.server import RelayConfig, RelayServer

    conductor_token = secrets.token_urlsafe(24)
    tokens = {a: secrets.token_urlsafe(24) for a in range(agents)}
    table = TokenTable(secrets.token_urlsafe(24), tokens, conductor_token)
    relay_config = RelayConfig(
        data_dir=relay_dir,
        host="0.0.0.0" if relay_host not in ("127.0.0.1", "localhost") else "127.0.0.1",
        port=0,
        status_port=None,
        tokens=table,
        insecure=True,
    )
    with RelayServer(relay_config) as relay:
        # The relay's address as the agents see it: this host, reached from every Ray node.
        address = f"{relay_host}:{relay.port}"
        values = {
            **run_config,
            "relay": address,
            "agent-timeout": max(float(run_config.get("agent-timeout", 0)), QUEUED_AGENT_TIMEOUT),
        }
        app = fleet_app(data_root.resolve(), address, tokens, device, threads)
        before = os.environ.get(TOKEN_ENV)
        os.environ[TOKEN_ENV] = conductor_token  # the ServerApp runs in this process
        try:
            run_on_simulation_engine(conductor_app, app, agents, values, resources)
        finally:
            if before is None:
                os.environ.pop(TOKEN_ENV, None)
            else:
                os.environ[TOKEN_ENV] = before


def refused_flags(args: argparse.Namespace) -> list[str]:
    """Options of the in-process engine that --engine flower does not take."""
    refused = []
    if args.relay:
        refused.append("--relay (the Simulation Engine starts a relay of its own)")
    if args.resume:
        refused.append("--resume")
    if args.agent_data:
        refused.append("--agent-data")
    if args.preset is not None:
        refused.append("--preset (its teacher cache)")
    return refused


def simulate_on_flower(args: argparse.Namespace, config: Any, out: Path, console: Console) -> int:
    """Run `config` under Flower's Simulation Engine and write the results folder `out`;
    returns the exit code."""
    from dkt.cli.out_folder import clear_out
    from dkt.cli.report import print_summary
    from dkt.cli.run import absolute_paths, record_provenance, tracking_keys
    from dkt.flower.runs import run_config
    from dkt.flower.simulation import RAY_ADDRESS_ENV, FleetResources

    refused = refused_flags(args)
    if refused:
        console.print(
            f"[red]error:[/] --engine flower does not take {', '.join(refused)}; "
            "drop it, or use the default --engine in-process",
            soft_wrap=True,
        )
        return 2
    if importlib.util.find_spec("ray") is None:
        console.print("[red]error:[/] --engine flower needs Ray: pip install 'dkt[simulation]' "
                      "(or 'flwr[simulation]==1.42.*')", soft_wrap=True)  # fmt: skip
        return 2
    if args.num_gpus > 0 and not str(args.device).startswith("cuda"):
        console.print(
            f"[red]error:[/] --num-gpus {args.num_gpus} reserves GPUs that agents on "
            f"--device {args.device} never use; add --device cuda",
            soft_wrap=True,
        )
        return 2
    config = absolute_paths(config)
    # Each agent's torch threads: its share of the CPUs Ray reserves for it.
    threads = args.threads or max(1, int(args.num_cpus))
    data_root = (args.checkpoint_dir or out / "checkpoints").resolve()
    # As ray.init: no address given, $RAY_ADDRESS names the cluster to join.
    ray_address = args.ray_address or os.environ.get(RAY_ADDRESS_ENV, "")
    where = f"Ray cluster {ray_address}" if ray_address else "a local Ray"
    console.print(
        f"[bold]dkt simulate --engine flower[/]: {config.agents} agents × {config.experiences} "
        f"experiences on {config.dataset}, backbone {config.backbone}, on {where} with "
        f"{args.num_cpus:g} CPU and {args.num_gpus:g} GPU per agent, {threads} torch "
        f"thread{'s' if threads != 1 else ''} each; agent state in {data_root}",
        soft_wrap=True,
    )
    if args.overwrite:
        clear_out(out)
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.toml").write_text(config.to_toml())
    values = run_config(
        config, run_id=out.name, results_dir=out, plots=args.plots, **tracking_keys(args, out)
    )
    start = time.monotonic()
    try:
        run_fleet(
            values,
            config.agents,
            data_root,
            out / "cluster" / "relay",  # cluster/: what --overwrite clears
            FleetResources(args.num_cpus, args.num_gpus, ray_address),
            device=args.device,
            threads=threads,
            relay_host=args.relay_host,
        )
    except Exception as err:  # the ServerApp's error, re-raised by the Simulation Engine
        console.print(f"[red]the run failed[/]: {escape(str(err))}", soft_wrap=True)
        return 1
    seconds = time.monotonic() - start
    metrics = record_provenance(out, getattr(args, "argv", None), args.device)
    if not args.quiet:
        print_summary(metrics, Console())
    console.print(f"results: [bold]{out}[/] ({seconds:.1f} s)", soft_wrap=True)
    return 0
