"""The relay client library, used by the conductor and the agents: `RelayClient`
(client.py), the errors a failed call raises (errors.py) and what calls return (results.py)."""

from dkt.proto.relay_client.client import (
    DEFAULT_MAX_MESSAGE_BYTES,
    RelayClient,
    tensor_bytes,
)
from dkt.proto.relay_client.errors import (
    AlreadyExistsError,
    DataLossError,
    DeadlineExceededError,
    EvalSetNotPublishedError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    NotPublishedError,
    OutOfRangeError,
    PermissionDeniedError,
    RelayError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    relay_error,
)
from dkt.proto.relay_client.results import (
    EventStream,
    IdentityCheck,
    PredictionInfo,
    PublishReceipt,
    RelayEvent,
    RunInfo,
    TeacherTargets,
)

__all__ = [
    "IdentityCheck",
    "AlreadyExistsError",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DataLossError",
    "DeadlineExceededError",
    "EvalSetNotPublishedError",
    "EventStream",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "NotPublishedError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "PredictionInfo",
    "PublishReceipt",
    "RelayClient",
    "RelayError",
    "RelayEvent",
    "ResourceExhaustedError",
    "RunInfo",
    "TeacherTargets",
    "UnauthenticatedError",
    "UnavailableError",
    "relay_error",
    "tensor_bytes",
]
