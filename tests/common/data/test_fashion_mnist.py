"""The real Fashion-MNIST files from Debian's `dataset-fashion-mnist` package (.ci/run
installs it): read without copying, and learned from by a short run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dkt.common.data.datasets import load_dataset
from dkt.common.data.image_formats import SYSTEM_FOLDERS
from dkt.common.engine.simulation import simulate
from dkt.common.run.config import ExperimentConfig

FOLDER = SYSTEM_FOLDERS["fashion-mnist"]
pytestmark = pytest.mark.skipif(
    not FOLDER.is_dir(),
    reason=f"no {FOLDER}: `apt-get install dataset-fashion-mnist` (as .ci/run does) to run these",
)


def test_the_debian_files_are_the_whole_data_set() -> None:
    splits = load_dataset("fashion-mnist")

    assert splits.train.x.shape == (60_000, 1, 28, 28)
    assert splits.test.x.shape == (10_000, 1, 28, 28)
    assert splits.num_classes == 10
    assert torch.bincount(splits.train.y).tolist() == [6_000] * 10
    assert torch.bincount(splits.test.y).tolist() == [1_000] * 10
    # Normalised with the published statistics, so the training pixels are ~N(0, 1).
    assert abs(splits.train.x.mean().item()) < 0.01
    assert splits.train.x.std().item() == pytest.approx(1.0, abs=0.01)


@pytest.mark.slow
def test_two_agents_learn_fashion_mnist_and_transfer_what_the_other_saw(tmp_path: Path) -> None:
    config = ExperimentConfig(
        dataset="fashion-mnist", agents=2, experiences=2, assignment="disjoint", epochs=1
    )

    result = simulate(config, checkpoint_dir=tmp_path)

    for history in result.histories.values():
        first, last = history[0], history[-1]
        # 3 of the 10 classes after the first experience, so at most 0.3 over all classes.
        assert 0.25 < first.acc_all_cl <= 0.3
        # The classes the peer learned first, never seen here, through the st head only
        # (measured 0.98 and 0.96).
        assert last.transfer_cl == 0.0
        assert last.transfer_st is not None and last.transfer_st > 0.8
