"""A relay whose disk fills up: the publish that does not fit is RESOURCE_EXHAUSTED with a
message that says the disk is full, nothing of it stays on disk, every acknowledged set is
served intact, status keeps answering, and publishes succeed again once there is space.
The data directory is a real tmpfs of a few MiB (mounting needs root, as .ci/run has)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dkt.common.data.probe import ProbeSet
from dkt.common.training.predictions import Predictions
from dkt.proto.relay_client import RelayClient, ResourceExhaustedError
from tests.support.relay import Tokens, client_for, running_relay

CLASSES = 100
ROWS = 2000  # a prediction set of 2000 x 100 float32 logits: 800 KB


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (.ci/run runs as root)")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _set(run_id: str, probe: ProbeSet, agent: int, experience: int) -> Predictions:
    gen = torch.Generator().manual_seed(100 * agent + experience)
    return Predictions(
        agent, experience, (0, 1), probe.fingerprint,
        torch.randn(ROWS, CLASSES, generator=gen), run_id=run_id,
    )  # fmt: skip


def test_a_full_disk_refuses_a_publish_as_resource_exhausted_and_loses_nothing(
    small_disk: Path, tmp_path: Path
) -> None:
    tokens = Tokens.generate(4)
    token_file = tokens.write(tmp_path / "tokens.toml")
    data = small_disk / "relay"
    probe = ProbeSet.from_inputs(torch.zeros(ROWS, 1, 1, 1), source="test")
    with running_relay(data, ["--token-file", str(token_file), "--insecure"]) as relay:
        admin: RelayClient = client_for(relay, tokens.admin)
        admin.create_run("full", probe, CLASSES, 4, expected_agents=4)
        stored: list[Predictions] = []
        with pytest.raises(ResourceExhaustedError) as failure:
            for agent in range(4):
                with client_for(relay, tokens.credential(agent, "full")) as client:
                    predictions = _set("full", probe, agent, 0)
                    client.publish(predictions)
                    stored.append(predictions)

        assert "the relay's disk is full; nothing was stored" in failure.value.details
        assert 1 <= len(stored) < 4
        refused = len(stored)
        assert list((data / "tmp").iterdir()) == []  # the part written was removed
        assert [p.agent_id for p in admin.list_predictions("full")] == list(range(refused))
        for predictions in stored:
            fetched = admin.fetch("full", predictions.agent_id, 0)
            assert torch.equal(fetched.logits, predictions.logits)
        status = admin.status()
        assert [r["run_id"] for r in status["runs"]] == ["full"]

        subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
        with client_for(relay, tokens.credential(refused, "full")) as client:
            receipt = client.publish(_set("full", probe, refused, 0))

        assert receipt.already_stored is False
        assert len(admin.list_predictions("full")) == refused + 1
        admin.close()
