"""Where agents publish predictions and fetch their peers': the interface, and the
in-memory exchange used when all agents run in one process (what each kind of exchange
moves: common/run/exchange_kinds.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from dkt.common.training.predictions import Predictions

if TYPE_CHECKING:
    from dkt.common.training.peers import PeerSet
    from dkt.common.training.teacher import Teacher


class PredictionExchange(Protocol):
    """Carries `Predictions` between the agents of one run."""

    def publish(self, predictions: Predictions) -> None:
        """Store an agent's predictions for one experience (immutable once stored)."""

    def fetch(self, agent_id: int, experience: int) -> Predictions | None:
        """The predictions an agent published after `experience`, or None if it has not."""

    def latest(self, agent_id: int, max_experience: int | None = None) -> Predictions | None:
        """The agent's newest predictions, optionally at or before `max_experience`."""

    def encoded_size(self, predictions: Predictions) -> int:
        """Bytes of logits this exchange moves for one prediction set."""


@runtime_checkable
class TeacherTargetsExchange(Protocol):
    """An exchange that also combines a student's teachers' sets itself (the relay's
    FetchTeacherTargets), so the student fetches one set instead of one per teacher."""

    def teacher_targets(
        self, agent_id: int, experience: int, peers: list[PeerSet], aggregation: str
    ) -> tuple[Teacher | None, int]:
        """The combined teacher of `agent_id` (None when no peer has a set) and the bytes
        of logits fetched."""


class InMemoryExchange:
    """A dictionary of prediction sets keyed by (agent, experience)."""

    def __init__(self) -> None:
        # Per agent, its sets by experience: `latest` looks at one agent's experiences,
        # not at every set of the run (with N agents each reading N-1 teachers, a scan of
        # the whole store made a sequential run cubic in N).
        self._store: dict[int, dict[int, Predictions]] = {}

    def publish(self, predictions: Predictions) -> None:
        agent_id, experience = predictions.agent_id, predictions.experience
        own = self._store.setdefault(agent_id, {})
        stored = own.get(experience)
        if stored is not None and not _same(stored, predictions):
            raise ValueError(
                f"agent {agent_id} already published different predictions for experience "
                f"{experience}"
            )
        own[experience] = predictions

    def fetch(self, agent_id: int, experience: int) -> Predictions | None:
        return self._store.get(agent_id, {}).get(experience)

    def latest(self, agent_id: int, max_experience: int | None = None) -> Predictions | None:
        own = self._store.get(agent_id, {})
        experiences = [e for e in own if max_experience is None or e <= max_experience]
        return own[max(experiences)] if experiences else None

    def encoded_size(self, predictions: Predictions) -> int:
        return predictions.nbytes


def _same(a: Predictions, b: Predictions) -> bool:
    return (
        a.classes_seen == b.classes_seen
        and a.probe_fingerprint == b.probe_fingerprint
        and a.logits.shape == b.logits.shape
        and bool((a.logits == b.logits).all())
    )
