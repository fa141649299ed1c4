"""The relay's validation rules as plain functions, without a server: each bad field is
refused with its own status code and a message that names the proto field."""

from __future__ import annotations

import hashlib
import math

import grpc
import numpy as np
import pytest
import torch

from dkt.common.data.eval_set import eval_fingerprint
from dkt.common.data.probe import fingerprint
from dkt.proto.dkt.v1 import relay_pb2
from dkt.proto.status_json import MAX_REASON_CHARS
from dkt.server.relay.rejection import Rejection
from dkt.server.relay.store.records import RunRecord
from dkt.server.relay.validation import (
    check_eval_meta,
    check_eval_payload,
    check_experience,
    check_fetch,
    check_logits,
    check_prediction_meta,
    check_probe_inputs,
    check_probe_meta,
    check_progress,
    check_run_spec,
    check_set_run_state,
    eval_set_fingerprint,
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


# -- eval sets -------------------------------------------------------------------------


def _eval_meta(**changes: object) -> relay_pb2.EvalSetMeta:
    """Metadata of 4 inputs of 1 x 2 x 2 with their labels: 4 x 16 + 4 x 8 = 96 bytes."""
    fields: dict[str, object] = dict(
        fingerprint="e" * 64, shape=[4, 1, 2, 2], num_rows=4, sha256="a" * 64, payload_bytes=96
    )
    fields.update(changes)
    return relay_pb2.EvalSetMeta(**fields)


def _eval_payload(labels: list[int], inputs: np.ndarray | None = None) -> bytes:
    values = np.arange(16, dtype="<f4").reshape(4, 1, 2, 2) if inputs is None else inputs
    return values.astype("<f4").tobytes() + np.asarray(labels, dtype="<i8").tobytes()


def test_complete_eval_metadata_passes_and_gives_the_input_shape() -> None:
    assert check_eval_meta(_eval_meta(), RUN, LIMIT) == (4, 1, 2, 2)


@pytest.mark.parametrize(
    ("changes", "code", "message"),
    [
        ({"shape": [16], "num_rows": 16}, "INVALID_ARGUMENT", "EvalSetMeta.shape must have"),
        ({"shape": [4, 0, 2, 2]}, "INVALID_ARGUMENT", "EvalSetMeta.shape must have"),
        ({"shape": [], "num_rows": 0}, "INVALID_ARGUMENT", "EvalSetMeta.shape must have"),
        ({"num_rows": 3}, "INVALID_ARGUMENT", "EvalSetMeta.num_rows is 3 but"),
        ({"num_rows": 0}, "INVALID_ARGUMENT", "EvalSetMeta.num_rows is 0 but"),
        ({"payload_bytes": 64}, "INVALID_ARGUMENT", "EvalSetMeta.payload_bytes is 64 but"),
        ({"payload_bytes": 0}, "INVALID_ARGUMENT", "EvalSetMeta.payload_bytes is 0 but"),
        ({"sha256": "A" * 64}, "INVALID_ARGUMENT", "EvalSetMeta.sha256 must be"),
        ({"sha256": ""}, "INVALID_ARGUMENT", "EvalSetMeta.sha256 must be"),
        (
            {"shape": [1 << 20, 1], "num_rows": 1 << 20},
            "RESOURCE_EXHAUSTED",
            "eval set of 12582912 bytes exceeds",
        ),
    ],
)
def test_each_bad_eval_meta_field_is_refused_by_name(
    changes: dict[str, object], code: str, message: str
) -> None:
    refusal = _refusal(check_eval_meta, _eval_meta(**changes), RUN, LIMIT)

    assert refusal.code == getattr(grpc.StatusCode, code)
    assert refusal.message.startswith(message), refusal.message


@pytest.mark.parametrize("state", ["finished", "failed"])
def test_a_closed_run_takes_no_eval_set(state: str) -> None:
    closed = RunRecord(**{**RUN.__dict__, "state": state})

    refusal = _refusal(check_eval_meta, _eval_meta(), closed, LIMIT)

    assert refusal.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refusal.message == f"run 'r' is {state}; it accepts no eval set"


def test_the_relays_eval_fingerprint_is_the_eval_sets_fingerprint() -> None:
    gen = torch.Generator().manual_seed(3)
    inputs, labels = torch.randn(5, 3, 2, 2, generator=gen), torch.tensor([4, 0, 2, 2, 1])
    payload = inputs.numpy().astype("<f4").tobytes() + labels.numpy().astype("<i8").tobytes()

    assert eval_set_fingerprint(payload, inputs.shape) == eval_fingerprint(inputs, labels)
    # Inputs and labels are both covered, and told apart from a probe set of the same bytes.
    assert eval_set_fingerprint(payload, inputs.shape) != probe_fingerprint(payload, [5, 14])


def test_eval_payload_must_match_its_fingerprint_be_finite_and_labeled_by_run_class() -> None:
    good_payload = _eval_payload([0, 2, 1, 2])
    shape = (4, 1, 2, 2)

    def meta(payload: bytes) -> relay_pb2.EvalSetMeta:
        return _eval_meta(fingerprint=eval_set_fingerprint(payload, shape))

    check_eval_payload(good_payload, meta(good_payload), RUN)
    forged = _refusal(check_eval_payload, _eval_payload([0, 2, 1, 1]), meta(good_payload), RUN)
    inputs = np.arange(16, dtype="<f4").reshape(shape)
    inputs[2, 0, 1, 1] = math.nan
    nan_payload = _eval_payload([0, 0, 0, 0], inputs)
    not_finite = _refusal(check_eval_payload, nan_payload, meta(nan_payload), RUN)
    high = _eval_payload([0, 1, 3, 2])  # RUN has num_classes = 3
    beyond = _refusal(check_eval_payload, high, meta(high), RUN)
    low = _eval_payload([0, -1, -7, 2])
    negative = _refusal(check_eval_payload, low, meta(low), RUN)

    declared = eval_set_fingerprint(good_payload, shape)
    assert forged.message.startswith(
        f"EvalSetMeta.fingerprint {declared!r} does not match its inputs and labels (computed "
    )
    assert not_finite.message == "eval inputs (EvalSetChunk.data) contain 1 non-finite values"
    assert beyond.message == (
        "eval labels (EvalSetChunk.data) must be classes 0..2 of RunSpec.num_classes = 3: "
        "row 2 has label 3 (1 of 4 labels are out of range)"
    )
    assert "row 1 has label -1 (2 of 4 labels are out of range)" in negative.message
    for refusal in (forged, not_finite, beyond, negative):
        assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT


# -- logits ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (float("nan"), "logits contain 1 non-finite values"),
        (float("inf"), "logits contain 1 non-finite values"),
        (float("-inf"), "logits contain 1 non-finite values"),
        (-1500.0, "logits reach |x| = 1500 (1 values beyond this relay's bound of 1000"),
        (1000.5, "logits reach |x| = 1000 (1 values beyond this relay's bound of 1000"),
    ],
)
@pytest.mark.parametrize("dtype", ["<f4", "<f2"])
def test_logits_that_are_not_finite_or_beyond_the_bound_are_refused(
    bad: float, message: str, dtype: str
) -> None:
    values = np.linspace(-999, 999, 60, dtype=dtype)
    values[17] = bad
    encoding = relay_pb2.ENCODING_FLOAT32 if dtype == "<f4" else relay_pb2.ENCODING_FLOAT16

    with pytest.raises(Rejection) as refused:
        check_logits(bytearray(values.tobytes()), encoding, 1000.0)

    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.message.startswith(message)


def test_logits_within_the_bound_and_an_empty_set_pass() -> None:
    edge = np.array([-1000.0, 0.0, 1000.0], dtype="<f4")
    check_logits(edge.tobytes(), relay_pb2.ENCODING_FLOAT32, 1000.0)
    check_logits(b"", relay_pb2.ENCODING_FLOAT32, 1000.0)
