"""One module says how to reach a relay: ports, address and environment variable names,
and every side (server, client, command line) takes them from it."""

from __future__ import annotations

from dkt.proto import relay_connection
from dkt.server.relay.auth import TokenTable
from tests.support.relay import dkt_parser


def test_the_relay_and_dkt_status_default_to_the_same_ports() -> None:
    relay = dkt_parser().parse_args(["relay"])
    status = dkt_parser().parse_args(["status"])

    assert (relay.port, relay.status_port) == (7470, 7471)
    assert (relay.port, relay.status_port) == (
        relay_connection.DEFAULT_PORT,
        relay_connection.DEFAULT_STATUS_PORT,
    )
    assert status.server == relay_connection.DEFAULT_ADDRESS == "127.0.0.1:7470"


def test_the_server_reads_its_tokens_from_the_named_variables() -> None:
    table = TokenTable.from_env(
        {
            relay_connection.ADMIN_TOKEN_ENV: "an-admin-token-0123456789",
            relay_connection.AGENT_TOKENS_ENV: "3=the-token-of-agent-three",
        }
    )

    assert table.authenticate("an-admin-token-0123456789").kind == "admin"
    assert table.authenticate("the-token-of-agent-three").agent_id == 3
    assert relay_connection.ADMIN_TOKEN_ENV == "DKT_RELAY_ADMIN_TOKEN"
    assert relay_connection.AGENT_TOKENS_ENV == "DKT_RELAY_AGENT_TOKENS"


def test_a_token_travels_as_bearer_authorization_metadata() -> None:
    assert relay_connection.authorization_metadata("abc") == (("authorization", "Bearer abc"),)
    assert relay_connection.authorization_metadata(None) == ()
    assert relay_connection.TOKEN_ENV == "DKT_RELAY_TOKEN"
    assert relay_connection.CA_ENV == "DKT_RELAY_CA"
