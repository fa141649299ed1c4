"""One agent's whole experience: fetch and aggregate its teachers' predictions, train,
evaluate, checkpoint, publish. `run_step` works on a live agent (all agents in one
process); `step_from_checkpoint` restores one from disk first (a Flower ClientApp,
whose process lives for one step). With exchange none nothing is fetched or published;
with fedavg all agents train one experience together (`fedavg_step`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from dkt.common.choices import TEACHER_SOURCES
from dkt.common.engine.setup import Setup
from dkt.common.evaluation.results import ExperienceRecord
from dkt.common.run.config import ExperimentConfig
from dkt.common.run.exchange_kinds import exchange_kind
from dkt.common.training.agent import Agent, Fit
from dkt.common.training.checkpoints import (
    checkpoint_path,
    latest_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from dkt.common.training.exchange import PredictionExchange, TeacherTargetsExchange
from dkt.common.training.listeners import Listener
from dkt.common.training.model import build_model
from dkt.common.training.peers import PeerSet, fetch_set, teacher_sets, teachers_of
from dkt.common.training.predictions import Predictions
from dkt.common.training.teacher import Teacher, aggregate
from dkt.common.training.weight_averaging import average_states, state_nbytes


def run_step(
    agent: Agent,
    experience: int,
    exchange: PredictionExchange,
    config: ExperimentConfig,
    listener: Listener | None = None,
    checkpoint_dir: str | Path | None = None,
    teachers: tuple[int, ...] | None = None,
    teacher_last: Mapping[int, int] | None = None,
) -> ExperienceRecord:
    """One agent's whole experience: fetch and aggregate its teachers' predictions,
    train, evaluate, publish its own, checkpoint. `teachers` defaults to the agent's
    spec (its directed teachers, else the peer policy); `teacher_last` is each
    teacher's last experience (default: from the config; the conductor knows it from
    the plans of agents with their own data). With exchange none the agent learns
    alone: no teachers, nothing published, 0 bytes."""
    kind = exchange_kind(config.exchange)
    if kind.averages_weights:
        raise ValueError("exchange fedavg trains all agents of an experience together: "
                         "use fedavg_step")  # fmt: skip
    teacher: Teacher | None = None
    fetched = 0
    if kind.shares_predictions:
        if teachers is None:
            teachers = teachers_of(config, agent.agent_id, experience)
        last = {t: config.agent_experiences(t) - 1 for t in teachers}
        last.update({t: e for t, e in (teacher_last or {}).items() if t in last})
        peers = teacher_sets(agent.agent_id, teachers, experience, config.schedule, last)
        teacher, fetched = fetch_teacher(
            exchange, agent.agent_id, experience, peers, config.aggregation, config.teacher_source
        )
    if listener is not None:
        sources = [a for a, _ in teacher.sources] if teacher is not None else []
        listener.experience_started(agent.agent_id, experience, sources)

    def on_epoch(epoch: int, epochs: int) -> None:
        if listener is not None:
            listener.epoch_done(agent.agent_id, experience, epoch, epochs)

    record, predictions = agent.train_experience(experience, teacher, on_epoch)
    record.bytes_fetched = fetched
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


def fetch_teacher(
    exchange: PredictionExchange,
    agent_id: int,
    experience: int,
    peers: list[PeerSet],
    aggregation: str,
    source: str = "agents",
) -> tuple[Teacher | None, int]:
    """The agent's teacher from the sets `peers` name, and the bytes of logits fetched.

    agents: every set is fetched and combined here. relay: an exchange that can
    (`TeacherTargetsExchange`, the relay's) combines them and sends one set; any other
    (the in-memory exchange of one process) combines them here with the same `aggregate`
    and counts the one set the relay would send."""
    if source not in TEACHER_SOURCES:
        raise ValueError(
            f"unknown teacher source {source!r}; choose one of {', '.join(TEACHER_SOURCES)}"
        )
    if not peers:
        return None, 0
    if source == "relay" and isinstance(exchange, TeacherTargetsExchange):
        return exchange.teacher_targets(agent_id, experience, peers, aggregation)
    found = [p for p in (fetch_set(exchange, peer) for peer in peers) if p is not None]
    teacher = aggregate(found, aggregation)
    if source == "relay":
        # The one float32 set the relay would send.
        return teacher, 0 if teacher is None else teacher.logits.numel() * 4
    return teacher, sum(exchange.encoded_size(p) for p in found)


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
    initialised and is not sent. `dkt run` does the same round in two Flower messages
    per agent (`fedavg_fit_from_checkpoint`, then `fedavg_conclude_from_checkpoint`)."""
    fits = []
    for agent in agents:
        if listener is not None:
            listener.experience_started(agent.agent_id, experience, [])
        fits.append(
            agent.fit(experience, None, _epoch_callback(agent.agent_id, experience, listener))
        )
    average = average_states([averaged_part(agent) for agent in agents], [f.rows for f in fits])
    return [
        _adopt_and_conclude(agent, fit, average, checkpoint_dir, listener)
        for agent, fit in zip(agents, fits, strict=True)
    ]


def averaged_part(agent: Agent) -> dict[str, torch.Tensor]:
    """What FedAvg moves of an agent's model: all but the st head (copies, so adopting
    the average later does not change them)."""
    return {k: v.detach().clone() for k, v in agent.model.state_dict().items() if _averaged(k)}


def averaged_layout(
    backbone: str, input_shape: tuple[int, int, int], num_classes: int
) -> dict[str, torch.Tensor]:
    """The entries, shapes and dtypes of `averaged_part` for a model of this backbone,
    as tensors on the meta device (no memory, no weights): what the conductor checks an
    agent's weights against before it averages them."""
    with torch.device("meta"):
        model = build_model(backbone, input_shape, num_classes)
    return {k: v for k, v in model.state_dict().items() if _averaged(k)}


def _averaged(key: str) -> bool:
    """Whether FedAvg moves this entry of a model's state: all but the st head's."""
    return not key.startswith("st.")


def _epoch_callback(
    agent_id: int, experience: int, listener: Listener | None
) -> Callable[[int, int], None]:
    def on_epoch(epoch: int, epochs: int) -> None:
        if listener is not None:
            listener.epoch_done(agent_id, experience, epoch, epochs)

    return on_epoch


def _adopt_and_conclude(
    agent: Agent,
    fit: Fit,
    average: dict[str, torch.Tensor],
    checkpoint_dir: str | Path | None,
    listener: Listener | None,
) -> ExperienceRecord:
    """The second half of a FedAvg round for one agent that has fitted: continue from
    the average, evaluate, count the bytes, checkpoint."""
    own = averaged_part(agent)
    agent.adopt_weights(average)
    record, predictions = agent.conclude(fit)
    record.bytes_published = state_nbytes(own)
    record.bytes_fetched = state_nbytes(average)
    if checkpoint_dir is not None:
        agent.save_checkpoint(checkpoint_dir, predictions)
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
    teacher_last: Mapping[int, int] | None = None,
    device: str = "cpu",
    listener: Listener | None = None,
) -> StepOutcome:
    """Restore an agent from its checkpoints, train one experience, checkpoint again.

    For agents whose process lives for one step (a Flower ClientApp). Idempotent: an
    experience already done is not retrained; its predictions are republished (the
    exchange accepts identical repeats) and its stored record returned. Under fedavg
    an experience takes two steps: `fedavg_fit_from_checkpoint`, then
    `fedavg_conclude_from_checkpoint`.
    """
    agent = _agent_for(setup, agent_id, experience, device)
    if agent.exchange.averages_weights:
        raise ValueError(
            "exchange fedavg trains an experience in two steps (fit, then adopt the "
            "average): use fedavg_fit_from_checkpoint and fedavg_conclude_from_checkpoint"
        )
    done = _done_or_restored(agent, experience, checkpoint_dir)
    if done is not None:
        if agent.exchange.shares_predictions:
            exchange.publish(done)
        return StepOutcome(agent.history[experience], retrained=False)
    record = run_step(
        agent,
        experience,
        exchange,
        setup.config,
        listener,
        checkpoint_dir,
        teachers=teachers,
        teacher_last=teacher_last,
    )
    return StepOutcome(record, retrained=True)


@dataclass
class FedAvgFit:
    """One agent's half of a FedAvg round: its weights after training, to be averaged."""

    weights: dict[str, torch.Tensor]  # all but the st head (see `averaged_part`)
    rows: int  # FedAvg's n_k: the rows it trained on
    retrained: bool  # False when this experience was already fitted and only re-sent


def fit_path(directory: str | Path, agent_id: int, experience: int) -> Path:
    """Where a disk-backed FedAvg agent keeps its state between fitting `experience` and
    adopting the round's average (next to its checkpoints; not one itself)."""
    return checkpoint_path(directory, agent_id, experience).with_name(f"fitted-{experience:03d}.pt")


def fedavg_fit_from_checkpoint(
    setup: Setup,
    agent_id: int,
    experience: int,
    checkpoint_dir: str | Path,
    *,
    device: str = "cpu",
    listener: Listener | None = None,
) -> FedAvgFit:
    """The first half of a disk-backed FedAvg round: restore the agent (after the
    previous round's average), train `experience`, keep the trained state on disk and
    return the weights to average. Idempotent: a round already fitted is not retrained."""
    agent = _agent_for(setup, agent_id, experience, device)
    pending = fit_path(checkpoint_dir, agent_id, experience)
    if pending.exists():
        agent.load_state_dict(read_checkpoint(pending)["state"])
        return FedAvgFit(averaged_part(agent), _saved_fit(pending).rows, retrained=False)
    if _done_or_restored(agent, experience, checkpoint_dir) is not None:
        raise ValueError(
            f"agent {agent_id} has already finished experience {experience} and no longer "
            f"holds its trained weights ({pending} is gone): the round cannot be re-sent"
        )
    if listener is not None:
        listener.experience_started(agent_id, experience, [])
    fit = agent.fit(experience, None, _epoch_callback(agent_id, experience, listener))
    fields = {k: v for k, v in vars(fit).items() if k != "teacher"}
    write_checkpoint(pending, {"state": agent.state_dict(), "fit": fields})
    return FedAvgFit(averaged_part(agent), fit.rows, retrained=True)


def fedavg_conclude_from_checkpoint(
    setup: Setup,
    agent_id: int,
    experience: int,
    average: dict[str, torch.Tensor],
    checkpoint_dir: str | Path,
    *,
    device: str = "cpu",
    listener: Listener | None = None,
) -> StepOutcome:
    """The second half: restore the state `fedavg_fit_from_checkpoint` kept, continue
    from the round's `average`, evaluate, checkpoint. Idempotent like
    `step_from_checkpoint`; the kept states of earlier rounds are removed."""
    agent = _agent_for(setup, agent_id, experience, device)
    done = latest_checkpoint(checkpoint_dir, agent_id)
    if done is not None and done[0] >= experience:
        agent.load_checkpoint(checkpoint_path(checkpoint_dir, agent_id, experience))
        return StepOutcome(agent.history[experience], retrained=False)
    pending = fit_path(checkpoint_dir, agent_id, experience)
    if not pending.exists():
        raise ValueError(
            f"agent {agent_id} has not trained experience {experience} of this FedAvg round "
            f"({pending} does not exist): send it the train message first"
        )
    agent.load_state_dict(read_checkpoint(pending)["state"])
    record = _adopt_and_conclude(agent, _saved_fit(pending), average, checkpoint_dir, listener)
    for older in pending.parent.glob("fitted-*.pt"):
        if int(older.stem.split("-")[1]) < experience:
            older.unlink(missing_ok=True)
    return StepOutcome(record, retrained=True)


def _saved_fit(path: Path) -> Fit:
    return Fit(teacher=None, **read_checkpoint(path)["fit"])


def _agent_for(setup: Setup, agent_id: int, experience: int, device: str) -> Agent:
    """A fresh agent of the run, refusing an experience its stream does not have."""
    agent = setup.make_agent(agent_id, device)
    if experience >= len(agent.stream):
        raise ValueError(
            f"agent {agent_id} has {len(agent.stream)} experience(s) (strategy "
            f"{agent.spec.strategy}), so none numbered {experience}"
        )
    return agent


def _done_or_restored(
    agent: Agent, experience: int, checkpoint_dir: str | Path
) -> Predictions | None:
    """If `experience` is already done, restore the agent as it was after it and return
    the predictions it published then. Otherwise restore it after `experience - 1` (it
    must be the newest checkpoint) and return None."""
    agent_id = agent.agent_id
    done = latest_checkpoint(checkpoint_dir, agent_id)
    if done is not None and done[0] >= experience:
        return agent.load_checkpoint(checkpoint_path(checkpoint_dir, agent_id, experience))
    newest = -1 if done is None else done[0]
    if newest != experience - 1:
        raise ValueError(
            f"agent {agent_id} cannot train experience {experience}: its newest checkpoint "
            f"in {checkpoint_dir} is for experience {newest}; train experience "
            f"{newest + 1} first"
        )
    if done is not None:
        agent.load_checkpoint(done[1])
    return None
