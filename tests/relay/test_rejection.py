"""The gRPC status every failure of a relay call ends with (server/relay/rejection.py)."""

from __future__ import annotations

import errno
import sqlite3

import grpc
import pytest

from dkt.server.relay.rejection import Rejection, status_of
from dkt.server.relay.store.records import RunNotFoundError

FULL = (
    "the relay's disk is full; nothing was stored: free space on the relay host and send it again"
)


@pytest.mark.parametrize(
    "err",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        sqlite3.OperationalError("database or disk is full"),
    ],
)
def test_a_full_file_system_is_resource_exhausted(err: Exception) -> None:
    assert status_of(err) == (grpc.StatusCode.RESOURCE_EXHAUSTED, FULL)


def test_a_full_disk_behind_another_error_is_resource_exhausted() -> None:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("while storing") from inner
    except RuntimeError as outer:
        assert status_of(outer) == (grpc.StatusCode.RESOURCE_EXHAUSTED, FULL)


def test_other_os_errors_stay_internal_and_name_no_path() -> None:
    code, message = status_of(PermissionError(errno.EACCES, "denied", "/secret/relay.sqlite3"))

    assert code == grpc.StatusCode.INTERNAL
    assert message == "internal relay error (PermissionError); see the relay log"


def test_a_rejection_and_a_missing_run_keep_their_codes() -> None:
    assert status_of(Rejection(grpc.StatusCode.OUT_OF_RANGE, "late")) == (
        grpc.StatusCode.OUT_OF_RANGE,
        "late",
    )
    assert status_of(RunNotFoundError("no run 'x'"))[0] == grpc.StatusCode.NOT_FOUND
