"""What a failed relay call raises: one RelayError subclass per gRPC status code."""

from __future__ import annotations

from typing import cast

import grpc

from dkt.proto.relay_connection import (
    MISSING_EVAL_SET,
    MISSING_KEY,
    MISSING_PREDICTIONS,
)


class RelayError(Exception):
    """A relay call failed; `code` is the gRPC status code, `details` the relay's message."""

    def __init__(self, code: grpc.StatusCode, details: str, method: str = "") -> None:
        super().__init__(f"{method + ': ' if method else ''}{code.name}: {details}")
        self.code = code
        self.details = details
        self.method = method


class NotFoundError(RelayError):
    pass


class NotPublishedError(NotFoundError):
    """The run exists, but what was asked for (a prediction set, its eval set) is not
    stored (yet)."""


class EvalSetNotPublishedError(NotPublishedError):
    """The run exists, but has no eval set (the conductor has not stored one)."""


class AlreadyExistsError(RelayError, ValueError):
    """Different predictions (or a different run) are already stored under that key.

    Also a ValueError, like `InMemoryExchange.publish` raises for the same case."""


class InvalidArgumentError(RelayError):
    pass


class FailedPreconditionError(RelayError):
    pass


class OutOfRangeError(RelayError):
    """An experience outside the run's 0..experiences-1."""


class UnauthenticatedError(RelayError):
    pass


class PermissionDeniedError(RelayError):
    pass


class ResourceExhaustedError(RelayError):
    pass


class UnavailableError(RelayError):
    pass


class DeadlineExceededError(RelayError):
    pass


class DataLossError(RelayError):
    """A payload was corrupt on the relay's disk or in transit."""


_ERRORS: dict[grpc.StatusCode, type[RelayError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRangeError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.DATA_LOSS: DataLossError,
}


def relay_error(err: grpc.RpcError, method: str = "") -> RelayError:
    """The RelayError subclass for a failed gRPC call."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else None) or str(err)
    trailers: dict[str, str | bytes] = {}
    if hasattr(err, "trailing_metadata"):
        # grpc's stubs type the items as `_Metadatum` objects with `key` and `value`; they
        # are (key, value) pairs (namedtuples), as dict() takes them.
        metadata = cast("tuple[tuple[str, str | bytes], ...]", err.trailing_metadata() or ())
        trailers = dict(metadata)
    if code == grpc.StatusCode.NOT_FOUND:
        missing = trailers.get(MISSING_KEY)
        if missing == MISSING_PREDICTIONS:
            return NotPublishedError(code, details, method)
        if missing == MISSING_EVAL_SET:
            return EvalSetNotPublishedError(code, details, method)
    return _ERRORS.get(code, RelayError)(code, details, method)
