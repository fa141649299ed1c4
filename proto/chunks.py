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

import functools
import hashlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, TypeAlias, TypeVar

from google.protobuf.message import DecodeError, Message

if TYPE_CHECKING:
    from dkt.proto.dkt.v1.relay_pb2 import (
        EvalSetChunk,
        PredictionChunk,
        ProbeSetChunk,
        TeacherTargetsChunk,
    )

DEFAULT_CHUNK_BYTES = 1 << 20
# Fields `parse` walks in Python before it leaves a chunk to protobuf's parser.
_MAX_WALKED_FIELDS = 16
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


class Received:
    """A chunk parsed by `parse`: the chunk message without its `data` (`head`), and the
    `data` as a memoryview into the bytes that arrived. Every other attribute (`offset`,
    `meta`, `HasField`, ...) is the head's."""

    __slots__ = ("head", "data")

    def __init__(self, head: Chunk, data: memoryview) -> None:
        self.head = head
        self.data = data

    def __getattr__(self, name: str) -> object:
        return getattr(self.head, name)


def parse(chunk_type: type[ChunkT], raw: bytes) -> Received:
    """One serialized chunk, parsed without copying its `data`: what `chunk_type.FromString`
    gives, with `data` left in `raw` as a memoryview.

    Why: protobuf's Python parser copies a `bytes` field into the message and again on
    every access (together ~0.8 ms per MiB here); with this a received MiB is copied once,
    when the stream's chunks are joined. The wire format is walked field by field in any
    order (a repeated `data` field: the last one counts, as in protobuf); every field but
    `data` is parsed by protobuf itself. A malformed chunk raises protobuf's DecodeError,
    as `FromString` would (gRPC turns it into the same status)."""
    number = chunk_type.DESCRIPTOR.fields_by_name["data"].number
    view = memoryview(raw)
    size = len(view)
    rest: list[memoryview] = []
    data = view[0:0]
    pos = 0
    # A chunk has at most five fields. Past a few more (unknown fields, repeats) or at a
    # group (none in relay.proto), protobuf's own parser takes over: a hostile 8 MiB of
    # tiny fields would keep this loop busy for seconds, protobuf's C parser for less.
    for _ in range(_MAX_WALKED_FIELDS):
        if pos >= size:
            break
        start = pos
        key, pos = _read_varint(view, pos)
        if key & 7 in (3, 4):
            return _parsed_by_protobuf(chunk_type, raw)
        if key >> 3 == number and key & 7 == 2:
            length, pos = _read_varint(view, pos)
            if pos + length > size:
                raise DecodeError("a length-delimited field runs past the end of the chunk")
            data = view[pos : pos + length]
            pos += length
            continue
        pos = _skip_field(view, pos, key)
        rest.append(view[start:pos])
    if pos < size:
        return _parsed_by_protobuf(chunk_type, raw)
    head = chunk_type.FromString(b"".join(rest))
    return Received(head, data)


def _parsed_by_protobuf(chunk_type: type[ChunkT], raw: bytes) -> Received:
    """`parse` done by protobuf's parser: the data is copied out of the message."""
    message = chunk_type.FromString(raw)
    data = memoryview(message.data)
    message.ClearField("data")
    return Received(message, data)


def parser(chunk_type: type[ChunkT]) -> Callable[[bytes], Received]:
    """`parse` for one chunk type: a gRPC (de)serializer in place of `FromString`."""
    return functools.partial(parse, chunk_type)


class Malformed:
    """A received chunk that is not a valid message (`lenient_parser`): the receiver
    refuses the stream with `reason` (a ChunkError from `assemble`)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def lenient_parser(chunk_type: type[ChunkT]) -> Callable[[bytes], Received | Malformed]:
    """`parser` that returns Malformed instead of raising: a server's request parser, so
    that the handler answers a malformed chunk with INVALID_ARGUMENT (gRPC answers an
    exception in a request parser with INTERNAL, "Exception deserializing request!")."""

    def parse_or_mark(raw: bytes) -> Received | Malformed:
        try:
            return parse(chunk_type, raw)
        except DecodeError as err:
            return Malformed(f"{chunk_type.DESCRIPTOR.name} is not a valid message ({err})")

    return parse_or_mark


def _skip_field(view: memoryview, pos: int, key: int) -> int:
    """The position after the value of the field whose key (tag) was read before `pos`
    (not a group: `parse` leaves those to protobuf)."""
    field, wire = key >> 3, key & 7
    if field == 0:
        raise DecodeError("a field number of 0")
    if wire == 0:
        _, pos = _read_varint(view, pos)
    elif wire == 1:
        pos += 8
    elif wire == 5:
        pos += 4
    elif wire == 2:
        length, pos = _read_varint(view, pos)
        pos += length
    else:
        raise DecodeError(f"wire type {wire} of field {field} is not a protobuf wire type")
    if pos > len(view):
        raise DecodeError("a field runs past the end of the chunk")
    return pos


def _read_varint(view: memoryview, pos: int) -> tuple[int, int]:
    """A base-128 varint at `pos`: (its value, the position after it)."""
    value = shift = 0
    while True:
        if pos >= len(view) or shift > 63:
            raise DecodeError("a truncated or overlong varint")
        byte = view[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _message(chunk: Chunk | Received) -> Chunk:
    """The chunk message (a `Received` chunk's head: everything but its data)."""
    return chunk.head if isinstance(chunk, Received) else chunk


def assemble(
    first: Chunk | Received,
    rest: Iterable[Chunk | Received | Malformed],
    declared_bytes: int,
    declared_sha256: str,
    what: str,
) -> bytearray:
    """The payload of a stream whose first chunk is `first`, checked for order,
    completeness and SHA-256 against the declared size and hash; raises ChunkError.
    The chunks may be messages or `Received` (`parse`); their data is copied once, into
    the returned bytearray."""
    descriptor = _message(first).DESCRIPTOR
    chunk_name = descriptor.name
    meta_type = descriptor.fields_by_name["meta"].message_type
    assert meta_type is not None  # `meta` is a message field of every chunk
    meta_name = meta_type.name
    metadata = [f for f in _METADATA_FIELDS if f in descriptor.fields_by_name]
    # The chunks' bytes are joined once at the end (no growing buffer to copy into, and
    # no buffer sized by a declaration the sender may have lied about).
    parts: list[bytes | memoryview] = []
    received = 0
    digest = hashlib.sha256()
    for i, chunk in enumerate(itertools.chain([first], rest)):
        if isinstance(chunk, Malformed):
            raise ChunkError(f"{what}: chunk {i}: {chunk.reason}")
        if i > 0 and any(_carries(_message(chunk), f) for f in metadata):
            raise ChunkError(
                f"{what}: only the first chunk may carry metadata "
                f"({' and '.join(f'{chunk_name}.{f}' for f in metadata)})"
            )
        if chunk.offset != received:
            raise ChunkError(
                f"{what}: chunk {i} is out of order: expected offset {received}, "
                f"got {chunk.offset} ({chunk_name}.offset)"
            )
        data = chunk.data  # a message's bytes field is copied on each access: read it once
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
    return bytearray().join(parts)
