"""A heterogeneous run on real Flower processes: agents with different backbones, whose
per-agent overrides travel in the Flower run config, exchange only logits."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dkt.common.engine.simulation import simulate
from dkt.common.evaluation.results import ExperienceRecord
from dkt.common.run.config import ExperimentConfig

FLAGS = [
    "--dataset", "synthetic", "--agents", "2", "--experiences", "2", "--probe-size", "30",
    "--epochs", "2", "--threads", "1",
    "--agent", "0:backbone=cnn", "--agent", "1:backbone=mlp,epochs=1",
]  # fmt: skip


@pytest.mark.slow
def test_dkt_run_with_a_cnn_and_an_mlp_agent_matches_simulate(tmp_path):
    out = tmp_path / "mixed"
    proc = subprocess.run(
        [sys.executable, "-m", "dkt", "run", "--out", str(out), "--quiet", *FLAGS],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    config = ExperimentConfig.from_toml(out / "config.toml")
    assert config.agent_overrides == {0: {"backbone": "cnn"}, 1: {"backbone": "mlp", "epochs": 1}}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["driver"] == "flower" and metrics["missing_agents"] == []
    assert [metrics["agents"][a]["spec"]["backbone"] for a in ("0", "1")] == ["cnn", "mlp"]
    expected = simulate(config)
    for a in (0, 1):
        got = [ExperienceRecord(**r) for r in metrics["agents"][str(a)]["experiences"]]
        want = expected.histories[a]
        assert [r.teachers for r in got] == [[], [[1 - a, 0]]]
        # Each agent trained with its own epochs: the mlp agent half the steps.
        assert [r.steps for r in got] == [r.steps for r in want]
        for g, w in zip(got, want, strict=True):
            assert g.acc_cl == pytest.approx(w.acc_cl, abs=1e-6)
            assert g.loss_kd == pytest.approx(w.loss_kd, rel=1e-5)
