"""An agent's run credential (proto/run_credential.py): derived from its token, its id and
the run id; it reads back into its parts, and any other spelling is no credential."""

from __future__ import annotations

import pytest

from dkt.proto.identity_proof import token_key
from dkt.proto.run_credential import (
    RunCredential,
    credential_matches,
    looks_like_run_credential,
    parse_run_credential,
    run_credential,
)

TOKEN = "an-agent-token-0123456789"
EXAMPLE = "dkt-run.0.cnVuLTE.e7cb2c21c34308e5237a2ab0f8cd3811f32658e9521a7a2e1ef89ce2fbf5c999"
MAC = "e7cb2c21c34308e5237a2ab0f8cd3811f32658e9521a7a2e1ef89ce2fbf5c999"


def test_the_documented_example_is_what_run_credential_derives() -> None:
    assert run_credential(TOKEN, 0, "run-1") == EXAMPLE


def test_a_credential_reads_back_into_its_agent_run_and_mac() -> None:
    credential = run_credential(TOKEN, 12, "ümlaut run/with.dots")

    parsed = parse_run_credential(credential)

    assert parsed is not None
    assert (parsed.agent_id, parsed.run_id) == (12, "ümlaut run/with.dots")
    assert credential_matches(token_key(TOKEN), parsed)


def test_a_credential_is_bound_to_its_token_agent_and_run() -> None:
    credential = run_credential(TOKEN, 3, "run-a")

    assert credential != run_credential(TOKEN, 3, "run-b")
    assert credential != run_credential(TOKEN, 4, "run-a")
    assert credential != run_credential("another-token-0123456789", 3, "run-a")
    parsed = parse_run_credential(credential)
    assert parsed is not None
    assert not credential_matches(token_key("another-token-0123456789"), parsed)
    moved = RunCredential(parsed.agent_id, "run-b", parsed.mac)  # another run, same MAC
    assert not credential_matches(token_key(TOKEN), moved)


@pytest.mark.parametrize(
    "value",
    [
        "dkt-run.0.cnVuLTE",  # no MAC
        f"dkt-run.0.cnVuLTE.{MAC}.extra",  # a fifth part
        f"dkt-run.00.cnVuLTE.{MAC}",  # a leading zero
        f"dkt-run.-1.cnVuLTE.{MAC}",  # a sign
        f"dkt-run.2147483648.cnVuLTE.{MAC}",  # beyond int32
        f"dkt-run.0.cnVuLTE=.{MAC}",  # padding
        f"dkt-run.0.cnVuLTF.{MAC}",  # not the canonical spelling of any run id
        f"dkt-run.0.cnVu+TE.{MAC}",  # base64, not base64url
        f"dkt-run.0..{MAC}",  # no run
        f"dkt-run.0.cnVuLTE.{MAC.upper()}",  # upper-case hex
        f"dkt-run.0.cnVuLTE.{MAC[:-1]}",  # a digit short
        f"dkt-run.0.gA.{MAC}",  # not UTF-8
        f"dkt-cred.0.cnVuLTE.{MAC}",  # another prefix
    ],
)
def test_any_other_spelling_is_no_credential(value: str) -> None:
    assert parse_run_credential(value) is None


def test_what_counts_as_meant_for_a_credential_is_the_prefix() -> None:
    assert looks_like_run_credential(EXAMPLE)
    assert looks_like_run_credential("dkt-run.garbage")
    assert not looks_like_run_credential("dkt-runner-token-0123456789")


@pytest.mark.parametrize(("agent_id", "run_id"), [(-1, "run-1"), (2**31, "run-1"), (0, "")])
def test_no_credential_for_an_agent_id_out_of_range_or_an_empty_run(
    agent_id: int, run_id: str
) -> None:
    with pytest.raises(ValueError, match="agent id|needs a run id"):
        run_credential(TOKEN, agent_id, run_id)
