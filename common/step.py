"""One agent's whole experience: fetch and aggregate its teachers' predictions, train,
evaluate, checkpoint, publish. `run_step` works on a live agent (all agents in one
process); `step_from_checkpoint` restores one from disk first (a Flower ClientApp,
whose process lives for one step). With exchange none nothing is fetched or published;
with fedavg all agents train one experience together (`fedavg_step`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from dkt.common.agent import Agent, ExperienceRecord
from dkt.common.checkpoints import checkpoint_path, latest_checkpoint
from dkt.common.config import ExperimentConfig
from dkt.common.exchange import PredictionExchange, exchange_kind
from dkt.common.listeners import Listener
from dkt.common.peers import teacher_predictions, teachers_of
from dkt.common.predictions import Predictions
from dkt.common.run_setup import Setup
from dkt.common.teacher import aggregate
from dkt.common.weight_averaging import average_states, state_nbytes


def run_step(
    agent: Agent,
    experience: int,
    exchange: PredictionExchange,
    config: ExperimentConfig,
    listener: Listener | None = None,
    checkpoint_dir: str | Path | None = None,
    teachers: tuple[int, ...] | None = None,
) -> ExperienceRecord:
    """One agent's whole experience: fetch and aggregate its teachers' predictions,
    train, evaluate, publish its own, checkpoint. `teachers` defaults to the agent's
    spec (its directed teachers, else the peer policy). With exchange none the agent
    learns alone: no teachers, nothing published, 0 bytes."""
    kind = exchange_kind(config.exchange)
    if kind.averages_weights:
        raise ValueError("exchange fedavg trains all agents of an experience together: "
                         "use fedavg_step")  # fmt: skip
    found: list[Predictions] = []
    if kind.shares_predictions:
        if teachers is None:
            teachers = teachers_of(config, agent.agent_id, experience)
        last = {t: config.agent_experiences(t) - 1 for t in teachers}
        found = teacher_predictions(
            exchange, agent.agent_id, teachers, experience, config.schedule, last
        )
    teacher = aggregate(found, config.aggregation)
    if listener is not None:
        listener.experience_started(agent.agent_id, experience, [p.agent_id for p in found])

    def on_epoch(epoch: int, epochs: int) -> None:
        if listener is not None:
            listener.epoch_done(agent.agent_id, experience, epoch, epochs)

    record, predictions = agent.train_experience(experience, teacher, on_epoch)
    record.bytes_fetched = sum(exchange.encoded_size(p) for p in found)
    record.bytes_published = exchange.encoded_size(predictions) if kind.shares_predictions else 0
    # Checkpoint first: a step that dies after this republishes the saved predictions
    # instead of retraining (which on a GPU need not give the same logits).
    if checkpoint_dir is not None:
        agent.save_checkpoint(checkpoint_dir, predictions)
    if kind.shares_predictions:
        exchange.publish(predictions)
    if listener is not None:
        listener.experience_done(agent.agent_id, record)
    return record


def fedavg_step(
    agents: Sequence[Agent],
    experience: int,
    listener: Listener | None = None,
    checkpoint_dir: str | Path | None = None,
) -> list[ExperienceRecord]:
    """One FedAvg round per experience: every agent trains `experience` from the same
    weights, the backbone and cl head are averaged, weighted by the rows each agent
    trained on (its experience's plus its replay memory's), and every agent continues
    from that average with a fresh Adam. Each is then evaluated, recorded and
    checkpointed with the average. Bytes: each agent uploads its weights (published)
    and downloads the average (fetched); the st head, which nothing trains, stays as
    initialised and is not sent."""
    fits = []
    for agent in agents:
        if listener is not None:
            listener.experience_started(agent.agent_id, experience, [])

        def on_epoch(epoch: int, epochs: int, agent_id: int = agent.agent_id) -> None:
            if listener is not None:
                listener.epoch_done(agent_id, experience, epoch, epochs)

        fits.append(agent.fit(experience, None, on_epoch))
    sent = [_averaged_part(agent) for agent in agents]
    average = average_states(sent, [fit.rows for fit in fits])
    records = []
    for agent, fit, own in zip(agents, fits, sent, strict=True):
        agent.adopt_weights(average)
        record, predictions = agent.conclude(fit)
        record.bytes_published = state_nbytes(own)
        record.bytes_fetched = state_nbytes(average)
        if checkpoint_dir is not None:
            agent.save_checkpoint(checkpoint_dir, predictions)
        if listener is not None:
            listener.experience_done(agent.agent_id, record)
        records.append(record)
    return records


def _averaged_part(agent: Agent) -> dict[str, torch.Tensor]:
    """What FedAvg moves of an agent's model: all but the st head."""
    return {k: v for k, v in agent.model.state_dict().items() if not k.startswith("st.")}


@dataclass
class StepOutcome:
    """What one experience of a disk-backed agent produced."""

    record: ExperienceRecord
    retrained: bool  # False when the experience was already done and only republished


def step_from_checkpoint(
    setup: Setup,
    agent_id: int,
    experience: int,
    exchange: PredictionExchange,
    checkpoint_dir: str | Path,
    *,
    teachers: tuple[int, ...] | None = None,
    device: str = "cpu",
    listener: Listener | None = None,
) -> StepOutcome:
    """Restore an agent from its checkpoints, train one experience, checkpoint again.

    For agents whose process lives for one step (a Flower ClientApp). Idempotent: an
    experience already done is not retrained; its predictions are republished (the
    exchange accepts identical repeats) and its stored record returned.
    """
    setup.config.check_deployable()
    agent = setup.make_agent(agent_id, device)
    if experience >= len(agent.stream):
        raise ValueError(
            f"agent {agent_id} has {len(agent.stream)} experience(s) (strategy "
            f"{agent.spec.strategy}), so none numbered {experience}"
        )
    done = latest_checkpoint(checkpoint_dir, agent_id)
    if done is not None and done[0] >= experience:
        agent_path = checkpoint_path(checkpoint_dir, agent_id, experience)
        saved = agent.load_checkpoint(agent_path)
        if agent.exchange.shares_predictions:
            exchange.publish(saved)
        return StepOutcome(agent.history[experience], retrained=False)
    newest = -1 if done is None else done[0]
    if newest != experience - 1:
        raise ValueError(
            f"agent {agent_id} cannot train experience {experience}: its newest checkpoint "
            f"in {checkpoint_dir} is for experience {newest}; train experience "
            f"{newest + 1} first"
        )
    if done is not None:
        agent.load_checkpoint(done[1])
    record = run_step(
        agent, experience, exchange, setup.config, listener, checkpoint_dir, teachers=teachers
    )
    return StepOutcome(record, retrained=True)
