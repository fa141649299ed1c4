"""Who may do what on the relay: run credentials of agents, an admin token, TLS (the
credentials' run binding and the conductor token: test_run_credentials.py,
test_conductor_role.py)."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dkt.common.data.probe import ProbeSet
from dkt.proto.dkt.v1 import relay_pb2, relay_pb2_grpc
from dkt.proto.identity_proof import identity_proof, token_key
from dkt.proto.relay_client import (
    IdentityCheck,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RelayClient,
    UnauthenticatedError,
    UnavailableError,
)
from dkt.server.relay.auth import TokenConfigError, TokenTable
from dkt.server.relay.server import RelayConfig, RelayServer, TlsFiles
from tests.support.relay import (
    EXPERIENCES,
    NUM_CLASSES,
    RelayProcess,
    TlsMaterial,
    Tokens,
    client_for,
    make_predictions,
    make_probe,
    running_relay,
)


def test_a_call_without_a_token_is_unauthenticated(
    run_id: str, probe: ProbeSet, relay: RelayProcess
) -> None:
    before = relay.store_snapshot()

    with client_for(relay, None) as anonymous, pytest.raises(UnauthenticatedError) as failure:
        anonymous.publish(make_predictions(run_id, probe))

    assert failure.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert "missing token: send 'authorization: Bearer <token>'" in failure.value.details
    assert relay.store_snapshot() == before


def test_an_unknown_token_is_unauthenticated(run_id: str, relay: RelayProcess) -> None:
    with client_for(relay, "x" * 32) as stranger, pytest.raises(UnauthenticatedError) as failure:
        stranger.list_predictions(run_id)

    assert "invalid token: this relay does not know it" in failure.value.details


def test_an_agent_cannot_publish_as_another_agent(
    run_id: str, probe: ProbeSet, relay: RelayProcess, agent_client: Callable
) -> None:
    before = relay.store_snapshot()

    with pytest.raises(PermissionDeniedError) as failure:
        agent_client(1, run_id).publish(make_predictions(run_id, probe, agent_id=0))

    assert failure.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "the credential of agent 1 cannot publish predictions of agent 0" in (
        failure.value.details
    )
    assert relay.store_snapshot() == before


def test_an_agent_credential_cannot_manage_runs(
    run_id: str, relay: RelayProcess, agent_client: Callable
) -> None:
    agent = agent_client(0, run_id)
    before = relay.store_snapshot()

    with pytest.raises(PermissionDeniedError) as create:
        agent.create_run("agent-made-run", make_probe(seed=3), NUM_CLASSES, EXPERIENCES)
    with pytest.raises(PermissionDeniedError) as state:
        agent.set_run_state(run_id, "finished")
    with pytest.raises(PermissionDeniedError) as progress:
        agent.report_progress(run_id, 1, 0, "training")

    assert "creating a run needs the admin or the conductor token" in create.value.details
    assert "changing a run's state needs the admin or the conductor token" in state.value.details
    assert "the credential of agent 0 cannot report progress for agent 1" in (
        progress.value.details
    )
    assert relay.store_snapshot() == before


def test_agents_may_read_their_peers_predictions(
    run_id: str, probe: ProbeSet, agent_client: Callable
) -> None:
    published = make_predictions(run_id, probe, agent_id=0)
    agent_client(0, run_id).publish(published)

    fetched = agent_client(1, run_id).fetch(run_id, 0, 0)

    assert torch.equal(fetched.logits, published.logits)


def test_token_file_and_environment_are_merged_with_the_file_winning(tmp_path: Path) -> None:
    Tokens(
        "admin-token-from-file-0123", {0: "agent-0-token-from-file"}, "conductor-from-file-0123"
    ).write(tmp_path / "t.toml")
    env = {
        "DKT_RELAY_ADMIN_TOKEN": "admin-token-from-env-0123",
        "DKT_RELAY_CONDUCTOR_TOKEN": "conductor-from-env-0123",
        "DKT_RELAY_AGENT_TOKENS": "0=agent-0-token-from-env, 1=agent-1-token-from-env",
    }

    table = TokenTable.load(tmp_path / "t.toml", environ=env)

    assert table.authenticate("admin-token-from-file-0123").kind == "admin"
    assert table.authenticate("admin-token-from-env-0123") is None
    assert table.authenticate("conductor-from-file-0123").kind == "conductor"
    assert table.authenticate("conductor-from-env-0123") is None
    assert table.authenticate("agent-0-token-from-file").agent_id == 0
    assert table.authenticate("agent-1-token-from-env").agent_id == 1
    assert table.authenticate("agent-0-token-from-env") is None


def test_short_or_shared_tokens_are_refused() -> None:
    with pytest.raises(TokenConfigError, match="shorter than 16 characters"):
        TokenTable(admin="short")
    with pytest.raises(TokenConfigError, match="every token must be unique"):
        TokenTable(admin="same-token-0123456789", agents={0: "same-token-0123456789"})
    with pytest.raises(TokenConfigError, match="every token must be unique"):
        TokenTable(admin="same-token-0123456789", conductor="same-token-0123456789")
    with pytest.raises(TokenConfigError, match="starts with 'dkt-run.', as run credentials do"):
        TokenTable(agents={0: "dkt-run.looks-like-a-credential"})


def test_the_relay_refuses_plaintext_without_insecure(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dkt.server.relay", "--port", "0", "--status-port", "-1"]
        + ["--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"DKT_RELAY_ADMIN_TOKEN": "an-admin-token-0123456789", "PATH": ""},
    )

    assert result.returncode == 2
    assert "refusing to serve without TLS" in result.stderr
    assert "pass --insecure" in result.stderr


def test_insecure_mode_warns_about_what_it_leaves_out(tmp_path: Path) -> None:
    with running_relay(tmp_path / "data", ["--insecure"]) as relay:
        log = relay.log()

    assert "INSECURE: the relay serves without TLS" in log
    assert "INSECURE: the relay serves without authentication" in log


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[TlsMaterial, dict[str, Path]]:
    material = TlsMaterial.generate()
    return material, material.write(tmp_path_factory.mktemp("tls"))


def _tls_relay_args(tmp_path: Path, tokens: Tokens, paths: dict[str, Path]) -> list[str]:
    """Arguments of a relay that takes `tokens` and serves TLS with the generated server
    certificate."""
    args = ["--token-file", str(tokens.write(tmp_path / "tokens.toml"))]
    args += ["--tls-cert", str(paths["server_cert"]), "--tls-key", str(paths["server_key"])]
    return args


def test_tls_round_trip_with_generated_certificates(
    tmp_path: Path, tls: tuple[TlsMaterial, dict[str, Path]]
) -> None:
    material, paths = tls
    tokens = Tokens.generate(1)
    args = _tls_relay_args(tmp_path, tokens, paths)
    probe = make_probe()
    with running_relay(tmp_path / "data", args) as relay:
        with RelayClient(
            f"localhost:{relay.port}", tokens.admin, root_cert=material.ca_cert, timeout=20
        ) as admin:
            admin.create_run("tls-run", probe, NUM_CLASSES, EXPERIENCES)
            published = make_predictions("tls-run", probe)
            admin.publish(published)
            fetched = admin.fetch("tls-run", 0, 0)
        with (
            RelayClient(relay.address, tokens.admin, retries=0, timeout=5) as plaintext,
            pytest.raises(UnavailableError),
        ):
            plaintext.list_predictions("tls-run")
        context = ssl.create_default_context(cadata=material.ca_cert.decode())
        url = f"https://localhost:{relay.status_port}/status"
        with urllib.request.urlopen(url, context=context, timeout=10) as response:
            status = json.load(response)

    assert torch.equal(fetched.logits, published.logits)
    assert [r["run_id"] for r in status["runs"]] == ["tls-run"]


def test_client_certificates_are_required_when_the_relay_has_a_client_ca(
    tmp_path: Path, tls: tuple[TlsMaterial, dict[str, Path]]
) -> None:
    material, paths = tls
    tokens = Tokens.generate(1)
    args = [*_tls_relay_args(tmp_path, tokens, paths), "--tls-client-ca", str(paths["ca_cert"])]
    with running_relay(tmp_path / "data", args) as relay:
        address = f"localhost:{relay.port}"
        with RelayClient(
            address,
            tokens.admin,
            root_cert=material.ca_cert,
            client_cert=material.client_cert,
            client_key=material.client_key,
            timeout=20,
        ) as with_cert:
            status = with_cert.status()
        with (
            RelayClient(
                address, tokens.admin, root_cert=material.ca_cert, retries=0, timeout=5
            ) as without_cert,
            pytest.raises(UnavailableError),
        ):
            without_cert.status()

    assert status["totals"]["runs"] == 0


def test_an_idle_connection_does_not_block_the_tls_status_endpoint(
    tmp_path: Path, tls: tuple[TlsMaterial, dict[str, Path]]
) -> None:
    material, paths = tls
    config = RelayConfig(
        data_dir=tmp_path,
        port=0,
        status_port=0,
        tokens=TokenTable(admin="an-admin-token-0123456789"),
        tls=TlsFiles(paths["server_cert"], paths["server_key"]),
    )
    context = ssl.create_default_context(cadata=material.ca_cert.decode())
    with RelayServer(config) as relay, socket.create_connection(("127.0.0.1", relay.status_port)):
        # The connection above never starts its TLS handshake.
        url = f"https://localhost:{relay.status_port}/healthz"
        with urllib.request.urlopen(url, context=context, timeout=5) as response:
            body = response.read()

    assert body == b"ok\n"


def test_malformed_authorization_metadata_is_unauthenticated(
    run_id: str, relay: RelayProcess, relay_tokens: Tokens
) -> None:
    with grpc.insecure_channel(relay.address) as channel, pytest.raises(grpc.RpcError) as failure:
        relay_pb2_grpc.RelayStub(channel).ListPredictions(
            relay_pb2.ListPredictionsRequest(run_id=run_id),
            timeout=10,
            metadata=(("authorization", f"Token {relay_tokens.admin}"),),
        )

    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "malformed authorization metadata: expected 'Bearer <token>'" in (
        failure.value.details()
    )


def _metric(relay: RelayProcess, line_start: str) -> float:
    with urllib.request.urlopen(f"{relay.status_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = [
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)
    ]
    return sum(values)


def test_calls_refused_by_the_interceptor_are_counted_like_any_other(
    run_id: str, probe: ProbeSet, relay: RelayProcess
) -> None:
    requests = 'dkt_relay_requests_total{code="UNAUTHENTICATED",method="PublishPredictions"}'
    publishes = 'dkt_relay_publishes_total{outcome="UNAUTHENTICATED"}'
    before = (_metric(relay, requests), _metric(relay, publishes))

    with client_for(relay, "z" * 32) as stranger, pytest.raises(UnauthenticatedError):
        stranger.publish(make_predictions(run_id, probe))

    assert (_metric(relay, requests), _metric(relay, publishes)) == (before[0] + 1, before[1] + 1)


def test_health_and_reflection_need_no_token_but_the_relay_service_does(
    relay: RelayProcess,
) -> None:
    with grpc.insecure_channel(relay.address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="dkt.v1.Relay"), timeout=10
        )
        with pytest.raises(grpc.RpcError) as failure:
            relay_pb2_grpc.RelayStub(channel).GetStatus(relay_pb2.GetStatusRequest(), timeout=10)

    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_service_refuses_to_run_without_the_interceptor() -> None:
    from dkt.server.relay.auth import principal_of

    with pytest.raises(RuntimeError, match="behind the AuthInterceptor"):
        principal_of(object())


# Identity proofs: the conductor asks the relay whether a node holds an agent's token.

NONCE = "0123456789abcdef0123456789abcdef"


def test_the_relay_accepts_an_agents_proof_and_refuses_any_other(
    run_id: str, admin: RelayClient, relay_tokens: Tokens
) -> None:
    key = token_key(relay_tokens.agents[3])
    proof = identity_proof(key, run_id, 3, NONCE)

    assert admin.verify_identity(run_id, 3, NONCE, proof) == IdentityCheck(True, True)
    assert admin.verify_identity(run_id, 4, NONCE, proof).valid is False  # another agent
    assert admin.verify_identity(run_id, 3, NONCE[::-1], proof).valid is False  # old nonce
    forged = identity_proof(token_key("a-guessed-token-0123456789"), run_id, 3, NONCE)
    assert admin.verify_identity(run_id, 3, NONCE, forged) == IdentityCheck(False, True)


def test_an_agent_may_not_verify_identities_and_bad_requests_say_why(
    run_id: str, admin: RelayClient, agent_client, relay_tokens: Tokens
) -> None:
    proof = identity_proof(token_key(relay_tokens.agents[3]), run_id, 3, NONCE)

    with pytest.raises(PermissionDeniedError) as denied:
        agent_client(3, run_id).verify_identity(run_id, 3, NONCE, proof)
    with pytest.raises(InvalidArgumentError) as short:
        admin.verify_identity(run_id, 3, "too-short", proof)
    with pytest.raises(NotFoundError):
        admin.verify_identity("no-such-run", 3, NONCE, proof)

    assert "verifying an agent's identity needs the admin or the conductor token" in (
        denied.value.details
    )
    assert "VerifyIdentityRequest.nonce has 9 characters; use 16 to 128" in short.value.details
