"""Content hashes: the SHA-256 that names a payload on both sides of the wire."""

from __future__ import annotations

import hashlib


def sha256_hex(data: bytes | memoryview) -> str:
    """The SHA-256 of `data` as 64 lowercase hex digits."""
    return hashlib.sha256(data).hexdigest()
