"""`dkt status`: what a relay and its runs are doing, from its status endpoint."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from dkt.cli.flags import keys_default
from dkt.common.byte_sizes import format_bytes
from dkt.proto.relay_connection import DEFAULT_ADDRESS
from dkt.proto.relay_connection import TOKEN_ENV as STATUS_TOKEN_ENV


def add_status_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `dkt status`: print what a relay and its runs are doing."""
    parser = subparsers.add_parser(
        "status",
        help="show the relay's runs, agents and store",
        description="Print the status of a relay as a table (or JSON).",
    )
    parser.add_argument("--server", default=DEFAULT_ADDRESS, help="relay gRPC address HOST:PORT")
    parser.add_argument(
        "--token",
        help=f"bearer token (default: ${STATUS_TOKEN_ENV}): the admin or the conductor token, or "
        "an agent's run credential for one run (an agent's token itself is refused)",
    )
    parser.add_argument("--tls-ca", type=Path, help="CA certificate (PEM) to verify the relay")
    parser.add_argument("--tls-cert", type=Path, help="client certificate (PEM), for mTLS")
    parser.add_argument("--tls-key", type=Path, help="client private key (PEM), for mTLS")
    parser.add_argument("--keys", type=Path, metavar="DIR",
                        default=keys_default(),
        help="an operator's startup kit from `dkt keys init` (default: $DKT_KEYS): its admin token "
                        "and the server's CA (instead of --token and --tls-ca)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the status as JSON")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait")
    parser.set_defaults(func=run_status)
    return parser


def run_status(args: argparse.Namespace) -> int:
    """Fetch the relay's status over gRPC and print it; the exit code of `dkt status`."""
    from dkt.proto.relay_client import RelayClient, RelayError

    if args.keys is not None:
        from dkt.cli import keys

        token_file = args.keys / keys.ADMIN_TOKEN_FILE
        if not token_file.exists():
            print(f"dkt status: --keys {args.keys} is not an operator kit of `dkt keys init` "
                  f"(no {keys.ADMIN_TOKEN_FILE})", file=sys.stderr)  # fmt: skip
            return 2
        args.token = args.token or keys.read_token(token_file)
        args.tls_ca = args.tls_ca or args.keys / keys.CA_CERT
    token = args.token or os.environ.get(STATUS_TOKEN_ENV)
    try:
        client = RelayClient(
            args.server,
            token,
            root_cert=args.tls_ca.read_bytes() if args.tls_ca else None,
            client_cert=args.tls_cert.read_bytes() if args.tls_cert else None,
            client_key=args.tls_key.read_bytes() if args.tls_key else None,
            timeout=args.timeout,
            retries=1,
        )
    except (OSError, ValueError) as err:
        print(f"dkt status: {err}", file=sys.stderr)
        return 2
    with client:
        try:
            status = client.status()
        except RelayError as err:
            hint = ""
            if err.code.name == "UNAVAILABLE":
                hint = "; is the relay running there?"
                if args.tls_ca is None:
                    hint += " If it serves TLS, pass --tls-ca with its CA certificate."
            print(
                f"dkt status: {args.server}: {err.code.name}: {err.details}{hint}", file=sys.stderr
            )
            return 1
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print_status(status, Console())
    return 0


def print_status(status: dict[str, Any], console: Console) -> None:
    """The status document as a summary line and one table per run."""
    totals = status["totals"]
    console.print(
        f"[bold]relay {status['version']}[/bold] · up {_duration(status['uptime_seconds'])} · "
        f"{totals['runs']} runs · {totals['prediction_sets']} prediction sets · "
        f"{format_bytes(totals['payload_bytes'])}"
    )
    if not status["runs"]:
        console.print("no runs yet")
    if status.get("runs_not_shown"):
        console.print(f"{status['runs_not_shown']} older runs not shown")
    now = time.time()
    for run in status["runs"]:
        expected = f", {run['expected_agents']} agents expected" if run["expected_agents"] else ""
        evaluation = f", evaluation set of {run['eval_size']}" if run.get("eval_size") else ""
        table = Table(
            title=(
                f"run {run['run_id']}: {run['state']}, experience {run['current_experience']} "
                f"of {run['experiences']}, "
                f"{run['prediction_sets']} sets ({format_bytes(run['payload_bytes'])}){expected}"
                f"{evaluation}"
            ),
            title_justify="left",
            caption=(
                f"{run['agents_not_shown']} more agents not shown"
                if run.get("agents_not_shown")
                else None
            ),
        )
        columns = ("agent", "state", "exp", "published", "bytes", "last seen", "metrics")
        for column in (*columns, "reason"):
            table.add_column(
                column, justify="right" if column in ("agent", "exp", "bytes") else "left"
            )
        for agent in run["agents"]:
            table.add_row(
                str(agent["agent_id"]),
                agent["state"] or "-",
                str(agent["experience"]) if agent["reported_at"] else "-",
                _experiences(agent["experiences_published"]),
                format_bytes(agent["payload_bytes"]),
                f"{_duration(now - agent['last_seen'])} ago" if agent["last_seen"] else "never",
                " ".join(f"{k}={v:.4g}" for k, v in agent["metrics"].items()) or "-",
                agent["reason"] or "-",
            )
        console.print(table)


def _experiences(experiences: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    if not experiences:
        return "-"
    ranges: list[list[int]] = []
    for e in sorted(experiences):
        if ranges and e == ranges[-1][1] + 1:
            ranges[-1][1] = e
        else:
            ranges.append([e, e])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m"
