"""What agents share after each experience (the run's `exchange`: dkt, none, fedavg,
fedmd), and where they publish predictions and fetch their peers': the interface, and
the in-memory exchange used when all agents run in one process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dkt.common.choices import EXCHANGES
from dkt.common.training.predictions import Predictions


@dataclass(frozen=True)
class ExchangeKind:
    """What one kind of exchange moves between agents and where it lands.

    dkt: cl-head logits on the probe set; the teachers' aggregate is distilled into the
    st head. none: nothing, isolated agents (the reference). fedavg: model weights,
    averaged after every experience (weight_averaging.py). fedmd: logits, as dkt, but
    their consensus is distilled into the cl head itself (FedMD's digest step); there
    is no st head to speak of.
    """

    name: str
    shares_predictions: bool  # publishes its probe logits and fetches its teachers'
    kd_head: str | None  # the head teachers' logits are distilled into, if any
    averages_weights: bool

    @property
    def reports_st_head(self) -> bool:
        """Whether the st head learns anything, so its metrics mean something."""
        return self.kd_head == "st"

    def kd_weight(self, configured: float) -> float:
        """The λ that actually weights the KD term: 0 where nothing is distilled."""
        return configured if self.kd_head is not None else 0.0


_KINDS = {
    "dkt": ExchangeKind("dkt", shares_predictions=True, kd_head="st", averages_weights=False),
    "none": ExchangeKind("none", shares_predictions=False, kd_head=None, averages_weights=False),
    "fedavg": ExchangeKind("fedavg", shares_predictions=False, kd_head=None, averages_weights=True),
    "fedmd": ExchangeKind("fedmd", shares_predictions=True, kd_head="cl", averages_weights=False),
}


def exchange_kind(name: str) -> ExchangeKind:
    """The kind of exchange called `name` (a config's `exchange`)."""
    if name not in _KINDS:
        raise ValueError(f"unknown exchange {name!r}; choose one of {', '.join(EXCHANGES)}")
    return _KINDS[name]


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
