"""What an agent sends the relay instead of its token: a credential for one run, derived
from the token, the agent id and the run id, and useless in any other run.

    key        = SHA-256(token)                             32 bytes (identity_proof.token_key)
    message    = "dkt-run-credential-v1" NUL agent_id NUL run_id     (UTF-8; agent_id in decimal)
    mac        = lowercase hex HMAC-SHA256(key, message)      64 characters
    credential = "dkt-run." agent_id "." base64url(run_id) "." mac

base64url is RFC 4648 section 5 (`-` and `_`) of the run id's UTF-8 bytes, without `=`
padding; agent_id is written in decimal without sign or leading zeros. The credential
travels as `authorization: Bearer <credential>`. The relay keeps SHA-256(token) of every
agent token, recomputes the MAC and compares it in constant time; the token itself never
leaves the agent's host.

Agent 0 with token `an-agent-token-0123456789` in run `run-1` sends
`dkt-run.0.cnVuLTE.e7cb2c21c34308e5237a2ab0f8cd3811f32658e9521a7a2e1ef89ce2fbf5c999`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass

from dkt.proto.identity_proof import token_key

PREFIX = "dkt-run"
DOMAIN = b"dkt-run-credential-v1"
_AGENT_ID = re.compile(r"0|[1-9][0-9]{0,9}")
_RUN = re.compile(r"[A-Za-z0-9_-]+")
_MAC = re.compile(r"[0-9a-f]{64}")
MAX_AGENT_ID = 2**31 - 1  # agent ids are int32 in relay.proto


@dataclass(frozen=True)
class RunCredential:
    """A credential's parts as sent: who it claims to be, for which run, and its MAC."""

    agent_id: int
    run_id: str
    mac: str


def credential_mac(key: bytes, agent_id: int, run_id: str) -> str:
    """The hex HMAC-SHA256 that binds agent `agent_id` to run `run_id` under `key`."""
    message = DOMAIN + b"\0" + str(agent_id).encode() + b"\0" + run_id.encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def run_credential(token: str, agent_id: int, run_id: str) -> str:
    """The credential agent `agent_id`, holding `token`, sends the relay in run `run_id`."""
    if not 0 <= agent_id <= MAX_AGENT_ID:
        raise ValueError(f"agent id {agent_id} is not between 0 and {MAX_AGENT_ID}")
    if not run_id:
        raise ValueError("a run credential needs a run id")
    run = base64.urlsafe_b64encode(run_id.encode()).decode().rstrip("=")
    mac = credential_mac(token_key(token), agent_id, run_id)
    return f"{PREFIX}.{agent_id}.{run}.{mac}"


def looks_like_run_credential(value: str) -> bool:
    """Whether `value` is meant as a run credential (it starts with the prefix)."""
    return value.startswith(PREFIX + ".")


def parse_run_credential(value: str) -> RunCredential | None:
    """The parts of a well-formed credential, or None (the MAC is not checked here)."""
    parts = value.split(".")
    if len(parts) != 4 or parts[0] != PREFIX:
        return None
    _, agent, run, mac = parts
    if not (_AGENT_ID.fullmatch(agent) and _RUN.fullmatch(run) and _MAC.fullmatch(mac)):
        return None
    agent_id = int(agent)
    if agent_id > MAX_AGENT_ID:
        return None
    try:
        raw = base64.urlsafe_b64decode(run + "=" * (-len(run) % 4))
        run_id = raw.decode()
    except (binascii.Error, ValueError):
        return None
    # One spelling per run id: a re-encoding must give back what was sent.
    if not run_id or base64.urlsafe_b64encode(raw).decode().rstrip("=") != run:
        return None
    return RunCredential(agent_id, run_id, mac)


def credential_matches(key: bytes, credential: RunCredential) -> bool:
    """Whether `credential`'s MAC is the one of `key` (constant time)."""
    expected = credential_mac(key, credential.agent_id, credential.run_id)
    return hmac.compare_digest(expected, credential.mac)
