"""What the relay accepts: pure checks of requests against a run, each raising a
`Rejection` whose message names the proto fields at fault. Nothing here touches the
store or the network, so every rule is testable on plain messages."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence

import grpc
import numpy as np

from dkt.proto.dkt.v1 import relay_pb2
from dkt.proto.identity_proof import NONCE_CHARS
from dkt.proto.payload_encoding import NUMPY_DTYPES, encoding_name
from dkt.proto.status_json import (
    AGENT_STATES,
    MAX_METRIC_NAME_CHARS,
    MAX_METRICS,
    MAX_REASON_CHARS,
)
from dkt.server.relay.rejection import Rejection
from dkt.server.relay.store.records import MAX_EXPERIENCES, RunRecord

Code = grpc.StatusCode

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
CLOSED_STATES = ("finished", "failed")
_RUN_STATE_NAMES = "created, running, finished or failed"


def probe_fingerprint(payload: bytes | bytearray, shape: Sequence[int]) -> str:
    """The fingerprint of probe inputs as relay.proto documents it on
    `ProbeSetMeta.fingerprint`: hex SHA-256 of "float32:<d0,d1,...>:" and the payload's
    row-major little-endian float32 bytes (what dkt.common.data.probe.fingerprint computes)."""
    digest = hashlib.sha256(b"float32:" + ",".join(str(int(d)) for d in shape).encode() + b":")
    digest.update(payload)
    return digest.hexdigest()


def check_run_id(run_id: str, field: str) -> None:
    if not run_id:
        raise Rejection(Code.INVALID_ARGUMENT, f"{field} is empty; say which run")


def check_size(size: int, limit: int, what: str) -> None:
    if size > limit:
        raise Rejection(
            Code.RESOURCE_EXHAUSTED,
            f"{what} of {size} bytes exceeds this relay's limit of {limit} bytes; raise "
            "--max-payload-mb or send less",
        )


def check_sha256(sha256: str, field: str) -> None:
    if not _SHA256_HEX.match(sha256):
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"{field} must be the 64 lowercase hex digits of the payload's SHA-256",
        )


def check_experience(experience: int, run: RunRecord, field: str) -> None:
    """An experience of `run`: INVALID_ARGUMENT below 0, OUT_OF_RANGE at or beyond
    `RunSpec.experiences`."""
    if experience < 0:
        raise Rejection(Code.INVALID_ARGUMENT, f"{field} must be >= 0, got {experience}")
    if experience >= run.experiences:
        raise Rejection(
            Code.OUT_OF_RANGE,
            f"{field} {experience} is outside run {run.run_id!r}, which has "
            f"RunSpec.experiences = {run.experiences} (experiences 0..{run.experiences - 1})",
        )


# -- runs and probe sets ---------------------------------------------------------------


def check_run_spec(spec: relay_pb2.RunSpec) -> None:
    if not _RUN_ID.match(spec.run_id):
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"RunSpec.run_id {spec.run_id!r} is not valid: use 1-128 characters from letters, "
            "digits, '.', '_' and '-', starting with a letter or digit",
        )
    if spec.num_classes < 1:
        raise Rejection(
            Code.INVALID_ARGUMENT, f"RunSpec.num_classes must be >= 1, got {spec.num_classes}"
        )
    if not 1 <= spec.experiences <= MAX_EXPERIENCES:
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"RunSpec.experiences must be >= 1, got {spec.experiences}; say how many "
            "experiences the run has",
        )
    if spec.expected_agents < 0:
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"RunSpec.expected_agents must be >= 0, got {spec.expected_agents}",
        )
    if spec.config_json:
        try:
            json.loads(spec.config_json)
        except json.JSONDecodeError as err:
            raise Rejection(
                Code.INVALID_ARGUMENT, f"RunSpec.config_json is not valid JSON: {err}"
            ) from None


def check_probe_meta(meta: relay_pb2.ProbeSetMeta, max_payload_bytes: int) -> tuple[int, ...]:
    """The probe shape, once the metadata is consistent (checked before the payload)."""
    shape = tuple(int(d) for d in meta.shape)
    if len(shape) < 2 or any(d <= 0 for d in shape):
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"ProbeSetMeta.shape must have at least 2 positive dimensions (P x ...), got {shape}",
        )
    expected = math.prod(shape) * 4
    check_size(expected, max_payload_bytes, "probe set")
    if meta.payload_bytes != expected:
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"ProbeSetMeta.payload_bytes is {meta.payload_bytes} but shape {shape} of float32 "
            f"takes {expected} bytes",
        )
    check_sha256(meta.sha256, "ProbeSetMeta.sha256")
    return shape


def check_probe_inputs(payload: bytes | bytearray, meta: relay_pb2.ProbeSetMeta) -> None:
    """The received probe inputs are finite and match `ProbeSetMeta.fingerprint`."""
    inputs = np.frombuffer(payload, dtype="<f4")
    finite = np.isfinite(inputs)
    if not finite.all():
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"probe inputs contain {int((~finite).sum())} non-finite values",
        )
    actual = probe_fingerprint(payload, meta.shape)
    if actual != meta.fingerprint:
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"ProbeSetMeta.fingerprint {meta.fingerprint!r} does not match its inputs "
            f"(computed {actual}); compute it as relay.proto documents on "
            "ProbeSetMeta.fingerprint",
        )


# -- eval sets -------------------------------------------------------------------------


def eval_set_fingerprint(payload: bytes | bytearray, shape: Sequence[int]) -> str:
    """The fingerprint of an eval set payload as relay.proto documents it on
    `EvalSetMeta.fingerprint`: hex SHA-256 of "eval:float32:<d0,d1,...>:", the inputs'
    bytes, "int64:<N>:" and the labels' bytes (what dkt.common.data.eval_set computes)."""
    dims = [int(d) for d in shape]
    split = math.prod(dims) * 4
    view = memoryview(payload)
    digest = hashlib.sha256(b"eval:float32:" + ",".join(map(str, dims)).encode() + b":")
    digest.update(view[:split])
    digest.update(b"int64:" + str(dims[0]).encode() + b":")
    digest.update(view[split:])
    return digest.hexdigest()


def check_eval_meta(
    meta: relay_pb2.EvalSetMeta, run: RunRecord, max_payload_bytes: int
) -> tuple[int, ...]:
    """The eval inputs' shape, once the run takes an eval set and the metadata is
    consistent (checked before the payload arrives)."""
    if run.state in CLOSED_STATES:
        raise Rejection(
            Code.FAILED_PRECONDITION,
            f"run {run.run_id!r} is {run.state}; it accepts no eval set",
        )
    shape = tuple(int(d) for d in meta.shape)
    if len(shape) < 2 or any(d <= 0 for d in shape):
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"EvalSetMeta.shape must have at least 2 positive dimensions (N x ...), got {shape}",
        )
    if meta.num_rows != shape[0]:
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"EvalSetMeta.num_rows is {meta.num_rows} but EvalSetMeta.shape {shape} has "
            f"{shape[0]} rows; they must be equal",
        )
    expected = math.prod(shape) * 4 + shape[0] * 8
    check_size(expected, max_payload_bytes, "eval set")
    if meta.payload_bytes != expected:
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"EvalSetMeta.payload_bytes is {meta.payload_bytes} but float32 inputs of shape "
            f"{shape} and {shape[0]} int64 labels take {expected} bytes",
        )
    check_sha256(meta.sha256, "EvalSetMeta.sha256")
    return shape


def check_eval_payload(
    payload: bytes | bytearray, meta: relay_pb2.EvalSetMeta, run: RunRecord
) -> None:
    """The received eval set matches `EvalSetMeta.fingerprint`, its inputs are finite and
    every label is a class of the run."""
    actual = eval_set_fingerprint(payload, meta.shape)
    if actual != meta.fingerprint:
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"EvalSetMeta.fingerprint {meta.fingerprint!r} does not match its inputs and labels "
            f"(computed {actual}); compute it as relay.proto documents on "
            "EvalSetMeta.fingerprint",
        )
    rows = int(meta.shape[0])
    split = len(payload) - rows * 8
    inputs = np.frombuffer(payload, dtype="<f4", count=split // 4)
    finite = np.isfinite(inputs)
    if not finite.all():
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"eval inputs (EvalSetChunk.data) contain {int((~finite).sum())} non-finite values",
        )
    labels = np.frombuffer(payload, dtype="<i8", offset=split)
    bad = np.flatnonzero((labels < 0) | (labels >= run.num_classes))
    if bad.size:
        row = int(bad[0])
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"eval labels (EvalSetChunk.data) must be classes 0..{run.num_classes - 1} of "
            f"RunSpec.num_classes = {run.num_classes}: row {row} has label {int(labels[row])} "
            f"({bad.size} of {rows} labels are out of range)",
        )


def check_set_run_state(request: relay_pb2.SetRunStateRequest, run: RunRecord) -> None:
    if request.state == relay_pb2.RUN_STATE_UNSPECIFIED:
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"SetRunStateRequest.state is unspecified; use {_RUN_STATE_NAMES}",
        )
    if request.state not in relay_pb2.RunState.values():
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"SetRunStateRequest.state {request.state} is not a run state; use {_RUN_STATE_NAMES}",
        )
    if request.HasField("current_experience"):
        check_experience(request.current_experience, run, "SetRunStateRequest.current_experience")


def check_identity_request(request: relay_pb2.VerifyIdentityRequest, run: RunRecord) -> None:
    if request.agent_id < 0 or (run.expected_agents and request.agent_id >= run.expected_agents):
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"VerifyIdentityRequest.agent_id: agent {request.agent_id} is not part of run "
            f"{run.run_id!r}",
        )
    shortest, longest = NONCE_CHARS
    if not shortest <= len(request.nonce) <= longest:
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"VerifyIdentityRequest.nonce has {len(request.nonce)} characters; use "
            f"{shortest} to {longest}",
        )


def check_progress(request: relay_pb2.ReportProgressRequest, run: RunRecord) -> None:
    if run.state in CLOSED_STATES:
        raise Rejection(
            Code.FAILED_PRECONDITION,
            f"run {run.run_id!r} is {run.state}; it takes no more progress reports",
        )
    if request.agent_id < 0:
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"ReportProgressRequest.agent_id must be >= 0, got {request.agent_id}",
        )
    check_experience(request.experience, run, "ReportProgressRequest.experience")
    if request.state not in AGENT_STATES:
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"ReportProgressRequest.state {request.state!r} is not an agent state; use one "
            f"of {', '.join(AGENT_STATES)}",
        )
    if len(request.reason) > MAX_REASON_CHARS:
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"ReportProgressRequest.reason has {len(request.reason)} characters; say why in "
            f"at most {MAX_REASON_CHARS}",
        )
    if len(request.metrics) > MAX_METRICS:
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"ReportProgressRequest.metrics has {len(request.metrics)} entries; report at "
            f"most {MAX_METRICS}",
        )
    long_names = sum(len(k) > MAX_METRIC_NAME_CHARS for k in request.metrics)
    if long_names:
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"ReportProgressRequest.metrics: {long_names} names are longer than "
            f"{MAX_METRIC_NAME_CHARS} characters; use shorter names",
        )
    bad = sorted(k for k, v in request.metrics.items() if not math.isfinite(v))
    if bad:
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"ReportProgressRequest.metrics {bad} are not finite; report finite values or "
            "leave them out",
        )


# -- predictions -----------------------------------------------------------------------


def check_prediction_meta(
    meta: relay_pb2.PredictionMeta, run: RunRecord, max_payload_bytes: int
) -> str:
    """Everything about a publish that can be checked before its payload arrives;
    returns the encoding's name."""
    if run.state in CLOSED_STATES:
        raise Rejection(
            Code.FAILED_PRECONDITION,
            f"run {run.run_id!r} is {run.state}; it accepts no more predictions",
        )
    if meta.agent_id < 0:
        raise Rejection(
            Code.INVALID_ARGUMENT, f"PredictionMeta.agent_id must be >= 0, got {meta.agent_id}"
        )
    if run.expected_agents and meta.agent_id >= run.expected_agents:
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"PredictionMeta.agent_id: agent {meta.agent_id} is not part of run "
            f"{run.run_id!r}, which expects agents 0..{run.expected_agents - 1}",
        )
    check_experience(meta.experience, run, "PredictionMeta.experience")
    try:
        encoding = encoding_name(meta.encoding)
    except ValueError:
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"PredictionMeta.encoding {meta.encoding} is unknown; use ENCODING_FLOAT32 or "
            "ENCODING_FLOAT16",
        ) from None
    check_size(meta.payload_bytes, max_payload_bytes, "prediction set")
    if meta.probe_fingerprint != run.probe_fingerprint:
        raise Rejection(
            Code.FAILED_PRECONDITION,
            f"PredictionMeta.probe_fingerprint: predictions were computed on probe set "
            f"{meta.probe_fingerprint[:16]!r}... but run {run.run_id!r} uses "
            f"{run.probe_fingerprint[:16]!r}...; fetch the run's probe set and predict on it",
        )
    shape = tuple(int(d) for d in meta.shape)
    expected_shape = (run.probe_size, run.num_classes)
    if shape != expected_shape:
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"PredictionMeta.shape: logits shape {shape} does not match run {run.run_id!r}: "
            f"expected (probe size, classes) = {expected_shape}",
        )
    expected_bytes = shape[0] * shape[1] * NUMPY_DTYPES[meta.encoding].itemsize
    if meta.payload_bytes != expected_bytes:
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"PredictionMeta.payload_bytes is {meta.payload_bytes} but {shape} {encoding} "
            f"values take {expected_bytes} bytes",
        )
    bad_classes = [c for c in meta.classes_seen if not 0 <= c < run.num_classes]
    if bad_classes or len(set(meta.classes_seen)) != len(meta.classes_seen):
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"PredictionMeta.classes_seen must be distinct classes in 0..{run.num_classes - 1}, "
            f"got {list(meta.classes_seen)}",
        )
    check_sha256(meta.sha256, "PredictionMeta.sha256")
    return encoding


def check_logits(payload: bytes | bytearray, encoding: int, max_abs: float) -> None:
    """The received logits are finite and within the relay's bound on |logit|."""
    values = np.frombuffer(payload, dtype=NUMPY_DTYPES[encoding])
    if not values.size:
        return
    # Two reductions that allocate nothing (a NaN or an infinity shows in them); the
    # counting below runs only for a set about to be refused.
    lowest, highest = float(values.min()), float(values.max())
    if not (math.isfinite(lowest) and math.isfinite(highest)):
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"logits contain {int((~np.isfinite(values)).sum())} non-finite values (NaN or "
            "infinity); publish finite logits",
        )
    largest = max(-lowest, highest)
    if largest > max_abs:
        beyond = int((np.abs(values) > max_abs).sum())
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"logits reach |x| = {largest:.4g} ({beyond} values beyond this relay's bound of "
            f"{max_abs:g}, `dkt relay --max-logit`); publish logits within the bound",
        )


def check_fetch(request: relay_pb2.FetchPredictionsRequest, run: RunRecord) -> None:
    selector = request.WhichOneof("selector")
    if selector is None:
        raise Rejection(
            Code.INVALID_ARGUMENT,
            "say which predictions to fetch: set FetchPredictionsRequest.experience or "
            "FetchPredictionsRequest.latest",
        )
    if request.agent_id < 0:
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"FetchPredictionsRequest.agent_id must be >= 0, got {request.agent_id}",
        )
    if selector == "experience":
        check_experience(request.experience, run, "FetchPredictionsRequest.experience")
