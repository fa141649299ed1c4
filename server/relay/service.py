"""The `dkt.v1.Relay` gRPC handlers: each reads its request, checks it
(`relay_validation`), acts on the store and answers (`relay_messages`).

Who made a call is resolved before a handler runs, by `auth.AuthInterceptor`; a handler
only checks what that principal may do: an agent acts only in the run of its credential
and only as itself, the conductor only in the runs it created (`_run`). Every request is
checked completely before anything is written: a rejected request leaves no trace in the
store.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import grpc

from dkt.proto import chunks
from dkt.proto.dkt.v1 import relay_pb2, relay_pb2_grpc
from dkt.proto.identity_proof import proof_matches
from dkt.proto.relay_connection import MISSING_EVAL_SET, MISSING_KEY, MISSING_PREDICTIONS
from dkt.proto.status_json import DEFAULT_MAX_ABS_LOGIT, run_state_name
from dkt.server.relay import messages
from dkt.server.relay import validation as check
from dkt.server.relay.auth import (
    Principal,
    TokenTable,
    may_see,
    principal_of,
    require_agent,
    require_credential_run,
    require_manager,
    require_owner,
)
from dkt.server.relay.events import EventBus
from dkt.server.relay.metrics import RelayMetrics
from dkt.server.relay.rejection import Rejection, missing_of, status_of
from dkt.server.relay.store import CorruptPayloadError, PredictionRecord, RelayStore, RunRecord

log = logging.getLogger("dkt.relay")

Code = grpc.StatusCode
_WATCH_POLL_S = 0.25
T = TypeVar("T")


@dataclass(frozen=True)
class RelayLimits:
    """Sizes the relay accepts and sends."""

    max_payload_bytes: int = 1 << 30
    chunk_bytes: int = chunks.DEFAULT_CHUNK_BYTES
    # Watch streams open at once (each holds a server worker while it lasts).
    max_watches: int = 32
    # Largest |logit| a published prediction set may hold (relay.proto, PredictionMeta).
    max_abs_logit: float = DEFAULT_MAX_ABS_LOGIT


def _unary(method: Callable[..., T]) -> Callable[..., T]:
    """Time the call, count its status code, and turn exceptions into gRPC statuses."""
    name = method.__name__

    @functools.wraps(method)
    def handler(self: RelayService, request: Any, context: grpc.ServicerContext) -> T:
        with self._handling(name, context):
            return method(self, request, context)

    return handler


def _streaming(method: Callable[..., Iterator[T]]) -> Callable[..., Iterator[T]]:
    """`_unary` for handlers that stream their response."""
    name = method.__name__

    @functools.wraps(method)
    def handler(self: RelayService, request: Any, context: grpc.ServicerContext) -> Iterator[T]:
        with self._handling(name, context):
            yield from method(self, request, context)

    return handler


class EncodedChunks(grpc.ServerInterceptor):
    """The chunk streams of one service without protobuf's copies of their data, both
    ways, with the same bytes on the wire:

    - streaming handlers may yield chunks that are already serialized (`chunks.encode`):
      their response serializer passes bytes through and serializes messages as before;
    - upload streams of chunks (`PublishPredictions`, `CreateRun`, `PutEvalSet`) arrive
      as `chunks.Received` (`chunks.parse`: the data stays in the received bytes until
      `chunks.assemble` joins it once), and a chunk that is not a valid message as
      `chunks.Malformed`, which the handler refuses with INVALID_ARGUMENT."""

    def __init__(self, service: str) -> None:
        self._prefix = f"/{service}/"

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self._prefix):
            return handler
        if handler.request_streaming and not handler.response_streaming:
            message_type = getattr(handler.request_deserializer, "__self__", None)
            if handler.stream_unary is None or message_type is None or not _is_chunk(message_type):
                return handler
            return grpc.stream_unary_rpc_method_handler(
                handler.stream_unary,
                request_deserializer=chunks.lenient_parser(message_type),
                response_serializer=handler.response_serializer,
            )
        if handler.request_streaming or not handler.response_streaming:
            return handler
        behaviour = handler.unary_stream
        if behaviour is None:
            return handler
        return grpc.unary_stream_rpc_method_handler(
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=_passing_bytes(handler.response_serializer),
        )


def _is_chunk(message_type: Any) -> bool:
    """Whether a generated message class is one of relay.proto's chunks (`data` last)."""
    descriptor = getattr(message_type, "DESCRIPTOR", None)
    fields = getattr(descriptor, "fields_by_name", {})
    return "data" in fields and "offset" in fields


def _passing_bytes(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes]:
    def serializer(message: Any) -> bytes:
        if isinstance(message, bytes) or serialize is None:
            return message
        return serialize(message)

    return serializer


class RelayService(relay_pb2_grpc.RelayServicer):
    """Handles the RPCs of `dkt.v1.Relay` against one store."""

    def __init__(
        self,
        store: RelayStore,
        limits: RelayLimits,
        metrics: RelayMetrics,
        events: EventBus,
        version: str,
        tokens: TokenTable | None = None,
    ) -> None:
        self.store = store
        self.tokens = tokens if tokens is not None else TokenTable()
        self.limits = limits
        self.metrics = metrics
        self.events = events
        self.version = version
        self.started_at = time.time()
        self._stopping = threading.Event()

    def stop_watches(self) -> None:
        """End every Watch stream (the relay is shutting down)."""
        self._stopping.set()

    # -- bookkeeping of calls ----------------------------------------------------------

    @contextlib.contextmanager
    def _handling(self, name: str, context: grpc.ServicerContext) -> Iterator[None]:
        """Time the block, count the status code it ends with, and abort the call with
        the gRPC status of an exception raised in it."""
        start = time.perf_counter()
        code = Code.OK
        try:
            yield
        except Exception as err:
            code, message = self._record_failure(name, err)
            missing = missing_of(err)
            if missing:
                context.set_trailing_metadata(((MISSING_KEY, missing),))
            context.abort(code, message)
        finally:
            self._observe(name, code, start)

    def _record_failure(self, name: str, err: Exception) -> tuple[Code, str]:
        """The status a failed call ends with; logged, and counted when data was lost."""
        code, message = status_of(err)
        if code == Code.INTERNAL:
            log.error("%s: internal error", name, exc_info=err)
        elif isinstance(err, CorruptPayloadError):
            # The file's path is for the operator; the caller only gets the set and hash.
            log.error("%s: %s (file %s)", name, message, err.path)
            self.metrics.corrupt_payloads.inc()
        return code, message

    def _observe(self, method: str, code: grpc.StatusCode, start: float) -> None:
        self.metrics.requests.labels(method, code.name).inc()
        self.metrics.latency.labels(method).observe(time.perf_counter() - start)

    def record_unauthenticated(self, method: str, code: grpc.StatusCode) -> None:
        """Count a call the AuthInterceptor refused before it reached a handler."""
        self.metrics.requests.labels(method, code.name).inc()
        if method == "PublishPredictions":
            self.metrics.publishes.labels(code.name).inc()
        elif method == "FetchPredictions":
            self.metrics.fetches.labels(code.name).inc()

    def _seen(self, principal: Principal, run_id: str, publisher: int | None = None) -> None:
        """Record an agent's call in a run (its last-seen time). With authentication off
        every caller is anonymous: a publish then counts for the agent it publishes as
        (`publisher`), so that agents that published are not shown as never seen."""
        agent_id = principal.agent_id
        if agent_id is None and principal.kind == "anonymous":
            agent_id = publisher
        if agent_id is not None and self.store.touch_agent(run_id, agent_id):
            self.events.emit(run_id, agent_seen=relay_pb2.AgentSeen(agent_id=agent_id))

    def _run(self, run_id: str, field: str, principal: Principal) -> RunRecord:
        """The run a request names, if `principal` may act in it: an agent only in the run
        of its credential (checked before the run is looked up), the conductor only in a
        run it created; PERMISSION_DENIED otherwise."""
        check.check_run_id(run_id, field)
        require_credential_run(principal, run_id)
        run = self.store.require_run(run_id)
        require_owner(principal, run.run_id, run.created_by)
        return run

    # -- runs and probe sets -----------------------------------------------------------

    @_unary
    def CreateRun(
        self, request_iterator: Iterator[relay_pb2.ProbeSetChunk], context: grpc.ServicerContext
    ) -> relay_pb2.RunInfo:
        principal = principal_of(context)
        require_manager(principal, "creating a run")
        first = _first_chunk(
            request_iterator,
            ("spec", "meta"),
            "a CreateRun stream must start with a chunk that carries "
            "ProbeSetChunk.spec and ProbeSetChunk.meta",
        )
        spec, meta = first.spec, first.meta
        check.check_run_spec(spec)
        existing = self.store.get_run(spec.run_id)
        if existing is not None:
            require_owner(principal, existing.run_id, existing.created_by)
        check.check_probe_meta(meta, self.limits.max_payload_bytes)
        payload = chunks.assemble(
            first, request_iterator, meta.payload_bytes, meta.sha256, "probe set"
        )
        check.check_probe_inputs(payload, meta)
        run = replace(messages.run_record(spec, meta), created_by=principal.creator)
        if not context.is_active():
            raise Rejection(Code.CANCELLED, "the call ended before the run was stored")
        stored, created = self.store.create_run(run, payload)
        # The admin created it meanwhile: the conductor's identical CreateRun changed nothing.
        require_owner(principal, stored.run_id, stored.created_by)
        if created:
            log.info(
                "run %s created by the %s: %d probe inputs, %d classes, %d experiences",
                run.run_id,
                run.created_by,
                run.probe_size,
                run.num_classes,
                run.experiences,
            )
            self.events.emit(run.run_id, run_state_changed=messages.run_state_changed(stored))
        return messages.run_info(stored, already_existed=not created)

    @_streaming
    def GetProbeSet(
        self, request: relay_pb2.GetProbeSetRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        principal = principal_of(context)
        run = self._run(request.run_id, "GetProbeSetRequest.run_id", principal)
        self._seen(principal, run.run_id)
        _, payload = self.store.read_probe(run.run_id)
        info = messages.run_info(run)
        for chunk in chunks.encode(
            relay_pb2.ProbeSetChunk,
            payload,
            self.limits.chunk_bytes,
            spec=info.spec,
            meta=info.probe,
        ):
            if not context.is_active():
                return
            yield chunk

    # -- eval sets ---------------------------------------------------------------------

    @_unary
    def PutEvalSet(
        self, request_iterator: Iterator[relay_pb2.EvalSetChunk], context: grpc.ServicerContext
    ) -> relay_pb2.EvalSetInfo:
        principal = principal_of(context)
        require_manager(principal, "storing a run's eval set")
        first = _first_chunk(
            request_iterator,
            ("meta",),
            "a PutEvalSet stream must start with a chunk that carries EvalSetChunk.run_id "
            "and EvalSetChunk.meta",
        )
        meta = first.meta
        run = self._run(first.run_id, "EvalSetChunk.run_id", principal)
        check.check_eval_meta(meta, run, self.limits.max_payload_bytes)
        payload = chunks.assemble(
            first, request_iterator, meta.payload_bytes, meta.sha256, "eval set"
        )
        check.check_eval_payload(payload, meta, run)
        record = messages.eval_set_record(run.run_id, meta)
        if not context.is_active():
            raise Rejection(Code.CANCELLED, "the call ended before the eval set was stored")
        stored, already = self.store.put_eval_set(record, payload)
        if not already:
            log.info(
                "run %s: eval set stored, %d rows of %s from %r",
                run.run_id,
                stored.num_rows,
                "x".join(map(str, stored.shape[1:])),
                stored.source,
            )
        return messages.eval_set_info(stored, already)

    @_streaming
    def GetEvalSet(
        self, request: relay_pb2.GetEvalSetRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        principal = principal_of(context)
        run = self._run(request.run_id, "GetEvalSetRequest.run_id", principal)
        self._seen(principal, run.run_id)
        record = self.store.get_eval_set(run.run_id)
        if record is None:
            raise Rejection(
                Code.NOT_FOUND,
                f"run {run.run_id!r} has no eval set; the conductor stores one with PutEvalSet",
                missing=MISSING_EVAL_SET,
            )
        payload = self.store.read_eval_set(record)
        for chunk in chunks.encode(
            relay_pb2.EvalSetChunk,
            payload,
            self.limits.chunk_bytes,
            run_id=run.run_id,
            meta=messages.eval_set_meta(record),
        ):
            if not context.is_active():
                return
            yield chunk

    # -- run state and progress --------------------------------------------------------

    @_unary
    def SetRunState(
        self, request: relay_pb2.SetRunStateRequest, context: grpc.ServicerContext
    ) -> relay_pb2.RunInfo:
        principal = principal_of(context)
        require_manager(principal, "changing a run's state")
        run = self._run(request.run_id, "SetRunStateRequest.run_id", principal)
        check.check_set_run_state(request, run)
        run = self.store.set_run_state(
            request.run_id,
            run_state_name(request.state),
            request.current_experience if request.HasField("current_experience") else None,
        )
        self.events.emit(run.run_id, run_state_changed=messages.run_state_changed(run))
        return messages.run_info(run)

    @_unary
    def ReportProgress(
        self, request: relay_pb2.ReportProgressRequest, context: grpc.ServicerContext
    ) -> relay_pb2.ReportProgressResponse:
        principal = principal_of(context)
        # The conductor reports what it sees of its agents (missing, retrying).
        require_agent(principal, request.agent_id, "report progress for", conductor_may=True)
        run = self._run(request.run_id, "ReportProgressRequest.run_id", principal)
        check.check_progress(request, run)
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

    # -- predictions -------------------------------------------------------------------

    @_unary
    def PublishPredictions(
        self, request_iterator: Iterator[relay_pb2.PredictionChunk], context: grpc.ServicerContext
    ) -> relay_pb2.PublishAck:
        try:
            ack = self._publish(request_iterator, context)
        except Exception as err:
            self.metrics.publishes.labels(status_of(err)[0].name).inc()
            raise
        self.metrics.publishes.labels("duplicate" if ack.already_stored else "stored").inc()
        return ack

    def _publish(
        self, request_iterator: Iterator[relay_pb2.PredictionChunk], context: grpc.ServicerContext
    ) -> relay_pb2.PublishAck:
        principal = principal_of(context)
        first = _first_chunk(
            request_iterator,
            ("meta",),
            "a publish stream must start with a chunk that carries the metadata "
            "(PredictionChunk.meta)",
        )
        meta = first.meta
        require_agent(principal, meta.agent_id, "publish predictions of")
        run = self._run(meta.run_id, "PredictionMeta.run_id", principal)
        self._seen(principal, run.run_id, publisher=meta.agent_id)
        encoding = check.check_prediction_meta(meta, run, self.limits.max_payload_bytes)
        payload = chunks.assemble(
            first, request_iterator, meta.payload_bytes, meta.sha256, "payload"
        )
        check.check_logits(payload, meta.encoding, self.limits.max_abs_logit)
        record = messages.prediction_record(meta, run, encoding)
        # A caller that gave up (deadline, cancel) never sees an ack, so store nothing.
        if not context.is_active():
            raise Rejection(Code.CANCELLED, "the call ended before the predictions were stored")
        stored, already = self.store.put_predictions(record, payload)
        if not already:
            self.metrics.published_bytes.inc(stored.payload_bytes)
            self.events.emit(
                run.run_id,
                published=relay_pb2.PredictionsPublished(
                    prediction=messages.stored_prediction(stored)
                ),
            )
            # The first publish starts a created run and a newer experience moves the run's
            # current experience: watchers get run_state_changed as for SetRunState (racing
            # publishes may both announce the state read after their commit).
            after = self.store.require_run(run.run_id)
            if (after.state, after.current_experience) != (run.state, run.current_experience):
                self.events.emit(run.run_id, run_state_changed=messages.run_state_changed(after))
        return messages.publish_ack(stored, already)

    @_streaming
    def FetchPredictions(
        self, request: relay_pb2.FetchPredictionsRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        try:
            principal = principal_of(context)
            run = self._run(request.run_id, "FetchPredictionsRequest.run_id", principal)
            self._seen(principal, run.run_id)
            check.check_fetch(request, run)
            record = self._find(request, run)
            payload = self.store.read_predictions(record)
        except Exception as err:
            self.metrics.fetches.labels(status_of(err)[0].name).inc()
            raise
        self.metrics.fetches.labels("served").inc()
        meta = messages.prediction_meta(record)
        for chunk in chunks.encode(
            relay_pb2.PredictionChunk, payload, self.limits.chunk_bytes, meta=meta
        ):
            if not context.is_active():
                return
            yield chunk
        self.metrics.fetched_bytes.inc(len(payload))

    @_streaming
    def FetchTeacherTargets(
        self, request: relay_pb2.FetchTeacherTargetsRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        # torch is loaded on the first such call, not when the relay starts.
        from dkt.server.relay import teacher_targets

        principal = principal_of(context)
        require_agent(principal, request.agent_id, "fetch the teacher targets of", True)
        run = self._run(request.run_id, "FetchTeacherTargetsRequest.run_id", principal)
        self._seen(principal, run.run_id)
        teacher_targets.check_request(request, run)
        meta, payload = teacher_targets.combine(
            self.store, run, request, 4 * self.limits.max_payload_bytes
        )
        for chunk in chunks.encode(
            relay_pb2.TeacherTargetsChunk, payload, self.limits.chunk_bytes, meta=meta
        ):
            if not context.is_active():
                return
            yield chunk
        self.metrics.fetched_bytes.inc(len(payload))

    def _find(self, request: relay_pb2.FetchPredictionsRequest, run: RunRecord) -> PredictionRecord:
        if request.WhichOneof("selector") == "experience":
            record = self.store.get_predictions(run.run_id, request.agent_id, request.experience)
            what = f"for experience {request.experience}"
        else:
            latest = request.latest
            bound = latest.max_experience if latest.HasField("max_experience") else None
            record = self.store.latest_predictions(run.run_id, request.agent_id, bound)
            what = "at all" if bound is None else f"at or before experience {bound}"
        if record is None:
            raise Rejection(
                Code.NOT_FOUND,
                f"agent {request.agent_id} has not published predictions {what} in run "
                f"{run.run_id!r}",
                missing=MISSING_PREDICTIONS,
            )
        return record

    @_unary
    def ListPredictions(
        self, request: relay_pb2.ListPredictionsRequest, context: grpc.ServicerContext
    ) -> relay_pb2.ListPredictionsResponse:
        principal = principal_of(context)
        run = self._run(request.run_id, "ListPredictionsRequest.run_id", principal)
        self._seen(principal, run.run_id)
        agent = request.agent_id if request.HasField("agent_id") else None
        records = self.store.list_predictions(run.run_id, agent)
        return relay_pb2.ListPredictionsResponse(
            predictions=[messages.stored_prediction(r) for r in records]
        )

    # -- status and events -------------------------------------------------------------

    @_unary
    def VerifyIdentity(
        self, request: relay_pb2.VerifyIdentityRequest, context: grpc.ServicerContext
    ) -> relay_pb2.VerifyIdentityResponse:
        principal = principal_of(context)
        require_manager(principal, "verifying an agent's identity")
        run = self._run(request.run_id, "VerifyIdentityRequest.run_id", principal)
        check.check_identity_request(request, run)
        if not self.tokens.enabled:
            return relay_pb2.VerifyIdentityResponse(valid=False, auth_enabled=False)
        key = self.tokens.agent_key(request.agent_id)
        valid = key is not None and proof_matches(
            key, request.run_id, request.agent_id, request.nonce, request.proof
        )
        if not valid:
            log.warning(
                "an identity proof for agent %d in run %r did not match (a node claiming an "
                "agent it does not run, or an agent with the wrong token)",
                request.agent_id,
                request.run_id,
            )
        return relay_pb2.VerifyIdentityResponse(valid=valid, auth_enabled=True)

    @_unary
    def GetStatus(
        self, request: relay_pb2.GetStatusRequest, context: grpc.ServicerContext
    ) -> relay_pb2.RelayStatus:
        principal = principal_of(context)
        if principal.is_admin:
            return self.status()
        # The conductor sees the runs it created, an agent the run of its credential; the
        # totals count only those.
        return self.status(lambda run: may_see(principal, run.run_id, run.created_by))

    def status(self, visible: Callable[[RunRecord], bool] | None = None) -> relay_pb2.RelayStatus:
        """The relay's status message (also served as JSON by the HTTP endpoint): every
        run, or only those `visible` accepts (with totals over them)."""
        uptime = time.time() - self.started_at
        self.metrics.uptime.set(uptime)
        status = relay_pb2.RelayStatus(version=self.version, uptime_seconds=uptime)
        eval_sets = self.store.eval_sets()
        for run in self.store.list_runs():
            if visible is not None and not visible(run):
                continue
            records = self.store.list_predictions(run.run_id)
            agents = self.store.agents(run.run_id)
            eval_set = eval_sets.get(run.run_id)
            status.runs.append(messages.run_status(run, records, agents, eval_set))
        if visible is None:
            totals = self.store.totals()
            self.metrics.stored_sets.set(totals.prediction_sets)
            self.metrics.stored_bytes.set(totals.payload_bytes)
            status.totals.runs = totals.runs
            status.totals.prediction_sets = totals.prediction_sets
            status.totals.payload_bytes = totals.payload_bytes
        else:
            status.totals.runs = len(status.runs)
            status.totals.prediction_sets = sum(r.prediction_sets for r in status.runs)
            status.totals.payload_bytes = sum(r.payload_bytes for r in status.runs)
        return status

    @_streaming
    def Watch(
        self, request: relay_pb2.WatchRequest, context: grpc.ServicerContext
    ) -> Iterator[relay_pb2.Event]:
        principal = principal_of(context)
        if request.run_id:
            self._run(request.run_id, "WatchRequest.run_id", principal)
            self._seen(principal, request.run_id)
        elif not principal.is_admin:
            raise Rejection(
                Code.PERMISSION_DENIED,
                "watching every run needs the admin token; the credential sent belongs to "
                f"{principal.describe()}: name a run it may reach in WatchRequest.run_id",
            )
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


def _first_chunk(request_iterator: Iterator[Any], fields: tuple[str, ...], message: str) -> Any:
    """The first chunk of an upload stream, which must carry `fields` (its metadata);
    INVALID_ARGUMENT with `message` otherwise."""
    first = next(request_iterator, None)
    if isinstance(first, chunks.Malformed):
        raise Rejection(Code.INVALID_ARGUMENT, f"the first chunk: {first.reason}")
    if first is None or not all(first.HasField(f) for f in fields):
        raise Rejection(Code.INVALID_ARGUMENT, message)
    return first
