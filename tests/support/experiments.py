"""Shared by the tests that run experiments: a small config, histories without
timings, and a listener that interrupts a run the way a crash or Ctrl-C would."""

from __future__ import annotations

from dkt.common.evaluation.results import ExperienceRecord
from dkt.common.run.config import ExperimentConfig

# Synthetic data: 6 classes, 60 training rows each; 3 agents, 3 experiences of 2 classes.
SMALL = ExperimentConfig(
    dataset="synthetic",
    agents=3,
    experiences=3,
    probe_size=36,
    epochs=2,
    batch_size=16,
    probe_batch_size=16,
    replay_size=24,
)

TIMING_FIELDS = ("train_seconds",)


def numbers(history: list[ExperienceRecord]) -> list[dict]:
    """A history without wall-clock timings, which legitimately differ between runs."""
    return [{k: v for k, v in r.to_dict().items() if k not in TIMING_FIELDS} for r in history]


class StopAfter(Exception):
    pass


class InterruptAt:
    """A listener that raises `StopAfter` once the given agent finishes the given
    experience, as a crash or Ctrl-C would."""

    def __init__(self, agent_id: int, experience: int) -> None:
        self.at = (agent_id, experience)

    def experience_started(self, agent_id: int, experience: int, teachers: list[int]) -> None:
        pass

    def epoch_done(self, agent_id: int, experience: int, epoch: int, epochs: int) -> None:
        pass

    def experience_done(self, agent_id: int, record: ExperienceRecord) -> None:
        if (agent_id, record.experience) == self.at:
            raise StopAfter
