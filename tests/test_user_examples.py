"""The extension examples run as a user runs them, each in a fresh interpreter from the
repository root: a user backbone and a user strategy, from Python and from the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DKT = [sys.executable, "-m", "dkt"]
TINY = ["--agents", "2", "--experiences", "2", "--epochs", "1", "--threads", "1", "--quiet"]


def run(args: list[str], pythonpath: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": pythonpath} if pythonpath else None
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)


def averages(out: str, pattern: str) -> list[tuple[str, float]]:
    return [(key, float(v)) for key, v in re.findall(pattern, out, re.MULTILINE)]


def test_user_backbone_example_trains_its_own_module_and_prints_each_agents_accuracy():
    proc = run([sys.executable, "examples/user_backbone.py"])

    assert proc.returncode == 0, proc.stderr[-3000:]
    found = averages(
        proc.stdout,
        r"^agent (\d): backbone user_backbone:make_net, average accuracy cl (\d+\.\d)%$",
    )
    assert [a for a, _ in found] == ["0", "1"]
    assert all(20 < acc <= 100 for _, acc in found)  # learnt: well above 1 in 10


def test_user_strategy_example_runs_naive_and_the_registered_strategy():
    proc = run([sys.executable, "examples/user_strategy.py"])

    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = re.findall(
        r"^strategy (\S+): agent (\d): average accuracy cl (\d+\.\d)%, forgetting cl (-?\d+\.\d)$",
        proc.stdout,
        re.MULTILINE,
    )
    assert [(s, a) for s, a, _, _ in rows] == [
        ("naive", "0"),
        ("naive", "1"),
        ("l2-anchor", "0"),
        ("l2-anchor", "1"),
    ]
    forgetting = {(s, a): float(f) for s, a, _, f in rows}
    # The anchor holds the first experience's weights: far less forgetting than naive.
    for agent in ("0", "1"):
        assert forgetting[("l2-anchor", agent)] < forgetting[("naive", agent)] - 20


def test_the_cli_takes_the_examples_backbone_and_strategy_as_module_callable(tmp_path: Path):
    out = tmp_path / "run"
    proc = run(
        [
            *DKT,
            "simulate",
            *TINY,
            "--backbone",
            "user_backbone:make_net",
            "--strategy",
            "user_strategy:l2_anchor",
            "--out",
            str(out),
        ],
        pythonpath="examples",
    )

    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert (config["backbone"], config["strategy"]) == (
        "user_backbone:make_net",
        "user_strategy:l2_anchor",
    )


def test_a_backbone_the_cli_cannot_import_is_one_line_that_says_what_to_do(tmp_path: Path):
    proc = run([*DKT, "simulate", *TINY, "--backbone", "user_backbone:make_net",
                "--out", str(tmp_path / "run")])  # fmt: skip

    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "dkt simulate: error: backbone user_backbone:make_net: cannot import module "
        "'user_backbone' (No module named 'user_backbone'); put it on PYTHONPATH or install "
        "it on every host that runs an agent"
    )
