"""The identity proof an agent answers a query with (proto/identity_proof.py)."""

from __future__ import annotations

import hashlib
import hmac

from dkt.proto.identity_proof import identity_proof, proof_matches, token_key

TOKEN = "agent-0-token-0123456789"
NONCE = "5f0c9b1e2d3a4f5e6d7c8b9a0f1e2d3c"


def test_the_proof_is_the_documented_hmac_of_the_tokens_sha256() -> None:
    expected = hmac.new(
        hashlib.sha256(TOKEN.encode()).digest(),
        f"dkt-identity-v1\nrun-a\n0\n{NONCE}".encode(),
        hashlib.sha256,
    ).hexdigest()

    assert identity_proof(token_key(TOKEN), "run-a", 0, NONCE) == expected


def test_a_proof_holds_only_for_its_run_agent_nonce_and_token() -> None:
    key = token_key(TOKEN)
    proof = identity_proof(key, "run-a", 0, NONCE)

    assert proof_matches(key, "run-a", 0, NONCE, proof)
    assert not proof_matches(key, "run-b", 0, NONCE, proof)
    assert not proof_matches(key, "run-a", 1, NONCE, proof)
    assert not proof_matches(key, "run-a", 0, NONCE[::-1], proof)
    assert not proof_matches(token_key(TOKEN + "x"), "run-a", 0, NONCE, proof)
    assert not proof_matches(key, "run-a", 0, NONCE, "")
