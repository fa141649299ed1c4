"""Per-experience checkpoints on disk: where an agent's checkpoints go, which is the
newest, and writing and reading one atomically. What one holds is `Agent.state_dict`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMAT = 2  # 2: records the agent's resolved spec


def checkpoint_path(directory: str | Path, agent_id: int, experience: int) -> Path:
    """Where agent `agent_id`'s checkpoint after `experience` lives under `directory`."""
    return Path(directory) / f"agent-{agent_id}" / f"experience-{experience:03d}.pt"


def latest_checkpoint(directory: str | Path, agent_id: int) -> tuple[int, Path] | None:
    """The newest complete checkpoint of an agent as (experience, path), if any."""
    folder = Path(directory) / f"agent-{agent_id}"
    found = sorted(folder.glob("experience-*.pt")) if folder.is_dir() else []
    if not found:
        return None
    path = found[-1]
    return int(path.stem.split("-")[1]), path


def write_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Save `state` at `path` atomically: a crash leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by `write_checkpoint`."""
    # On the CPU first: RNG states must stay CPU byte tensors; load_state_dict
    # copies weights and optimizer state onto the model's device.
    checkpoint: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return checkpoint
