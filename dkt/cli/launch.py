"""`dkt launch`: submit one run to a `dkt server`, follow its log to the end and print
its summary."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from dkt.cli.flags import (
    SUPERLINK_PORT,
    add_deployment_flags,
    add_tracking_flags,
    failure_policy,
    keys_default,
    with_port,
)
from dkt.cli.signals import exit_code, ignore_signals, interrupt_on_signals


def add_launch_parser(subparsers: Any) -> argparse.ArgumentParser:
    from dkt.cli.flags import add_config_flags
    from dkt.cli.out_folder import add_plots_flag

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
    add_plots_flag(parser)
    parser.add_argument("--root-cert", type=Path, help="CA certificate (PEM) of the server")
    parser.add_argument("--keys", type=Path, metavar="DIR",
                        default=keys_default(),
        help="an operator's startup kit from `dkt keys init` (default: $DKT_KEYS; DIR/operator): "
                        "the server's CA and the client certificate the server's Control "
                        "API asks for")  # fmt: skip
    parser.add_argument("--client-cert", type=Path, metavar="FILE",
                        help="operator client certificate (PEM), with --client-key")  # fmt: skip
    parser.add_argument("--client-key", type=Path, metavar="FILE",
                        help="operator client private key (PEM)")  # fmt: skip
    parser.add_argument("--no-wait", action="store_true", help="submit, print the run id, exit")
    add_deployment_flags(parser)
    add_tracking_flags(parser)
    add_config_flags(parser)
    parser.set_defaults(func=run_launch)
    return parser


def run_launch(args: argparse.Namespace) -> int:
    """`dkt launch`; returns 0 when the run completes."""
    import tempfile

    from dkt.cli.flags import config_from_args, tracking
    from dkt.flower.runs import run_config, submit_run, write_app

    config = config_from_args(args)
    track = tracking(args)
    run_id = args.run_id or time.strftime("launch-%Y%m%d-%H%M%S")
    values = run_config(
        config,
        run_id=run_id,
        results_dir=args.results_dir or "",
        plots=args.plots,
        **failure_policy(args),
        # The conductor logs the MLflow run on the server host (its $MLFLOW_TRACKING_URI,
        # else the results folder); each agent its TensorBoard events on its own host.
        **({"log": track.log, "mlflow_uri": track.mlflow_uri} if track.log else {}),
    )
    superlink = with_port(args.server, SUPERLINK_PORT)
    client = operator_certificate(args)
    root_cert = args.root_cert.read_bytes() if args.root_cert else None
    # SIGTERM (`docker stop`) stops the run like Ctrl-C: a run left behind would keep
    # the agents busy until it ends.
    interrupt_on_signals()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run = submit_run(superlink, write_app(Path(tmp) / "app"), values, root_cert, client)
    except KeyboardInterrupt as err:
        print(f"interrupted while submitting run {run_id}; see `flwr ls` on the server "
              "for a run that got through", file=sys.stderr)  # fmt: skip
        return exit_code(err)
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
        ignore_signals()  # a second signal must not cut the stop short
        run.stop()
        print(f"run {run_id} stopped (Flower run {run.run_id})", file=sys.stderr)
        return exit_code(err)
    finally:
        run.close()


def operator_certificate(args: argparse.Namespace) -> Any:
    """The operator's client certificate from --keys or --client-cert/--client-key (and
    the kit's CA as --root-cert), or None."""
    from dkt.flower.runs import ClientCertificate

    if args.keys is not None:
        from dkt.cli import keys

        if not (args.keys / keys.OPERATOR_CERT).exists():
            raise ValueError(f"--keys {args.keys} is not an operator kit of `dkt keys init` "
                             f"(no {keys.OPERATOR_CERT})")  # fmt: skip
        args.root_cert = args.root_cert or args.keys / keys.CA_CERT
        args.client_cert = args.client_cert or args.keys / keys.OPERATOR_CERT
        args.client_key = args.client_key or args.keys / keys.OPERATOR_KEY
    if (args.client_cert is None) != (args.client_key is None):
        raise ValueError("--client-cert and --client-key go together")
    if args.client_cert is None:
        return None
    if args.root_cert is None:
        raise ValueError("a client certificate needs TLS: give --root-cert (the server's CA)")
    return ClientCertificate(args.client_cert, args.client_key)


def _print_logs(run: Any, plain: bool | None = None) -> dict[str, Any] | None:
    """Print the conductor's log until the run ends; return the summary it logged.
    `plain` (default: when stdout is not a terminal) strips Flower's ANSI colours."""
    from dkt.flower.runs import strip_ansi
    from dkt.server.conductor.run import SUMMARY_LINE

    if plain is None:
        plain = not sys.stdout.isatty()
    summary = None
    try:
        for line in run.logs():
            if plain:
                line = strip_ansi(line)
            if line.startswith(SUMMARY_LINE):
                summary = json.loads(line.removeprefix(SUMMARY_LINE))
            else:
                print(line, flush=True)
    except Exception as err:  # the stream can break when the run ends; status tells
        print(f"(log stream ended: {err})", file=sys.stderr)
    return summary
