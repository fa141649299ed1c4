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
    parser.add_argument("--out", type=Path, metavar="RUN_FOLDER",
                        help="the results folder of a running `dkt run`: its relay and a "
                        f"token from RUN_FOLDER/{ACCESS_FILE} (instead of --server and "
                        "--token)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the status as JSON")
    parser.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=2.0,
        metavar="SECONDS",
        help="redraw the status every SECONDS (default: 2) until Ctrl-C",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait")
    parser.set_defaults(func=run_status)
    return parser


# Where `dkt run` leaves `dkt status` the way in while it runs (owner-only; removed at
# its end): its relay's address, its status URL and a token for its run.
ACCESS_FILE = "cluster/status.json"


def write_access_file(out: Path, relay: str, status_url: str, token: str, run_id: str) -> Path:
    """Write OUT/cluster/status.json, readable by its owner only (created 0600, never
    wider for a moment)."""
    path = out / ACCESS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    doc = {"relay": relay, "status_url": status_url, "token": token, "run_id": run_id}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2)
    return path


def read_access_file(out: Path) -> dict[str, str]:
    """The access file of a running `dkt run --out OUT`; ValueError saying why not."""
    path = out / ACCESS_FILE
    if not path.is_file():
        raise ValueError(
            f"--out {out}: no {ACCESS_FILE} there; `dkt run --out {out}` writes it while it "
            "runs and removes it at its end (a finished run's numbers are in its "
            "metrics.json)"
        )
    doc = json.loads(path.read_text())
    return {k: str(doc[k]) for k in ("relay", "status_url", "token", "run_id")}


def run_status(args: argparse.Namespace) -> int:
    """Fetch the relay's status over gRPC and print it; the exit code of `dkt status`."""
    from dkt.proto.relay_client import RelayClient, RelayError

    if args.out is not None:
        try:
            access = read_access_file(args.out)
        except (ValueError, OSError) as err:
            print(f"dkt status: {err}", file=sys.stderr)
            return 2
        args.server, args.token = access["relay"], args.token or access["token"]
    if args.keys is not None and args.out is None:
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
    console = Console() if sys.stdout.isatty() else Console(width=PIPED_WIDTH)
    with client:
        if args.watch is not None:
            return _watch(client, args, console)
        try:
            status = client.status()
        except RelayError as err:
            print(f"dkt status: {_relay_error(args, err)}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print_status(status, console)
    return 0


# Piped output is not cut to a terminal's width: a table is as wide as its contents.
PIPED_WIDTH = 400


def _relay_error(args: argparse.Namespace, err: Any) -> str:
    hint = ""
    if err.code.name == "UNAVAILABLE":
        hint = "; is the relay running there?"
        if args.tls_ca is None:
            hint += " If it serves TLS, pass --tls-ca with its CA certificate."
    return f"{args.server}: {err.code.name}: {err.details}{hint}"


def _watch(client: Any, args: argparse.Namespace, console: Console) -> int:
    """Redraw the status every --watch seconds until Ctrl-C (exit 0); a relay that is
    unreachable for a while is shown as such, and tried again."""
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    from dkt.proto.relay_client import RelayError

    interval = max(0.2, args.watch)

    def frame() -> Any:
        stamp = Text(f"every {interval:g} s, Ctrl-C to stop · {time.strftime('%H:%M:%S')}",
                     style="dim")  # fmt: skip
        try:
            status = client.status()
        except RelayError as err:
            return Group(stamp, Text(f"dkt status: {_relay_error(args, err)}", style="red"))
        if args.json:
            return Group(stamp, Text(json.dumps(status, indent=2)))
        return Group(stamp, *status_renderables(status, console.width))

    try:
        with Live(frame(), console=console, auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(frame(), refresh=True)
    except KeyboardInterrupt:
        return 0


def print_status(status: dict[str, Any], console: Console) -> None:
    """The status document as a summary line and one table per run, fitted to the
    console's width."""
    for renderable in status_renderables(status, console.width):
        console.print(renderable)


# The agent table's columns, and the order they are dropped in when the terminal is too
# narrow for all of them (agent, state and reason always stay).
COLUMNS = ("agent", "state", "exp", "published", "bytes", "last seen", "metrics", "reason")
DROP_ORDER = ("metrics", "published", "bytes", "last seen", "exp")


def status_renderables(status: dict[str, Any], width: int) -> list[Any]:
    """The summary line, then per run a table of its agents that fits `width`: columns
    dropped in DROP_ORDER where needed, and said so under the table."""
    from rich.text import Text

    totals = status["totals"]
    out: list[Any] = [
        Text.from_markup(
            f"[bold]relay {status['version']}[/bold] · up "
            f"{_duration(status['uptime_seconds'])} · {totals['runs']} runs · "
            f"{totals['prediction_sets']} prediction sets · "
            f"{format_bytes(totals['payload_bytes'])}"
        )
    ]
    if not status["runs"]:
        out.append(Text("no runs yet"))
    if status.get("runs_not_shown"):
        out.append(Text(f"{status['runs_not_shown']} older runs not shown"))
    now = time.time()
    for run in status["runs"]:
        shown = list(COLUMNS)
        table = _run_table(run, shown, now)
        for column in DROP_ORDER:
            if _table_width(table) <= width:
                break
            shown.remove(column)
            table = _run_table(run, shown, now)
        out.append(table)
    return out


def _table_width(table: Table) -> int:
    from rich.console import Console as Measuring

    console = Measuring(width=10_000)
    return console.measure(table).maximum


def _run_table(run: dict[str, Any], shown: list[str], now: float) -> Table:
    """One run's table with the `shown` columns (a note names those left out)."""
    expected = f", {run['expected_agents']} agents expected" if run["expected_agents"] else ""
    evaluation = f", evaluation set of {run['eval_size']}" if run.get("eval_size") else ""
    notes = []
    if run.get("agents_not_shown"):
        notes.append(f"{run['agents_not_shown']} more agents not shown")
    left_out = [c for c in COLUMNS if c not in shown]
    if left_out:
        notes.append(f"not shown at this width: {', '.join(left_out)} (widen it, or --json)")
    table = Table(
        title=(
            f"run {run['run_id']}: {run['state']}, experience {run['current_experience']} "
            f"of {run['experiences']}, "
            f"{run['prediction_sets']} sets ({format_bytes(run['payload_bytes'])}){expected}"
            f"{evaluation}"
        ),
        title_justify="left",
        caption="; ".join(notes) or None,
    )
    for column in shown:
        table.add_column(
            column,
            justify="right" if column in ("agent", "exp", "bytes") else "left",
            overflow="fold",
            min_width=len(column) if column != "reason" else 6,
        )
    for agent in run["agents"]:
        cells = {
            "agent": str(agent["agent_id"]),
            "state": agent["state"] or "-",
            "exp": str(agent["experience"]) if agent["reported_at"] else "-",
            "published": _experiences(agent["experiences_published"]),
            "bytes": format_bytes(agent["payload_bytes"]),
            "last seen": (
                f"{_duration(now - agent['last_seen'])} ago" if agent["last_seen"] else "never"
            ),
            "metrics": " ".join(f"{k}={v:.4g}" for k, v in agent["metrics"].items()) or "-",
            "reason": agent["reason"] or "-",
        }
        table.add_row(*(cells[c] for c in shown))
    return table


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
