"""What the agents of a run share, derived from the config: the class space, the probe
set, the public evaluation set, and each agent's stream. Every driver (simulate, the
Flower conductor and agents) builds it the same way, so they all see the same run.

An agent's data is either the run's shared data set (carved into streams by seed: the
simulation researchers need) or the agent's own (`LocalSource`: a site's folder or
.npz, read only on its host; see common/agent_data.py). Both give the same `Agent`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dkt.common.agent import Agent
from dkt.common.agent_data import LocalAgentData, input_spec, load_local_agent
from dkt.common.config import ExperimentConfig
from dkt.common.data import DatasetSplits, LabeledData, load_dataset
from dkt.common.local_source import LocalSource
from dkt.common.probe import ProbeSet, build_probe, sample_probe
from dkt.common.strategies import stream_for
from dkt.common.streams import AgentStream, _split, build_streams, class_orders

if TYPE_CHECKING:
    from dkt.common.eval_set import EvalSet


@dataclass(frozen=True)
class Setup:
    """What the agents of a run share, and the data of those built here."""

    config: ExperimentConfig
    data: DatasetSplits | None  # the shared data set; None when nobody needs it
    probe: ProbeSet
    train: LabeledData | None  # shared training data left for the streams after the probe
    streams: list[AgentStream]  # shared-data streams, by agent id ([] without shared data)
    class_names: tuple[str, ...] = ()
    local: Mapping[int, LocalAgentData] = field(default_factory=dict)
    eval_set: EvalSet | None = None  # the public labeled evaluation set, if the run has one

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def make_agent(self, agent_id: int, device: str = "cpu") -> Agent:
        """Agent `agent_id` as its spec says; on `device` unless its spec names one."""
        own = self.local.get(agent_id)
        if own is not None:
            public = None
            if self.eval_set is not None:
                public = LabeledData(self.eval_set.inputs, self.eval_set.labels)
            return Agent(
                agent_id, self.config, own.stream, self.probe, own.test, self.num_classes,
                device, transfer_data=public,
            )  # fmt: skip
        if self.data is None or agent_id >= len(self.streams):
            raise ValueError(
                f"agent {agent_id} has no data: this run has no shared data set for it; "
                "start it with its own data (dkt agent --data PATH)"
            )
        return Agent(
            agent_id,
            self.config,
            self.streams[agent_id],
            self.probe,
            self.data.test,
            self.num_classes,
            device,
        )

    def stream_of(self, agent_id: int) -> AgentStream:
        """The stream agent `agent_id` learns under its strategy (joint: one experience)."""
        own = self.local.get(agent_id)
        stream = own.stream if own is not None else self.streams[agent_id]
        return stream_for(self.config.agent_spec(agent_id).strategy, stream)

    def plan_of(self, agent_id: int) -> list[list[int]]:
        """Agent `agent_id`'s classes, per experience it learns."""
        return [list(e.classes) for e in self.stream_of(agent_id).experiences]

    def class_orders(self) -> list[list[list[int]]]:
        """Per agent, per experience it learns, its classes."""
        return [self.plan_of(a) for a in range(self.config.agents)]


def prepare(
    config: ExperimentConfig,
    local: Mapping[int, LocalSource] | None = None,
    *,
    agents: Iterable[int] | None = None,
    probe: ProbeSet | None = None,
    eval_set: EvalSet | None = None,
) -> Setup:
    """The run's class space, probe set and evaluation set, and the data of `agents`
    (default: all): those in `local` from their own source, the others from the shared
    data set. `probe` and `eval_set`, when given (an agent has them from the relay),
    are used as they are. The shared data set is loaded only when something needs it:
    an agent without its own data, the class space, the input shape, or a probe set
    from it."""
    local = dict(local or {})
    wanted = list(range(config.agents) if agents is None else agents)
    shared_agents = [a for a in wanted if a not in local]
    names = _declared_class_space(config)
    needs_data = (
        bool(shared_agents)
        or not names
        or not config.input_shape
        or (probe is None and not config.probe_from)
    )
    root = config.data_root or None

    def load(name: str) -> DatasetSplits:
        return load_dataset(name, root, config.download, seed=config.seed)

    data = load(config.dataset) if needs_data else None
    if not names:
        assert data is not None
        names = data.class_names
    spec = input_spec(config, data.input_shape if data is not None else None)
    train = data.train if data is not None else None
    if probe is None:
        if config.probe_from:
            from dkt.common.local_data import load_unlabeled

            inputs = load_unlabeled(Path(config.probe_from), spec)
            if len(inputs) < config.probe_size:
                raise ValueError(
                    f"--probe-from {config.probe_from} has {len(inputs)} images, fewer than "
                    f"--probe-size {config.probe_size}: add images or lower --probe-size"
                )
            probe = sample_probe(
                LabeledData(inputs, inputs.new_zeros(len(inputs)).long()),
                config.probe_size,
                config.seed,
                source=f"public:{Path(config.probe_from).name}",
            )
        else:
            assert data is not None
            probe, train = build_probe(
                config.probe_source, data, config.probe_size, config.seed, load
            )
    elif data is not None and config.probe_source == "holdout" and not config.probe_from:
        # The hold-out rows are not in the streams, whoever built the probe set.
        _, train = build_probe(config.probe_source, data, config.probe_size, config.seed, load)
    if eval_set is None and config.eval_from:
        eval_set = load_eval_set(Path(config.eval_from), names, spec)
    streams: list[AgentStream] = []
    if data is not None and train is not None and shared_agents:
        streams = build_streams(
            len(names),
            config.agents,
            config.experiences,
            config.assignment,
            config.seed,
            train,
            data.test,
        )
    own = {a: load_local_agent(config, a, local[a], names, spec) for a in wanted if a in local}
    return Setup(config, data, probe, train, streams, names, own, eval_set)


def load_eval_set(path: Path, names: tuple[str, ...], spec: object) -> EvalSet:
    """A public labeled evaluation set (class-named folders or an .npz with x and y; a
    given test split is included) as the relay stores it."""
    import torch

    from dkt.common.eval_set import EvalSet
    from dkt.common.local_data import load_labeled

    found = load_labeled(path, names, spec, what="evaluation set")  # type: ignore[arg-type]
    parts = [found.train] + ([found.test] if found.test is not None else [])
    x = torch.cat([p.x for p in parts])
    y = torch.cat([p.y for p in parts])
    return EvalSet.from_tensors(x, y, source=f"public:{path.name}")


def shared_plans(config: ExperimentConfig, num_classes: int) -> list[list[list[int]]]:
    """Per agent, per experience it learns, its classes when it learns from the shared
    data set: the same as `Setup.class_orders()`, from the config alone (no data)."""
    orders = class_orders(num_classes, config.agents, config.assignment, config.seed)
    plans = []
    for agent_id, order in enumerate(orders):
        parts = [list(part) for part in _split(order, config.experiences)]
        if config.agent_spec(agent_id).strategy == "joint":
            parts = [[c for part in parts for c in part]]
        plans.append(parts)
    return plans


def local_plan(config: ExperimentConfig, agent_id: int, source: LocalSource) -> list[list[int]]:
    """Agent `agent_id`'s plan (class indices per experience it learns, under its
    strategy) from its own data: what it tells the conductor, and nothing more."""
    names, spec = class_space(config)
    own = load_local_agent(config, agent_id, source, names, spec)
    if config.agent_spec(agent_id).strategy == "joint":
        return [[c for part in own.plan for c in part]]
    return own.plan


def class_space(config: ExperimentConfig) -> tuple[tuple[str, ...], object]:
    """The run's class names and input spec, loading the shared data set only when the
    config leaves either to it."""
    names = _declared_class_space(config)
    data = None
    if not names or not config.input_shape:
        data = load_dataset(config.dataset, config.data_root or None, config.download,
                            seed=config.seed)  # fmt: skip
    return (names or data.class_names), input_spec(  # type: ignore[union-attr]
        config, data.input_shape if data is not None else None
    )


def _declared_class_space(config: ExperimentConfig) -> tuple[str, ...]:
    """The class space the run declares: `class_names` (--classes), else the classes of
    its public evaluation set (--eval-from); () to take the shared data set's."""
    names = config.class_space()
    if not names and config.eval_from:
        from dkt.common.local_data import class_names_in

        names = class_names_in(Path(config.eval_from))
    return names
