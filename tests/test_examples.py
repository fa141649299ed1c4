"""The Python API's examples run as a user runs them, each in a fresh interpreter from the
repository root, and print what their docstrings promise."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def table_rows(out: str) -> list[tuple[int, int]]:
    """(agent, experience) of each row of an example's table."""
    return [(int(a), int(e)) for a, e in re.findall(r"^\s+(\d+)\s+(\d+)\s", out, re.MULTILINE)]


def test_quickstart_prints_a_row_per_agent_and_experience_and_each_agents_accuracy():
    out = run_example("quickstart.py")

    assert out.startswith("agent  experience  classes")
    assert table_rows(out) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    averages = re.findall(r"^agent (\d): average accuracy \(cl head\) (\d+\.\d)%$", out, re.M)
    assert [a for a, _ in averages] == ["0", "1"]
    assert all(0 < float(v) <= 100 for _, v in averages)
    # disjoint classes: at experience 1 each agent is taught classes it never saw
    transfer = re.findall(r"^\s+\d\s+1\s.*\s(\d+\.\d)$", out, re.MULTILINE)
    assert len(transfer) == 2
    assert "to_frame(): 4 rows × 20 columns" in out  # pandas is in the dev extra


def test_own_data_example_runs_both_sites_on_their_own_data():
    out = run_example("own_data.py")

    assert table_rows(out) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # site 1's experiences.toml: 4,5,6 then 7,8,9
    assert re.search(r"^\s+1\s+0\s+4,5,6\s", out, re.MULTILINE)
    assert re.search(r"^\s+1\s+1\s+7,8,9\s", out, re.MULTILINE)
    assert "agent data: {'0': 'own', '1': 'own'}" in out
