"""Payload encoding of logits: `encode_view` is `encode_tensor` without a copy where
float32 needs none, and `decode_tensor` reads a writable buffer in place."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dkt.proto.dkt.v1 import relay_pb2
from dkt.proto.logits_encoding import decode_tensor, encode_tensor, encode_view

F32, F16 = relay_pb2.ENCODING_FLOAT32, relay_pb2.ENCODING_FLOAT16


@pytest.mark.parametrize("encoding", [F32, F16])
def test_the_view_holds_the_bytes_encode_tensor_gives(encoding: int) -> None:
    logits = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))

    view = encode_view(logits, encoding)

    assert view.format == "B" and view.nbytes == logits.numel() * (4 if encoding == F32 else 2)
    assert bytes(view) == encode_tensor(logits, encoding)


def test_float32_logits_are_viewed_not_copied_and_a_transposed_tensor_is_copied() -> None:
    logits = torch.randn(6, 4)
    view = encode_view(logits, F32)
    logits[0, 0] = 123.0  # the view is the tensor's own memory
    assert np.frombuffer(view, dtype="<f4")[0] == 123.0

    transposed = torch.randn(4, 6).t()
    assert bytes(encode_view(transposed, F32)) == transposed.contiguous().numpy().tobytes()


def test_non_finite_logits_are_refused_by_the_view_too() -> None:
    with pytest.raises(ValueError, match="NaN or infinity"):
        encode_view(torch.tensor([[0.0, float("nan")]]), F32)
    with pytest.raises(ValueError, match="float16 range"):
        encode_view(torch.tensor([[1e6]]), F16)


def test_float32_in_a_bytearray_decodes_in_place_and_bytes_are_copied() -> None:
    logits = torch.randn(3, 2)
    writable = bytearray(encode_tensor(logits, F32))
    decoded = decode_tensor(writable, F32, (3, 2))
    assert torch.equal(decoded, logits)
    writable[:4] = np.float32(7.0).tobytes()
    assert decoded[0, 0].item() == 7.0  # the tensor is the bytearray's memory

    read_only = encode_tensor(logits, F32)
    copied = decode_tensor(read_only, F32, (3, 2))
    copied[0, 0] = 1.5  # writable, as a copy must be
    assert torch.equal(decode_tensor(read_only, F32, (3, 2)), logits)
