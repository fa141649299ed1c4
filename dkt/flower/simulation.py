"""Flower's Simulation Engine (`flwr[simulation]`, Ray) for a ServerApp and a ClientApp of
ours: virtual SuperNodes spread over every core and GPU of a node or a Ray cluster.

Flower gives each virtual SuperNode a node config of `partition-id` and
`num-partitions` only (`PARTITION_ID`); what runs on it maps that to its identity."""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

PARTITION_ID = "partition-id"  # the node config key Flower gives each virtual SuperNode
GCS_PORT_ENV = "RAY_GCS_SERVER_PORT"  # ray_constants.GCS_PORT_ENVIRONMENT_VARIABLE
RAY_ADDRESS_ENV = "RAY_ADDRESS"  # the cluster ray.init() joins when given no address


@dataclass(frozen=True)
class FleetResources:
    """What Ray gives each virtual SuperNode (one message at a time), and which Ray."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    ray_address: str = ""  # empty: $RAY_ADDRESS's cluster, else a local Ray for this run

    def backend_config(self) -> dict[str, Any]:
        """Flower's Ray backend config: client resources and ray.init's arguments."""
        init_args: dict[str, Any] = {"address": self.ray_address} if self.ray_address else {}
        return {
            "client_resources": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "init_args": init_args,
        }


def joins_a_cluster(resources: FleetResources, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ray.init joins an existing Ray cluster (an address given, or $RAY_ADDRESS)
    rather than starting a local Ray of its own."""
    env = os.environ if environ is None else environ
    return bool(resources.ray_address or env.get(RAY_ADDRESS_ENV))


def choose_local_gcs_port(
    resources: FleetResources, environ: MutableMapping[str, str] | None = None
) -> None:
    """Choose the GCS port of the local Ray this run starts ($RAY_GCS_SERVER_PORT), unless
    it joins a cluster (whose ports are its own) or a port is chosen already."""
    env = os.environ if environ is None else environ
    if joins_a_cluster(resources, env) or env.get(GCS_PORT_ENV):
        return
    # A local Ray's GCS server picks its port and writes it to a file that ray.init
    # waits for with a fixed timeout, which a loaded 2-core host overran in CI
    # ("Timed out waiting for file .../gcs_server_port_..."); a port chosen here is
    # not waited for.
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        env[GCS_PORT_ENV] = str(probe.getsockname()[1])


def run_on_simulation_engine(
    server_app: ServerApp,
    client_app: ClientApp,
    supernodes: int,
    run_config: dict[str, Any],
    resources: FleetResources,
) -> None:
    """Run `server_app` (in a thread of this process) and `client_app` on `supernodes`
    virtual SuperNodes; raises the ServerApp's error when it fails."""
    from flwr.app import Context, RecordDict
    from flwr.app.user_config import UserConfig
    from flwr.common.constant import RUN_ID_NUM_BYTES
    from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    choose_local_gcs_port(resources)
    context = Context(
        run_id=generate_rand_int_from_bytes(RUN_ID_NUM_BYTES),
        node_id=0,
        node_config=UserConfig(),
        state=RecordDict(),
        run_config=UserConfig(run_config),
    )
    # The public run_simulation gives the ServerApp an empty run config; this is the
    # same call with the run's config in the ServerApp's context.
    _run_simulation(
        num_supernodes=supernodes,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app=client_app,
        server_app=server_app,
        backend_name="ray",
        backend_config=resources.backend_config(),
        server_app_context=context,
    )
