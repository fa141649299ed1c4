"""The DKT conductor as a Flower ServerApp (see server/conductor/run.py)."""

from __future__ import annotations

import os
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from dkt.common.run.config import ExperimentConfig
from dkt.proto.relay_client import RelayClient
from dkt.proto.relay_connection import CA_ENV, TOKEN_ENV
from dkt.server.conductor.run import Conductor
from dkt.server.conductor.settings import ConductorSettings, with_server_defaults

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Read the experiment and deployment settings from the run config, then conduct."""
    values = dict(context.run_config)
    config = with_server_defaults(ExperimentConfig.from_run_config(values))
    settings = ConductorSettings.from_run_config(values)
    ca = os.environ.get(CA_ENV)
    root_cert = Path(ca).read_bytes() if ca else None
    with RelayClient(settings.relay, os.environ.get(TOKEN_ENV), root_cert=root_cert) as relay:
        Conductor(grid, config, settings, relay, log=lambda line: print(line, flush=True)).run()
