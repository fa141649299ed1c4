"""The in-process driver: every agent in one process, exchanging predictions through
an exchange (in memory by default), following the configured schedule."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dkt.common.config import ExperimentConfig
from dkt.common.data import DatasetSplits, LabeledData, load_dataset
from dkt.common.engine import Agent, ExperienceRecord, checkpoint_path, latest_checkpoint
from dkt.common.exchange import InMemoryExchange, PredictionExchange
from dkt.common.peers import assign_teachers, teacher_predictions
from dkt.common.probe import ProbeSet, sample_probe, split_holdout
from dkt.common.streams import AgentStream, build_streams
from dkt.common.teacher import aggregate


@dataclass(frozen=True)
class Setup:
    """What every agent of a run shares, derived from the config alone."""

    config: ExperimentConfig
    data: DatasetSplits
    probe: ProbeSet
    train: LabeledData  # training data left for the streams after the probe hold-out
    streams: list[AgentStream]

    def make_agent(self, agent_id: int, device: str = "cpu") -> Agent:
        return Agent(
            agent_id,
            self.config,
            self.streams[agent_id],
            self.probe,
            self.data.test,
            self.data.num_classes,
            device,
        )


def prepare(config: ExperimentConfig) -> Setup:
    """Load the data, carve out the probe set and build every agent's stream."""
    root = config.data_root or None
    data = load_dataset(config.dataset, root, config.download, seed=config.seed)
    if config.probe_source == "holdout":
        probe, _, train = split_holdout(data.train, config.probe_size, config.seed)
    else:
        other = load_dataset(config.probe_source, root, config.download, seed=config.seed)
        if other.input_shape != data.input_shape:
            raise ValueError(
                f"probe source {config.probe_source} has inputs of shape {other.input_shape}, "
                f"but {config.dataset} has {data.input_shape}: choose a matching data set"
            )
        probe = sample_probe(other.train, config.probe_size, config.seed, config.probe_source)
        train = data.train
    streams = build_streams(
        data.num_classes,
        config.agents,
        config.experiences,
        config.assignment,
        config.seed,
        train,
        data.test,
    )
    return Setup(config, data, probe, train, streams)


class Listener(Protocol):
    """Receives progress events from a run (for progress bars and logs)."""

    def experience_started(self, agent_id: int, experience: int, teachers: list[int]) -> None: ...

    def epoch_done(self, agent_id: int, experience: int, epoch: int, epochs: int) -> None: ...

    def experience_done(self, agent_id: int, record: ExperienceRecord) -> None: ...


@dataclass
class RunResult:
    """Everything a results folder is written from."""

    config: ExperimentConfig
    probe_fingerprint: str
    probe_source: str
    class_orders: list[list[list[int]]]  # per agent, per experience, its classes
    histories: dict[int, list[ExperienceRecord]]
    seconds: float
    driver: str = "simulate"
    missing_agents: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


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
    train, evaluate, publish its own, checkpoint. `teachers` defaults to the
    config's peer policy."""
    if teachers is None:
        teachers = assign_teachers(
            agent.agent_id,
            experience,
            config.agents,
            config.peer_policy,
            config.peers_k,
            config.seed,
        )
    found = teacher_predictions(exchange, agent.agent_id, teachers, experience, config.schedule)
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


def simulate(
    config: ExperimentConfig,
    *,
    exchange: PredictionExchange | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    device: str = "cpu",
    listener: Listener | None = None,
    setup: Setup | None = None,
) -> RunResult:
    """Run every agent through every experience in one process."""
    if config.schedule == "async":
        raise ValueError(
            "the async schedule needs agents that run independently: use dkt run, "
            "or --schedule sync or sequential here"
        )
    start = time.perf_counter()
    setup = setup or prepare(config)
    exchange = exchange if exchange is not None else InMemoryExchange()
    agents = [setup.make_agent(a, device) for a in range(config.agents)]
    first = 0
    if resume:
        if checkpoint_dir is None:
            raise ValueError("resume needs a checkpoint directory")
        first = _restore(agents, exchange, checkpoint_dir)
    for experience in range(first, config.experiences):
        for agent in agents:
            run_step(agent, experience, exchange, config, listener, checkpoint_dir)
    return RunResult(
        config=config,
        probe_fingerprint=setup.probe.fingerprint,
        probe_source=setup.probe.source,
        class_orders=[[list(e.classes) for e in s.experiences] for s in setup.streams],
        histories={a.agent_id: a.history for a in agents},
        seconds=time.perf_counter() - start,
    )


def _restore(agents: list[Agent], exchange: PredictionExchange, directory: str | Path) -> int:
    """Load every agent at the newest experience all of them have finished, republish
    their predictions, and return the experience to continue with."""
    found = [latest_checkpoint(directory, a.agent_id) for a in agents]
    if any(f is None for f in found):
        return 0
    common = min(f[0] for f in found if f is not None)
    for agent in agents:
        exchange.publish(agent.load_checkpoint(checkpoint_path(directory, agent.agent_id, common)))
    return common + 1


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
