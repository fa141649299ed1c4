"""The `dkt.v1.Relay` gRPC service: authentication, validation, and the store behind it.

Every request is checked completely before anything is written: a rejected request
leaves no trace in the store. Each rejection has its own message and status code.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np

from dkt.proto.dkt.v1 import relay_pb2, relay_pb2_grpc
from dkt.proto.status_json import AGENT_STATES, MAX_REASON_CHARS, run_state_name, run_state_value
from dkt.server.auth import ANONYMOUS, Principal, TokenTable
from dkt.server.relay_events import EventBus
from dkt.server.relay_metrics import RelayMetrics
from dkt.server.relay_store import (
    CorruptPayloadError,
    PredictionRecord,
    PredictionsExistError,
    RelayStore,
    RunExistsError,
    RunNotFoundError,
    RunRecord,
)

log = logging.getLogger("dkt.relay")

Code = grpc.StatusCode

# Encoding of the payload -> (store name, numpy little-endian dtype).
_ENCODINGS: dict[int, tuple[str, str]] = {
    relay_pb2.ENCODING_FLOAT32: ("float32", "<f4"),
    relay_pb2.ENCODING_FLOAT16: ("float16", "<f2"),
}
_ENCODING_VALUES = {name: value for value, (name, _) in _ENCODINGS.items()}
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_CLOSED_STATES = ("finished", "failed")
_WATCH_POLL_S = 0.25


class Rejection(Exception):
    """A request the relay refuses, with the status code and message the caller gets."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RelayLimits:
    """Sizes the relay accepts and sends."""

    max_payload_bytes: int = 1 << 30
    chunk_bytes: int = 1 << 20
    # Watch streams open at once (each holds a server worker while it lasts).
    max_watches: int = 32


T = TypeVar("T")


def _status_of(err: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(err, Rejection):
        return err.code, err.message
    if isinstance(err, RunNotFoundError):
        return Code.NOT_FOUND, str(err)
    if isinstance(err, RunExistsError | PredictionsExistError):
        return Code.ALREADY_EXISTS, str(err)
    if isinstance(err, CorruptPayloadError):
        return Code.DATA_LOSS, str(err)
    if isinstance(err, grpc.RpcError):
        # Reading the request stream of a call that the client cancelled or whose
        # deadline passed: the caller is gone, nothing went wrong here.
        return Code.CANCELLED, "the call ended (cancelled or past its deadline)"
    return Code.INTERNAL, f"internal relay error ({type(err).__name__}); see the relay log"


def _log_failure(method: str, code: grpc.StatusCode, message: str, err: Exception) -> None:
    if code == Code.INTERNAL:
        log.error("%s: internal error", method, exc_info=err)
    elif code == Code.DATA_LOSS:
        log.error("%s: %s", method, message)


def _unary(method: Callable[..., T]) -> Callable[..., T]:
    """Time the call, count its status code, and turn exceptions into gRPC statuses."""
    name = method.__name__

    @functools.wraps(method)
    def handler(self: RelayService, request: Any, context: grpc.ServicerContext) -> T:
        start = time.perf_counter()
        code = Code.OK
        try:
            return method(self, request, context)
        except Exception as err:
            code, message = self._record_failure(name, err)
            context.abort(code, message)
        finally:
            self._observe(name, code, start)

    return handler


def _streaming(method: Callable[..., Iterator[T]]) -> Callable[..., Iterator[T]]:
    """`_unary` for handlers that stream their response."""
    name = method.__name__

    @functools.wraps(method)
    def handler(self: RelayService, request: Any, context: grpc.ServicerContext) -> Iterator[T]:
        start = time.perf_counter()
        code = Code.OK
        try:
            yield from method(self, request, context)
        except Exception as err:
            code, message = self._record_failure(name, err)
            context.abort(code, message)
        finally:
            self._observe(name, code, start)

    return handler


class RelayService(relay_pb2_grpc.RelayServicer):
    """Handles the RPCs of `dkt.v1.Relay` against one store."""

    def _record_failure(self, name: str, err: Exception) -> tuple[Code, str]:
        """The status a failed call ends with; logged, and counted when data was lost."""
        code, message = _status_of(err)
        _log_failure(name, code, message, err)
        if code == Code.DATA_LOSS:
            self.metrics.corrupt_payloads.inc()
        return code, message

    def __init__(
        self,
        store: RelayStore,
        tokens: TokenTable,
        limits: RelayLimits,
        metrics: RelayMetrics,
        events: EventBus,
        version: str,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.limits = limits
        self.metrics = metrics
        self.events = events
        self.version = version
        self.started_at = time.time()
        self._stopping = threading.Event()

    def stop_watches(self) -> None:
        """End every Watch stream (the relay is shutting down)."""
        self._stopping.set()

    def _observe(self, method: str, code: grpc.StatusCode, start: float) -> None:
        self.metrics.requests.labels(method, code.name).inc()
        self.metrics.latency.labels(method).observe(time.perf_counter() - start)

    # -- authentication --------------------------------------------------------------

    def _principal(self, context: grpc.ServicerContext) -> Principal:
        if not self.tokens.enabled:
            return ANONYMOUS
        header = next((v for k, v in context.invocation_metadata() if k == "authorization"), None)
        if not header:
            raise Rejection(
                Code.UNAUTHENTICATED,
                "missing token: send 'authorization: Bearer <token>' in the call metadata "
                "(RelayClient(token=...) or --token)",
            )
        scheme, _, token = str(header).partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Rejection(
                Code.UNAUTHENTICATED,
                "malformed authorization metadata: expected 'Bearer <token>'",
            )
        principal = self.tokens.authenticate(token.strip())
        if principal is None:
            raise Rejection(
                Code.UNAUTHENTICATED,
                "invalid token: this relay does not know it; check the relay's token file",
            )
        return principal

    def _require_admin(self, principal: Principal, action: str) -> None:
        if not principal.is_admin:
            raise Rejection(
                Code.PERMISSION_DENIED,
                f"{action} needs the admin token; the token sent belongs to {principal.describe()}",
            )

    def _require_agent(self, principal: Principal, agent_id: int, action: str) -> None:
        if principal.kind == "agent" and principal.agent_id != agent_id:
            raise Rejection(
                Code.PERMISSION_DENIED,
                f"the token of agent {principal.agent_id} cannot {action} agent {agent_id}; "
                f"use agent {agent_id}'s own token",
            )

    def _seen(self, principal: Principal, run_id: str) -> None:
        """Record an agent's call in a run (its last-seen time)."""
        agent_id = principal.agent_id
        if agent_id is not None and self.store.touch_agent(run_id, agent_id):
            self.events.emit(run_id, agent_seen=relay_pb2.AgentSeen(agent_id=agent_id))

    def _run(self, run_id: str) -> RunRecord:
        if not run_id:
            raise Rejection(Code.INVALID_ARGUMENT, "run_id is empty; say which run")
        return self.store.require_run(run_id)

    # -- runs and probe sets ---------------------------------------------------------

    @_unary
    def CreateRun(
        self, request_iterator: Iterator[relay_pb2.ProbeSetChunk], context: grpc.ServicerContext
    ) -> relay_pb2.RunInfo:
        principal = self._principal(context)
        self._require_admin(principal, "creating a run")
        first = next(request_iterator, None)
        if first is None or not (first.HasField("spec") and first.HasField("meta")):
            raise Rejection(
                Code.INVALID_ARGUMENT,
                "a CreateRun stream must start with a chunk that carries `spec` and `meta`",
            )
        spec, meta = first.spec, first.meta
        _check_run_spec(spec)
        shape = tuple(int(d) for d in meta.shape)
        if len(shape) < 2 or any(d <= 0 for d in shape):
            raise Rejection(
                Code.INVALID_ARGUMENT,
                f"probe shape must have at least 2 positive dimensions (P x ...), got {shape}",
            )
        expected = math.prod(shape) * 4
        self._check_size(expected, "probe set")
        if meta.payload_bytes != expected:
            raise Rejection(
                Code.INVALID_ARGUMENT,
                f"probe payload_bytes is {meta.payload_bytes} but shape {shape} of float32 "
                f"takes {expected} bytes",
            )
        payload = _receive(first, request_iterator, meta.payload_bytes, meta.sha256, "probe set")
        inputs = np.frombuffer(payload, dtype="<f4")
        if not np.isfinite(inputs).all():
            raise Rejection(
                Code.INVALID_ARGUMENT,
                f"probe inputs contain {int((~np.isfinite(inputs)).sum())} non-finite values",
            )
        actual = _probe_fingerprint(payload, shape)
        if actual != meta.fingerprint:
            raise Rejection(
                Code.INVALID_ARGUMENT,
                f"probe fingerprint {meta.fingerprint!r} does not match its inputs "
                f"(computed {actual}); send ProbeSet.fingerprint of the same inputs",
            )
        run = RunRecord(
            run_id=spec.run_id,
            num_classes=spec.num_classes,
            expected_agents=spec.expected_agents,
            config_json=spec.config_json,
            probe_fingerprint=meta.fingerprint,
            probe_source=meta.source,
            probe_shape=shape,
            probe_sha256=meta.sha256,
            probe_bytes=meta.payload_bytes,
        )
        if not context.is_active():
            raise Rejection(Code.CANCELLED, "the call ended before the run was stored")
        stored, created = self.store.create_run(run, payload)
        if created:
            log.info(
                "run %s created: %d probe inputs, %d classes", run.run_id, shape[0], run.num_classes
            )
            self.events.emit(
                run.run_id,
                run_state_changed=relay_pb2.RunStateChanged(
                    state=run_state_value(stored.state),
                    current_experience=stored.current_experience,
                ),
            )
        info = _run_info(stored)
        info.already_existed = not created
        return info

    @_streaming
    def GetProbeSet(
        self, request: relay_pb2.GetProbeSetRequest, context: grpc.ServicerContext
    ) -> Iterator[relay_pb2.ProbeSetChunk]:
        principal = self._principal(context)
        run = self._run(request.run_id)
        self._seen(principal, run.run_id)
        _, payload = self.store.read_probe(run.run_id)
        info = _run_info(run)
        for i, offset in enumerate(range(0, max(len(payload), 1), self.limits.chunk_bytes)):
            if not context.is_active():
                return
            chunk = relay_pb2.ProbeSetChunk(
                offset=offset, data=payload[offset : offset + self.limits.chunk_bytes]
            )
            if i == 0:
                chunk.spec.CopyFrom(info.spec)
                chunk.meta.CopyFrom(info.probe)
            yield chunk

    @_unary
    def SetRunState(
        self, request: relay_pb2.SetRunStateRequest, context: grpc.ServicerContext
    ) -> relay_pb2.RunInfo:
        principal = self._principal(context)
        self._require_admin(principal, "changing a run's state")
        if request.state == relay_pb2.RUN_STATE_UNSPECIFIED:
            raise Rejection(
                Code.INVALID_ARGUMENT,
                "state is unspecified; use created, running, finished or failed",
            )
        if request.state not in relay_pb2.RunState.values():
            raise Rejection(
                Code.INVALID_ARGUMENT,
                f"state {request.state} is not a run state; use created, running, finished "
                "or failed",
            )
        if request.HasField("current_experience") and request.current_experience < 0:
            raise Rejection(Code.INVALID_ARGUMENT, "current_experience must be >= 0")
        self._run(request.run_id)
        run = self.store.set_run_state(
            request.run_id,
            run_state_name(request.state),
            request.current_experience if request.HasField("current_experience") else None,
        )
        self.events.emit(
            run.run_id,
            run_state_changed=relay_pb2.RunStateChanged(
                state=request.state, current_experience=run.current_experience
            ),
        )
        return _run_info(run)

    @_unary
    def ReportProgress(
        self, request: relay_pb2.ReportProgressRequest, context: grpc.ServicerContext
    ) -> relay_pb2.ReportProgressResponse:
        principal = self._principal(context)
        self._require_agent(principal, request.agent_id, "report progress for")
        run = self._run(request.run_id)
        if request.agent_id < 0 or request.experience < 0:
            raise Rejection(Code.INVALID_ARGUMENT, "agent_id and experience must be >= 0")
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
        bad = sorted(k for k, v in request.metrics.items() if not math.isfinite(v))
        if bad:
            raise Rejection(
                Code.INVALID_ARGUMENT,
                f"metrics {bad} are not finite; report finite values or leave them out",
            )
        self._seen(principal, run.run_id)
        self.store.record_progress(
            run.run_id,
            request.agent_id,
            request.experience,
            request.state,
            dict(request.metrics),
            request.reason,
        )
        self.events.emit(run.run_id, progress=relay_pb2.ProgressReported(progress=request))
        return relay_pb2.ReportProgressResponse()

    # -- predictions -----------------------------------------------------------------

    def _check_size(self, size: int, what: str) -> None:
        if size > self.limits.max_payload_bytes:
            raise Rejection(
                Code.RESOURCE_EXHAUSTED,
                f"{what} of {size} bytes exceeds this relay's limit of "
                f"{self.limits.max_payload_bytes} bytes; raise --max-payload-mb or send less",
            )

    @_unary
    def PublishPredictions(
        self, request_iterator: Iterator[relay_pb2.PredictionChunk], context: grpc.ServicerContext
    ) -> relay_pb2.PublishAck:
        try:
            ack = self._publish(request_iterator, context)
        except Exception as err:
            self.metrics.publishes.labels(_status_of(err)[0].name).inc()
            raise
        self.metrics.publishes.labels("duplicate" if ack.already_stored else "stored").inc()
        return ack

    def _publish(
        self, request_iterator: Iterator[relay_pb2.PredictionChunk], context: grpc.ServicerContext
    ) -> relay_pb2.PublishAck:
        principal = self._principal(context)
        first = next(request_iterator, None)
        if first is None or not first.HasField("meta"):
            raise Rejection(
                Code.INVALID_ARGUMENT,
                "a publish stream must start with a chunk that carries the metadata (meta)",
            )
        meta = first.meta
        self._require_agent(principal, meta.agent_id, "publish predictions of")
        run = self._run(meta.run_id)
        self._seen(principal, run.run_id)
        encoding, itemsize = self._check_prediction_meta(meta, run)
        payload = _receive(first, request_iterator, meta.payload_bytes, meta.sha256, "payload")
        values = np.frombuffer(payload, dtype=_ENCODINGS[meta.encoding][1])
        finite = np.isfinite(values)
        if not finite.all():
            raise Rejection(
                Code.INVALID_ARGUMENT,
                f"logits contain {int((~finite).sum())} non-finite values (NaN or infinity); "
                "publish finite logits",
            )
        record = PredictionRecord(
            run_id=run.run_id,
            agent_id=meta.agent_id,
            experience=meta.experience,
            classes_seen=tuple(meta.classes_seen),
            probe_fingerprint=meta.probe_fingerprint,
            dtype=meta.dtype or encoding,
            shape=(int(meta.shape[0]), int(meta.shape[1])),
            encoding=encoding,
            sha256=meta.sha256,
            payload_bytes=meta.payload_bytes,
        )
        # A caller that gave up (deadline, cancel) never sees an ack, so store nothing.
        if not context.is_active():
            raise Rejection(Code.CANCELLED, "the call ended before the predictions were stored")
        stored, already = self.store.put_predictions(record, payload)
        if not already:
            self.metrics.published_bytes.inc(stored.payload_bytes)
            self.events.emit(
                run.run_id,
                published=relay_pb2.PredictionsPublished(prediction=_stored_prediction(stored)),
            )
            # The first publish starts a created run and a newer experience moves the run's
            # current experience: watchers get run_state_changed as for SetRunState (racing
            # publishes may both announce the state read after their commit).
            after = self.store.require_run(run.run_id)
            if (after.state, after.current_experience) != (run.state, run.current_experience):
                self.events.emit(
                    run.run_id,
                    run_state_changed=relay_pb2.RunStateChanged(
                        state=run_state_value(after.state),
                        current_experience=after.current_experience,
                    ),
                )
        return relay_pb2.PublishAck(
            id=stored.id,
            sha256=stored.sha256,
            payload_bytes=stored.payload_bytes,
            already_stored=already,
        )

    def _check_prediction_meta(
        self, meta: relay_pb2.PredictionMeta, run: RunRecord
    ) -> tuple[str, int]:
        """Everything about a publish that can be checked before its payload arrives."""
        if run.state in _CLOSED_STATES:
            raise Rejection(
                Code.FAILED_PRECONDITION,
                f"run {run.run_id!r} is {run.state}; it accepts no more predictions",
            )
        if meta.agent_id < 0 or meta.experience < 0:
            raise Rejection(
                Code.INVALID_ARGUMENT,
                f"agent_id and experience must be >= 0, got {meta.agent_id} and {meta.experience}",
            )
        if run.expected_agents and meta.agent_id >= run.expected_agents:
            raise Rejection(
                Code.INVALID_ARGUMENT,
                f"agent {meta.agent_id} is not part of run {run.run_id!r}, which expects agents "
                f"0..{run.expected_agents - 1}",
            )
        if meta.encoding not in _ENCODINGS:
            raise Rejection(
                Code.INVALID_ARGUMENT,
                f"unknown encoding {meta.encoding}; use ENCODING_FLOAT32 or ENCODING_FLOAT16",
            )
        encoding, np_dtype = _ENCODINGS[meta.encoding]
        itemsize = np.dtype(np_dtype).itemsize
        self._check_size(meta.payload_bytes, "prediction set")
        if meta.probe_fingerprint != run.probe_fingerprint:
            raise Rejection(
                Code.FAILED_PRECONDITION,
                f"predictions were computed on probe set {meta.probe_fingerprint[:16]!r}... but "
                f"run {run.run_id!r} uses {run.probe_fingerprint[:16]!r}...; fetch the run's "
                "probe set and predict on it",
            )
        shape = tuple(int(d) for d in meta.shape)
        expected_shape = (run.probe_size, run.num_classes)
        if shape != expected_shape:
            raise Rejection(
                Code.INVALID_ARGUMENT,
                f"logits shape {shape} does not match run {run.run_id!r}: expected "
                f"(probe size, classes) = {expected_shape}",
            )
        expected_bytes = shape[0] * shape[1] * itemsize
        if meta.payload_bytes != expected_bytes:
            raise Rejection(
                Code.INVALID_ARGUMENT,
                f"payload_bytes is {meta.payload_bytes} but {shape} {encoding} values take "
                f"{expected_bytes} bytes",
            )
        bad_classes = [c for c in meta.classes_seen if not 0 <= c < run.num_classes]
        if bad_classes or len(set(meta.classes_seen)) != len(meta.classes_seen):
            raise Rejection(
                Code.INVALID_ARGUMENT,
                f"classes_seen must be distinct classes in 0..{run.num_classes - 1}, "
                f"got {list(meta.classes_seen)}",
            )
        if not _SHA256_HEX.match(meta.sha256):
            raise Rejection(
                Code.INVALID_ARGUMENT,
                "sha256 must be the 64 lowercase hex digits of the payload's SHA-256",
            )
        return encoding, itemsize

    @_streaming
    def FetchPredictions(
        self, request: relay_pb2.FetchPredictionsRequest, context: grpc.ServicerContext
    ) -> Iterator[relay_pb2.PredictionChunk]:
        try:
            principal = self._principal(context)
            run = self._run(request.run_id)
            self._seen(principal, run.run_id)
            record = self._find(request, run)
            payload = self.store.read_predictions(record)
        except Exception as err:
            self.metrics.fetches.labels(_status_of(err)[0].name).inc()
            raise
        self.metrics.fetches.labels("served").inc()
        meta = _prediction_meta(record)
        for offset in range(0, max(len(payload), 1), self.limits.chunk_bytes):
            if not context.is_active():
                return
            chunk = relay_pb2.PredictionChunk(
                offset=offset, data=payload[offset : offset + self.limits.chunk_bytes]
            )
            if offset == 0:
                chunk.meta.CopyFrom(meta)
            yield chunk
        self.metrics.fetched_bytes.inc(len(payload))

    def _find(self, request: relay_pb2.FetchPredictionsRequest, run: RunRecord) -> PredictionRecord:
        selector = request.WhichOneof("selector")
        if selector == "experience":
            record = self.store.get_predictions(run.run_id, request.agent_id, request.experience)
            what = f"for experience {request.experience}"
        elif selector == "latest":
            bound = (
                request.latest.max_experience if request.latest.HasField("max_experience") else None
            )
            record = self.store.latest_predictions(run.run_id, request.agent_id, bound)
            what = "at all" if bound is None else f"at or before experience {bound}"
        else:
            raise Rejection(
                Code.INVALID_ARGUMENT, "say which predictions to fetch: set experience or latest"
            )
        if record is None:
            raise Rejection(
                Code.NOT_FOUND,
                f"agent {request.agent_id} has not published predictions {what} in run "
                f"{run.run_id!r}",
            )
        return record

    @_unary
    def ListPredictions(
        self, request: relay_pb2.ListPredictionsRequest, context: grpc.ServicerContext
    ) -> relay_pb2.ListPredictionsResponse:
        principal = self._principal(context)
        run = self._run(request.run_id)
        self._seen(principal, run.run_id)
        agent = request.agent_id if request.HasField("agent_id") else None
        records = self.store.list_predictions(run.run_id, agent)
        return relay_pb2.ListPredictionsResponse(
            predictions=[_stored_prediction(r) for r in records]
        )

    # -- status and events -----------------------------------------------------------

    @_unary
    def GetStatus(
        self, request: relay_pb2.GetStatusRequest, context: grpc.ServicerContext
    ) -> relay_pb2.RelayStatus:
        self._principal(context)
        return self.status()

    def status(self) -> relay_pb2.RelayStatus:
        """The relay's status message (also served as JSON by the HTTP endpoint)."""
        totals = self.store.totals()
        self.metrics.stored_sets.set(totals.prediction_sets)
        self.metrics.stored_bytes.set(totals.payload_bytes)
        uptime = time.time() - self.started_at
        self.metrics.uptime.set(uptime)
        status = relay_pb2.RelayStatus(version=self.version, uptime_seconds=uptime)
        status.totals.runs = totals.runs
        status.totals.prediction_sets = totals.prediction_sets
        status.totals.payload_bytes = totals.payload_bytes
        for run in self.store.list_runs():
            records = self.store.list_predictions(run.run_id)
            run_status = status.runs.add(
                run_id=run.run_id,
                state=run_state_value(run.state),
                current_experience=run.current_experience,
                num_classes=run.num_classes,
                probe_size=run.probe_size,
                probe_fingerprint=run.probe_fingerprint,
                expected_agents=run.expected_agents,
                created_at=run.created_at,
                prediction_sets=len(records),
                payload_bytes=sum(r.payload_bytes for r in records),
            )
            for agent in self.store.agents(run.run_id):
                mine = [r for r in records if r.agent_id == agent.agent_id]
                run_status.agents.add(
                    agent_id=agent.agent_id,
                    last_seen=agent.last_seen,
                    experiences_published=[r.experience for r in mine],
                    payload_bytes=sum(r.payload_bytes for r in mine),
                    experience=agent.experience,
                    state=agent.state,
                    metrics=agent.metrics,
                    reported_at=agent.reported_at,
                    reason=agent.reason,
                )
        return status

    @_streaming
    def Watch(
        self, request: relay_pb2.WatchRequest, context: grpc.ServicerContext
    ) -> Iterator[relay_pb2.Event]:
        principal = self._principal(context)
        if request.run_id:
            self._run(request.run_id)
            self._seen(principal, request.run_id)
        subscription = self.events.subscribe(request.run_id, limit=self.limits.max_watches)
        if subscription is None:
            raise Rejection(
                Code.RESOURCE_EXHAUSTED,
                f"this relay serves at most {self.limits.max_watches} watches at once; close "
                "one, or start the relay with more --workers",
            )
        try:
            yield self.events.subscribed_event(request.run_id)
            while context.is_active() and not self._stopping.is_set():
                event = subscription.next(_WATCH_POLL_S)
                if subscription.overflowed:
                    raise Rejection(
                        Code.RESOURCE_EXHAUSTED,
                        "this watch fell too far behind the relay's events; watch again",
                    )
                if event is not None:
                    yield event
            if self._stopping.is_set():
                raise Rejection(
                    Code.UNAVAILABLE, "the relay is shutting down; watch again once it is back"
                )
        finally:
            self.events.unsubscribe(subscription)


# -- helpers on messages -------------------------------------------------------------


def _receive(
    first: Any, rest: Iterable[Any], declared_bytes: int, declared_sha256: str, what: str
) -> bytes:
    """Collect a chunked payload, checking order, completeness and SHA-256."""
    buffer = bytearray()
    digest = hashlib.sha256()
    for i, chunk in enumerate(itertools.chain([first], rest)):
        carries_meta = chunk.HasField("meta") or (
            "spec" in chunk.DESCRIPTOR.fields_by_name and chunk.HasField("spec")
        )
        if i > 0 and carries_meta:
            raise Rejection(
                Code.INVALID_ARGUMENT, f"{what}: only the first chunk may carry metadata"
            )
        if chunk.offset != len(buffer):
            raise Rejection(
                Code.INVALID_ARGUMENT,
                f"{what}: chunk {i} is out of order: expected offset {len(buffer)}, "
                f"got {chunk.offset}",
            )
        if len(buffer) + len(chunk.data) > declared_bytes:
            raise Rejection(
                Code.INVALID_ARGUMENT,
                f"{what}: more bytes than the {declared_bytes} declared in payload_bytes",
            )
        buffer += chunk.data
        digest.update(chunk.data)
    if len(buffer) != declared_bytes:
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"{what} is incomplete: received {len(buffer)} of {declared_bytes} bytes",
        )
    if digest.hexdigest() != declared_sha256:
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"{what}: SHA-256 of the received bytes is {digest.hexdigest()}, not the declared "
            f"{declared_sha256!r}; the payload was damaged or the hash is wrong",
        )
    return bytes(buffer)


def _probe_fingerprint(payload: bytes, shape: tuple[int, ...]) -> str:
    # torch is imported here, not at module level, so the relay starts quickly; only
    # run creation needs the fingerprint function, which is defined on tensors.
    import torch

    from dkt.common.probe import fingerprint

    inputs = torch.frombuffer(bytearray(payload), dtype=torch.float32).reshape(shape)
    return fingerprint(inputs)


def _check_run_spec(spec: relay_pb2.RunSpec) -> None:
    if not _RUN_ID.match(spec.run_id):
        raise Rejection(
            Code.INVALID_ARGUMENT,
            f"run id {spec.run_id!r} is not valid: use 1-128 characters from letters, digits, "
            "'.', '_' and '-', starting with a letter or digit",
        )
    if spec.num_classes < 1:
        raise Rejection(Code.INVALID_ARGUMENT, f"num_classes must be >= 1, got {spec.num_classes}")
    if spec.expected_agents < 0:
        raise Rejection(
            Code.INVALID_ARGUMENT, f"expected_agents must be >= 0, got {spec.expected_agents}"
        )
    if spec.config_json:
        try:
            json.loads(spec.config_json)
        except json.JSONDecodeError as err:
            raise Rejection(
                Code.INVALID_ARGUMENT, f"config_json is not valid JSON: {err}"
            ) from None


def _run_info(run: RunRecord) -> relay_pb2.RunInfo:
    return relay_pb2.RunInfo(
        spec=relay_pb2.RunSpec(
            run_id=run.run_id,
            num_classes=run.num_classes,
            expected_agents=run.expected_agents,
            config_json=run.config_json,
        ),
        probe=relay_pb2.ProbeSetMeta(
            fingerprint=run.probe_fingerprint,
            source=run.probe_source,
            shape=list(run.probe_shape),
            sha256=run.probe_sha256,
            payload_bytes=run.probe_bytes,
        ),
        state=run_state_value(run.state),
        current_experience=run.current_experience,
        created_at=run.created_at,
    )


def _prediction_meta(record: PredictionRecord) -> relay_pb2.PredictionMeta:
    return relay_pb2.PredictionMeta(
        run_id=record.run_id,
        agent_id=record.agent_id,
        experience=record.experience,
        classes_seen=list(record.classes_seen),
        probe_fingerprint=record.probe_fingerprint,
        dtype=record.dtype,
        shape=list(record.shape),
        encoding=_ENCODING_VALUES[record.encoding],
        sha256=record.sha256,
        payload_bytes=record.payload_bytes,
    )


def _stored_prediction(record: PredictionRecord) -> relay_pb2.StoredPrediction:
    return relay_pb2.StoredPrediction(
        id=record.id, meta=_prediction_meta(record), published_at=record.published_at
    )
