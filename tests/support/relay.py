"""Helpers of the relay tests: a relay as a real subprocess on loopback, tokens,
certificates, probe sets, eval sets and prediction sets."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import ipaddress
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from dkt.cli.relay import add_relay_parser
from dkt.cli.status import add_status_parser
from dkt.common.data.eval_set import EvalSet
from dkt.common.data.probe import ProbeSet
from dkt.common.training.predictions import Predictions
from dkt.proto.dkt.v1 import relay_pb2, relay_pb2_grpc
from dkt.proto.relay_client import RelayClient
from dkt.proto.relay_connection import authorization_metadata
from dkt.proto.run_credential import run_credential

PROBE_SIZE = 32
NUM_CLASSES = 10
EXPERIENCES = 10  # of the runs the tests create
START_TIMEOUT_S = 30.0


def _token() -> str:
    return "t" + secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Tokens:
    admin: str
    agents: dict[int, str]
    conductor: str | None = None

    @classmethod
    def generate(cls, agents: int) -> Tokens:
        # A letter first: a token_urlsafe may start with "-", which argparse would take
        # for an option in `dkt status --token TOKEN` (one run in 64 failed that way).
        return cls(_token(), {a: _token() for a in range(agents)}, _token())

    def credential(self, agent_id: int, run_id: str) -> str:
        """What agent `agent_id` sends the relay in run `run_id` (never its token)."""
        return run_credential(self.agents[agent_id], agent_id, run_id)

    def write(self, path: Path) -> Path:
        lines = [f'admin = "{self.admin}"']
        if self.conductor is not None:
            lines.append(f'conductor = "{self.conductor}"')
        lines += ["", "[agents]"]
        lines += [f'{a} = "{t}"' for a, t in self.agents.items()]
        path.write_text("\n".join(lines) + "\n")
        return path


@dataclass(frozen=True)
class TlsMaterial:
    """PEM bytes of a CA, a server certificate for localhost/127.0.0.1 and a client."""

    ca_cert: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes

    @classmethod
    def generate(cls) -> TlsMaterial:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        now = datetime.datetime.now(datetime.UTC)

        def name(cn: str) -> x509.Name:
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

        def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
            return key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (
            x509.CertificateBuilder()
            .subject_name(name("dkt test CA"))
            .issuer_name(name("dkt test CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )

        def leaf(cn: str, usage: x509.ObjectIdentifier) -> tuple[bytes, bytes]:
            key = ec.generate_private_key(ec.SECP256R1())
            cert = (
                x509.CertificateBuilder()
                .subject_name(name(cn))
                .issuer_name(ca.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(
                    x509.SubjectAlternativeName(
                        [
                            x509.DNSName("localhost"),
                            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        ]
                    ),
                    critical=False,
                )
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .sign(ca_key, hashes.SHA256())
            )
            return cert.public_bytes(serialization.Encoding.PEM), pem_key(key)

        server_cert, server_key = leaf("localhost", ExtendedKeyUsageOID.SERVER_AUTH)
        client_cert, client_key = leaf("dkt agent", ExtendedKeyUsageOID.CLIENT_AUTH)
        return cls(
            ca.public_bytes(serialization.Encoding.PEM),
            server_cert,
            server_key,
            client_cert,
            client_key,
        )

    def write(self, directory: Path) -> dict[str, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        paths = {}
        for field in ("ca_cert", "server_cert", "server_key", "client_cert", "client_key"):
            paths[field] = directory / f"{field}.pem"
            paths[field].write_bytes(getattr(self, field))
        return paths


class RelayProcess:
    """`python -m dkt.server.relay` on 127.0.0.1 with free ports, in a data directory."""

    def __init__(
        self, data_dir: Path, args: list[str] | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.data_dir = data_dir
        self.args = list(args or [])
        self.extra_env = dict(env or {})
        self.ready_file = data_dir.parent / f"{data_dir.name}.ready.json"
        self.log_file = data_dir.parent / f"{data_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.status_port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.status_port}"

    def start(self) -> RelayProcess:
        self.ready_file.unlink(missing_ok=True)
        command = [
            sys.executable,
            "-m",
            "dkt.server.relay",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--status-port",
            "0",
            "--data-dir",
            str(self.data_dir),
            "--ready-file",
            str(self.ready_file),
            *self.args,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DKT_RELAY_")}
        env.update(self.extra_env)
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"relay did not start in {START_TIMEOUT_S} s:\n{self.log()}")
            time.sleep(0.05)
        ready = json.loads(self.ready_file.read_text())
        self.port, self.status_port = ready["port"], ready["status_port"]
        return self

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> int | None:
        """SIGTERM and wait for a clean exit (SIGKILL after 10 s)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def store_snapshot(self) -> tuple[list[tuple], list[str]]:
        """Every row of the store's tables and every file under the data directory."""
        db = sqlite3.connect(self.data_dir / "relay.sqlite3")
        try:
            rows = [
                (table, *row)
                for table in ("runs", "predictions", "eval_sets")
                for row in db.execute(f"SELECT * FROM {table} ORDER BY 1, 2")  # noqa: S608
            ]
        finally:
            db.close()
        files = sorted(
            str(p.relative_to(self.data_dir))
            for p in self.data_dir.rglob("*")
            if p.is_file() and not p.name.startswith("relay.sqlite3")
        )
        return rows, files


@contextlib.contextmanager
def running_relay(
    data_dir: Path, args: list[str] | None = None, env: dict[str, str] | None = None
) -> Iterator[RelayProcess]:
    relay = RelayProcess(data_dir, args, env)
    try:
        yield relay.start()
    finally:
        relay.stop()
        relay.kill()


def new_run_id() -> str:
    return f"run-{uuid.uuid4().hex[:10]}"


def make_probe(seed: int = 0, size: int = PROBE_SIZE) -> ProbeSet:
    gen = torch.Generator().manual_seed(seed)
    return ProbeSet.from_inputs(torch.randn(size, 1, 4, 4, generator=gen), source="test")


def make_eval_set(seed: int = 0, size: int = 8, num_classes: int = NUM_CLASSES) -> EvalSet:
    """`size` labeled 1×4×4 inputs with labels in 0..num_classes-1."""
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(size, 1, 4, 4, generator=gen)
    labels = torch.randint(0, num_classes, (size,), generator=gen)
    return EvalSet.from_tensors(inputs, labels, source="test-eval")


def make_predictions(
    run_id: str,
    probe: ProbeSet,
    agent_id: int = 0,
    experience: int = 0,
    num_classes: int = NUM_CLASSES,
    seed: int | None = None,
) -> Predictions:
    gen = torch.Generator().manual_seed(seed if seed is not None else agent_id * 1000 + experience)
    return Predictions(
        agent_id=agent_id,
        experience=experience,
        classes_seen=tuple(range(min(2 * (experience + 1), num_classes))),
        probe_fingerprint=probe.fingerprint,
        logits=torch.randn(len(probe), num_classes, generator=gen) * 5,
        run_id=run_id,
    )


def client_for(relay: RelayProcess, token: str | None, **kwargs: object) -> RelayClient:
    kwargs.setdefault("timeout", 20.0)
    return RelayClient(relay.address, token, **kwargs)  # type: ignore[arg-type]


def dkt_parser() -> argparse.ArgumentParser:
    """The `dkt` command line with its `relay` and `status` commands."""
    parser = argparse.ArgumentParser(prog="dkt")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_relay_parser(subparsers)
    add_status_parser(subparsers)
    return parser


# -- hand-made publish streams (what a client other than RelayClient might send) -------


def logits_payload(probe: ProbeSet) -> bytes:
    """float32 logits of ones for every probe input and NUM_CLASSES classes."""
    return np.ones((len(probe), NUM_CLASSES), dtype="<f4").tobytes()


def prediction_meta(
    run_id: str, probe: ProbeSet, payload: bytes, **changes: object
) -> relay_pb2.PredictionMeta:
    """The metadata of agent 0's float32 `payload` for experience 0, with `changes`."""
    fields: dict[str, object] = dict(
        run_id=run_id,
        agent_id=0,
        experience=0,
        classes_seen=[0, 1],
        probe_fingerprint=probe.fingerprint,
        dtype="float32",
        shape=[len(probe), NUM_CLASSES],
        encoding=relay_pb2.ENCODING_FLOAT32,
        sha256=hashlib.sha256(payload).hexdigest(),
        payload_bytes=len(payload),
    )
    fields.update(changes)
    return relay_pb2.PredictionMeta(**fields)


def prediction_chunks(
    meta: relay_pb2.PredictionMeta, payload: bytes, size: int = 512
) -> list[relay_pb2.PredictionChunk]:
    """`payload` in chunks of `size` bytes, the first one carrying `meta`."""
    chunks = [
        relay_pb2.PredictionChunk(offset=o, data=payload[o : o + size])
        for o in range(0, len(payload), size)
    ]
    chunks[0].meta.CopyFrom(meta)
    return chunks


def publish_refused(
    relay: RelayProcess, token: str, chunks: list[relay_pb2.PredictionChunk]
) -> grpc.RpcError:
    """Sends `chunks` as a publish stream and returns the error it must end with."""
    with grpc.insecure_channel(relay.address) as channel, pytest.raises(grpc.RpcError) as failure:
        relay_pb2_grpc.RelayStub(channel).PublishPredictions(
            iter(chunks), timeout=10, metadata=authorization_metadata(token)
        )
    return failure.value


# -- hand-made eval set streams ----------------------------------------------------------


def eval_set_payload(inputs: np.ndarray, labels: np.ndarray) -> bytes:
    """The payload relay.proto documents on EvalSetMeta: float32 inputs, then int64 labels."""
    return (
        np.ascontiguousarray(inputs, dtype="<f4").tobytes()
        + np.ascontiguousarray(labels, dtype="<i8").tobytes()
    )


def documented_eval_fingerprint(inputs: np.ndarray, labels: np.ndarray) -> str:
    """The recipe of `EvalSetMeta.fingerprint` in relay.proto, with hashlib and numpy."""
    values = np.ascontiguousarray(inputs, dtype="<f4")
    targets = np.ascontiguousarray(labels, dtype="<i8")
    return hashlib.sha256(
        b"eval:float32:"
        + ",".join(str(d) for d in values.shape).encode()
        + b":"
        + values.tobytes()
        + b"int64:"
        + str(len(targets)).encode()
        + b":"
        + targets.tobytes()
    ).hexdigest()


def eval_set_meta(
    inputs: np.ndarray, labels: np.ndarray, **changes: object
) -> relay_pb2.EvalSetMeta:
    """The metadata of the eval set (`inputs`, `labels`), with `changes`."""
    payload = eval_set_payload(inputs, labels)
    fields: dict[str, object] = dict(
        fingerprint=documented_eval_fingerprint(inputs, labels),
        source="hand-made",
        shape=list(inputs.shape),
        num_rows=len(labels),
        sha256=hashlib.sha256(payload).hexdigest(),
        payload_bytes=len(payload),
    )
    fields.update(changes)
    return relay_pb2.EvalSetMeta(**fields)


def eval_set_chunks(
    run_id: str, meta: relay_pb2.EvalSetMeta, payload: bytes, size: int = 128
) -> list[relay_pb2.EvalSetChunk]:
    """`payload` in chunks of `size` bytes, the first one carrying `run_id` and `meta`."""
    chunks = [
        relay_pb2.EvalSetChunk(offset=o, data=payload[o : o + size])
        for o in range(0, max(len(payload), 1), size)
    ]
    chunks[0].run_id = run_id
    chunks[0].meta.CopyFrom(meta)
    return chunks


def put_eval_set_refused(
    relay: RelayProcess, token: str, chunks: list[relay_pb2.EvalSetChunk]
) -> grpc.RpcError:
    """Sends `chunks` as a PutEvalSet stream and returns the error it must end with."""
    with grpc.insecure_channel(relay.address) as channel, pytest.raises(grpc.RpcError) as failure:
        relay_pb2_grpc.RelayStub(channel).PutEvalSet(
            iter(chunks), timeout=10, metadata=authorization_metadata(token)
        )
    return failure.value
