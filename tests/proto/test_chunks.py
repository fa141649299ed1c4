"""Chunk framing, shared by the relay and its client: what one end frames the other
assembles, and a stream that does not add up is refused with what is wrong."""

from __future__ import annotations

import hashlib

import grpc
import pytest

from dkt.proto import chunks
from dkt.proto.chunks import ChunkError
from dkt.proto.dkt.v1 import relay_pb2
from dkt.proto.relay_client import DataLossError
from dkt.proto.relay_client.client import _collect


def _meta(payload: bytes) -> relay_pb2.PredictionMeta:
    return relay_pb2.PredictionMeta(
        run_id="r", sha256=hashlib.sha256(payload).hexdigest(), payload_bytes=len(payload)
    )


def _assemble(stream: list[relay_pb2.PredictionChunk], payload: bytes) -> bytes:
    meta = _meta(payload)
    return chunks.assemble(stream[0], stream[1:], meta.payload_bytes, meta.sha256, "payload")


@pytest.mark.parametrize(("size", "chunk_bytes"), [(0, 4), (1, 4), (12, 4), (13, 4), (13, 64)])
def test_what_frame_sends_assemble_receives(size: int, chunk_bytes: int) -> None:
    payload = bytes(range(size))
    meta = _meta(payload)

    stream = list(chunks.frame(relay_pb2.PredictionChunk, payload, chunk_bytes, meta=meta))

    assert len(stream) == max(1, -(-size // chunk_bytes))
    assert [c.HasField("meta") for c in stream] == [True] + [False] * (len(stream) - 1)
    assert _assemble(stream, payload) == payload


def test_the_first_probe_chunk_carries_spec_and_meta() -> None:
    spec = relay_pb2.RunSpec(run_id="r", num_classes=2, experiences=1)
    meta = relay_pb2.ProbeSetMeta(payload_bytes=8)

    first, second = chunks.frame(relay_pb2.ProbeSetChunk, bytes(8), 4, spec=spec, meta=meta)

    assert (first.spec, first.meta, first.offset) == (spec, meta, 0)
    assert not second.HasField("spec") and second.offset == 4


def _framed(payload: bytes) -> list[relay_pb2.PredictionChunk]:
    return list(chunks.frame(relay_pb2.PredictionChunk, payload, 4, meta=_meta(payload)))


def test_chunks_out_of_order_name_the_offset_field() -> None:
    payload = bytes(12)
    stream = _framed(payload)
    stream[1], stream[2] = stream[2], stream[1]

    with pytest.raises(ChunkError, match=r"chunk 1 is out of order: expected offset 4, got 8 "):
        _assemble(stream, payload)


def test_metadata_after_the_first_chunk_is_refused() -> None:
    payload = bytes(12)
    stream = _framed(payload)
    stream[2].meta.CopyFrom(_meta(payload))

    with pytest.raises(ChunkError, match=r"only the first chunk may carry metadata"):
        _assemble(stream, payload)


def test_a_short_a_long_and_a_damaged_stream_are_refused() -> None:
    payload = bytes(range(12))
    meta = _meta(payload)
    stream = _framed(payload)
    damaged = _framed(payload)
    damaged[1].data = b"\xff" * 4

    with pytest.raises(ChunkError, match=r"incomplete: received 8 of 12 bytes"):
        chunks.assemble(stream[0], stream[1:2], 12, meta.sha256, "payload")
    with pytest.raises(ChunkError, match=r"more bytes than the 8 declared in PredictionMeta"):
        chunks.assemble(stream[0], stream[1:], 8, meta.sha256, "payload")
    with pytest.raises(ChunkError, match=r"not the declared PredictionMeta.sha256"):
        _assemble(damaged, payload)


def test_the_client_reads_a_damaged_stream_as_data_loss() -> None:
    payload = bytes(range(12))
    stream = _framed(payload)
    stream[2].data = b"\x00" * 4

    with pytest.raises(DataLossError) as failure:
        _collect(iter(stream), "FetchPredictions")

    assert failure.value.code == grpc.StatusCode.DATA_LOSS
    assert "fetch it again" in failure.value.details


@pytest.mark.parametrize("size", [0, 1, 127, 128, 1000, 2500, 3000])
@pytest.mark.parametrize("chunk_type", ["PredictionChunk", "ProbeSetChunk", "EvalSetChunk"])
def test_encoded_chunks_are_the_serialized_framed_chunks(size: int, chunk_type: str) -> None:
    message = getattr(relay_pb2, chunk_type)
    payload = bytes(range(256)) * 12
    payload = payload[:size]
    first = {
        "PredictionChunk": {"meta": relay_pb2.PredictionMeta(run_id="r", payload_bytes=size)},
        "ProbeSetChunk": {"spec": relay_pb2.RunSpec(run_id="r"), "meta": relay_pb2.ProbeSetMeta()},
        "EvalSetChunk": {"run_id": "r", "meta": relay_pb2.EvalSetMeta(num_rows=2)},
    }[chunk_type]

    encoded = list(chunks.encode(message, payload, 1000, **first))

    assert encoded == [c.SerializeToString() for c in chunks.frame(message, payload, 1000, **first)]
    parsed = [message.FromString(e) for e in encoded]
    assert b"".join(p.data for p in parsed) == payload


# -- parse: chunks received without copying their data -----------------------------------


def _same(received: chunks.Received, message: relay_pb2.PredictionChunk) -> bool:
    """Whether a parsed chunk holds what protobuf's own parser gives."""
    rebuilt = relay_pb2.PredictionChunk()
    rebuilt.CopyFrom(received.head)
    rebuilt.data = bytes(received.data)
    return rebuilt == message


@pytest.mark.parametrize("chunk_type", ["PredictionChunk", "ProbeSetChunk", "EvalSetChunk"])
def test_parse_gives_what_protobuf_parses(chunk_type: str) -> None:
    message = getattr(relay_pb2, chunk_type)
    payload = bytes(range(256)) * 12
    first = {
        "PredictionChunk": {"meta": relay_pb2.PredictionMeta(run_id="r", payload_bytes=3072)},
        "ProbeSetChunk": {"spec": relay_pb2.RunSpec(run_id="r"), "meta": relay_pb2.ProbeSetMeta()},
        "EvalSetChunk": {"run_id": "r", "meta": relay_pb2.EvalSetMeta(num_rows=2)},
    }[chunk_type]

    for raw in chunks.encode(message, payload, 1000, **first):
        received = chunks.parse(message, raw)
        expected = message.FromString(raw)

        assert isinstance(received.data, memoryview)
        assert bytes(received.data) == expected.data
        assert received.offset == expected.offset
        head = message()
        head.CopyFrom(received.head)
        head.data = bytes(received.data)
        assert head == expected
        for name in ("meta", "spec", "run_id"):
            if name in message.DESCRIPTOR.fields_by_name and name in first:
                assert getattr(received, name) == getattr(expected, name)


def test_parse_takes_fields_in_any_order_and_the_last_data() -> None:
    """Another serializer may put `data` first, or send it twice (the last one counts)."""
    meta = relay_pb2.PredictionMeta(run_id="r", payload_bytes=3)
    data_first = relay_pb2.PredictionChunk(data=b"old").SerializeToString()
    rest = relay_pb2.PredictionChunk(offset=7, meta=meta).SerializeToString()
    last_data = relay_pb2.PredictionChunk(data=b"new").SerializeToString()
    raw = data_first + rest + last_data

    received = chunks.parse(relay_pb2.PredictionChunk, raw)

    assert _same(received, relay_pb2.PredictionChunk.FromString(raw))
    assert (bytes(received.data), received.offset, received.meta) == (b"new", 7, meta)


def test_parse_keeps_fields_it_does_not_know() -> None:
    """An unknown field from a newer relay.proto is parsed as protobuf would (kept)."""
    unknown = b"\xf8\x07\x05"  # field 127, varint 5
    raw = unknown + relay_pb2.PredictionChunk(offset=4, data=b"abcd").SerializeToString()

    received = chunks.parse(relay_pb2.PredictionChunk, raw)

    assert _same(received, relay_pb2.PredictionChunk.FromString(raw))
    assert unknown in received.head.SerializeToString()


@pytest.mark.parametrize(
    "raw",
    [
        b"\x08",  # offset's varint cut off
        b"\x08" + b"\xff" * 11,  # a varint of more than 64 bits
        b"\x00\x01",  # field number 0
        relay_pb2.PredictionChunk(data=b"abcd").SerializeToString()[:-1],  # data cut short
        b"\x0b\x14",  # group 1 ended as group 2
        b"\x0c",  # the end of a group never started
        b"\x0b\x08\x01",  # a group never ended
        b"\x09" + bytes(7),  # a 64-bit field cut short
    ],
    ids=[
        "truncated-varint",
        "overlong-varint",
        "field-0",
        "short-data",
        "group-mismatch",
        "group-end",
        "group-open",
        "short-fixed",
    ],
)
def test_parse_refuses_a_malformed_chunk_as_protobuf_does(raw: bytes) -> None:
    from google.protobuf.message import DecodeError

    with pytest.raises(DecodeError):
        relay_pb2.PredictionChunk.FromString(raw)
    with pytest.raises(DecodeError):
        chunks.parse(relay_pb2.PredictionChunk, raw)


def test_parse_leaves_a_chunk_of_many_fields_or_a_group_to_protobuf() -> None:
    """Past 16 fields (a hostile sender's millions of tiny ones) or at a group, protobuf's
    C parser parses the chunk: the same message, and no Python loop over every field."""
    payload = relay_pb2.PredictionChunk(offset=4, data=b"abcd").SerializeToString()
    many = b"\xf8\x07\x05" * 100_000 + payload  # 100,000 unknown varint fields
    group = b"\x0b\x08\x01\x0c" + payload  # an unknown group holding a varint

    for raw in (many, group):
        received = chunks.parse(relay_pb2.PredictionChunk, raw)
        assert _same(received, relay_pb2.PredictionChunk.FromString(raw))
        assert (bytes(received.data), received.offset) == (b"abcd", 4)


def test_assemble_joins_received_chunks_once_into_a_bytearray() -> None:
    payload = bytes(range(13))
    meta = _meta(payload)
    stream = [
        chunks.parse(relay_pb2.PredictionChunk, raw)
        for raw in chunks.encode(relay_pb2.PredictionChunk, payload, 4, meta=meta)
    ]

    joined = chunks.assemble(stream[0], stream[1:], len(payload), meta.sha256, "payload")

    assert isinstance(joined, bytearray) and joined == payload
    assert stream[0].HasField("meta") and not stream[1].HasField("meta")


def test_parse_agrees_with_protobuf_on_random_bytes() -> None:
    """Mutated real chunks and random bytes: parse refuses exactly what FromString refuses
    and otherwise gives the same message."""
    import random

    from google.protobuf.message import DecodeError

    rng = random.Random(0)
    meta = relay_pb2.PredictionMeta(run_id="run", sha256="ab" * 32, payload_bytes=9)
    real = relay_pb2.PredictionChunk(offset=3, meta=meta, data=b"x" * 9).SerializeToString()
    for trial in range(3000):
        if trial % 3 == 0:
            raw = bytes(rng.randrange(256) for _ in range(rng.randrange(12)))
        else:
            raw = bytearray(real)
            for _ in range(rng.randrange(1, 4)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            raw = bytes(raw[: rng.randrange(len(raw) + 1)] if trial % 3 == 1 else raw)
        try:
            expected = relay_pb2.PredictionChunk.FromString(raw)
        except DecodeError:
            with pytest.raises(DecodeError):
                chunks.parse(relay_pb2.PredictionChunk, raw)
            continue
        assert _same(chunks.parse(relay_pb2.PredictionChunk, raw), expected), raw
