"""Where agents publish predictions and fetch their peers': the interface, and the
in-memory exchange used when all agents run in one process."""

from __future__ import annotations

from typing import Protocol

from dkt.common.predictions import Predictions


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


class InMemoryExchange:
    """A dictionary of prediction sets keyed by (agent, experience)."""

    def __init__(self) -> None:
        self._store: dict[tuple[int, int], Predictions] = {}

    def publish(self, predictions: Predictions) -> None:
        key = (predictions.agent_id, predictions.experience)
        stored = self._store.get(key)
        if stored is not None and not _same(stored, predictions):
            raise ValueError(
                f"agent {key[0]} already published different predictions for experience {key[1]}"
            )
        self._store[key] = predictions

    def fetch(self, agent_id: int, experience: int) -> Predictions | None:
        return self._store.get((agent_id, experience))

    def latest(self, agent_id: int, max_experience: int | None = None) -> Predictions | None:
        experiences = [
            e
            for (a, e) in self._store
            if a == agent_id and (max_experience is None or e <= max_experience)
        ]
        return self._store[(agent_id, max(experiences))] if experiences else None

    def encoded_size(self, predictions: Predictions) -> int:
        return predictions.nbytes


def _same(a: Predictions, b: Predictions) -> bool:
    return (
        a.classes_seen == b.classes_seen
        and a.probe_fingerprint == b.probe_fingerprint
        and a.logits.shape == b.logits.shape
        and bool((a.logits == b.logits).all())
    )
