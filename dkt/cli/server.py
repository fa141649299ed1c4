"""`dkt server`: the server host's processes — a Flower SuperLink (with its ServerApp
runtime) and the relay — until a signal stops them."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from dkt.cli.flags import SUPERLINK_PORT
from dkt.cli.signals import ignore_signals, interrupt_on_signals, wait_for_signal
from dkt.proto.relay_connection import CA_ENV, TOKEN_ENV


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
        "defaults for every run that does not set them itself (see docs/how-to/own-data.md)",
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
    import logging

    from dkt.flower.processes import (
        dying_with_parent,
        flower_env,
        stop_process,
        superlink_command,
        wait_http_ok,
    )
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
    # its own); once up, `wait_for_signal` takes over.
    interrupt_on_signals()
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
                dying_with_parent(
                    superlink_command(args.host, args.superlink_port, base / "superlink.db", tls)
                ),
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
        if not wait_for_signal(superlink):
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
        ignore_signals()
        if superlink is not None:
            stop_process(superlink)
        relay.stop()
    return 0


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
        from dkt.common.data.input_spec import InputSpec

        InputSpec.parse(out["input_shape"])  # a malformed shape fails here, in one line
    return out
