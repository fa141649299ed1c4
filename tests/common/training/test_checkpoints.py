"""Specification of per-experience checkpoints on disk (common/training/checkpoints.py):
an agent's checkpoints live in agent-ID/experience-NNN.pt under the checkpoint folder;
`latest_checkpoint` finds the newest experience's (None when there is none); what
`write_checkpoint` saves, `read_checkpoint` gives back on the CPU; writing is atomic (the
file appears whole or not at all, and an interrupted write's .tmp is never taken for a
checkpoint); a missing or corrupt file is an error from `read_checkpoint`, never a silent
empty state."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from dkt.common.training.checkpoints import (
    checkpoint_path,
    latest_checkpoint,
    read_checkpoint,
    write_checkpoint,
)


def touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- checkpoint_path ------------------------------------------------------------------------


def test_checkpoint_path_is_agent_folder_and_zero_padded_experience(tmp_path: Path) -> None:
    assert checkpoint_path(tmp_path, 3, 7) == tmp_path / "agent-3" / "experience-007.pt"
    assert checkpoint_path(str(tmp_path), 12, 0) == tmp_path / "agent-12" / "experience-000.pt"
    assert checkpoint_path("ckpt", 0, 123) == Path("ckpt/agent-0/experience-123.pt")


# --- write and read -------------------------------------------------------------------------


def test_write_then_read_gives_back_the_state(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = {
        "format": 2,
        "model": {"w": torch.randn(3, 2), "b": torch.zeros(2, dtype=torch.float16)},
        "rng": torch.get_rng_state(),
        "fit": {"experience": 4, "classes": [1, 5], "teacher": None},
        "note": "after experience 4",
    }
    path = checkpoint_path(tmp_path, 1, 4)

    assert write_checkpoint(path, state) == path
    back = read_checkpoint(path)

    assert back.keys() == state.keys()
    assert torch.equal(back["model"]["w"], state["model"]["w"])
    assert back["model"]["b"].dtype == torch.float16
    assert torch.equal(back["rng"], state["rng"])
    assert back["rng"].dtype == torch.uint8
    assert back["rng"].device == torch.device("cpu")
    assert back["fit"] == {"experience": 4, "classes": [1, 5], "teacher": None}
    assert back["note"] == "after experience 4"


def test_write_creates_the_agent_folder_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = checkpoint_path(tmp_path / "new", 2, 0)

    write_checkpoint(path, {"x": 1})

    assert sorted(p.name for p in path.parent.iterdir()) == ["experience-000.pt"]


def test_writing_again_replaces_the_checkpoint(tmp_path: Path) -> None:
    path = checkpoint_path(tmp_path, 0, 1)
    write_checkpoint(path, {"version": "old"})

    write_checkpoint(path, {"version": "new"})

    assert read_checkpoint(path) == {"version": "new"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["experience-001.pt"]


def test_reading_a_missing_checkpoint_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_checkpoint(checkpoint_path(tmp_path, 0, 0))


def test_reading_a_corrupt_checkpoint_is_an_error(tmp_path: Path) -> None:
    path = touch(checkpoint_path(tmp_path, 0, 0), "not a checkpoint")

    with pytest.raises(pickle.UnpicklingError):
        read_checkpoint(path)


def test_reading_an_empty_checkpoint_file_is_an_error(tmp_path: Path) -> None:
    path = touch(checkpoint_path(tmp_path, 0, 0))

    with pytest.raises(EOFError):
        read_checkpoint(path)


# --- latest_checkpoint ----------------------------------------------------------------------


def test_latest_checkpoint_picks_the_newest_experience(tmp_path: Path) -> None:
    for experience in (0, 10, 2):
        write_checkpoint(checkpoint_path(tmp_path, 1, experience), {"e": experience})

    assert latest_checkpoint(tmp_path, 1) == (10, checkpoint_path(tmp_path, 1, 10))
    assert latest_checkpoint(str(tmp_path), 1) == (10, checkpoint_path(tmp_path, 1, 10))


def test_latest_checkpoint_is_per_agent(tmp_path: Path) -> None:
    write_checkpoint(checkpoint_path(tmp_path, 0, 1), {})
    write_checkpoint(checkpoint_path(tmp_path, 1, 3), {})

    assert latest_checkpoint(tmp_path, 0) == (1, checkpoint_path(tmp_path, 0, 1))
    assert latest_checkpoint(tmp_path, 1) == (3, checkpoint_path(tmp_path, 1, 3))


def test_no_checkpoint_is_none(tmp_path: Path) -> None:
    (tmp_path / "agent-4").mkdir()

    assert latest_checkpoint(tmp_path / "nowhere", 0) is None
    assert latest_checkpoint(tmp_path, 0) is None
    assert latest_checkpoint(tmp_path, 4) is None


def test_an_interrupted_write_and_other_files_are_not_checkpoints(tmp_path: Path) -> None:
    write_checkpoint(checkpoint_path(tmp_path, 0, 2), {})
    touch(tmp_path / "agent-0" / "experience-003.tmp", "half written")
    touch(tmp_path / "agent-0" / "notes.txt")
    touch(tmp_path / "agent-0" / "fit-009.pt")

    assert latest_checkpoint(tmp_path, 0) == (2, checkpoint_path(tmp_path, 0, 2))
