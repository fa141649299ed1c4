"""Nothing identifying leaves a site in an error: a failing ClientApp handler raises a
`SiteError` (a kind and a hash) whatever it failed on; the whole error, path and all,
stays in the agent's own log under that hash (client/site_errors.py)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import grpc
import pytest
from flwr.app import Context, Message, RecordDict

from dkt.client import agent_app
from dkt.client.site_errors import SiteError, site_error
from dkt.common.run.config import ExperimentConfig
from dkt.flower.messages import QUERY, RunQuery
from dkt.proto.relay_client import UnavailableError

REVEALING = "7/patient-4711-jane-doe-positive.png"


def _digest(err: BaseException) -> str:
    return hashlib.sha256(f"{type(err).__name__}: {err}".encode()).hexdigest()[:12]


PATH = f"/sites/a/{REVEALING}"


@pytest.fixture(autouse=True)
def clientapp_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a ClientApp process has set before a Message is built."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 7), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


@pytest.mark.parametrize(
    ("err", "kind"),
    [
        (OSError(f"cannot decode image {PATH}"), "a file of this site could not be read"),
        (FileNotFoundError(f"no such file: {PATH}"),
         "a file or folder this agent needs is missing"),
        (ValueError(f"class 'positive' (folder {PATH})"),
         "this site's data or the run's configuration was refused"),
        (KeyError(PATH), "the agent's step failed (KeyError)"),
        (MemoryError(), "this agent ran out of memory"),
    ],
)  # fmt: skip
def test_an_error_leaves_the_site_as_a_kind_and_a_hash(
    err: BaseException, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="dkt.agent"):
        private = site_error(err)

    digest = _digest(err)
    assert str(private) == f"{kind} (error {digest}; the detail is in this agent's log)"
    assert "patient" not in str(private) and "positive" not in str(private)
    assert f"agent step failed (error {digest}): {type(err).__name__}: {err}" in caplog.text


def test_a_relay_error_says_its_status_code_only() -> None:
    err = UnavailableError(grpc.StatusCode.UNAVAILABLE, f"failed to connect ({REVEALING})")

    assert site_error(err).kind == "a relay call failed (UNAVAILABLE)"


def test_the_clientapp_s_query_on_a_revealing_missing_site_raises_a_site_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site = tmp_path / "sites" / "hospital" / REVEALING
    node_config: dict[str, bool | float | int | str] = {
        "agent-id": 0, "data-dir": str(tmp_path / "agent"), "relay": "127.0.0.1:1",
        "local-data": str(site),
    }  # fmt: skip
    context = Context(1, 7, node_config, RecordDict(), {})
    config = ExperimentConfig(agents=1, experiences=2)
    query = Message(
        RunQuery(json.dumps(config.to_dict())).to_record(), dst_node_id=7, message_type=QUERY
    )

    with caplog.at_level(logging.ERROR, logger="dkt.agent"), pytest.raises(SiteError) as failure:
        agent_app.identify(query, context)

    message = str(failure.value)
    assert failure.value.kind == "a file or folder this agent needs is missing"
    for secret in ("patient", "positive", "hospital", str(tmp_path)):
        assert secret not in message
    assert f"(error {failure.value.digest})" in caplog.text and REVEALING in caplog.text
