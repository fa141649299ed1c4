"""Specification of the one byte formatter (results summary and `dkt status`)."""

from __future__ import annotations

import pytest

from dkt.common.byte_sizes import format_bytes


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (3 * 1024**2, "3.0 MiB"),
        (5 * 1024**4, "5120.0 GiB"),
        (None, "n/a"),
    ],
)
def test_bytes_are_shown_in_binary_units_with_one_decimal(n: int | None, text: str) -> None:
    assert format_bytes(n) == text
