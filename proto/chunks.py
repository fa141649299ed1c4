"""Chunk framing of the relay's large payloads (`PredictionChunk`, `ProbeSetChunk`,
`EvalSetChunk`), for both ends of a stream: the relay and the client send with `frame`
(chunk messages) or `encode` (the same chunks, serialized) and receive with `assemble`.

A stream carries one payload: the first chunk holds the metadata (`meta`, and `spec`
for a probe set, `run_id` for an eval set), every chunk holds the byte `offset` of its
`data`, and the receiver
checks that the chunks arrive in order and complete and that their SHA-256 matches
`meta.sha256`. This lives in `dkt.proto` because it works on the messages of
relay.proto and because it is the one package both `dkt.server` and `dkt.client` may
import (`dkt.common` stays free of protobuf).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, TypeAlias, TypeVar

from google.protobuf.message import Message

if TYPE_CHECKING:
    from dkt.proto.dkt.v1.relay_pb2 import (
        EvalSetChunk,
        PredictionChunk,
        ProbeSetChunk,
        TeacherTargetsChunk,
    )

DEFAULT_CHUNK_BYTES = 1 << 20
# Fields of a chunk message that only the first chunk of a stream may carry.
_METADATA_FIELDS = ("meta", "spec", "run_id")

# The chunk messages of relay.proto: each has `offset`, `data` (its last field) and `meta`.
Chunk: TypeAlias = "PredictionChunk | ProbeSetChunk | EvalSetChunk | TeacherTargetsChunk"
ChunkT = TypeVar("ChunkT", bound=Chunk)


class ChunkError(ValueError):
    """A stream of chunks that does not add up to its declared payload.

    The relay answers it with INVALID_ARGUMENT (the caller sent it), the client raises
    it as DATA_LOSS (the payload was damaged on its way from the relay)."""


def offsets(size: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[tuple[int, int]]:
    """(start, end) of each chunk of a payload of `size` bytes; one chunk when empty."""
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    for start in range(0, max(size, 1), chunk_bytes):
        yield start, min(start + chunk_bytes, size)


def frame(
    chunk_type: type[ChunkT],
    payload: bytes,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    **first: Message | str,
) -> Iterator[ChunkT]:
    """The chunks of `payload`, the first one carrying the metadata in `first`
    (messages such as `meta=...`, `spec=...`, or a plain field such as `run_id=...`)."""
    view = memoryview(payload)
    for start, end in offsets(len(payload), chunk_bytes):
        chunk = chunk_type(offset=start, data=bytes(view[start:end]))
        if start == 0:
            _set_first(chunk, first)
        yield chunk


def encode(
    chunk_type: type[ChunkT],
    payload: bytes | memoryview,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    **first: Message | str,
) -> Iterator[bytes]:
    """The chunks of `frame`, already serialized: each item is byte for byte
    `chunk.SerializeToString()` of the chunk `frame` yields. A gRPC method whose serializer
    passes bytes through (the relay's streaming responses, `RelayClient.publish`) sends
    them as they are.

    Why: protobuf's Python serializer (upb) copies a large `bytes` field slowly (about
    1 ms per MiB); here only the small rest of a chunk goes through protobuf and the data
    is appended once, as the wire format allows (`data` is the chunk's last field, so the
    bytes equal protobuf's own field-number-ordered output)."""
    field = chunk_type.DESCRIPTOR.fields_by_name["data"]
    if field.number != max(f.number for f in chunk_type.DESCRIPTOR.fields):
        raise ValueError(f"{chunk_type.DESCRIPTOR.name}.data must be its last field")
    tag = _varint((field.number << 3) | 2)  # wire type 2: length-delimited
    view = memoryview(payload)
    for start, end in offsets(len(view), chunk_bytes):
        chunk = chunk_type(offset=start)
        if start == 0:
            _set_first(chunk, first)
        head = chunk.SerializeToString()
        # proto3 leaves an empty bytes field out, and so does this.
        yield b"".join((head, tag, _varint(end - start), view[start:end])) if end > start else head


def _set_first(chunk: Chunk, first: dict[str, Message | str]) -> None:
    for name, value in first.items():
        if isinstance(value, Message):
            getattr(chunk, name).CopyFrom(value)
        else:
            setattr(chunk, name, value)


def _varint(value: int) -> bytes:
    """`value` (>= 0) as a protobuf base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _carries(chunk: Chunk, name: str) -> bool:
    """Whether `chunk` sets the metadata field `name` (a message, or a non-empty scalar)."""
    field = chunk.DESCRIPTOR.fields_by_name[name]
    if field.message_type is not None:
        return chunk.HasField(name)
    return bool(getattr(chunk, name))


def assemble(
    first: Chunk, rest: Iterable[Chunk], declared_bytes: int, declared_sha256: str, what: str
) -> bytes:
    """The payload of a stream whose first chunk is `first`, checked for order,
    completeness and SHA-256 against the declared size and hash; raises ChunkError."""
    chunk_name = first.DESCRIPTOR.name
    meta_type = first.DESCRIPTOR.fields_by_name["meta"].message_type
    assert meta_type is not None  # `meta` is a message field of every chunk
    meta_name = meta_type.name
    metadata = [f for f in _METADATA_FIELDS if f in first.DESCRIPTOR.fields_by_name]
    # The chunks' bytes are joined once at the end (no growing buffer to copy into).
    parts: list[bytes] = []
    received = 0
    digest = hashlib.sha256()
    for i, chunk in enumerate(itertools.chain([first], rest)):
        if i > 0 and any(_carries(chunk, f) for f in metadata):
            raise ChunkError(
                f"{what}: only the first chunk may carry metadata "
                f"({' and '.join(f'{chunk_name}.{f}' for f in metadata)})"
            )
        if chunk.offset != received:
            raise ChunkError(
                f"{what}: chunk {i} is out of order: expected offset {received}, "
                f"got {chunk.offset} ({chunk_name}.offset)"
            )
        data = chunk.data  # each access of a bytes field makes a new copy: read it once
        if received + len(data) > declared_bytes:
            raise ChunkError(
                f"{what}: more bytes than the {declared_bytes} declared in "
                f"{meta_name}.payload_bytes"
            )
        parts.append(data)
        received += len(data)
        digest.update(data)
    if received != declared_bytes:
        raise ChunkError(
            f"{what} is incomplete: received {received} of {declared_bytes} bytes "
            f"({meta_name}.payload_bytes)"
        )
    if digest.hexdigest() != declared_sha256:
        raise ChunkError(
            f"{what}: SHA-256 of the received bytes is {digest.hexdigest()}, not the declared "
            f"{meta_name}.sha256 {declared_sha256!r}; the payload was damaged or the hash is "
            "wrong"
        )
    return parts[0] if len(parts) == 1 else b"".join(parts)
