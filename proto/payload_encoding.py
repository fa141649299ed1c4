"""How the values of a payload are laid out in its bytes (`dkt.v1.Encoding`): row-major,
little-endian float32 or float16. Shared by the relay, which checks payloads, and the
client, which encodes and decodes them."""

from __future__ import annotations

import numpy as np

from dkt.proto.dkt.v1 import relay_pb2

# Encoding name (as in the store and the command line) -> dkt.v1.Encoding value.
ENCODINGS: dict[str, relay_pb2.Encoding] = {
    "float32": relay_pb2.ENCODING_FLOAT32,
    "float16": relay_pb2.ENCODING_FLOAT16,
}
# dkt.v1.Encoding value -> numpy dtype of one value in the payload bytes.
NUMPY_DTYPES: dict[int, np.dtype] = {
    relay_pb2.ENCODING_FLOAT32: np.dtype("<f4"),
    relay_pb2.ENCODING_FLOAT16: np.dtype("<f2"),
}
_NAMES: dict[int, str] = {value: name for name, value in ENCODINGS.items()}


def encoding_value(name: str) -> relay_pb2.Encoding:
    """ "float16" -> ENCODING_FLOAT16; raises ValueError for an unknown name."""
    try:
        return ENCODINGS[name]
    except KeyError:
        raise ValueError(f"unknown encoding {name!r}; use one of {', '.join(ENCODINGS)}") from None


def encoding_name(value: int) -> str:
    """ENCODING_FLOAT16 -> "float16"; raises ValueError for a value without a layout."""
    try:
        return _NAMES[value]
    except KeyError:
        raise ValueError(
            f"unknown encoding {value}; use ENCODING_FLOAT32 or ENCODING_FLOAT16"
        ) from None


def bytes_per_value(encoding: int) -> int:
    return NUMPY_DTYPES[encoding].itemsize
