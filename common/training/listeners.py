"""Progress events of a run (for progress bars, logs and the relay's status)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # torch-free at run time: `dkt.Listener` must not load torch
    from dkt.common.evaluation.results import ExperienceRecord


class Listener(Protocol):
    """Receives progress events from a run."""

    def experience_started(self, agent_id: int, experience: int, teachers: list[int]) -> None: ...

    def epoch_done(self, agent_id: int, experience: int, epoch: int, epochs: int) -> None: ...

    def experience_done(self, agent_id: int, record: ExperienceRecord) -> None: ...


class Listeners:
    """Several listeners as one."""

    def __init__(self, *listeners: Listener | None) -> None:
        self.listeners = [x for x in listeners if x is not None]

    def experience_started(self, agent_id: int, experience: int, teachers: list[int]) -> None:
        for x in self.listeners:
            x.experience_started(agent_id, experience, teachers)

    def epoch_done(self, agent_id: int, experience: int, epoch: int, epochs: int) -> None:
        for x in self.listeners:
            x.epoch_done(agent_id, experience, epoch, epochs)

    def experience_done(self, agent_id: int, record: ExperienceRecord) -> None:
        for x in self.listeners:
            x.experience_done(agent_id, record)
