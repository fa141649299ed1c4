"""`RelayClient`: publish and fetch prediction sets, manage runs, their probe and eval sets,
and read the relay's status, over gRPC with deadlines, retries on UNAVAILABLE, chunking and
tensor encoding."""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np
import torch

from dkt.common.data.eval_set import EvalSet
from dkt.common.data.probe import ProbeSet
from dkt.common.hashing import sha256_hex
from dkt.common.training.peers import PeerSet
from dkt.common.training.predictions import Predictions
from dkt.common.training.teacher import Teacher
from dkt.proto import chunks
from dkt.proto.chunks import DEFAULT_CHUNK_BYTES, ChunkError
from dkt.proto.dkt.v1 import relay_pb2, relay_pb2_grpc
from dkt.proto.logits_encoding import (
    bytes_per_value,
    decode_tensor,
    encode_tensor,
    encode_view,
    encoding_value,
)
from dkt.proto.relay_client.errors import DataLossError, NotPublishedError, RelayError, relay_error
from dkt.proto.relay_client.results import (
    EventStream,
    IdentityCheck,
    PredictionInfo,
    PublishReceipt,
    RunInfo,
    TeacherTargets,
)
from dkt.proto.relay_connection import (
    authorization_metadata,
)
from dkt.proto.status_json import run_state_value, status_to_dict

DEFAULT_MAX_MESSAGE_BYTES = 8 << 20
T = TypeVar("T")


# -- the client ------------------------------------------------------------------------


class RelayClient:
    """A connection to one relay.

    `token` is what the client sends as `authorization: Bearer <token>`: the admin or
    the conductor token, or for an agent its run credential for one run
    (`dkt.proto.run_credential.run_credential`; an agent's token itself is refused).
    `timeout` is the deadline of each call in seconds; calls failing with UNAVAILABLE
    are retried `retries` times with exponential backoff (publishes are idempotent,
    so retrying them is safe).
    """

    def __init__(
        self,
        address: str,
        token: str | None = None,
        *,
        root_cert: bytes | None = None,
        client_cert: bytes | None = None,
        client_key: bytes | None = None,
        server_name: str | None = None,
        tls: bool | None = None,
        timeout: float = 60.0,
        retries: int = 5,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if (client_cert is None) != (client_key is None):
            raise ValueError("pass both client_cert and client_key, or neither")
        self.address = address
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.chunk_bytes = chunk_bytes
        self._metadata = authorization_metadata(token)
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Keepalive pings during long calls (watch) so a dead relay is noticed;
            # the relay permits one every 10 s.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            # Retries are done here, with backoff, where the call is known to be safe.
            ("grpc.enable_retries", 0),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        use_tls = tls if tls is not None else root_cert is not None or client_cert is not None
        if use_tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=root_cert, private_key=client_key, certificate_chain=client_cert
            )
            self._channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = relay_pb2_grpc.RelayStub(self._channel)
        # PublishPredictions with chunks serialized by `chunks.encode` (the stub's own
        # serializer would copy each MiB of data through protobuf, slowly).
        self._publish_encoded: grpc.StreamUnaryMultiCallable[bytes, relay_pb2.PublishAck]
        self._publish_encoded = self._channel.stream_unary(
            f"/{relay_pb2.DESCRIPTOR.services_by_name['Relay'].full_name}/PublishPredictions",
            request_serializer=None,
            response_deserializer=relay_pb2.PublishAck.FromString,
        )
        # The download streams, their chunks parsed without copying the data
        # (`chunks.parse`; the stub's parser copies each MiB twice).
        self._downloads: dict[str, grpc.UnaryStreamMultiCallable[Any, chunks.Received]] = {
            name: self._channel.unary_stream(
                f"/{relay_pb2.DESCRIPTOR.services_by_name['Relay'].full_name}/{name}",
                request_serializer=request_type.SerializeToString,
                response_deserializer=chunks.parser(chunk_type),
            )
            for name, request_type, chunk_type in (
                ("FetchPredictions", relay_pb2.FetchPredictionsRequest, relay_pb2.PredictionChunk),
                ("GetProbeSet", relay_pb2.GetProbeSetRequest, relay_pb2.ProbeSetChunk),
                ("GetEvalSet", relay_pb2.GetEvalSetRequest, relay_pb2.EvalSetChunk),
                (
                    "FetchTeacherTargets",
                    relay_pb2.FetchTeacherTargetsRequest,
                    relay_pb2.TeacherTargetsChunk,
                ),
            )
        }
        self._closed = threading.Event()

    # -- plumbing ----------------------------------------------------------------------

    def _call(self, method: str, attempt: Callable[[float], T], retry: bool = True) -> T:
        """Run `attempt(timeout)`, retrying on UNAVAILABLE with exponential backoff."""
        delay = self.backoff
        for n in range(self.retries + 1 if retry else 1):
            try:
                return attempt(self.timeout)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE or n == self.retries or not retry:
                    raise relay_error(err, method) from None
            if self._closed.is_set():
                break
            # Full jitter keeps 32 agents that lost the relay together from returning
            # in lockstep.
            time.sleep(random.uniform(0.5, 1.0) * delay)
            delay = min(delay * 2, self.max_backoff)
        raise RelayError(grpc.StatusCode.CANCELLED, "client closed", method)

    # -- runs and probe sets -----------------------------------------------------------

    def create_run(
        self,
        run_id: str,
        probe: ProbeSet,
        num_classes: int,
        experiences: int,
        config: dict[str, Any] | None = None,
        expected_agents: int | None = None,
    ) -> RunInfo:
        """Create a run of `experiences` experiences (0..experiences-1) with its probe set
        (admin or conductor token). Identical repeats are fine."""
        payload = encode_tensor(probe.inputs, relay_pb2.ENCODING_FLOAT32)
        spec = relay_pb2.RunSpec(
            run_id=run_id,
            num_classes=num_classes,
            experiences=experiences,
            expected_agents=expected_agents or 0,
            config_json=json.dumps(config, sort_keys=True) if config is not None else "",
        )
        meta = relay_pb2.ProbeSetMeta(
            fingerprint=probe.fingerprint,
            source=probe.source,
            shape=list(probe.inputs.shape),
            sha256=sha256_hex(payload),
            payload_bytes=len(payload),
        )

        info = self._upload("CreateRun", relay_pb2.ProbeSetChunk, payload, spec=spec, meta=meta)
        return RunInfo.from_message(info)

    def _upload(self, method: str, chunk_type: Any, payload: bytes, **first: Any) -> Any:
        """A client-streaming call that sends `payload` in chunks of `chunk_type`, the
        fields in `first` on the first chunk only; returns the reply."""
        stub = getattr(self._stub, method)

        def attempt(t: float) -> Any:
            stream = chunks.frame(chunk_type, payload, self.chunk_bytes, **first)
            return stub(stream, timeout=t, metadata=self._metadata)

        return self._call(method, attempt)

    def _download(self, method: str, request: Any) -> tuple[Any, bytearray]:
        """A server-streaming call of chunks: (its first chunk, the joined payload)."""
        stub = self._downloads[method]

        def attempt(t: float) -> tuple[Any, bytearray]:
            return _collect(stub(request, timeout=t, metadata=self._metadata), method)

        return self._call(method, attempt)

    def get_probe(self, run_id: str) -> ProbeSet:
        """The run's probe set, checked against its fingerprint."""

        first, payload = self._download("GetProbeSet", relay_pb2.GetProbeSetRequest(run_id=run_id))
        meta = first.meta
        inputs = decode_tensor(payload, relay_pb2.ENCODING_FLOAT32, tuple(meta.shape))
        probe = ProbeSet(inputs=inputs, source=meta.source, fingerprint=meta.fingerprint)
        probe.verify()
        return probe

    def put_eval_set(self, run_id: str, eval_set: EvalSet) -> bool:
        """Store the run's labeled eval set (admin or conductor token); True when the
        relay stored it now, False when it already held this very set. A different set
        for a run that has one is an AlreadyExistsError."""
        eval_set.verify()
        payload = _eval_payload(eval_set)
        meta = relay_pb2.EvalSetMeta(
            fingerprint=eval_set.fingerprint,
            source=eval_set.source,
            shape=list(eval_set.inputs.shape),
            num_rows=len(eval_set),
            sha256=sha256_hex(payload),
            payload_bytes=len(payload),
        )

        info = self._upload("PutEvalSet", relay_pb2.EvalSetChunk, payload, run_id=run_id, meta=meta)
        return not info.already_stored

    def get_eval_set(self, run_id: str) -> EvalSet:
        """The run's eval set, checked against its fingerprint; raises
        EvalSetNotPublishedError (a NotPublishedError) when the run has none, NotFoundError
        when there is no such run."""

        first, payload = self._download("GetEvalSet", relay_pb2.GetEvalSetRequest(run_id=run_id))
        meta = first.meta
        shape = tuple(int(d) for d in meta.shape)
        split = len(payload) - 8 * meta.num_rows
        if not shape or shape[0] != meta.num_rows or split != 4 * math.prod(shape):
            raise DataLossError(
                grpc.StatusCode.DATA_LOSS,
                f"the relay sent an eval set of {len(payload)} bytes whose metadata (shape "
                f"{shape}, {meta.num_rows} rows) does not describe it",
                "GetEvalSet",
            )
        inputs = np.frombuffer(payload, dtype="<f4", count=split // 4).astype(np.float32)
        labels = np.frombuffer(payload, dtype="<i8", offset=split).astype(np.int64)
        eval_set = EvalSet(
            inputs=torch.from_numpy(inputs.reshape(shape)),
            labels=torch.from_numpy(labels),
            source=meta.source,
            fingerprint=meta.fingerprint,
        )
        try:
            eval_set.verify()
        except ValueError as err:
            raise DataLossError(
                grpc.StatusCode.DATA_LOSS, f"{err}; fetch it again", "GetEvalSet"
            ) from None
        return eval_set

    def set_run_state(
        self, run_id: str, state: str, current_experience: int | None = None
    ) -> RunInfo:
        """Move a run to created, running, finished or failed (admin or conductor token)."""
        request = relay_pb2.SetRunStateRequest(run_id=run_id, state=run_state_value(state))
        if current_experience is not None:
            request.current_experience = current_experience
        info = self._call(
            "SetRunState",
            lambda t: self._stub.SetRunState(request, timeout=t, metadata=self._metadata),
        )
        return RunInfo.from_message(info)

    def report_progress(
        self,
        run_id: str,
        agent_id: int,
        experience: int,
        state: str,
        metrics: dict[str, float] | None = None,
        reason: str = "",
    ) -> None:
        """Record what an agent is doing (one of `status_json.AGENT_STATES`), why (`reason`,
        a line) and its latest metrics (admin or conductor token, or that agent's own
        credential)."""
        request = relay_pb2.ReportProgressRequest(
            run_id=run_id,
            agent_id=agent_id,
            experience=experience,
            state=state,
            metrics={k: float(v) for k, v in (metrics or {}).items()},
            reason=reason,
        )
        self._call(
            "ReportProgress",
            lambda t: self._stub.ReportProgress(request, timeout=t, metadata=self._metadata),
        )

    # -- predictions -------------------------------------------------------------------

    def publish(self, predictions: Predictions, encoding: str = "float32") -> PublishReceipt:
        """Store a prediction set; returns once the relay holds it durably."""
        if not predictions.run_id:
            raise ValueError("predictions.run_id is empty; say which run they belong to")
        enc = encoding_value(encoding)
        payload = encode_view(predictions.logits, enc)  # no copy of float32 logits
        meta = relay_pb2.PredictionMeta(
            run_id=predictions.run_id,
            agent_id=predictions.agent_id,
            experience=predictions.experience,
            classes_seen=list(predictions.classes_seen),
            probe_fingerprint=predictions.probe_fingerprint,
            dtype=predictions.dtype,
            shape=list(predictions.shape),
            encoding=enc,
            sha256=sha256_hex(payload),
            payload_bytes=len(payload),
        )

        def stream() -> Iterator[bytes]:
            return chunks.encode(relay_pb2.PredictionChunk, payload, self.chunk_bytes, meta=meta)

        ack = self._call(
            "PublishPredictions",
            lambda t: self._publish_encoded(stream(), timeout=t, metadata=self._metadata),
        )
        return PublishReceipt(ack.id, ack.sha256, ack.payload_bytes, ack.already_stored)

    def _fetch(self, request: relay_pb2.FetchPredictionsRequest) -> Predictions:
        first, payload = self._download("FetchPredictions", request)
        meta = first.meta
        return Predictions(
            agent_id=meta.agent_id,
            experience=meta.experience,
            classes_seen=tuple(meta.classes_seen),
            probe_fingerprint=meta.probe_fingerprint,
            logits=decode_tensor(payload, meta.encoding, tuple(meta.shape)),
            run_id=meta.run_id,
        )

    def fetch(self, run_id: str, agent_id: int, experience: int) -> Predictions:
        """The predictions `agent_id` published after `experience` (float32 logits);
        raises NotPublishedError if it has not published them (NotFoundError, its
        parent, for a run that does not exist)."""
        return self._fetch(
            relay_pb2.FetchPredictionsRequest(
                run_id=run_id, agent_id=agent_id, experience=experience
            )
        )

    def fetch_latest(
        self, run_id: str, agent_id: int, max_experience: int | None = None
    ) -> Predictions | None:
        """The agent's newest predictions (at or before `max_experience`), or None."""
        latest = relay_pb2.LatestSelector()
        if max_experience is not None:
            latest.max_experience = max_experience
        request = relay_pb2.FetchPredictionsRequest(run_id=run_id, agent_id=agent_id, latest=latest)
        try:
            return self._fetch(request)
        except NotPublishedError:
            return None

    def fetch_teacher_targets(
        self,
        run_id: str,
        agent_id: int,
        experience: int,
        peers: Sequence[PeerSet],
        aggregation: str = "mean",
    ) -> TeacherTargets:
        """Agent `agent_id`'s teacher for `experience`: the sets `peers` name, combined at
        the relay with `aggregation` (the same `aggregate` as the agent's); one set to
        download however many peers."""
        request = relay_pb2.FetchTeacherTargetsRequest(
            run_id=run_id, agent_id=agent_id, experience=experience, aggregation=aggregation
        )
        for peer in peers:
            wanted = request.peers.add(agent_id=peer.agent_id)
            if peer.experience is not None:
                wanted.experience = peer.experience
            else:
                wanted.latest.SetInParent()
                if peer.max_experience is not None:
                    wanted.latest.max_experience = peer.max_experience
        first, payload = self._download("FetchTeacherTargets", request)
        meta = first.meta
        teacher = None
        if meta.sources:
            teacher = Teacher(
                logits=decode_tensor(payload, meta.encoding, tuple(meta.shape)),
                classes=tuple(meta.classes),
                sources=tuple((s.agent_id, s.experience) for s in meta.sources),
            )
        return TeacherTargets(teacher, tuple(meta.missing), tuple(meta.coverage), len(payload))

    def list_predictions(self, run_id: str, agent_id: int | None = None) -> list[PredictionInfo]:
        """Metadata of every prediction set of a run (optionally of one agent)."""
        request = relay_pb2.ListPredictionsRequest(run_id=run_id)
        if agent_id is not None:
            request.agent_id = agent_id
        response = self._call(
            "ListPredictions",
            lambda t: self._stub.ListPredictions(request, timeout=t, metadata=self._metadata),
        )
        return [PredictionInfo.from_message(p) for p in response.predictions]

    def verify_identity(self, run_id: str, agent_id: int, nonce: str, proof: str) -> IdentityCheck:
        """Whether `proof` shows its sender holds agent `agent_id`'s token (admin or
        conductor token; proto/identity_proof.py says how an agent computes it)."""
        request = relay_pb2.VerifyIdentityRequest(
            run_id=run_id, agent_id=agent_id, nonce=nonce, proof=proof
        )
        response = self._call(
            "VerifyIdentity",
            lambda t: self._stub.VerifyIdentity(request, timeout=t, metadata=self._metadata),
        )
        return IdentityCheck(valid=response.valid, auth_enabled=response.auth_enabled)

    # -- status and events -------------------------------------------------------------

    def status_message(self) -> relay_pb2.RelayStatus:
        status: relay_pb2.RelayStatus = self._call(
            "GetStatus",
            lambda t: self._stub.GetStatus(
                relay_pb2.GetStatusRequest(), timeout=t, metadata=self._metadata
            ),
        )
        return status

    def status(self) -> dict[str, Any]:
        """The relay's status as a dict (the same document as GET /status)."""
        return status_to_dict(self.status_message())

    def watch(self, run_id: str = "", timeout: float | None = None) -> EventStream:
        """Events of one run (or all runs: admin token), from now on. Returns once the
        relay has subscribed this watch, so nothing that happens afterwards is missed."""

        def attempt(_t: float) -> EventStream:
            call = self._stub.Watch(
                relay_pb2.WatchRequest(run_id=run_id), timeout=timeout, metadata=self._metadata
            )
            first = next(call)
            if first.WhichOneof("kind") != "subscribed":
                call.cancel()
                raise RelayError(
                    grpc.StatusCode.INTERNAL, "the relay did not confirm the watch", "Watch"
                )
            return EventStream(call, "Watch")

        return self._call("Watch", attempt)

    # -- lifetime ----------------------------------------------------------------------

    def close(self) -> None:
        self._closed.set()
        self._channel.close()

    def __enter__(self) -> RelayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _collect(call: Iterator[Any], method: str) -> tuple[Any, bytearray]:
    """The first chunk of a stream and its payload, checked for order, size and SHA-256;
    a damaged stream is a DataLossError (fetching again may succeed)."""
    first = next(call, None)
    if first is None or not first.HasField("meta"):
        raise DataLossError(grpc.StatusCode.DATA_LOSS, "the relay sent no metadata", method)
    try:
        payload = chunks.assemble(
            first, call, first.meta.payload_bytes, first.meta.sha256, "the received payload"
        )
    except ChunkError as err:
        raise DataLossError(grpc.StatusCode.DATA_LOSS, f"{err}; fetch it again", method) from None
    return first, payload


def _eval_payload(eval_set: EvalSet) -> bytes:
    """The payload of an eval set: its inputs as little-endian float32, then its labels
    as little-endian int64 (relay.proto, EvalSetMeta)."""
    inputs = eval_set.inputs.detach().to("cpu", torch.float32).contiguous().numpy()
    labels = eval_set.labels.detach().to("cpu", torch.int64).contiguous().numpy()
    return inputs.astype("<f4", copy=False).tobytes() + labels.astype("<i8", copy=False).tobytes()


def tensor_bytes(tensor: torch.Tensor, encoding: str) -> int:
    """Bytes a tensor takes on the wire in `encoding`."""
    return tensor.numel() * bytes_per_value(encoding_value(encoding))
