"""What the agents of a run share, derived from the config: the class space, the probe
set, the public evaluation set, and each agent's stream. Every driver (simulate, the
Flower conductor and agents) builds it the same way, so they all see the same run.

An agent's data is either the run's shared data set (carved into streams by seed: the
simulation researchers need) or the agent's own (`LocalSource`: a site's folder or
.npz, read only on its host; see common/data/agent_data.py). Both give the same `Agent`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dkt.common.data.agent_data import LocalAgentData, input_spec, load_local_agent
from dkt.common.data.datasets import DatasetSplits, load_dataset
from dkt.common.data.labeled_data import LabeledData
from dkt.common.data.local_source import LocalSource
from dkt.common.data.probe import ProbeSet, build_probe, sample_probe
from dkt.common.data.streams import AgentStream, Experience, _split, build_streams, class_orders
from dkt.common.run.config import ExperimentConfig
from dkt.common.training.agent import Agent
from dkt.common.training.strategies import stream_for

if TYPE_CHECKING:
    from dkt.common.data.eval_set import EvalSet


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
            from dkt.common.data.local_data import load_unlabeled

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
    own = {a: _read_site(config, a, local[a], names, spec) for a in wanted if a in local}
    return Setup(config, data, probe, train, streams, names, own, eval_set)


# A site read for its plan (the query message), kept until the same process's first
# train message of the run takes it (`local_plan(keep=True)`): a long-lived agent worker
# decodes its site once per run, not twice. One entry: the newest site read.
_KEPT_SITE: dict[str, LocalAgentData] = {}


def _read_site(
    config: ExperimentConfig, agent_id: int, source: LocalSource, names: tuple[str, ...],
    spec: object,
) -> LocalAgentData:  # fmt: skip
    """`load_local_agent`, or the site `local_plan(keep=True)` read for the same config
    and files (keyed like the prepared cache, which the class space and input spec
    derive from; handed over, not shared: it is kept no longer)."""
    kept = _KEPT_SITE.pop(prepared_key(config, agent_id, source), None)
    return kept if kept is not None else load_local_agent(config, agent_id, source, names, spec)


PREPARED_FORMAT = 1
# The modules that turn data files into an agent's streams: an edited one (a developer's
# tree) makes every prepared cache stale, like a changed data file.
_PREPARING_MODULES = (
    "agent_data", "data", "image_formats", "local_data", "probe", "run_setup", "streams",
)  # fmt: skip


def prepare_agent(
    config: ExperimentConfig,
    agent_id: int,
    probe: ProbeSet,
    local: LocalSource | None = None,
    eval_set: EvalSet | None = None,
    cache_dir: Path | None = None,
) -> Setup:
    """`prepare` for one agent that has the run's probe set (and public evaluation set)
    from the relay. With `cache_dir`, the agent's data (its stream and test split) is
    kept there, keyed by the whole config and the identity (path, size, mtime) of every
    file it was read from and of the code that cut it: a later message of the run loads
    it instead of reading and splitting the data set again; any change rebuilds it."""
    path = None
    if cache_dir is not None:
        key = prepared_key(config, agent_id, local)
        path = cache_dir / f"prepared-agent{agent_id}-{key[:20]}.pt"
        cached = _load_prepared(path, key, config, agent_id, probe, eval_set)
        if cached is not None:
            _KEPT_SITE.clear()  # a site kept for this message is not needed
            return cached
    if local is not None:
        own = {agent_id: local}
        setup = prepare(config, own, agents=[agent_id], probe=probe, eval_set=eval_set)
        holdout = probe.fingerprint
    else:
        setup = prepare(config, agents=[agent_id])
        holdout = setup.probe.fingerprint
        _check_holdout(config, agent_id, holdout, probe)
        setup = dataclasses.replace(setup, probe=probe)
    if path is not None:
        _save_prepared(path, key, setup, agent_id, holdout)
    return setup


def prepared_key(config: ExperimentConfig, agent_id: int, local: LocalSource | None) -> str:
    """What an agent's prepared data depends on, hashed: the config, the agent, and the
    files its data, class space and hold-out are read from."""
    paths: list[str | Path | None] = [config.probe_from, config.eval_from]
    if local is not None:
        from dkt.common.data.local_data import default_manifest

        paths += [local.path, local.manifest or default_manifest(local.path)]
    else:
        paths.append(_shared_data_files(config))
    here = Path(__file__).parent
    identity = {
        "format": PREPARED_FORMAT,
        "agent": agent_id,
        "config": config.to_dict(),
        "local": None if local is None else [str(local.path), str(local.manifest or "")],
        "files": [_file_identity(Path(p)) for p in paths if p],
        "code": [_file_identity(here / f"{m}.py") for m in _PREPARING_MODULES],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _shared_data_files(config: ExperimentConfig) -> str | None:
    """Where the shared data set's files are: its data root, sklearn's copy of digits;
    None for data made from the seed alone."""
    if config.dataset == "synthetic":
        return None
    if config.dataset == "digits":
        spec = importlib.util.find_spec("sklearn")  # finds it without importing it
        origin = spec.origin if spec is not None else None
        return str(Path(origin).parent / "datasets" / "data") if origin else None
    if config.data_root:
        return config.data_root
    from dkt.common.data.image_formats import SYSTEM_FOLDERS

    system = SYSTEM_FOLDERS.get(config.dataset)
    return str(system) if system is not None else None


def _file_identity(path: Path) -> list[Any]:
    """(path, size, mtime) of `path` and, for a folder, of every file under it."""
    if not path.exists():
        return [str(path), "missing"]
    if path.is_file():
        st = path.stat()
        return [str(path), st.st_size, st.st_mtime_ns]
    found: list[Any] = [str(path)]
    for folder, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            st = os.stat(os.path.join(folder, name))
            found.append([os.path.relpath(os.path.join(folder, name), path), st.st_size,
                          st.st_mtime_ns])  # fmt: skip
    return found


def _check_holdout(config: ExperimentConfig, agent_id: int, own: str, probe: ProbeSet) -> None:
    if own != probe.fingerprint and config.probe_source == "holdout":
        # The hold-out is carved out of this agent's own copy of the data: if the
        # copies differ, its streams may contain probe inputs.
        raise ValueError(
            f"agent {agent_id}'s copy of {config.dataset} gives a different "
            "probe hold-out than the conductor's: give every host the same data files"
        )


def _labeled(d: LabeledData) -> dict[str, Any]:
    return {"x": d.x, "y": d.y}


def _stream(s: AgentStream) -> dict[str, Any]:
    return {
        "agent_id": s.agent_id,
        "experiences": [
            {"index": e.index, "classes": list(e.classes), "train": _labeled(e.train),
             "test": _labeled(e.test)}
            for e in s.experiences
        ],
    }  # fmt: skip


def _unstream(d: dict[str, Any]) -> AgentStream:
    return AgentStream(
        d["agent_id"],
        tuple(
            Experience(e["index"], tuple(e["classes"]), LabeledData(**e["train"]),
                       LabeledData(**e["test"]))
            for e in d["experiences"]
        ),
    )  # fmt: skip


def _save_prepared(path: Path, key: str, setup: Setup, agent_id: int, holdout: str) -> None:
    import torch

    state: dict[str, Any] = {
        "format": PREPARED_FORMAT, "key": key, "class_names": list(setup.class_names),
        "holdout": holdout,
    }  # fmt: skip
    own = setup.local.get(agent_id)
    if own is not None:
        state["local"] = {"stream": _stream(own.stream), "test": _labeled(own.test),
                          "plan": own.plan, "rows": own.rows}  # fmt: skip
    else:
        assert setup.data is not None
        state["shared"] = {"name": setup.data.name, "num_classes": setup.data.num_classes,
                           "test": _labeled(setup.data.test),
                           "stream": _stream(setup.streams[agent_id])}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_prepared(
    path: Path,
    key: str,
    config: ExperimentConfig,
    agent_id: int,
    probe: ProbeSet,
    eval_set: EvalSet | None,
) -> Setup | None:
    """The setup kept at `path`, or None when there is none (or an unreadable one, or one
    for another key: it is rebuilt)."""
    import torch

    if not path.exists():
        return None
    try:
        state = torch.load(path, weights_only=True)
    except Exception:  # a torn or foreign file: rebuild it
        return None
    if state.get("format") != PREPARED_FORMAT or state.get("key") != key:
        return None
    _check_holdout(config, agent_id, state["holdout"], probe)
    names = tuple(state["class_names"])
    if "local" in state:
        own = state["local"]
        data = LocalAgentData(
            _unstream(own["stream"]), LabeledData(**own["test"]), own["plan"], own["rows"]
        )
        return Setup(config, None, probe, None, [], names, {agent_id: data}, eval_set)
    shared = state["shared"]
    test = LabeledData(**shared["test"])
    # The agent needs the test split and its own stream only: the training split is not
    # kept, and the other agents' streams are empty.
    splits = DatasetSplits(
        shared["name"], LabeledData(test.x[:0], test.y[:0]), test, shared["num_classes"]
    )
    streams = [AgentStream(a, ()) for a in range(agent_id)] + [_unstream(shared["stream"])]
    return Setup(config, splits, probe, None, streams, names, {}, eval_set)


def load_eval_set(path: Path, names: tuple[str, ...], spec: object) -> EvalSet:
    """A public labeled evaluation set (class-named folders or an .npz with x and y; a
    given test split is included) as the relay stores it."""
    import torch

    from dkt.common.data.eval_set import EvalSet
    from dkt.common.data.local_data import load_labeled

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


def local_plan(
    config: ExperimentConfig, agent_id: int, source: LocalSource, keep: bool = False
) -> list[list[int]]:
    """Agent `agent_id`'s plan (class indices per experience it learns, under its
    strategy) from its own data: what it tells the conductor, and nothing more. With
    `keep`, the site's data stays in this process for `prepare` (one site at a time)."""
    names, spec = class_space(config)
    own = load_local_agent(config, agent_id, source, names, spec)
    _KEPT_SITE.clear()
    if keep:
        _KEPT_SITE[prepared_key(config, agent_id, source)] = own
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
        from dkt.common.data.local_data import class_names_in

        names = class_names_in(Path(config.eval_from))
    return names
