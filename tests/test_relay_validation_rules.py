"""The relay's validation rules as plain functions, without a server: each bad field is
refused with its own status code and a message that names the proto field."""

from __future__ import annotations

import hashlib
import math

import grpc
import numpy as np
import pytest
import torch

from dkt.common.probe import fingerprint
from dkt.proto.dkt.v1 import relay_pb2
from dkt.proto.status_json import MAX_REASON_CHARS
from dkt.server.relay_rejection import Rejection
from dkt.server.relay_store import RunRecord
from dkt.server.relay_validation import (
    check_experience,
    check_fetch,
    check_prediction_meta,
    check_probe_inputs,
    check_probe_meta,
    check_progress,
    check_run_spec,
    check_set_run_state,
    probe_fingerprint,
)

LIMIT = 1 << 20
RUN = RunRecord(
    run_id="r",
    num_classes=3,
    expected_agents=2,
    config_json="{}",
    probe_fingerprint="f" * 64,
    probe_source="test",
    probe_shape=(4, 1, 2, 2),
    probe_sha256="0" * 64,
    probe_bytes=64,
    experiences=5,
)


def _meta(**changes: object) -> relay_pb2.PredictionMeta:
    fields: dict[str, object] = dict(
        run_id="r",
        agent_id=1,
        experience=4,
        classes_seen=[0, 2],
        probe_fingerprint="f" * 64,
        shape=[4, 3],
        encoding=relay_pb2.ENCODING_FLOAT32,
        sha256="a" * 64,
        payload_bytes=48,
    )
    fields.update(changes)
    return relay_pb2.PredictionMeta(**fields)


def _refusal(check: object, *args: object) -> Rejection:
    with pytest.raises(Rejection) as failure:
        check(*args)  # type: ignore[operator]
    return failure.value


def test_a_complete_prediction_meta_passes_and_names_its_encoding() -> None:
    assert check_prediction_meta(_meta(), RUN, LIMIT) == "float32"
    assert (
        check_prediction_meta(
            _meta(encoding=relay_pb2.ENCODING_FLOAT16, payload_bytes=24), RUN, LIMIT
        )
        == "float16"
    )


@pytest.mark.parametrize(
    ("changes", "code", "field"),
    [
        ({"agent_id": -1}, grpc.StatusCode.INVALID_ARGUMENT, "PredictionMeta.agent_id"),
        ({"agent_id": 2}, grpc.StatusCode.INVALID_ARGUMENT, "PredictionMeta.agent_id"),
        ({"experience": -1}, grpc.StatusCode.INVALID_ARGUMENT, "PredictionMeta.experience"),
        ({"experience": 5}, grpc.StatusCode.OUT_OF_RANGE, "PredictionMeta.experience"),
        ({"experience": 2**31 - 1}, grpc.StatusCode.OUT_OF_RANGE, "PredictionMeta.experience"),
        ({"encoding": 7}, grpc.StatusCode.INVALID_ARGUMENT, "PredictionMeta.encoding"),
        (
            {"probe_fingerprint": "e" * 64},
            grpc.StatusCode.FAILED_PRECONDITION,
            "PredictionMeta.probe_fingerprint",
        ),
        ({"shape": [4, 4]}, grpc.StatusCode.INVALID_ARGUMENT, "PredictionMeta.shape"),
        ({"payload_bytes": 47}, grpc.StatusCode.INVALID_ARGUMENT, "PredictionMeta.payload_bytes"),
        ({"classes_seen": [0, 3]}, grpc.StatusCode.INVALID_ARGUMENT, "PredictionMeta.classes_seen"),
        ({"classes_seen": [1, 1]}, grpc.StatusCode.INVALID_ARGUMENT, "PredictionMeta.classes_seen"),
        ({"sha256": "A" * 64}, grpc.StatusCode.INVALID_ARGUMENT, "PredictionMeta.sha256"),
    ],
)
def test_each_bad_prediction_field_is_refused_by_name(
    changes: dict[str, object], code: grpc.StatusCode, field: str
) -> None:
    refusal = _refusal(check_prediction_meta, _meta(**changes), RUN, LIMIT)

    assert refusal.code == code
    assert field in refusal.message


def test_an_experience_is_checked_against_the_runs_experiences() -> None:
    check_experience(0, RUN, "X.experience")
    check_experience(4, RUN, "X.experience")

    below = _refusal(check_experience, -1, RUN, "X.experience")
    beyond = _refusal(check_experience, 5, RUN, "X.experience")

    assert (below.code, below.message) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "X.experience must be >= 0, got -1",
    )
    assert (beyond.code, beyond.message) == (
        grpc.StatusCode.OUT_OF_RANGE,
        "X.experience 5 is outside run 'r', which has RunSpec.experiences = 5 (experiences 0..4)",
    )


def test_fetch_by_experience_is_bounded_but_latest_is_not() -> None:
    negative = relay_pb2.FetchPredictionsRequest(run_id="r", agent_id=0, experience=-2)
    beyond = relay_pb2.FetchPredictionsRequest(run_id="r", agent_id=0, experience=5)
    latest = relay_pb2.FetchPredictionsRequest(
        run_id="r", agent_id=0, latest=relay_pb2.LatestSelector(max_experience=-1)
    )

    assert _refusal(check_fetch, negative, RUN).code == grpc.StatusCode.INVALID_ARGUMENT
    assert _refusal(check_fetch, beyond, RUN).code == grpc.StatusCode.OUT_OF_RANGE
    check_fetch(latest, RUN)
    unset = _refusal(check_fetch, relay_pb2.FetchPredictionsRequest(run_id="r"), RUN)
    assert "FetchPredictionsRequest.experience or FetchPredictionsRequest.latest" in (unset.message)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"run_id": "-bad"}, "RunSpec.run_id"),
        ({"num_classes": 0}, "RunSpec.num_classes"),
        ({"experiences": 0}, "RunSpec.experiences"),
        ({"experiences": -1}, "RunSpec.experiences"),
        ({"expected_agents": -1}, "RunSpec.expected_agents"),
        ({"config_json": "{"}, "RunSpec.config_json"),
    ],
)
def test_each_bad_run_spec_field_is_invalid_by_name(changes: dict[str, object], field: str) -> None:
    spec = relay_pb2.RunSpec(run_id="r", num_classes=3, experiences=5)
    for name, value in changes.items():
        setattr(spec, name, value)

    refusal = _refusal(check_run_spec, spec)

    assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refusal.message.startswith(field)


def test_probe_metadata_is_checked_before_its_payload_arrives() -> None:
    meta = relay_pb2.ProbeSetMeta(shape=[4, 2], payload_bytes=32, sha256="b" * 64)

    assert check_probe_meta(meta, LIMIT) == (4, 2)
    flat = _refusal(check_probe_meta, relay_pb2.ProbeSetMeta(shape=[8]), LIMIT)
    size = _refusal(check_probe_meta, relay_pb2.ProbeSetMeta(shape=[4, 2], payload_bytes=31), LIMIT)
    big = _refusal(check_probe_meta, relay_pb2.ProbeSetMeta(shape=[1 << 20, 2]), LIMIT)
    assert flat.message.startswith("ProbeSetMeta.shape")
    assert size.message.startswith("ProbeSetMeta.payload_bytes is 31")
    assert big.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_the_relays_fingerprint_is_the_probe_sets_fingerprint() -> None:
    inputs = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    payload = inputs.numpy().astype("<f4").tobytes()

    assert probe_fingerprint(payload, inputs.shape) == fingerprint(inputs)


def test_probe_inputs_must_be_finite_and_match_their_fingerprint() -> None:
    values = np.arange(8, dtype="<f4")
    payload = values.tobytes()
    good = relay_pb2.ProbeSetMeta(fingerprint=probe_fingerprint(payload, (4, 2)), shape=[4, 2])
    check_probe_inputs(payload, good)

    values[3] = math.nan
    not_finite = _refusal(check_probe_inputs, values.tobytes(), good)
    forged = relay_pb2.ProbeSetMeta(fingerprint=hashlib.sha256(b"x").hexdigest(), shape=[4, 2])
    mismatch = _refusal(check_probe_inputs, payload, forged)

    assert not_finite.message == "probe inputs contain 1 non-finite values"
    assert mismatch.message.startswith("ProbeSetMeta.fingerprint")


def test_progress_states_reasons_and_metrics_are_checked_by_field() -> None:
    def progress(**changes: object) -> relay_pb2.ReportProgressRequest:
        fields: dict[str, object] = dict(run_id="r", agent_id=0, experience=1, state="trained")
        fields.update(changes)
        return relay_pb2.ReportProgressRequest(**fields)

    check_progress(progress(state="failed", reason="disk full"), RUN)
    refusals = {
        "state": _refusal(check_progress, progress(state="asleep"), RUN),
        "reason": _refusal(check_progress, progress(reason="x" * (MAX_REASON_CHARS + 1)), RUN),
        "metrics": _refusal(check_progress, progress(metrics={"acc": math.inf}), RUN),
        "experience": _refusal(check_progress, progress(experience=5), RUN),
        "agent_id": _refusal(check_progress, progress(agent_id=-1), RUN),
    }

    for field, refusal in refusals.items():
        assert refusal.message.startswith(f"ReportProgressRequest.{field}"), refusal.message
    assert refusals["experience"].code == grpc.StatusCode.OUT_OF_RANGE


def test_a_run_state_must_be_named_and_its_experience_inside_the_run() -> None:
    unspecified = relay_pb2.SetRunStateRequest(run_id="r")
    beyond = relay_pb2.SetRunStateRequest(
        run_id="r", state=relay_pb2.RUN_STATE_RUNNING, current_experience=5
    )

    assert _refusal(check_set_run_state, unspecified, RUN).message.startswith(
        "SetRunStateRequest.state is unspecified"
    )
    assert _refusal(check_set_run_state, beyond, RUN).code == grpc.StatusCode.OUT_OF_RANGE
    check_set_run_state(
        relay_pb2.SetRunStateRequest(run_id="r", state=relay_pb2.RUN_STATE_FINISHED), RUN
    )
