"""Content-addressed payload files: durable writes, verified reads, orphan removal.

Layout under a data directory:

    payloads/ab/abcdef...    payload bytes, named by their SHA-256
    tmp/                     payloads being written (emptied on start)

A payload is written to tmp/, fsynced, renamed into payloads/ and the directory fsynced,
so once `write` returns the bytes survive a crash of the process or the machine.

Payloads are checked against their SHA-256 when read, once: the files remember a
verified payload with its file's identity (device, inode, size, mtime, ctime) and serve
it without hashing while the file keeps that identity, for at most `_REVERIFY_S`; then
the next read hashes it again (a lazy scrub for damage that leaves the metadata alone).
A payload written here counts as verified (its bytes were hashed on arrival) where the
file system gives a file rewritten right after a stat a new mtime (fine-grained or
multigrain timestamps, probed when the files are opened); elsewhere a rewrite within one
clock tick would keep the mtime, so only files whose mtime is `_SETTLED_NS` old when
they are verified are remembered.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Collection
from pathlib import Path

from dkt.common.hashing import sha256_hex
from dkt.server.relay.store.records import CorruptPayloadError

log = logging.getLogger("dkt.relay")

_PAYLOAD_NAME = re.compile(r"^[0-9a-f]{64}$")
# A verified payload is hashed again on the first read this long after its verification.
_REVERIFY_S = 600.0
# Without fine-grained file timestamps, a verification is only remembered for a file whose
# mtime is this much older than the read (an in-place rewrite then gets a different one).
_SETTLED_NS = 2_000_000_000
# Verified payloads remembered at most (the oldest are forgotten first).
_MAX_VERIFIED = 1 << 16


class PayloadFiles:
    """The payload files of one store, in `data_dir`/payloads (and `data_dir`/tmp)."""

    def __init__(self, data_dir: Path) -> None:
        self.payload_dir = data_dir / "payloads"
        self.tmp_dir = data_dir / "tmp"
        # sha256 -> (file identity when verified, time.monotonic() of the verification)
        self._verified: dict[str, tuple[tuple[int, ...], float]] = {}
        self._verified_lock = threading.Lock()
        self.fine_timestamps = False

    def open(self) -> None:
        """Create the folders, drop unacknowledged leftovers and probe the timestamps."""
        self.payload_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        # Leftovers of writes interrupted by a crash were never acknowledged.
        for leftover in self.tmp_dir.iterdir():
            leftover.unlink(missing_ok=True)
        self.fine_timestamps = _has_fine_timestamps(self.tmp_dir)

    def path(self, sha256: str) -> Path:
        return self.payload_dir / sha256[:2] / sha256

    def remove_orphans(self, referenced: Collection[str]) -> int:
        """Remove payload files whose hash is not in `referenced`: written by a call the
        relay never acknowledged, because it crashed before committing the row. Runs
        before the store serves anyone, so no write is in progress (those start in tmp/)."""
        removed = 0
        for prefix in self.payload_dir.iterdir():
            if not prefix.is_dir():
                continue
            for path in prefix.iterdir():
                # Only files named like a payload: anything else is not the store's.
                if not (path.is_file() and _PAYLOAD_NAME.match(path.name)):
                    continue
                if path.name in referenced and path.name[:2] == prefix.name:
                    continue
                path.unlink(missing_ok=True)
                removed += 1
                log.info("removed orphan payload file %s (its write was never acknowledged)", path)
        if removed:
            fsync_dir(self.payload_dir)
        return removed

    def write(self, sha256: str, data: bytes | bytearray | memoryview) -> bool:
        """Make the payload file durable; True if this call created it."""
        final = self.path(sha256)
        if final.exists():
            try:
                self.read(sha256, len(data))
                return False
            except CorruptPayloadError:
                pass  # rewrite it below: the new bytes are known to be correct
        if not final.parent.is_dir():
            final.parent.mkdir(exist_ok=True)
            # The new directory's own name must be durable too, or the file is lost with it.
            fsync_dir(self.payload_dir)
        tmp = self.tmp_dir / f"{sha256}.{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            # A full disk (ENOSPC) must not keep the part written: it holds the space.
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(final.parent)
        if self.fine_timestamps:
            # `data` was hashed on arrival (chunks.assemble) and is now what the file holds.
            self._remember(sha256, os.stat(final), settled=True)
        else:
            self.forget(sha256)
        return True

    def read(self, sha256: str, expected_bytes: int, what: str = "payload") -> bytes:
        """The payload with this SHA-256, verified (now, or earlier and its file has not
        changed since); raises CorruptPayloadError (naming it as `what`) otherwise."""
        path = self.path(sha256)
        started_ns = time.time_ns()
        try:
            with open(path, "rb") as f:
                data = f.read()
                # After the read: a change made before it shows in the identity.
                stat = os.fstat(f.fileno())
        except FileNotFoundError:
            self.forget(sha256)
            raise CorruptPayloadError(
                what, sha256, path, "is missing from the relay's disk"
            ) from None
        if len(data) == expected_bytes and self._still_verified(sha256, stat):
            return data
        actual = sha256_hex(data)
        if len(data) != expected_bytes or actual != sha256:
            self.forget(sha256)
            raise CorruptPayloadError(
                what,
                sha256,
                path,
                f"is corrupt on the relay's disk ({len(data)} bytes with SHA-256 {actual}, "
                f"expected {expected_bytes} bytes)",
            )
        self._remember(sha256, stat, settled=started_ns - stat.st_mtime_ns >= _SETTLED_NS)
        return data

    def discard(self, sha256: str) -> None:
        """Remove a payload file (its row was never committed)."""
        self.forget(sha256)
        self.path(sha256).unlink(missing_ok=True)

    def _remember(self, sha256: str, stat: os.stat_result, settled: bool) -> None:
        """Note that the file with `stat` holds the payload `sha256` (just verified); a
        file not `settled` is only remembered with fine-grained timestamps."""
        if not (settled or self.fine_timestamps):
            return
        with self._verified_lock:
            self._verified.pop(sha256, None)
            while len(self._verified) >= _MAX_VERIFIED:
                del self._verified[next(iter(self._verified))]
            self._verified[sha256] = (_identity(stat), time.monotonic())

    def _still_verified(self, sha256: str, stat: os.stat_result) -> bool:
        with self._verified_lock:
            entry = self._verified.get(sha256)
        return (
            entry is not None
            and entry[0] == _identity(stat)
            and time.monotonic() - entry[1] < _REVERIFY_S
        )

    def forget(self, sha256: str) -> None:
        with self._verified_lock:
            self._verified.pop(sha256, None)


def _identity(stat: os.stat_result) -> tuple[int, ...]:
    """What changes when a file is replaced or written: device, inode, size, mtime, ctime."""
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def _has_fine_timestamps(directory: Path) -> bool:
    """Whether a file written right after a stat gets a new mtime in `directory`'s file
    system (fine-grained timestamps, or Linux's multigrain ones), so a cached file
    identity notices any later write. Coarse timestamps (one clock tick, or a second)
    give some of 16 immediate rewrites the same mtime."""
    path = directory / f"timestamps-probe.{uuid.uuid4().hex}"
    try:
        with open(path, "wb", buffering=0) as f:
            for i in range(16):
                before = os.fstat(f.fileno()).st_mtime_ns
                f.seek(0)
                f.write(bytes([i]))
                if os.fstat(f.fileno()).st_mtime_ns == before:
                    return False
        return True
    except OSError:
        return False
    finally:
        path.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
