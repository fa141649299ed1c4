"""`Rejection`: a request the relay refuses, and the gRPC status every failure ends with."""

from __future__ import annotations

import errno
import sqlite3

import grpc

from dkt.proto.chunks import ChunkError
from dkt.proto.relay_connection import MISSING_RUN
from dkt.server.relay.store.records import (
    CorruptPayloadError,
    EvalSetExistsError,
    PredictionsExistError,
    RunExistsError,
    RunNotFoundError,
)

Code = grpc.StatusCode
# What a full file system raises: OSError ENOSPC/EDQUOT (payload files) and SQLite's
# SQLITE_FULL ("database or disk is full").
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class Rejection(Exception):
    """A request the relay refuses, with the status code and message the caller gets."""

    def __init__(self, code: grpc.StatusCode, message: str, missing: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.missing = missing  # for NOT_FOUND: relay_connection.MISSING_* of what is missing


def missing_of(err: Exception) -> str:
    """What a NOT_FOUND is about (a `relay_connection.MISSING_*` value), or ''."""
    if isinstance(err, Rejection):
        return err.missing
    return MISSING_RUN if isinstance(err, RunNotFoundError) else ""


def status_of(err: Exception) -> tuple[grpc.StatusCode, str]:
    """The status code and message a call that raised `err` ends with."""
    if isinstance(err, Rejection):
        return err.code, err.message
    if isinstance(err, ChunkError):
        return Code.INVALID_ARGUMENT, str(err)
    if isinstance(err, RunNotFoundError):
        return Code.NOT_FOUND, str(err)
    if isinstance(err, RunExistsError | PredictionsExistError | EvalSetExistsError):
        return Code.ALREADY_EXISTS, str(err)
    if isinstance(err, CorruptPayloadError):
        return Code.DATA_LOSS, str(err)  # names the set and its hash, never the file
    if _disk_full(err):
        return (
            Code.RESOURCE_EXHAUSTED,
            "the relay's disk is full; nothing was stored: free space on the relay host "
            "and send it again",
        )
    if isinstance(err, grpc.RpcError):
        # Reading the request stream of a call that the client cancelled or whose
        # deadline passed: the caller is gone, nothing went wrong here.
        return Code.CANCELLED, "the call ended (cancelled or past its deadline)"
    return Code.INTERNAL, f"internal relay error ({type(err).__name__}); see the relay log"


def _disk_full(err: BaseException) -> bool:
    """Whether `err` (or what caused it) says the relay's file system is full."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _FULL_ERRNOS:
            return True
        if isinstance(seen, sqlite3.OperationalError) and "full" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False
