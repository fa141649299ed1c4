"""How an agent proves to the conductor that it holds agent N's relay token, without
sending the token: an HMAC-SHA256 over the conductor's nonce, keyed with the SHA-256 of
the token (what the relay keeps of it). The conductor cannot compute it (it does not
hold agents' tokens) and asks the relay, which can (`VerifyIdentity` in relay.proto).

    key   = SHA-256(token)                               32 bytes
    proof = hex HMAC-SHA256(key, "dkt-identity-v1\\n" + run_id + "\\n" + agent_id + "\\n" + nonce)

The nonce is fresh for every query, so a proof seen once (in the SuperLink's database)
proves nothing in another query or run."""

from __future__ import annotations

import hashlib
import hmac

NONCE_CHARS = (16, 128)  # the shortest and longest nonce the relay checks


def token_key(token: str) -> bytes:
    """The key of an agent's proofs: the SHA-256 of its relay token."""
    return hashlib.sha256(token.encode()).digest()


def identity_proof(key: bytes, run_id: str, agent_id: int, nonce: str) -> str:
    """The proof that the holder of `key` runs agent `agent_id` in run `run_id`."""
    message = f"dkt-identity-v1\n{run_id}\n{agent_id}\n{nonce}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def proof_matches(key: bytes, run_id: str, agent_id: int, nonce: str, proof: str) -> bool:
    """Whether `proof` is the proof of `key` for this run, agent and nonce (constant time)."""
    return hmac.compare_digest(identity_proof(key, run_id, agent_id, nonce), proof)
