"""Peer policies (who teaches whom) and schedules (which of their predictions)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from dkt.common.choices import PEER_POLICIES, SCHEDULES
from dkt.common.run.config import ExperimentConfig
from dkt.common.seeding import derive_seed
from dkt.common.training.exchange import PredictionExchange
from dkt.common.training.predictions import Predictions


def assign_teachers(
    agent_id: int, experience: int, agents: int, policy: str, k: int = 1, seed: int = 0
) -> tuple[int, ...]:
    """The peers `agent_id` distills from at `experience`, sorted."""
    others = [a for a in range(agents) if a != agent_id]
    if policy == "all":
        return tuple(others)
    if policy == "ring":
        return ((agent_id - 1) % agents,) if agents > 1 else ()
    if policy == "random-k":
        if not others:
            return ()
        if not 1 <= k <= len(others):
            raise ValueError(f"random-k needs 1 <= k <= {len(others)}, got k={k}")
        gen = torch.Generator().manual_seed(derive_seed(seed, "peers", agent_id, experience))
        picks = torch.randperm(len(others), generator=gen)[:k].tolist()
        return tuple(sorted(others[i] for i in picks))
    raise ValueError(f"unknown peer policy {policy!r}; choose one of {', '.join(PEER_POLICIES)}")


def teachers_of(config: ExperimentConfig, agent_id: int, experience: int) -> tuple[int, ...]:
    """The peers `agent_id` distills from at `experience`: its spec's directed
    `teachers` when it names them (none for `[]`), else the run's peer policy."""
    own = config.agent_spec(agent_id).teachers
    if own is not None:
        return own
    return assign_teachers(
        agent_id, experience, config.agents, config.peer_policy, config.peers_k, config.seed
    )


@dataclass(frozen=True)
class PeerSet:
    """Which prediction set of one teacher to use: that of `experience`, or when
    `experience` is None its newest, at or before `max_experience` when that is set."""

    agent_id: int
    experience: int | None = None
    max_experience: int | None = None


def teacher_sets(
    agent_id: int,
    teachers: tuple[int, ...],
    experience: int,
    schedule: str,
    last_experience: Mapping[int, int] | None = None,
) -> list[PeerSet]:
    """Which set of each of `teachers` `agent_id` training `experience` should use.

    sync: each teacher's predictions after experience-1 (none at experience 0); a
    teacher whose stream has already ended (`last_experience`, e.g. a joint agent's 0)
    gives its final predictions.
    sequential: agents train in id order within an experience, so a teacher before
    this agent has finished `experience` and one after it only experience-1; each
    teacher's newest predictions within that bound are used (the original
    experiment 3: A at e uses B after e-1, B at e uses A after e).
    async: each teacher's newest predictions, whatever their experience (agents
    progress at their own pace; only the Flower conductor runs this schedule).
    """
    if schedule == "sync":
        last = last_experience or {}
        if experience == 0:
            return []
        return [PeerSet(t, min(experience - 1, last.get(t, experience))) for t in teachers]
    if schedule == "sequential":
        return [
            PeerSet(t, max_experience=experience if t < agent_id else experience - 1)
            for t in teachers
        ]
    if schedule == "async":
        return [PeerSet(t) for t in teachers]
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def fetch_set(exchange: PredictionExchange, peer: PeerSet) -> Predictions | None:
    """The set `peer` names, or None when it is not published (yet)."""
    if peer.experience is not None:
        return exchange.fetch(peer.agent_id, peer.experience)
    return exchange.latest(peer.agent_id, max_experience=peer.max_experience)


def teacher_predictions(
    exchange: PredictionExchange,
    agent_id: int,
    teachers: tuple[int, ...],
    experience: int,
    schedule: str,
    last_experience: Mapping[int, int] | None = None,
) -> list[Predictions]:
    """The predictions of `teachers` that `agent_id` training `experience` should use
    (`teacher_sets` says which); teachers that have published nothing usable yet are
    skipped."""
    found = [
        fetch_set(exchange, peer)
        for peer in teacher_sets(agent_id, teachers, experience, schedule, last_experience)
    ]
    return [p for p in found if p is not None]
