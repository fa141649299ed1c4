"""How logits and probe inputs become payload bytes and back: row-major little-endian
float32 (bit-exact) or float16 (half the bytes)."""

from __future__ import annotations

import numpy as np
import torch

from dkt.proto.payload_encoding import NUMPY_DTYPES as _NUMPY_DTYPES
from dkt.proto.payload_encoding import bytes_per_value, encoding_value

__all__ = ["bytes_per_value", "decode_tensor", "encode_tensor", "encode_view", "encoding_value"]


def encode_tensor(tensor: torch.Tensor, encoding: int) -> bytes:
    """The payload bytes of `tensor` in `encoding`; refuses values that would not be finite."""
    return encode_view(tensor, encoding).tobytes()


def encode_view(tensor: torch.Tensor, encoding: int) -> memoryview:
    """`encode_tensor` without the copy where none is needed: a float32 CPU tensor's own
    memory as bytes (the caller must not change the tensor while it uses the view)."""
    values = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
    with np.errstate(over="ignore"):  # overflow is reported below, with what to do
        encoded = values.astype(_NUMPY_DTYPES[encoding], copy=False)
    if not np.isfinite(encoded).all():
        if np.isfinite(values).all():
            raise ValueError(
                "logits exceed the float16 range (|x| > 65504); publish with encoding='float32'"
            )
        raise ValueError("logits contain NaN or infinity; the relay only stores finite values")
    return np.ascontiguousarray(encoded).data.cast("B")


def decode_tensor(
    data: bytes | bytearray | memoryview, encoding: int, shape: tuple[int, ...]
) -> torch.Tensor:
    """A float32 tensor of `shape` from payload bytes. float32 in a writable buffer (the
    bytearray `chunks.assemble` returns) becomes the tensor's memory without a copy."""
    values = np.frombuffer(data, dtype=_NUMPY_DTYPES[encoding])
    values = values.astype(np.float32, copy=not values.flags.writeable)
    return torch.from_numpy(values.reshape(shape))
