"""`dkt agent`: one agent on its own host — a Flower SuperNode with DKT's long-lived
worker — connected to a `dkt server`."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from dkt.cli.flags import (
    FRESH_PROCESS_HELP,
    SUPERLINK_PORT,
    SUPERNODE_PORT,
    add_threads_flag,
    host_of,
    keys_default,
    with_port,
)
from dkt.cli.signals import exit_code, ignore_signals, interrupt_on_signals
from dkt.proto.relay_connection import CA_ENV, TOKEN_ENV
from dkt.proto.relay_connection import DEFAULT_PORT as RELAY_PORT


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
    parser.add_argument(
        "--keys",
        type=Path,
        metavar="DIR",
        default=keys_default(),
        help="this agent's startup kit from `dkt keys init` (default: $DKT_KEYS; "
        "DIR/agent-N): the server's CA, the relay token and the SuperNode key (Flower's "
        "SuperNode authentication)",
    )
    parser.add_argument(
        "--auth-key",
        type=Path,
        metavar="FILE",
        help="the SuperNode's private key (OpenSSH ECDSA) for Flower's SuperNode "
        "authentication; its public key must be registered with the server",
    )
    add_threads_flag(parser, "1 (one agent per host)")
    parser.add_argument("--fresh-process", action="store_true", help=FRESH_PROCESS_HELP)
    parser.set_defaults(func=run_agent)
    return parser


def run_agent(args: argparse.Namespace) -> int:
    """`dkt agent`: a SuperNode in the foreground; returns its exit code."""

    from dkt.common.threads import resolve_threads, thread_env
    from dkt.flower.processes import dying_with_parent, flower_env, stop_process, supernode_command

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
    if args.keys is not None:
        from dkt.cli import keys

        if not (args.keys / keys.SUPERNODE_KEY).exists():
            print(f"dkt agent: --keys {args.keys} is not an agent kit of `dkt keys init` (no "
                  f"{keys.SUPERNODE_KEY})", file=sys.stderr)  # fmt: skip
            return 2
        args.root_cert = args.root_cert or args.keys / keys.CA_CERT
        args.auth_key = args.auth_key or args.keys / keys.SUPERNODE_KEY
        if not (args.token or os.environ.get(TOKEN_ENV)):
            args.token = keys.read_token(args.keys / keys.AGENT_TOKEN_FILE)
    if args.auth_key is not None and args.root_cert is None:
        print("dkt agent: SuperNode authentication (--auth-key) needs TLS: give --root-cert",
              file=sys.stderr)  # fmt: skip
        return 2
    threads = resolve_threads(args.threads or None, 1)
    data_dir: Path = (args.data_dir or Path(f"dkt-agent-{args.agent_id}")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    superlink = with_port(args.server, SUPERLINK_PORT)
    relay = args.relay or f"{host_of(args.server)}:{RELAY_PORT}"
    extra = {TOKEN_ENV: args.token or os.environ.get(TOKEN_ENV, "")}
    if args.root_cert is not None:
        extra[CA_ENV] = str(args.root_cert.resolve())
    env = flower_env(data_dir / "flwr-home", **extra, **thread_env(threads))
    root_cert = args.root_cert.resolve() if args.root_cert else None
    cmd = supernode_command(
        superlink, args.port, args.agent_id, data_dir, relay, args.device,
        root_cert=root_cert, threads=threads, local=local, fresh_process=args.fresh_process,
        auth_key=args.auth_key.resolve() if args.auth_key else None,
    )  # fmt: skip
    own = f", own data {local.path}" if local is not None else ""
    print(f"agent {args.agent_id}: SuperLink {superlink}, relay {relay}, device {args.device}, "
          f"{threads} threads, data {data_dir}{own}", flush=True)  # fmt: skip
    interrupt_on_signals()  # until the SuperNode exists, a signal just ends us
    proc: subprocess.Popen | None = None
    try:
        proc = subprocess.Popen(dying_with_parent(cmd), env=env, start_new_session=True)
        # The agent's worker stops its SuperNode when told to stop (a plain SuperNode, with
        # --fresh-process, its SuperExec and ClientApps).
        forward = lambda signum, _frame: proc.send_signal(signum)  # noqa: E731
        signal.signal(signal.SIGINT, forward)
        signal.signal(signal.SIGTERM, forward)
        code = proc.wait()
        return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell
    except KeyboardInterrupt as err:
        return exit_code(err)
    finally:
        ignore_signals()
        if proc is not None:
            stop_process(proc)
