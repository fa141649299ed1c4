"""How to reach a relay: the default ports and address, the environment variables that
carry tokens, CA certificates and addresses, and the call metadata a token travels in.

One place for these names: the relay server, the relay client, the conductor, the agents
and the command line all import them from here (`dkt.proto` is the one package that both
`dkt.server` and `dkt.client` may import, and this module imports nothing).
"""

from __future__ import annotations

# gRPC port of the relay, and port of its HTTP endpoint (/status, /healthz, /metrics).
DEFAULT_PORT = 7470
DEFAULT_STATUS_PORT = 7471
DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"

# A client's own token: an agent's token (it sends the relay a run credential derived
# from it, proto/run_credential.py), the conductor token of the ServerApp, or the admin
# token of `dkt status`.
TOKEN_ENV = "DKT_RELAY_TOKEN"
# PEM file of the CA that signed the relay's certificate (clients).
CA_ENV = "DKT_RELAY_CA"
# HOST:PORT of the relay, set by `dkt server` for the conductors it starts.
ADDRESS_ENV = "DKT_RELAY_ADDRESS"
# The tokens a relay accepts (server): the admin token, the conductor token, and
# "0=token0,1=token1".
ADMIN_TOKEN_ENV = "DKT_RELAY_ADMIN_TOKEN"
CONDUCTOR_TOKEN_ENV = "DKT_RELAY_CONDUCTOR_TOKEN"
AGENT_TOKENS_ENV = "DKT_RELAY_AGENT_TOKENS"
# What only the relay reads: a process started beside it (the SuperLink) gets none of them.
RELAY_SECRETS_ENV = (ADMIN_TOKEN_ENV, CONDUCTOR_TOKEN_ENV, AGENT_TOKENS_ENV)

# Call metadata of a token: `authorization: Bearer <token>`.
AUTHORIZATION_KEY = "authorization"
# Trailing metadata of a NOT_FOUND answer: which thing is missing ("run", "predictions"
# or "eval-set").
MISSING_KEY = "dkt-missing"
MISSING_RUN = "run"
MISSING_PREDICTIONS = "predictions"
MISSING_EVAL_SET = "eval-set"
BEARER_SCHEME = "Bearer"


def without_relay_secrets(env: dict[str, str], *also: str) -> dict[str, str]:
    """`env` without the tokens only the relay reads (RELAY_SECRETS_ENV) and the variables
    named in `also`: the environment of a process started beside the relay."""
    drop = {*RELAY_SECRETS_ENV, *also}
    return {name: value for name, value in env.items() if name not in drop}


def authorization_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries `token` (none without a token)."""
    return ((AUTHORIZATION_KEY, f"{BEARER_SCHEME} {token}"),) if token else ()
