"""benchmarks/relay_throughput.py runs end to end against a real relay and real echo
servers (it had stopped working once without any test noticing): one round, one set,
two clients, and every cell of both tables is a positive number."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_relay_benchmark_prints_both_tables_with_numbers() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/relay_throughput.py")]
        + ["--rounds", "1", "--sets", "1", "--clients", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    throughput = [line.split() for line in lines if re.match(r"(publish|fetch) +\d", line)]
    # Two tables, each with publish and fetch for 1 and 2 clients.
    assert [(row[0], row[1]) for row in throughput] == [
        ("publish", "1"),
        ("fetch", "1"),
        ("publish", "2"),
        ("fetch", "2"),
    ] * 2
    rates = throughput[:4]
    for row in rates:
        # sets, relay MB/s, p50, floor MB/s, p50, relay/floor, +SHA MB/s, relay/+SHA, aio MB/s
        assert len(row) == 11 and all(float(cell) > 0 for cell in row[3:]), row
    for row in throughput[4:]:
        # relay, floor, +SHA-256 and aio: "client / server" CPU ms each
        assert len(row) == 2 + 4 * 3 and row[3::3] == ["/"] * 4, row
