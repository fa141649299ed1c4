"""`dkt relay`: run the relay server (the same options as `python -m dkt.server.relay`)."""

from __future__ import annotations

import argparse
from typing import Any


def add_relay_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `dkt relay`: run the relay server until interrupted."""
    from dkt.server.relay.server import add_relay_arguments, run_relay

    parser = subparsers.add_parser(
        "relay",
        help="run the relay server (prediction store, probe sets, status)",
        description="Run the DKT relay: stores prediction sets, serves probe sets and status.",
    )
    add_relay_arguments(parser)
    parser.set_defaults(func=run_relay)
    return parser
