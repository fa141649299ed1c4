"""One agent's whole experience: fetch and aggregate its teachers' predictions, train,
evaluate, checkpoint, publish. `run_step` works on a live agent (all agents in one
process); `step_from_checkpoint` restores one from disk first (a Flower ClientApp,
whose process lives for one step)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dkt.common.agent import Agent, ExperienceRecord
from dkt.common.checkpoints import checkpoint_path, latest_checkpoint
from dkt.common.config import ExperimentConfig
from dkt.common.exchange import PredictionExchange
from dkt.common.listeners import Listener
from dkt.common.peers import teacher_predictions, teachers_of
from dkt.common.run_setup import Setup
from dkt.common.teacher import aggregate


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
    spec (its directed teachers, else the peer policy)."""
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
    record.bytes_published = exchange.encoded_size(predictions)
    # Checkpoint first: a step that dies after this republishes the saved predictions
    # instead of retraining (which on a GPU need not give the same logits).
    if checkpoint_dir is not None:
        agent.save_checkpoint(checkpoint_dir, predictions)
    exchange.publish(predictions)
    if listener is not None:
        listener.experience_done(agent.agent_id, record)
    return record


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
    agent = setup.make_agent(agent_id, device)
    if experience >= len(agent.stream):
        raise ValueError(
            f"agent {agent_id} has {len(agent.stream)} experience(s) (strategy "
            f"{agent.spec.strategy}), so none numbered {experience}"
        )
    done = latest_checkpoint(checkpoint_dir, agent_id)
    if done is not None and done[0] >= experience:
        agent_path = checkpoint_path(checkpoint_dir, agent_id, experience)
        exchange.publish(agent.load_checkpoint(agent_path))
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
