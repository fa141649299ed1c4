"""Specification of content hashes (common/hashing.py): `sha256_hex` is hashlib's SHA-256
hex digest of bytes or a memoryview, 64 lowercase hex digits."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from dkt.common.hashing import sha256_hex

PAYLOADS = [b"", b"abc", bytes(range(256)) * 1000]


def test_sha256_of_empty_and_abc_are_the_standard_digests() -> None:
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert sha256_hex(b"abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


@pytest.mark.parametrize("data", PAYLOADS, ids=["empty", "abc", "256000-bytes"])
def test_bytes_and_their_memoryview_hash_as_hashlib_does(data: bytes) -> None:
    expected = hashlib.sha256(data).hexdigest()

    assert sha256_hex(data) == expected
    assert sha256_hex(memoryview(data)) == expected


def test_a_memoryview_of_an_array_hashes_its_bytes() -> None:
    logits = np.arange(12, dtype=np.float16).reshape(3, 4)

    assert sha256_hex(memoryview(logits)) == hashlib.sha256(logits.tobytes()).hexdigest()


def test_a_slice_of_a_memoryview_hashes_only_the_slice() -> None:
    data = b"header:payload"

    assert sha256_hex(memoryview(data)[7:]) == hashlib.sha256(b"payload").hexdigest()


@pytest.mark.parametrize("data", PAYLOADS, ids=["empty", "abc", "256000-bytes"])
def test_the_digest_is_64_lowercase_hex_digits(data: bytes) -> None:
    assert re.fullmatch(r"[0-9a-f]{64}", sha256_hex(data))
