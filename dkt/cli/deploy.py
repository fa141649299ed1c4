"""`dkt run`: the whole system on one machine — a relay, a Flower SuperLink and one
SuperNode per agent as local processes on loopback, one run submitted and followed
to the end, a results folder, and nothing left running afterwards."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from dkt.proto.relay_connection import CA_ENV, TOKEN_ENV
from dkt.proto.relay_connection import DEFAULT_PORT as RELAY_PORT


def add_deployment_flags(parser: argparse.ArgumentParser) -> None:
    """How the conductor treats slow, failing and absent agents (from `FailurePolicy`)."""
    from dkt.common.run.config import FailurePolicy

    group = parser.add_argument_group("failures")
    for f in dataclasses.fields(FailurePolicy):
        default = getattr(FailurePolicy, f.name)
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(default),
            default=default,
            metavar="S" if isinstance(default, float) else "N",
            help=f"{f.metadata['help']} (default: {default:g})",
        )


FRESH_PROCESS_HELP = (
    "run each Flower message in a fresh ClientApp process (Flower's subprocess isolation: "
    "Python, torch and dkt are loaded again for every experience; slower). Default: one "
    "long-lived process per agent runs the ClientApp for all its messages"
)


def add_threads_flag(parser: argparse.ArgumentParser, per: str) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help=f"torch CPU threads of each agent (default: $DKT_THREADS, else this host's "
        f"usable cores // {per}, at least 1)",
    )


def failure_policy(args: argparse.Namespace) -> dict[str, Any]:
    """The failure-policy flags as run-config keyword arguments."""
    from dkt.common.run.config import FailurePolicy

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(FailurePolicy)}


def add_run_parser(subparsers: Any) -> argparse.ArgumentParser:
    from dkt.cli.flags import add_config_flags

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
    parser.add_argument(
        "--agent-data",
        action="append",
        default=[],
        metavar="N=PATH",
        help="agent N learns its own data instead of the shared data set (repeatable): a "
        "folder of class-named image folders or an .npz with x and y; its experiences from "
        "experiences.toml beside it, else a seeded split (see README: Your own data)",
    )
    add_threads_flag(parser, "agents")
    parser.add_argument("--fresh-process", action="store_true", help=FRESH_PROCESS_HELP)
    add_deployment_flags(parser)
    add_config_flags(parser)
    parser.set_defaults(func=run_local)
    return parser


def run_local(args: argparse.Namespace) -> int:
    """`dkt run`; returns the exit code."""
    from dkt.cli.flags import config_from_args
    from dkt.cli.local_cluster import LocalCluster
    from dkt.cli.report import print_summary
    from dkt.flower.runs import run_config, submit_run, write_app
    from dkt.proto.relay_client import RelayClient

    console = Console(stderr=True)
    if args.threads < 0:
        console.print("[red]error:[/] --threads must be 1 or more (0: automatic)")
        return 2
    config = absolute_paths(config_from_args(args))
    try:
        local = agent_data_flags(args.agent_data, config.agents)
        if local:
            # Each site's data checked before anything starts: one line, nothing published.
            from dkt.common.run.setup import local_plan

            for agent_id, source in local.items():
                local_plan(config, agent_id, source)
    except (ValueError, OSError) as err:
        console.print(f"[red]error:[/] {escape(str(err))}", soft_wrap=True)
        return 2
    out: Path = (args.out or Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")).resolve()
    if (out / "metrics.json").exists():
        console.print(f"[red]error:[/] {out} already holds a finished run; choose another --out")
        return 2
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.toml").write_text(config.to_toml())
    cluster = LocalCluster(
        out / "cluster", config.agents, args.device, args.threads or None, local=local,
        fresh_process=args.fresh_process,
    )  # fmt: skip
    console.print(
        f"[bold]dkt run[/]: {config.agents} agents × {config.experiences} experiences on "
        f"{config.dataset}, schedule {config.schedule}, {cluster.threads} torch threads per agent; "
        f"starting relay, SuperLink and {config.agents} SuperNodes "
        f"(logs in {out / 'cluster' / 'logs'})"
    )
    run = None
    # SIGTERM (docker stop, kill) cleans up like Ctrl-C: the cluster's processes run in
    # sessions of their own and would otherwise outlive us.
    _interrupt_on_signals()
    try:
        cluster.start()
        assert cluster.relay is not None
        console.print(
            f"relay {cluster.relay_address} (status: http://127.0.0.1:"
            f"{cluster.relay.status_port}/status), SuperLink {cluster.superlink_address}",
            soft_wrap=True,
        )
        values = run_config(
            config,
            run_id=out.name,
            results_dir=out,
            relay=cluster.relay_address,
            **failure_policy(args),
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
        _ignore_signals()  # a second Ctrl-C must not cut the clean-up short
        if run is not None:
            console.print("interrupted: stopping the run and every process")
            run.stop()
        cluster.shutdown()
        console.print(f"stopped; logs in {cluster.logs}")
        return _exit_code(err)
    finally:
        _ignore_signals()
        left = cluster.shutdown()
        if left:
            console.print(f"[yellow]had to kill {len(left)} leftover processes[/]")
    if not args.quiet:
        print_summary(json.loads((out / "metrics.json").read_text()), Console())
    console.print(f"results: [bold]{out}[/]", soft_wrap=True)
    return 0


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; `signum` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


def _interrupt_on_signals() -> None:
    """Ctrl-C and SIGTERM (`docker stop`, `kill`) both raise `Interrupted`."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def _exit_code(err: KeyboardInterrupt) -> int:
    """128 + the signal's number, as a shell reports it: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + getattr(err, "signum", signal.SIGINT)


def _ignore_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def server_defaults(args: argparse.Namespace) -> dict[str, str]:
    """`dkt server`'s public-data options as experiment fields, checked now: the class
    names read from --classes, the paths absolute and present."""
    out: dict[str, str] = {}
    if getattr(args, "classes", None) is not None:
        from dkt.common.data.local_data import read_class_names

        out["class_names"] = json.dumps(list(read_class_names(args.classes)))
    for name in ("probe_from", "eval_from"):
        path = getattr(args, name, None)
        if path is not None:
            if not path.exists():
                raise ValueError(f"--{name.replace('_', '-')} {path} does not exist")
            out[name] = str(path.expanduser().resolve())
    for name in ("input_shape", "input_mean", "input_std"):
        if getattr(args, name, None):
            out[name] = getattr(args, name)
    if "input_shape" in out:
        from dkt.common.data.local_data import InputSpec

        InputSpec.parse(out["input_shape"])  # a malformed shape fails here, in one line
    return out


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


# `dkt server`, `dkt agent`, `dkt launch`: the same pieces on separate machines -------

SUPERLINK_PORT = 8000  # Flower's default: Fleet, Control and ServerAppIo APIs over HTTP
SUPERNODE_PORT = 9094  # Flower's default ClientAppIo port of a SuperNode


def _with_port(address: str, port: int) -> str:
    """HOST or HOST:PORT -> HOST:PORT."""
    host, sep, given = address.rpartition(":")
    if sep and given.isdigit() and not address.endswith("]"):
        return address
    return f"{address}:{port}"


def _host_of(address: str) -> str:
    host, sep, given = address.rpartition(":")
    return host if sep and given.isdigit() else address


def _wait_for_signal(watched: subprocess.Popen) -> bool:
    """Block until SIGINT or SIGTERM (True) or until `watched` exits (False)."""
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(1.0):
        if watched.poll() is not None:
            return False
    return True


def add_server_parser(subparsers: Any) -> argparse.ArgumentParser:
    from dkt.server.relay.server import add_relay_arguments

    parser = subparsers.add_parser(
        "server",
        help="relay and Flower SuperLink for a server host",
        description="Run the relay and a Flower SuperLink on this host until interrupted. "
        "Agents connect with `dkt agent --server HOST`; runs are submitted with "
        "`dkt launch --server HOST`. Results are written under DATA_DIR/results/RUN_ID.",
    )
    add_relay_arguments(parser)
    parser.set_defaults(data_dir=Path("dkt-server"))
    parser.add_argument("--superlink-port", type=int, default=SUPERLINK_PORT,
                        help=f"Flower SuperLink port (default: {SUPERLINK_PORT})")  # fmt: skip
    parser.add_argument(
        "--tls-ca",
        type=Path,
        help="CA certificate (PEM) that signed --tls-cert (the SuperLink needs it)",
    )
    public = parser.add_argument_group(
        "public data for sites with their own data",
        "defaults for every run that does not set them itself (see README: Your own data)",
    )
    public.add_argument("--classes", type=Path, metavar="FILE",
                        help="the class space: one class name per line")  # fmt: skip
    public.add_argument("--probe-from", type=Path, metavar="PATH",
                        help="public probe inputs: image folder or .npz with x")  # fmt: skip
    public.add_argument("--eval-from", type=Path, metavar="PATH",
                        help="public labeled evaluation set: class folders or .npz")  # fmt: skip
    public.add_argument("--input-shape", metavar="C,H,W", help="input shape, e.g. 3,32,32")
    public.add_argument("--input-mean", metavar="X[,X,X]", help="per-channel mean")
    public.add_argument("--input-std", metavar="X[,X,X]", help="per-channel std")
    parser.set_defaults(func=run_server)
    return parser


def run_server(args: argparse.Namespace) -> int:
    """`dkt server`; returns the exit code."""
    import dataclasses
    import logging

    from dkt.cli.local_cluster import flower_env, stop_process, superlink_command, wait_http_ok
    from dkt.server.conductor.settings import (
        RELAY_ADDRESS_ENV,
        RESULTS_ROOT_ENV,
        SERVER_DEFAULTS_ENV,
    )
    from dkt.server.relay.auth import TokenConfigError, load_admin_token
    from dkt.server.relay.server import RelayConfigError, RelayServer, config_from_args
    from dkt.server.relay.store.records import StoreError

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s: %(message)s")
    # A signal while starting up must still stop the SuperLink (it runs in a session of
    # its own); once up, `_wait_for_signal` takes over.
    _interrupt_on_signals()
    base: Path = args.data_dir.resolve()
    if args.tls_cert is not None and args.tls_ca is None:
        print("dkt server: --tls-cert needs --tls-ca (the CA that signed it)", file=sys.stderr)
        return 2
    try:
        config = dataclasses.replace(config_from_args(args), data_dir=base / "relay")
        admin = load_admin_token(args.token_file)
        relay = RelayServer(config).start()
    except (RelayConfigError, TokenConfigError, StoreError) as err:
        print(f"dkt server: {err}", file=sys.stderr)
        return 2
    try:
        defaults = server_defaults(args)
    except (ValueError, OSError) as err:
        relay.stop()
        print(f"dkt server: {err}", file=sys.stderr)
        return 2
    local = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    env = flower_env(
        base / "flwr-home",
        **{
            TOKEN_ENV: admin or "",
            RELAY_ADDRESS_ENV: f"{local}:{relay.port}",
            RESULTS_ROOT_ENV: str(base / "results"),
            SERVER_DEFAULTS_ENV: json.dumps(defaults) if defaults else "",
        },
    )
    if args.tls_ca is not None:
        env[CA_ENV] = str(args.tls_ca.resolve())
    # The SuperLink runs in `base`: hand it absolute paths.
    tls = (
        (args.tls_ca.resolve(), args.tls_cert.resolve(), args.tls_key.resolve())
        if args.tls_cert
        else None
    )
    superlink: subprocess.Popen | None = None
    try:
        (base / "flwr-home").mkdir(parents=True, exist_ok=True)
        with open(base / "superlink.log", "ab") as log:
            superlink = subprocess.Popen(
                superlink_command(args.host, args.superlink_port, base / "superlink.db", tls),
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=base, start_new_session=True,
            )  # fmt: skip
        scheme = "http" if tls is None else "https"
        wait_http_ok(f"{scheme}://{local}:{args.superlink_port}/health", 60, superlink)
        status = (
            f", status {scheme}://{args.host}:{relay.status_port}/status"
            if relay.status_port
            else ""
        )
        print(
            f"server ready: SuperLink {args.host}:{args.superlink_port}, relay "
            f"{args.host}:{relay.port}{status}; logs and results in {base}",
            flush=True,
        )
        if not _wait_for_signal(superlink):
            print(f"dkt server: the SuperLink exited with code {superlink.returncode}; see "
                  f"{base / 'superlink.log'}", file=sys.stderr)  # fmt: skip
            return 1
    except (OSError, RuntimeError, TimeoutError) as err:
        print(f"dkt server: the SuperLink did not start ({err}); see {base / 'superlink.log'}",
              file=sys.stderr)  # fmt: skip
        return 1
    except KeyboardInterrupt:
        return 0  # stopped while starting: as when stopped later
    finally:
        _ignore_signals()
        if superlink is not None:
            stop_process(superlink)
        relay.stop()
    return 0


def add_agent_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "agent",
        help="one agent (a Flower SuperNode running the DKT ClientApp) for an agent host",
        description="Run one DKT agent until interrupted: a Flower SuperNode connected to "
        "the SuperLink of `dkt server`, with the agent's identity, data folder and device, "
        "and one long-lived process that runs the DKT ClientApp for all of its messages "
        "(torch and the data loaded once; see --fresh-process).",
    )
    parser.add_argument(
        "--server",
        required=True,
        metavar="HOST[:PORT]",
        help=f"the server host (SuperLink port default {SUPERLINK_PORT})",
    )
    parser.add_argument("--agent-id", type=int, required=True, help="this agent's id: 0..N-1")
    parser.add_argument(
        "--data-dir", type=Path, help="checkpoints and caches (default: dkt-agent-ID)"
    )
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--data",
        type=Path,
        metavar="PATH",
        help="this site's own data, read only here: a folder of class-named image folders "
        "(optionally train/ and test/) or an .npz with x, y (optional x_test, y_test, "
        "classes); default: the run's shared data set",
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        metavar="FILE",
        help='the experiences of --data: a TOML file with experiences = [["cat", "dog"], '
        '["car"]] (default: experiences.toml beside the data, else a seeded split)',
    )
    parser.add_argument(
        "--relay",
        metavar="HOST:PORT",
        help=f"relay address (default: the server host, port {RELAY_PORT})",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=SUPERNODE_PORT,
        help=f"local port of this SuperNode's app API (default {SUPERNODE_PORT})",
    )
    parser.add_argument("--token", help="this agent's relay token (default: $DKT_RELAY_TOKEN)")
    parser.add_argument(
        "--root-cert",
        type=Path,
        help="CA certificate (PEM) of the server (TLS to SuperLink and relay)",
    )
    add_threads_flag(parser, "1 (one agent per host)")
    parser.add_argument("--fresh-process", action="store_true", help=FRESH_PROCESS_HELP)
    parser.set_defaults(func=run_agent)
    return parser


def run_agent(args: argparse.Namespace) -> int:
    """`dkt agent`: a SuperNode in the foreground; returns its exit code."""
    import os

    from dkt.cli.local_cluster import flower_env, stop_process, supernode_command
    from dkt.common.threads import resolve_threads, thread_env

    if args.agent_id < 0:
        print("dkt agent: --agent-id must be 0 or more", file=sys.stderr)
        return 2
    if args.threads < 0:
        print("dkt agent: --threads must be 1 or more (0: automatic)", file=sys.stderr)
        return 2
    if args.manifest is not None and args.data is None:
        print("dkt agent: --manifest describes --data: give --data PATH too", file=sys.stderr)
        return 2
    local = None
    if args.data is not None:
        from dkt.common.data.local_source import LocalSource

        local = LocalSource.of(
            args.data.resolve(), args.manifest.resolve() if args.manifest else None
        )
        missing = [str(p) for p in (local.path, local.manifest) if p is not None and not p.exists()]
        if missing:
            print(f"dkt agent: {missing[0]} does not exist", file=sys.stderr)
            return 2
    threads = resolve_threads(args.threads or None, 1)
    data_dir: Path = (args.data_dir or Path(f"dkt-agent-{args.agent_id}")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    superlink = _with_port(args.server, SUPERLINK_PORT)
    relay = args.relay or f"{_host_of(args.server)}:{RELAY_PORT}"
    extra = {TOKEN_ENV: args.token or os.environ.get(TOKEN_ENV, "")}
    if args.root_cert is not None:
        extra[CA_ENV] = str(args.root_cert.resolve())
    env = flower_env(data_dir / "flwr-home", **extra, **thread_env(threads))
    root_cert = args.root_cert.resolve() if args.root_cert else None
    cmd = supernode_command(
        superlink, args.port, args.agent_id, data_dir, relay, args.device,
        root_cert=root_cert, threads=threads, local=local, fresh_process=args.fresh_process,
    )  # fmt: skip
    own = f", own data {local.path}" if local is not None else ""
    print(f"agent {args.agent_id}: SuperLink {superlink}, relay {relay}, device {args.device}, "
          f"{threads} threads, data {data_dir}{own}", flush=True)  # fmt: skip
    _interrupt_on_signals()  # until the SuperNode exists, a signal just ends us
    proc: subprocess.Popen | None = None
    try:
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        # The agent's worker stops its SuperNode when told to stop (a plain SuperNode, with
        # --fresh-process, its SuperExec and ClientApps).
        forward = lambda signum, _frame: proc.send_signal(signum)  # noqa: E731
        signal.signal(signal.SIGINT, forward)
        signal.signal(signal.SIGTERM, forward)
        code = proc.wait()
        return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell
    except KeyboardInterrupt as err:
        return _exit_code(err)
    finally:
        _ignore_signals()
        if proc is not None:
            stop_process(proc)


def add_launch_parser(subparsers: Any) -> argparse.ArgumentParser:
    from dkt.cli.flags import add_config_flags

    parser = subparsers.add_parser(
        "launch",
        help="submit an experiment to a running `dkt server` and follow it",
        description="Submit an experiment to the SuperLink of a `dkt server` and print the "
        "conductor's log until the run ends. Results are written on the server host.",
    )
    parser.add_argument("--server", default=f"127.0.0.1:{SUPERLINK_PORT}", metavar="HOST[:PORT]",
                        help="the server host (default: 127.0.0.1)")  # fmt: skip
    parser.add_argument("--run-id", help="run id (default: launch-DATE-TIME)")
    parser.add_argument("--results-dir", help="results folder on the server host "
                        "(default: the server's DATA_DIR/results/RUN_ID)")  # fmt: skip
    parser.add_argument("--root-cert", type=Path, help="CA certificate (PEM) of the server")
    parser.add_argument("--no-wait", action="store_true", help="submit, print the run id, exit")
    add_deployment_flags(parser)
    add_config_flags(parser)
    parser.set_defaults(func=run_launch)
    return parser


def run_launch(args: argparse.Namespace) -> int:
    """`dkt launch`; returns 0 when the run completes."""
    import tempfile

    from dkt.cli.flags import config_from_args
    from dkt.flower.runs import run_config, submit_run, write_app

    config = config_from_args(args)
    run_id = args.run_id or time.strftime("launch-%Y%m%d-%H%M%S")
    values = run_config(
        config,
        run_id=run_id,
        results_dir=args.results_dir or "",
        **failure_policy(args),
    )
    superlink = _with_port(args.server, SUPERLINK_PORT)
    root_cert = args.root_cert.read_bytes() if args.root_cert else None
    # SIGTERM (`docker stop`) stops the run like Ctrl-C: a run left behind would keep
    # the agents busy until it ends.
    _interrupt_on_signals()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run = submit_run(superlink, write_app(Path(tmp) / "app"), values, root_cert)
    except KeyboardInterrupt as err:
        print(f"interrupted while submitting run {run_id}; see `flwr ls` on the server "
              "for a run that got through", file=sys.stderr)  # fmt: skip
        return _exit_code(err)
    print(f"run {run_id} submitted to {superlink} (Flower run {run.run_id})", flush=True)
    if args.no_wait:
        run.close()
        return 0
    try:
        summary = _print_logs(run)
        while not (status := run.status()).startswith("finished"):
            time.sleep(0.5)
        if status != "finished:completed":
            print(f"run {run_id} ended {status}: {run.details()}", file=sys.stderr)
            return 1
        if summary is not None:
            from dkt.cli.report import print_summary

            print_summary(summary, Console())
            print(f"results: {summary['results_dir']} on the server host", flush=True)
        return 0
    except KeyboardInterrupt as err:
        _ignore_signals()  # a second signal must not cut the stop short
        run.stop()
        print(f"run {run_id} stopped (Flower run {run.run_id})", file=sys.stderr)
        return _exit_code(err)
    finally:
        run.close()


def _print_logs(run: Any) -> dict[str, Any] | None:
    """Print the conductor's log until the run ends; return the summary it logged."""
    from dkt.server.conductor.run import SUMMARY_LINE

    summary = None
    try:
        for line in run.logs():
            if line.startswith(SUMMARY_LINE):
                summary = json.loads(line.removeprefix(SUMMARY_LINE))
            else:
                print(line, flush=True)
    except Exception as err:  # the stream can break when the run ends; status tells
        print(f"(log stream ended: {err})", file=sys.stderr)
    return summary
