"""`dkt server`: the server host's processes — a Flower SuperLink (with its ServerApp
runtime) and the relay — until a signal stops them."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from dkt.cli.flags import SUPERLINK_PORT, keys_default
from dkt.cli.signals import ignore_signals, interrupt_on_signals, wait_for_signal
from dkt.flower.processes import program_of
from dkt.proto.relay_connection import CA_ENV, TOKEN_ENV, without_relay_secrets


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
    access = parser.add_argument_group(
        "who may reach the SuperLink",
        "Beyond loopback, nginx stands in front of the SuperLink: the Control API only for "
        "operators with a client certificate, the Fleet API only for registered agents "
        "(docs/explanation/security.md)",
    )
    access.add_argument("--keys", type=Path, metavar="DIR", default=keys_default(),
                        help="the server's startup kit from `dkt keys init` (default: "
                        "$DKT_KEYS; DIR/server): sets every option below and the TLS and "
                        "token options")  # fmt: skip
    access.add_argument("--operator-ca", type=Path, metavar="FILE",
                        help="CA (PEM) of the operators' client certificates: only they "
                        "reach the Control API through nginx")  # fmt: skip
    access.add_argument("--supernode-keys", type=Path, metavar="DIR",
                        help="the agents' SuperNode public keys (*.pub, OpenSSH ECDSA): "
                        "turns on Flower's SuperNode authentication, registers them")  # fmt: skip
    access.add_argument("--superexec-secret", type=Path, metavar="FILE",
                        help="the SuperExec secret (default: a new one per start in "
                        "DATA_DIR): only its holder takes ServerApp tasks")  # fmt: skip
    access.add_argument("--trusted-network", action="store_true",
                        help="beyond loopback, serve the SuperLink without nginx and without "
                        "SuperNode authentication: every host that reaches it may launch "
                        "runs (trusted networks only)")  # fmt: skip
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


def apply_kit(args: argparse.Namespace) -> None:
    """Fill the TLS, token, operator-CA, SuperNode-key and SuperExec options from the
    server's startup kit (`dkt keys init`), where not given on their own."""
    from dkt.cli import keys

    kit: Path | None = args.keys
    if kit is None:
        return
    if not (kit / keys.SERVER_CERT).exists():
        raise ValueError(f"--keys {kit} is not a server kit of `dkt keys init` (no "
                         f"{keys.SERVER_CERT}); give the kit's server/ folder")  # fmt: skip
    defaults = {
        "tls_cert": kit / keys.SERVER_CERT,
        "tls_key": kit / keys.SERVER_KEY,
        "tls_ca": kit / keys.CA_CERT,
        "token_file": kit / keys.TOKENS_FILE,
        "operator_ca": kit / keys.CA_CERT,
        "supernode_keys": kit / keys.SUPERNODES_DIR,
        "superexec_secret": kit / keys.SUPEREXEC_SECRET,
    }
    for name, path in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, path)


def supernode_keys(folder: Path | None) -> dict[str, bytes]:
    """The agents' SuperNode public keys: every *.pub file of `folder`, by file name."""
    if folder is None:
        return {}
    if not folder.is_dir():
        raise ValueError(f"--supernode-keys {folder} is not a folder")
    found = {p.stem: p.read_bytes() for p in sorted(folder.glob("*.pub"))}
    if not found:
        raise ValueError(f"--supernode-keys {folder} holds no *.pub file")
    return found


def run_server(args: argparse.Namespace) -> int:
    """`dkt server`; returns the exit code."""
    import logging

    from dkt.flower.gateway import NGINX_HINT, Gateway, find_nginx
    from dkt.flower.processes import (
        dying_with_parent,
        flower_env,
        free_port,
        stop_process,
        superexec_command,
        superlink_command,
        wait_http_ok,
        write_secret,
    )
    from dkt.flower.runs import register_supernodes
    from dkt.server.conductor.settings import (
        RELAY_ADDRESS_ENV,
        RESULTS_ROOT_ENV,
        SERVER_DEFAULTS_ENV,
    )
    from dkt.server.relay.auth import TokenConfigError, tokens_with_conductor
    from dkt.server.relay.server import (
        RelayConfigError,
        RelayServer,
        config_from_args,
        is_loopback,
    )
    from dkt.server.relay.store.records import StoreError

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s: %(message)s")
    # A signal while starting up must still stop the SuperLink (it runs in a session of
    # its own); once up, `wait_for_signal` takes over.
    interrupt_on_signals()
    base: Path = args.data_dir.resolve()
    try:
        apply_kit(args)
        node_keys = supernode_keys(args.supernode_keys)
    except (ValueError, OSError) as err:
        print(f"dkt server: {err}", file=sys.stderr)
        return 2
    if args.tls_cert is not None and args.tls_ca is None:
        print("dkt server: --tls-cert needs --tls-ca (the CA that signed it)", file=sys.stderr)
        return 2
    exposed = not is_loopback(args.host)  # the relay's rule, for /status too
    gateway_needed = exposed and not args.trusted_network
    if gateway_needed:
        missing = [
            flag
            for flag, value in (
                ("--tls-cert", args.tls_cert),
                ("--operator-ca", args.operator_ca),
                ("--supernode-keys", args.supernode_keys),
            )
            if value is None
        ]
        nginx = find_nginx()
        if missing or nginx is None:
            why = f"it needs {', '.join(missing)}" if missing else NGINX_HINT
            print(
                f"dkt server: --host {args.host} exposes the SuperLink beyond this host, and "
                "Flower's Control API (start runs, read logs, unregister nodes) has no "
                "authentication: dkt puts nginx in front of it, which lets only operators "
                "with a client certificate reach the Control API and only registered agents "
                f"(SuperNode authentication) the Fleet API; {why}. Create a deployment's "
                "kits with `dkt keys init DIR --agents N --server-name HOST` and start "
                "`dkt server --keys DIR/server`; or, on a network where every host may "
                "launch runs, --trusted-network.",
                file=sys.stderr,
            )
            return 2
    if node_keys and args.tls_cert is None:
        print("dkt server: SuperNode authentication (--supernode-keys) needs TLS: give "
              "--tls-cert, --tls-key and --tls-ca (or --keys)", file=sys.stderr)  # fmt: skip
        return 2
    try:
        # The ServerApps get the conductor's token (the token file's, else one made up
        # now), which reaches only the runs they create; never the admin's.
        tokens, conductor = tokens_with_conductor(args.token_file)
        config = dataclasses.replace(config_from_args(args), data_dir=base / "relay", tokens=tokens)
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
    home = base / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    # The SuperExec, and the ServerApps it starts, hold the conductor's relay credential;
    # the SuperLink holds none.
    conductor_env = {
        TOKEN_ENV: conductor or "",
        RELAY_ADDRESS_ENV: f"{local}:{relay.port}",
        RESULTS_ROOT_ENV: str(base / "results"),
        SERVER_DEFAULTS_ENV: json.dumps(defaults) if defaults else "",
    }
    if args.tls_ca is not None:
        conductor_env[CA_ENV] = str(args.tls_ca.resolve())
    # The SuperLink runs in `base`: hand it absolute paths.
    tls = (
        (args.tls_ca.resolve(), args.tls_cert.resolve(), args.tls_key.resolve())
        if args.tls_cert
        else None
    )
    secret = (
        args.superexec_secret.resolve()
        if args.superexec_secret is not None
        else write_secret(base / "superexec.secret")
    )
    # Behind the gateway the SuperLink listens on loopback only, on a port of its own.
    link_host, link_port = (
        ("127.0.0.1", free_port()) if gateway_needed else (args.host, args.superlink_port)
    )
    scheme = "http" if tls is None else "https"
    internal = f"127.0.0.1:{link_port}" if link_host in ("0.0.0.0", "::", "") else (
        f"{link_host}:{link_port}"
    )  # fmt: skip
    processes: list[subprocess.Popen] = []

    def spawn(cmd: list[str], log_name: str, env: dict[str, str]) -> subprocess.Popen:
        with open(base / log_name, "ab") as log:
            proc = subprocess.Popen(
                dying_with_parent(cmd), env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=base, start_new_session=True,
            )  # fmt: skip
        processes.append(proc)
        return proc

    try:
        superlink = spawn(
            superlink_command(
                link_host, link_port, base / "superlink.db", tls,
                superexec_secret=secret, supernode_auth=bool(node_keys),
            ),
            "superlink.log",
            without_relay_secrets(flower_env(home), TOKEN_ENV),
        )  # fmt: skip
        wait_http_ok(f"{scheme}://{internal}/health", 60, superlink)
        spawn(
            superexec_command(internal, secret, tls[0] if tls else None),
            "superexec.log",
            without_relay_secrets(flower_env(home, **conductor_env)),
        )
        if node_keys:
            root = tls[0].read_bytes() if tls else None
            added = register_supernodes(internal, node_keys, root)
            print(f"SuperNode authentication on: {len(node_keys)} agent keys "
                  f"({len(added)} registered now)", flush=True)  # fmt: skip
        if gateway_needed:
            assert tls is not None and nginx is not None
            gateway = Gateway(
                host=args.host, port=args.superlink_port, upstream=f"127.0.0.1:{link_port}",
                cert=tls[1], key=tls[2], ca=tls[0], operator_ca=args.operator_ca.resolve(),
                folder=base / "gateway",
            )  # fmt: skip
            gateway.check(nginx)
            front_env = without_relay_secrets(dict(os.environ), TOKEN_ENV)
            front_proc = spawn(gateway.command(nginx), "gateway.log", front_env)
            wait_http_ok(f"https://{local}:{args.superlink_port}/health", 30, front_proc)
        status = (
            f", status {scheme}://{args.host}:{relay.status_port}/status, live dashboard "
            f"{scheme}://{args.host}:{relay.status_port}/ (add #token=ADMIN_TOKEN beyond loopback)"
            if relay.status_port
            else ""
        )
        front = " (nginx: Control API for operator certificates only)" if gateway_needed else ""
        print(
            f"server ready: SuperLink {args.host}:{args.superlink_port}{front}, relay "
            f"{args.host}:{relay.port}{status}; logs and results in {base}",
            flush=True,
        )
        if args.ready_file is not None:
            write_ready_file(
                args.ready_file,
                {"port": relay.port, "status_port": relay.status_port,
                 "superlink_port": args.superlink_port, "pid": os.getpid()},
            )  # fmt: skip
        if exposed and not gateway_needed:
            print("dkt server: --trusted-network: every host that reaches port "
                  f"{args.superlink_port} can launch runs and unregister agents",
                  file=sys.stderr)  # fmt: skip
        if not wait_for_signal(*processes):
            gone = next(p for p in processes if p.poll() is not None)
            print(f"dkt server: {program_of(gone)} exited with code {gone.returncode}; see "
                  f"the logs in {base}", file=sys.stderr)  # fmt: skip
            return 1
    except (OSError, RuntimeError, TimeoutError, ValueError) as err:
        print(f"dkt server: the SuperLink did not start ({err}); see the logs in {base}",
              file=sys.stderr)  # fmt: skip
        return 1
    except KeyboardInterrupt:
        return 0  # stopped while starting: as when stopped later
    finally:
        ignore_signals()
        for proc in reversed(processes):
            stop_process(proc)
        relay.stop()
    return 0


def write_ready_file(path: Path, values: dict[str, Any]) -> None:
    """`values` as JSON at `path`, atomically: a watcher never reads half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(values))
    os.replace(tmp, path)


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
