"""What every agent of a run shares, derived from the config alone: the data, the
probe set and each agent's stream. Every driver (simulate, the Flower conductor and
agents) builds it the same way, so they all see the same run."""

from __future__ import annotations

from dataclasses import dataclass

from dkt.common.agent import Agent
from dkt.common.config import ExperimentConfig
from dkt.common.data import DatasetSplits, LabeledData, load_dataset
from dkt.common.probe import ProbeSet, build_probe
from dkt.common.strategies import stream_for
from dkt.common.streams import AgentStream, build_streams


@dataclass(frozen=True)
class Setup:
    """What every agent of a run shares, derived from the config alone."""

    config: ExperimentConfig
    data: DatasetSplits
    probe: ProbeSet
    train: LabeledData  # training data left for the streams after the probe hold-out
    streams: list[AgentStream]

    def make_agent(self, agent_id: int, device: str = "cpu") -> Agent:
        """Agent `agent_id` as its spec says; on `device` unless its spec names one."""
        return Agent(
            agent_id,
            self.config,
            self.streams[agent_id],
            self.probe,
            self.data.test,
            self.data.num_classes,
            device,
        )

    def stream_of(self, agent_id: int) -> AgentStream:
        """The stream agent `agent_id` learns under its strategy (joint: one experience)."""
        return stream_for(self.config.agent_spec(agent_id).strategy, self.streams[agent_id])

    def class_orders(self) -> list[list[list[int]]]:
        """Per agent, per experience it learns, its classes."""
        return [
            [list(e.classes) for e in self.stream_of(a).experiences]
            for a in range(len(self.streams))
        ]


def prepare(config: ExperimentConfig) -> Setup:
    """Load the data, carve out the probe set and build every agent's stream."""
    root = config.data_root or None

    def load(name: str) -> DatasetSplits:
        return load_dataset(name, root, config.download, seed=config.seed)

    data = load(config.dataset)
    probe, train = build_probe(config.probe_source, data, config.probe_size, config.seed, load)
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
