"""Shared fixtures. Relay fixtures: one relay subprocess per test session (token auth on,
plaintext loopback) and clients for it; helpers live in tests/support/relay.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dkt.common.data.probe import ProbeSet
from dkt.proto.relay_client import RelayClient
from tests.support.relay import (
    EXPERIENCES,
    NUM_CLASSES,
    RelayProcess,
    Tokens,
    client_for,
    make_probe,
    new_run_id,
    running_relay,
)

RELAY_AGENTS = 40


@pytest.fixture(scope="session")
def relay_tokens() -> Tokens:
    return Tokens.generate(RELAY_AGENTS)


@pytest.fixture(scope="session")
def relay(tmp_path_factory: pytest.TempPathFactory, relay_tokens: Tokens) -> Iterator[RelayProcess]:
    """A relay shared by the tests of a session: each test uses runs of its own."""
    root = tmp_path_factory.mktemp("relay")
    token_file = relay_tokens.write(root / "tokens.toml")
    with running_relay(root / "data", ["--token-file", str(token_file), "--insecure"]) as proc:
        yield proc


@pytest.fixture
def admin(relay: RelayProcess, relay_tokens: Tokens) -> Iterator[RelayClient]:
    with client_for(relay, relay_tokens.admin) as client:
        yield client


@pytest.fixture
def agent_client(
    relay: RelayProcess, relay_tokens: Tokens
) -> Iterator[Callable[[int, str], RelayClient]]:
    """Makes clients holding one agent's credential for one run; closes them after the
    test."""
    clients: list[RelayClient] = []

    def make(agent_id: int, run_id: str) -> RelayClient:
        clients.append(client_for(relay, relay_tokens.credential(agent_id, run_id)))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def probe() -> ProbeSet:
    return make_probe()


@pytest.fixture
def run_id(admin: RelayClient, probe: ProbeSet) -> str:
    """A fresh run on the shared relay with the `probe` fixture and NUM_CLASSES classes."""
    rid = new_run_id()
    admin.create_run(
        rid, probe, NUM_CLASSES, EXPERIENCES, config={"test": True}, expected_agents=RELAY_AGENTS
    )
    return rid


@pytest.fixture
def relay_data(relay: RelayProcess) -> Path:
    return relay.data_dir
