from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCODING_UNSPECIFIED: _ClassVar[Encoding]
    ENCODING_FLOAT32: _ClassVar[Encoding]
    ENCODING_FLOAT16: _ClassVar[Encoding]

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    RUN_STATE_CREATED: _ClassVar[RunState]
    RUN_STATE_RUNNING: _ClassVar[RunState]
    RUN_STATE_FINISHED: _ClassVar[RunState]
    RUN_STATE_FAILED: _ClassVar[RunState]
ENCODING_UNSPECIFIED: Encoding
ENCODING_FLOAT32: Encoding
ENCODING_FLOAT16: Encoding
RUN_STATE_UNSPECIFIED: RunState
RUN_STATE_CREATED: RunState
RUN_STATE_RUNNING: RunState
RUN_STATE_FINISHED: RunState
RUN_STATE_FAILED: RunState

class PredictionMeta(_message.Message):
    __slots__ = ("run_id", "agent_id", "experience", "classes_seen", "probe_fingerprint", "dtype", "shape", "encoding", "sha256", "payload_bytes")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIENCE_FIELD_NUMBER: _ClassVar[int]
    CLASSES_SEEN_FIELD_NUMBER: _ClassVar[int]
    PROBE_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    agent_id: int
    experience: int
    classes_seen: _containers.RepeatedScalarFieldContainer[int]
    probe_fingerprint: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    encoding: Encoding
    sha256: str
    payload_bytes: int
    def __init__(self, run_id: _Optional[str] = ..., agent_id: _Optional[int] = ..., experience: _Optional[int] = ..., classes_seen: _Optional[_Iterable[int]] = ..., probe_fingerprint: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., sha256: _Optional[str] = ..., payload_bytes: _Optional[int] = ...) -> None: ...

class PredictionChunk(_message.Message):
    __slots__ = ("meta", "offset", "data")
    META_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    meta: PredictionMeta
    offset: int
    data: bytes
    def __init__(self, meta: _Optional[_Union[PredictionMeta, _Mapping]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class PublishAck(_message.Message):
    __slots__ = ("id", "sha256", "payload_bytes", "already_stored")
    ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALREADY_STORED_FIELD_NUMBER: _ClassVar[int]
    id: str
    sha256: str
    payload_bytes: int
    already_stored: bool
    def __init__(self, id: _Optional[str] = ..., sha256: _Optional[str] = ..., payload_bytes: _Optional[int] = ..., already_stored: _Optional[bool] = ...) -> None: ...

class LatestSelector(_message.Message):
    __slots__ = ("max_experience",)
    MAX_EXPERIENCE_FIELD_NUMBER: _ClassVar[int]
    max_experience: int
    def __init__(self, max_experience: _Optional[int] = ...) -> None: ...

class FetchPredictionsRequest(_message.Message):
    __slots__ = ("run_id", "agent_id", "experience", "latest")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIENCE_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    agent_id: int
    experience: int
    latest: LatestSelector
    def __init__(self, run_id: _Optional[str] = ..., agent_id: _Optional[int] = ..., experience: _Optional[int] = ..., latest: _Optional[_Union[LatestSelector, _Mapping]] = ...) -> None: ...

class TeacherPeer(_message.Message):
    __slots__ = ("agent_id", "experience", "latest")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIENCE_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    agent_id: int
    experience: int
    latest: LatestSelector
    def __init__(self, agent_id: _Optional[int] = ..., experience: _Optional[int] = ..., latest: _Optional[_Union[LatestSelector, _Mapping]] = ...) -> None: ...

class FetchTeacherTargetsRequest(_message.Message):
    __slots__ = ("run_id", "agent_id", "experience", "peers", "aggregation")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIENCE_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    agent_id: int
    experience: int
    peers: _containers.RepeatedCompositeFieldContainer[TeacherPeer]
    aggregation: str
    def __init__(self, run_id: _Optional[str] = ..., agent_id: _Optional[int] = ..., experience: _Optional[int] = ..., peers: _Optional[_Iterable[_Union[TeacherPeer, _Mapping]]] = ..., aggregation: _Optional[str] = ...) -> None: ...

class TeacherSource(_message.Message):
    __slots__ = ("agent_id", "experience")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIENCE_FIELD_NUMBER: _ClassVar[int]
    agent_id: int
    experience: int
    def __init__(self, agent_id: _Optional[int] = ..., experience: _Optional[int] = ...) -> None: ...

class TeacherTargetsMeta(_message.Message):
    __slots__ = ("run_id", "agent_id", "experience", "aggregation", "sources", "missing", "classes", "coverage", "probe_fingerprint", "shape", "encoding", "sha256", "payload_bytes")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIENCE_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    PROBE_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    agent_id: int
    experience: int
    aggregation: str
    sources: _containers.RepeatedCompositeFieldContainer[TeacherSource]
    missing: _containers.RepeatedScalarFieldContainer[int]
    classes: _containers.RepeatedScalarFieldContainer[int]
    coverage: _containers.RepeatedScalarFieldContainer[int]
    probe_fingerprint: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    encoding: Encoding
    sha256: str
    payload_bytes: int
    def __init__(self, run_id: _Optional[str] = ..., agent_id: _Optional[int] = ..., experience: _Optional[int] = ..., aggregation: _Optional[str] = ..., sources: _Optional[_Iterable[_Union[TeacherSource, _Mapping]]] = ..., missing: _Optional[_Iterable[int]] = ..., classes: _Optional[_Iterable[int]] = ..., coverage: _Optional[_Iterable[int]] = ..., probe_fingerprint: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., sha256: _Optional[str] = ..., payload_bytes: _Optional[int] = ...) -> None: ...

class TeacherTargetsChunk(_message.Message):
    __slots__ = ("meta", "offset", "data")
    META_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    meta: TeacherTargetsMeta
    offset: int
    data: bytes
    def __init__(self, meta: _Optional[_Union[TeacherTargetsMeta, _Mapping]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ListPredictionsRequest(_message.Message):
    __slots__ = ("run_id", "agent_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    agent_id: int
    def __init__(self, run_id: _Optional[str] = ..., agent_id: _Optional[int] = ...) -> None: ...

class StoredPrediction(_message.Message):
    __slots__ = ("id", "meta", "published_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    meta: PredictionMeta
    published_at: float
    def __init__(self, id: _Optional[str] = ..., meta: _Optional[_Union[PredictionMeta, _Mapping]] = ..., published_at: _Optional[float] = ...) -> None: ...

class ListPredictionsResponse(_message.Message):
    __slots__ = ("predictions",)
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[StoredPrediction]
    def __init__(self, predictions: _Optional[_Iterable[_Union[StoredPrediction, _Mapping]]] = ...) -> None: ...

class RunSpec(_message.Message):
    __slots__ = ("run_id", "num_classes", "expected_agents", "config_json", "experiences")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_AGENTS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    EXPERIENCES_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    num_classes: int
    expected_agents: int
    config_json: str
    experiences: int
    def __init__(self, run_id: _Optional[str] = ..., num_classes: _Optional[int] = ..., expected_agents: _Optional[int] = ..., config_json: _Optional[str] = ..., experiences: _Optional[int] = ...) -> None: ...

class ProbeSetMeta(_message.Message):
    __slots__ = ("fingerprint", "source", "shape", "sha256", "payload_bytes")
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    source: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    sha256: str
    payload_bytes: int
    def __init__(self, fingerprint: _Optional[str] = ..., source: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., sha256: _Optional[str] = ..., payload_bytes: _Optional[int] = ...) -> None: ...

class ProbeSetChunk(_message.Message):
    __slots__ = ("spec", "meta", "offset", "data")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    spec: RunSpec
    meta: ProbeSetMeta
    offset: int
    data: bytes
    def __init__(self, spec: _Optional[_Union[RunSpec, _Mapping]] = ..., meta: _Optional[_Union[ProbeSetMeta, _Mapping]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class GetProbeSetRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class RunInfo(_message.Message):
    __slots__ = ("spec", "probe", "state", "current_experience", "created_at", "already_existed")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_EXPERIENCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ALREADY_EXISTED_FIELD_NUMBER: _ClassVar[int]
    spec: RunSpec
    probe: ProbeSetMeta
    state: RunState
    current_experience: int
    created_at: float
    already_existed: bool
    def __init__(self, spec: _Optional[_Union[RunSpec, _Mapping]] = ..., probe: _Optional[_Union[ProbeSetMeta, _Mapping]] = ..., state: _Optional[_Union[RunState, str]] = ..., current_experience: _Optional[int] = ..., created_at: _Optional[float] = ..., already_existed: _Optional[bool] = ...) -> None: ...

class EvalSetMeta(_message.Message):
    __slots__ = ("fingerprint", "source", "shape", "num_rows", "sha256", "payload_bytes")
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    NUM_ROWS_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    source: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    num_rows: int
    sha256: str
    payload_bytes: int
    def __init__(self, fingerprint: _Optional[str] = ..., source: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., num_rows: _Optional[int] = ..., sha256: _Optional[str] = ..., payload_bytes: _Optional[int] = ...) -> None: ...

class EvalSetChunk(_message.Message):
    __slots__ = ("run_id", "meta", "offset", "data")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    meta: EvalSetMeta
    offset: int
    data: bytes
    def __init__(self, run_id: _Optional[str] = ..., meta: _Optional[_Union[EvalSetMeta, _Mapping]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class EvalSetInfo(_message.Message):
    __slots__ = ("run_id", "meta", "already_stored", "stored_at")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    ALREADY_STORED_FIELD_NUMBER: _ClassVar[int]
    STORED_AT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    meta: EvalSetMeta
    already_stored: bool
    stored_at: float
    def __init__(self, run_id: _Optional[str] = ..., meta: _Optional[_Union[EvalSetMeta, _Mapping]] = ..., already_stored: _Optional[bool] = ..., stored_at: _Optional[float] = ...) -> None: ...

class GetEvalSetRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class SetRunStateRequest(_message.Message):
    __slots__ = ("run_id", "state", "current_experience")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_EXPERIENCE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    state: RunState
    current_experience: int
    def __init__(self, run_id: _Optional[str] = ..., state: _Optional[_Union[RunState, str]] = ..., current_experience: _Optional[int] = ...) -> None: ...

class ReportProgressRequest(_message.Message):
    __slots__ = ("run_id", "agent_id", "experience", "state", "metrics", "reason")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIENCE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    agent_id: int
    experience: int
    state: str
    metrics: _containers.ScalarMap[str, float]
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., agent_id: _Optional[int] = ..., experience: _Optional[int] = ..., state: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., reason: _Optional[str] = ...) -> None: ...

class ReportProgressResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VerifyIdentityRequest(_message.Message):
    __slots__ = ("run_id", "agent_id", "nonce", "proof")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    agent_id: int
    nonce: str
    proof: str
    def __init__(self, run_id: _Optional[str] = ..., agent_id: _Optional[int] = ..., nonce: _Optional[str] = ..., proof: _Optional[str] = ...) -> None: ...

class VerifyIdentityResponse(_message.Message):
    __slots__ = ("valid", "auth_enabled")
    VALID_FIELD_NUMBER: _ClassVar[int]
    AUTH_ENABLED_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    auth_enabled: bool
    def __init__(self, valid: _Optional[bool] = ..., auth_enabled: _Optional[bool] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentStatus(_message.Message):
    __slots__ = ("agent_id", "last_seen", "experiences_published", "payload_bytes", "experience", "state", "metrics", "reported_at", "reason", "history")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    EXPERIENCES_PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXPERIENCE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    REPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    agent_id: int
    last_seen: float
    experiences_published: _containers.RepeatedScalarFieldContainer[int]
    payload_bytes: int
    experience: int
    state: str
    metrics: _containers.ScalarMap[str, float]
    reported_at: float
    reason: str
    history: _containers.RepeatedCompositeFieldContainer[ExperienceMetrics]
    def __init__(self, agent_id: _Optional[int] = ..., last_seen: _Optional[float] = ..., experiences_published: _Optional[_Iterable[int]] = ..., payload_bytes: _Optional[int] = ..., experience: _Optional[int] = ..., state: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., reported_at: _Optional[float] = ..., reason: _Optional[str] = ..., history: _Optional[_Iterable[_Union[ExperienceMetrics, _Mapping]]] = ...) -> None: ...

class ExperienceMetrics(_message.Message):
    __slots__ = ("experience", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    EXPERIENCE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    experience: int
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, experience: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class RunStatus(_message.Message):
    __slots__ = ("run_id", "state", "current_experience", "num_classes", "probe_size", "probe_fingerprint", "expected_agents", "created_at", "prediction_sets", "payload_bytes", "agents", "experiences", "eval_size", "eval_fingerprint")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_EXPERIENCE_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    PROBE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PROBE_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_AGENTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_SETS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    EXPERIENCES_FIELD_NUMBER: _ClassVar[int]
    EVAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    EVAL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    state: RunState
    current_experience: int
    num_classes: int
    probe_size: int
    probe_fingerprint: str
    expected_agents: int
    created_at: float
    prediction_sets: int
    payload_bytes: int
    agents: _containers.RepeatedCompositeFieldContainer[AgentStatus]
    experiences: int
    eval_size: int
    eval_fingerprint: str
    def __init__(self, run_id: _Optional[str] = ..., state: _Optional[_Union[RunState, str]] = ..., current_experience: _Optional[int] = ..., num_classes: _Optional[int] = ..., probe_size: _Optional[int] = ..., probe_fingerprint: _Optional[str] = ..., expected_agents: _Optional[int] = ..., created_at: _Optional[float] = ..., prediction_sets: _Optional[int] = ..., payload_bytes: _Optional[int] = ..., agents: _Optional[_Iterable[_Union[AgentStatus, _Mapping]]] = ..., experiences: _Optional[int] = ..., eval_size: _Optional[int] = ..., eval_fingerprint: _Optional[str] = ...) -> None: ...

class StoreTotals(_message.Message):
    __slots__ = ("runs", "prediction_sets", "payload_bytes")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_SETS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    runs: int
    prediction_sets: int
    payload_bytes: int
    def __init__(self, runs: _Optional[int] = ..., prediction_sets: _Optional[int] = ..., payload_bytes: _Optional[int] = ...) -> None: ...

class RelayStatus(_message.Message):
    __slots__ = ("version", "uptime_seconds", "totals", "runs")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    version: str
    uptime_seconds: float
    totals: StoreTotals
    runs: _containers.RepeatedCompositeFieldContainer[RunStatus]
    def __init__(self, version: _Optional[str] = ..., uptime_seconds: _Optional[float] = ..., totals: _Optional[_Union[StoreTotals, _Mapping]] = ..., runs: _Optional[_Iterable[_Union[RunStatus, _Mapping]]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class Subscribed(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PredictionsPublished(_message.Message):
    __slots__ = ("prediction",)
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    prediction: StoredPrediction
    def __init__(self, prediction: _Optional[_Union[StoredPrediction, _Mapping]] = ...) -> None: ...

class AgentSeen(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: int
    def __init__(self, agent_id: _Optional[int] = ...) -> None: ...

class RunStateChanged(_message.Message):
    __slots__ = ("state", "current_experience")
    STATE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_EXPERIENCE_FIELD_NUMBER: _ClassVar[int]
    state: RunState
    current_experience: int
    def __init__(self, state: _Optional[_Union[RunState, str]] = ..., current_experience: _Optional[int] = ...) -> None: ...

class ProgressReported(_message.Message):
    __slots__ = ("progress",)
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    progress: ReportProgressRequest
    def __init__(self, progress: _Optional[_Union[ReportProgressRequest, _Mapping]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("seq", "time", "run_id", "subscribed", "published", "agent_seen", "run_state_changed", "progress")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    AGENT_SEEN_FIELD_NUMBER: _ClassVar[int]
    RUN_STATE_CHANGED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: float
    run_id: str
    subscribed: Subscribed
    published: PredictionsPublished
    agent_seen: AgentSeen
    run_state_changed: RunStateChanged
    progress: ProgressReported
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[float] = ..., run_id: _Optional[str] = ..., subscribed: _Optional[_Union[Subscribed, _Mapping]] = ..., published: _Optional[_Union[PredictionsPublished, _Mapping]] = ..., agent_seen: _Optional[_Union[AgentSeen, _Mapping]] = ..., run_state_changed: _Optional[_Union[RunStateChanged, _Mapping]] = ..., progress: _Optional[_Union[ProgressReported, _Mapping]] = ...) -> None: ...
