"""What every agent of a run shares, derived from the config alone: the data, the
probe set and each agent's stream. Every driver (simulate, the Flower conductor and
agents) builds it the same way, so they all see the same run."""

from __future__ import annotations

from dataclasses import dataclass

from dkt.common.agent import Agent
from dkt.common.config import ExperimentConfig
from dkt.common.data import DatasetSplits, LabeledData, load_dataset
from dkt.common.probe import ProbeSet, sample_probe, split_holdout
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
        return Agent(
            agent_id,
            self.config,
            self.streams[agent_id],
            self.probe,
            self.data.test,
            self.data.num_classes,
            device,
        )

    def class_orders(self) -> list[list[list[int]]]:
        """Per agent, per experience, its classes."""
        return [[list(e.classes) for e in s.experiences] for s in self.streams]


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
