"""Submitting DKT runs to a Flower SuperLink: the Flower app definition (a FAB built
from a pyproject.toml that points at the installed `dkt` package) and the
SuperLink's Control API (start, follow, stop).

Like every module of `dkt/flower/` (and no module outside it), this one uses Flower
beyond its public app API (`flwr.app`, `flwr.serverapp`, `flwr.clientapp`): the FAB
builder, the Control API client and its protobufs, and the error codes of a Message.
They are internal to Flower and may change in any release; `dkt/flower/` is written
against flwr 1.42 (pyproject pins `flwr==1.42.*`), so a Flower upgrade starts there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
from flwr.common.constant import ErrorCode

from dkt import __version__
from dkt.common.run.config import ExperimentConfig, FailurePolicy

# Codes of a Flower error reply (`Message.error.code`), named for log lines.
FLOWER_ERRORS: dict[int, str] = {
    ErrorCode.UNKNOWN: "unknown",
    ErrorCode.LOAD_CLIENT_APP_EXCEPTION: "ClientApp failed to load",
    ErrorCode.CLIENT_APP_RAISED_EXCEPTION: "ClientApp raised",
    ErrorCode.MESSAGE_UNAVAILABLE: "message unavailable: expired or its node left",
    ErrorCode.REPLY_MESSAGE_UNAVAILABLE: "reply expired",
    ErrorCode.NODE_UNAVAILABLE: "SuperNode unavailable",
    ErrorCode.MOD_FAILED_PRECONDITION: "mod failed",
    ErrorCode.INVALID_FAB: "invalid app",
    ErrorCode.CLIENT_APP_CRASHED: "ClientApp crashed",
}
NODE_UNAVAILABLE = ErrorCode.NODE_UNAVAILABLE  # the SuperNode went away
# Set (to anything) in the environment of a cluster: the conductor and the agents log
# `dkt-timing(s):` lines of where a run's time goes (benchmarks/run_overhead.py).
TIMINGS_ENV = "DKT_TIMINGS"

# Deployment keys of the run config, with their defaults (ConductorSettings reads them).
DEPLOYMENT_DEFAULTS: dict[str, Any] = {
    "run-id": "",
    "results-dir": "",
    "relay": "",
    **{k.replace("_", "-"): v for k, v in dataclasses.asdict(FailurePolicy()).items()},
    # Tracking (`--log`, `--mlflow-uri`): the conductor logs the MLflow run; each agent
    # writes its TensorBoard events to tensorboard-dir/agent-N (default: under its own
    # data dir, DATA_DIR/RUN_ID/tensorboard, as a host of its own has no results folder).
    "log": "",
    "mlflow-uri": "",
    "tensorboard-dir": "",
    "plots": "auto",  # the results folder's plots (`--plots`, common/choices.PLOT_SETS)
}


APP_PUBLISHER, APP_NAME = "dkt", "dkt-app"  # the app's FAB id: "dkt/dkt-app"
CLIENTAPP = "dkt.client.agent_app:app"  # what the agents run (client/agent_worker.py checks)


# Flower's console handler colours its level names with ANSI codes (always: it has no
# switch), and those reach the run's log stream.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_ansi(line: str) -> str:
    """The line without ANSI escape codes (for files, pipes and anything not a terminal)."""
    return _ANSI.sub("", line)


def write_app(folder: Path) -> Path:
    """Write the Flower app folder: only a pyproject.toml (`app_pyproject`)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(tomli_w.dumps(app_pyproject()))
    return folder


def app_pyproject() -> dict[str, Any]:
    """The Flower app's pyproject.toml: its components are the installed conductor and
    agent (so the app folder never shadows `dkt`), and its run config lists every key a
    run may override, from `ExperimentConfig`. It depends only on the installed dkt, so
    one dkt version builds one FAB; the agent worker runs no other (runtime.check_app)."""
    return {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": APP_NAME,
            "version": __version__,
            "description": "DKT conductor and agents (code comes from the installed dkt)",
            "license": "Apache-2.0",
            "dependencies": [],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": APP_PUBLISHER,
                    "components": {
                        "serverapp": "dkt.server.conductor.app:app",
                        "clientapp": CLIENTAPP,
                    },
                    "config": {**ExperimentConfig().to_dict(), **DEPLOYMENT_DEFAULTS},
                }
            }
        },
    }


def run_config(config: ExperimentConfig, **deployment: Any) -> dict[str, Any]:
    """The run config of one run: the experiment's fields and deployment keys
    (`run_id=...` becomes "run-id")."""
    values = config.to_dict()
    for key, value in deployment.items():
        name = key.replace("_", "-")
        if name not in DEPLOYMENT_DEFAULTS:
            raise ValueError(f"unknown deployment key {name!r}")
        values[name] = str(value) if isinstance(value, Path) else value
    return values


@dataclass
class SubmittedRun:
    """A run started on a SuperLink, with the Control API connection that started it."""

    run_id: int
    control: Any  # flwr.supercore.control.ControlHttpClient

    def status(self) -> str:
        """ "pending", "running", "finished:completed", "finished:failed", ..."""
        from flwr.proto.control_pb2 import ListRunsRequest

        run = self.control.ListRuns(ListRunsRequest(run_id=self.run_id)).run_dict[self.run_id]
        st = run.status
        return f"{st.status}:{st.sub_status}" if st.sub_status else st.status

    def details(self) -> str:
        from flwr.proto.control_pb2 import ListRunsRequest

        run = self.control.ListRuns(ListRunsRequest(run_id=self.run_id)).run_dict[self.run_id]
        return str(run.status.details)

    def logs(self) -> Iterator[str]:
        """The ServerApp's log lines, until the run ends."""
        from flwr.proto.control_pb2 import StreamLogsRequest

        request = StreamLogsRequest(run_id=self.run_id, after_timestamp=0.0)
        pending = ""  # a chunk may end inside a line: hold it until the rest comes
        for chunk in self.control.StreamLogs(request):
            lines = (pending + chunk.log_output).split("\n")
            pending = lines.pop()
            yield from (line.rstrip("\r") for line in lines)
        if pending:
            yield pending

    def save_logs(self, path: Path) -> threading.Thread:
        """Append the ServerApp's log lines to `path` from a background thread."""

        def save() -> None:
            with open(path, "a") as fh:
                try:
                    for line in self.logs():
                        fh.write(strip_ansi(line) + "\n")
                        fh.flush()
                except Exception as err:  # the stream may end with an error when the run does
                    fh.write(f"(log stream ended: {err})\n")

        thread = threading.Thread(target=save, name=f"run-{self.run_id}-logs", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        from flwr.proto.control_pb2 import StopRunRequest

        self.control.StopRun(StopRunRequest(run_id=self.run_id))

    def close(self) -> None:
        self.control.close()


@dataclass(frozen=True)
class ClientCertificate:
    """An operator's client certificate and key (PEM files): what the gateway in front
    of a `dkt server`'s SuperLink asks of a Control API caller (dkt/flower/gateway.py)."""

    cert: Path
    key: Path


def _control_client(
    superlink: str, root_certificates: bytes | None, client: ClientCertificate | None = None
) -> Any:
    import ssl

    from flwr.supercore.control import ControlHttpClient
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

    interceptors = [RuntimeVersionHttpInterceptor(component_name="flwr CLI")]
    if client is None:
        return ControlHttpClient.from_server_address(
            server_address=superlink,
            insecure=root_certificates is None,
            root_certificates=root_certificates,
            interceptors=interceptors,
        )
    # Flower's HTTP client takes an SSL context: one that also presents our certificate.
    context = ssl.create_default_context(
        cadata=root_certificates.decode("ascii") if root_certificates else None
    )
    context.load_cert_chain(client.cert, client.key)
    return ControlHttpClient(f"https://{superlink}", interceptors=interceptors, verify=context)


def connect_run(
    superlink: str,
    flower_run_id: int,
    root_certificates: bytes | None = None,
    client: ClientCertificate | None = None,
) -> SubmittedRun:
    """A run already on the SuperLink at `superlink`, by its Flower run id."""
    return SubmittedRun(flower_run_id, _control_client(superlink, root_certificates, client))


def register_supernodes(
    superlink: str, public_keys: dict[str, bytes], root_certificates: bytes | None
) -> list[str]:
    """Register SuperNode public keys (OpenSSH ECDSA, by name) with the SuperLink at
    `superlink` (Flower's SuperNode authentication: only registered nodes may join).
    Keys already registered are left as they are; returns the names registered now."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from flwr.proto.control_pb2 import ListNodesRequest, RegisterNodeRequest
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    wanted: dict[bytes, str] = {}
    for name, text in public_keys.items():
        try:
            key = serialization.load_ssh_public_key(text)
        except ValueError as err:
            raise ValueError(f"SuperNode key {name} is not an OpenSSH public key: {err}") from None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ValueError(f"SuperNode key {name} is not an ECDSA key (ssh-keygen -t ecdsa)")
        wanted[public_key_to_bytes(key)] = name
    control = _control_client(superlink, root_certificates)
    try:
        known = {
            bytes(node.public_key)
            for node in control.ListNodes(ListNodesRequest()).nodes_info
            if not node.unregistered_at
        }
        added = []
        for key_bytes, name in wanted.items():
            if key_bytes not in known:
                control.RegisterNode(RegisterNodeRequest(public_key=key_bytes))
                added.append(name)
        return added
    finally:
        control.close()


def submit_run(
    superlink: str,
    app_dir: Path,
    values: dict[str, Any],
    root_certificates: bytes | None = None,
    client: ClientCertificate | None = None,
) -> SubmittedRun:
    """Build the app and start a run on the SuperLink at `superlink` (HOST:PORT)."""
    from flwr.cli.build import build_fab_from_disk
    from flwr.common.serde import fab_to_proto, user_config_to_proto
    from flwr.proto.control_pb2 import StartRunRequest
    from flwr.supercore.fab import Fab

    control = _control_client(superlink, root_certificates, client)
    fab_bytes = build_fab_from_disk(app_dir)
    fab = Fab(hashlib.sha256(fab_bytes).hexdigest(), fab_bytes, {})
    response = control.StartRun(
        StartRunRequest(
            fab=fab_to_proto(fab), override_config=user_config_to_proto(values), federation=""
        )
    )
    if not response.HasField("run_id"):
        control.close()
        raise RuntimeError(f"the SuperLink at {superlink} refused the run: {response}")
    return SubmittedRun(response.run_id, control)


def flower_error(code: int, reason: str) -> str:
    """A Flower error reply in one line: its code's name and Flower's reason."""
    return f"Flower error {code} ({FLOWER_ERRORS.get(code, 'unknown code')}): {reason}"
