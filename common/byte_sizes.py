"""Byte counts for people: one formatter for the results summary and `dkt status`."""

from __future__ import annotations


def format_bytes(n: float | None) -> str:
    """1536 -> "1.5 KiB" (binary units, as torch and the relay's limits count); None -> "n/a"."""
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
