"""`dkt simulate --engine flower`: the conductor ServerApp and the agent ClientApp under
Flower's Simulation Engine (Ray), with the same numbers as the in-process engine."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest
import torch

from dkt.common.engine.simulation import simulate
from dkt.common.run.config import ExperimentConfig
from tests.integration.test_flower_run import assert_same_numbers, records
from tests.support.experiments import numbers


@pytest.mark.slow
def test_simulate_on_flowers_engine_gives_the_in_process_engines_numbers(tmp_path):
    out = tmp_path / "fleet"
    flags = ["--engine", "flower", "--num-cpus", "0.5", "--dataset", "digits",
             "--agents", "2", "--experiences", "2", "--seed", "3", "--quiet"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "dkt", "simulate", "--out", str(out), *flags],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    config = ExperimentConfig.from_toml(out / "config.toml")
    assert (config.agents, config.experiences, config.seed) == (2, 2, 3)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["provenance"]["command"].endswith(shlex.join(flags))
    # Each agent trained on one torch thread (--num-cpus 0.5): so does the reference, and
    # the numbers agree (to the bit, here; float rounding allowed).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = simulate(config)
    finally:
        torch.set_num_threads(before)
    for a in range(2):
        assert_same_numbers(records(metrics, a), numbers(expected.histories[a]))
    # Each agent's state between messages: a checkpoint per experience in its own folder.
    for a in range(2):
        assert (out / "checkpoints" / f"agent-{a}").is_dir()
