"""The experiment configuration: one dataclass, the single source for CLI flags,
TOML config files, the Flower run config and the results folder.

Each choice list lives in choices.py; the fields here only point at them. Per-agent
overrides (`[agents.N]` tables) live in `agent_overrides`; which keys an agent may
override is `AgentSpec`'s to say (agent_spec.py), and `agent_spec(N)` resolves them.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from dkt.common.choices import (
    AGGREGATIONS,
    ASSIGNMENTS,
    BACKBONES,
    DATASETS,
    EXCHANGE_DTYPES,
    EXCHANGES,
    KD_LOSSES,
    LR_SCHEDULES,
    OPTIMIZERS,
    PEER_POLICIES,
    PRECISIONS,
    PROBE_SOURCES,
    REPLAY_MIXING,
    SCHEDULES,
    STRATEGIES,
    TEACHER_SOURCES,
)
from dkt.common.run.agent_spec import (
    AGENT_ONLY_KEYS,
    OVERRIDABLE_KEYS,
    RUN_OPTION_KEYS,
    AgentSpec,
)


def _opt(
    default: Any, help: str, choices: tuple[str, ...] | None = None, open: bool = False
) -> Any:
    """A field with help text; `choices` its names; `open`: it also takes `module:callable`."""
    metadata = {"help": help, "choices": choices, **({"open": True} if open else {})}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that determines a DKT experiment's numbers."""

    # Data and streams
    dataset: str = _opt("digits", "data set", DATASETS)
    data_root: str = _opt("", "folder with the data set files (file-based data sets only)")
    download: bool = _opt(False, "download the data set into --data-root if it is missing")
    agents: int = _opt(3, "number of agents")
    experiences: int = _opt(5, "experiences per agent (classes are split evenly across them)")
    assignment: str = _opt(
        "shuffled",
        "which classes each agent sees: all in its own seeded order (shuffled), "
        "disjoint class sets (disjoint), or all in the same order (same)",
        ASSIGNMENTS,
    )
    probe_size: int = _opt(200, "number of probe inputs shared by all agents")
    probe_source: str = _opt(
        "holdout",
        "where probe inputs come from: a held-out slice of the training data (holdout), "
        "or another data set with the same input shape",
        PROBE_SOURCES,
    )
    # Sites that own their data (see README "Your own data")
    # A list of names in Python (stored as its JSON text, so the config stays flat).
    class_names: str | Sequence[str] = field(
        default="",
        metadata={
            "help": "the run's class space as a JSON list of names (set with --classes FILE); "
            "local data maps its class names onto it. Empty: the data set's classes",
            "choices": None,
            "flag": False,
        },
    )
    input_shape: str = _opt(
        "",
        "C,H,W every input is brought to (local images and public sets are resized to it), "
        "e.g. 3,32,32; empty: the data set's",
    )
    input_mean: str = _opt(
        "", "per-channel mean for normalising local and public images, e.g. 0.5 (default 0.5)"
    )
    input_std: str = _opt(
        "", "per-channel std for normalising local and public images, e.g. 0.5 (default 0.5)"
    )
    probe_from: str = _opt(
        "",
        "public probe inputs on the conductor's host: a folder of images (any layout) or an "
        ".npz with x; replaces --probe-source",
    )
    eval_from: str = _opt(
        "",
        "public labeled evaluation set on the conductor's host (class-named folders, or an "
        ".npz with x and y): the relay serves it and agents with their own data measure "
        "transfer on it",
    )
    local_test_fraction: float = _opt(
        0.2,
        "share of an agent's own data held out (stratified, seeded) as its test split when "
        "the data gives none",
    )
    # Model and optimisation
    backbone: str = _opt(
        "mlp",
        "feature extractor: a built-in name, or module:callable, a function of the input "
        "shape (C, H, W) returning your torch.nn.Module (docs/how-to/extend.md)",
        BACKBONES,
        open=True,
    )
    epochs: int = _opt(8, "training epochs per experience")
    batch_size: int = _opt(64, "minibatch size of the agent's own data")
    probe_batch_size: int = _opt(64, "minibatch size of probe inputs per step")
    lr: float = _opt(1e-3, "learning rate (with a schedule: its value at each experience's start)")
    optimizer: str = _opt(
        "adam",
        "the agent's optimizer: Adam, SGD with --momentum, or AdamW (decoupled weight decay); "
        "each experience continues with the previous one's optimizer state",
        OPTIMIZERS,
    )
    momentum: float = _opt(0.9, "sgd: momentum (0: plain SGD)")
    weight_decay: float = _opt(
        0.0, "weight decay: L2 for adam and sgd, decoupled for adamw (e.g. 0.01)"
    )
    lr_schedule: str = _opt(
        "none",
        "learning rate over each experience's epochs: constant (none), cosine from lr "
        "towards 0 (cosine), or times lr_gamma every lr_step_epochs epochs (step)",
        LR_SCHEDULES,
    )
    lr_step_epochs: int = _opt(4, "step schedule: epochs between two decays")
    lr_gamma: float = _opt(0.1, "step schedule: factor of each decay")
    clip_grad_norm: float = _opt(5.0, "gradient-norm clipping (0 disables)")
    precision: str = _opt(
        "fp32",
        "arithmetic of the forward passes (training and evaluation): fp32, or autocast to "
        "bf16 (CPU or GPU) or fp16 (CUDA only, with a gradient scaler)",
        PRECISIONS,
    )
    compile: bool = _opt(
        False,
        "torch.compile the model's training forward: helps on GPUs with large backbones "
        "(resnet18); costs compile time (tens of seconds) once per agent process, so at "
        "every experience under dkt run",
    )
    replay_size: int = _opt(200, "replay buffer capacity, class-balanced (0 disables)")
    strategy: str = _opt(
        "replay",
        "how the cl head learns its stream: the current experience's data only (naive), "
        "plus a replay buffer (replay), distilling its own previous model (lwf), all its "
        "classes at once as one experience (joint, an upper bound), elastic weight "
        "consolidation (ewc); or a name given to register_strategy, or module:callable "
        "(docs/how-to/extend.md)",
        STRATEGIES,
        open=True,
    )
    replay_mixing: str = _opt(
        "concat",
        "how replay rows meet an experience's data: appended to it and shuffled together "
        "(concat), or one memory minibatch of batch-size rows beside each data minibatch "
        "(batch, as Avalanche's ReplayPlugin)",
        REPLAY_MIXING,
    )
    lwf_alpha: float = _opt(1.0, "lwf strategy: weight of the distillation from the old model")
    lwf_temperature: float = _opt(2.0, "lwf strategy: temperature of that distillation")
    ewc_lambda: float = _opt(
        100.0, "ewc strategy: lambda, the weight of the penalty (lambda/2)·Σ F·(θ − θ*)²"
    )
    # Knowledge transfer
    exchange: str = _opt(
        "dkt",
        "what agents share after each experience (one choice for the whole run): cl-head "
        "logits on the probe set, distilled into a second st head (dkt); nothing, isolated "
        "agents with lambda 0 (none); model weights, averaged FedAvg-style after every "
        "experience (fedavg); or logits whose consensus is distilled into the cl head (fedmd)",
        EXCHANGES,
    )
    exchange_dtype: str = _opt(
        "float32",
        "precision of the published logits (dkt, fedmd): float16 rounds them before peers "
        "see them and halves the bytes moved",
        EXCHANGE_DTYPES,
    )
    kd_weight: float = _opt(1.0, "lambda: weight of the distillation term")
    kd_loss: str = _opt("mse", "distillation loss on the st head", KD_LOSSES)
    temperature: float = _opt(2.0, "temperature of the kl and mse-soft distillation losses")
    aggregation: str = _opt(
        "coverage",
        "how several teachers' logits are combined: plain mean, per class the mean of "
        "the teachers that trained on it (coverage), or robustly against a bad teacher: "
        "the median, or the mean without the highest and lowest quarter (trimmed-mean)",
        AGGREGATIONS,
    )
    teacher_source: str = _opt(
        "agents",
        "where several teachers' logits are combined: each agent fetches every teacher's "
        "set and combines them itself (agents), or the relay combines them and the agent "
        "fetches one set, whatever the number of teachers (relay; same numbers to float32 "
        "tolerance)",
        TEACHER_SOURCES,
    )
    peer_policy: str = _opt(
        "all",
        "who teaches whom: all other agents, the previous agent (ring), or k random peers",
        PEER_POLICIES,
    )
    peers_k: int = _opt(1, "k for the random-k peer policy")
    schedule: str = _opt(
        "sync",
        "sync: every agent trains experience e with its peers' predictions from e-1; "
        "sequential: agents train in order, each with its peers' newest predictions; "
        "async (dkt run only): each agent moves on as soon as it is done, with the newest "
        "predictions its peers have published",
        SCHEDULES,
    )
    seed: int = _opt(0, "seed for everything random")
    # Per agent: {agent id: {key: value}}, the [agents.N] tables; not a flag of its own.
    agent_overrides: dict[int, dict[str, Any]] = field(
        default_factory=dict,
        metadata={"help": "per-agent overrides ([agents.N], --agent N:key=value)", "choices": None},
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices and not _open_choice(f.name, value):
                extra = ""
                if f.metadata.get("open"):
                    named = ", a name given to register_strategy" if f.name == "strategy" else ""
                    extra = f"{named}, or module:callable"
                raise ValueError(
                    f"{f.name} must be one of {', '.join(choices)}{extra}; got {value!r}"
                )
        positive = (
            "agents",
            "experiences",
            "probe_size",
            "epochs",
            "batch_size",
            "probe_batch_size",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("replay_size", "kd_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name):g}")
        for name in ("lr", "temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name):g}")
        if not 0 < self.local_test_fraction < 1:
            raise ValueError(
                f"local_test_fraction must be between 0 and 1, got {self.local_test_fraction}"
            )
        if not isinstance(self.class_names, str):
            object.__setattr__(self, "class_names", json.dumps(list(self.class_names)))
        self.class_space()  # a malformed class_names is an error now, not at first use
        for name in ("momentum", "weight_decay", "ewc_lambda"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name):g}")
        if self.lr_step_epochs < 1 or self.lr_gamma <= 0:
            raise ValueError(
                f"lr_step_epochs must be at least 1 and lr_gamma > 0, got "
                f"{self.lr_step_epochs} and {self.lr_gamma:g}"
            )
        if self.lwf_alpha < 0 or self.lwf_temperature <= 0:
            raise ValueError("lwf_alpha must be >= 0 and lwf_temperature > 0")
        if self.peer_policy == "random-k" and not 1 <= self.peers_k < max(self.agents, 2):
            raise ValueError(f"peers_k must be between 1 and agents-1, got {self.peers_k}")
        object.__setattr__(self, "agent_overrides", self._checked_overrides())
        self._check_exchange()

    def _check_exchange(self) -> None:
        """What an exchange needs of the run: fedavg one backbone and one experience count
        for all, float16 only where logits are published."""
        if self.exchange_dtype != "float32" and self.exchange in ("none", "fedavg"):
            moved = "nothing" if self.exchange == "none" else "weights in float32"
            raise ValueError(
                f"exchange_dtype {self.exchange_dtype} rounds published logits, but exchange "
                f"{self.exchange} moves {moved}: use exchange_dtype float32"
            )
        if self.exchange != "fedavg":
            return
        specs = [self.agent_spec(a) for a in range(self.agents)]
        backbones: dict[str, list[str]] = {}
        for spec in specs:
            backbones.setdefault(spec.backbone, []).append(str(spec.agent_id))
        if len(backbones) > 1:
            used = "; ".join(f"{b} ({_agents_text(ids)})" for b, ids in backbones.items())
            raise ValueError(
                f"exchange fedavg averages weights, so every agent needs the same backbone, "
                f"but this run has {used}: drop the backbone overrides or use exchange dkt or fedmd"
            )
        if self.schedule == "async":
            raise ValueError(
                "exchange fedavg averages every agent after every experience, so its rounds "
                "are synchronous: use schedule sync (or sequential)"
            )
        joint = [str(s.agent_id) for s in specs if s.strategy == "joint"]
        if joint:
            raise ValueError(
                f"exchange fedavg averages every agent after every experience, but "
                f"{_agents_text(joint)} {'use' if len(joint) > 1 else 'uses'} the joint "
                "strategy (one experience): use another strategy or exchange"
            )

    def _checked_overrides(self) -> dict[int, dict[str, Any]]:
        """The overrides with typed values, each checked like the field it overrides."""
        checked: dict[int, dict[str, Any]] = {}
        for key, table in self.agent_overrides.items():
            agent = int(key) if isinstance(key, int | str) and str(key).isdigit() else -1
            where = f"[agents.{key}]"
            if not 0 <= agent < self.agents:
                raise ValueError(
                    f"{where}: there is no agent {key}; this run's agents are 0 to "
                    f"{self.agents - 1}"
                )
            if not isinstance(table, Mapping):
                raise ValueError(f"{where} must be a table of key = value, got {table!r}")
            unknown = sorted(set(table) - set(OVERRIDABLE_KEYS))
            if unknown:
                raise ValueError(
                    f"{where}: unknown key {', '.join(map(repr, unknown))}; an agent may "
                    f"override {', '.join(OVERRIDABLE_KEYS)}"
                )
            types = {f.name: f.type for f in dataclasses.fields(self)}
            values: dict[str, Any] = {}
            for name, value in table.items():
                if name == "teachers":
                    values[name] = _teachers(value, agent, self.agents, where)
                elif name == "device":
                    if not isinstance(value, str):
                        raise ValueError(f"{where}: device must be text like cuda:1, got {value!r}")
                    values[name] = value
                else:
                    values[name] = _coerce(value, types[name], f"{where} {name}")
            try:
                # Each value checked like the field it overrides; what the exchange needs
                # of all agents together is checked after (_check_exchange).
                self.replace(
                    agent_overrides={},
                    exchange="dkt",
                    exchange_dtype="float32",
                    **{k: v for k, v in values.items() if k not in AGENT_ONLY_KEYS},
                )
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
            if values:
                checked[agent] = values
        return dict(sorted(checked.items()))

    def agent_spec(self, agent_id: int) -> AgentSpec:
        """Agent `agent_id`'s options: this config's, with its own overrides applied."""
        if not 0 <= agent_id < self.agents:
            raise ValueError(f"there is no agent {agent_id}; agents are 0 to {self.agents - 1}")
        # Resolved once per agent (a run asks for every teacher's spec at every step:
        # N² calls); the config is frozen, so the cache cannot go stale.
        cache: dict[int, AgentSpec] = self.__dict__.setdefault("_specs", {})
        if agent_id not in cache:
            own = self.agent_overrides.get(agent_id, {})
            options = {k: own.get(k, getattr(self, k)) for k in RUN_OPTION_KEYS}
            extra = {k: own[k] for k in AGENT_ONLY_KEYS if k in own}
            cache[agent_id] = AgentSpec(agent_id, **options, **extra)
        return cache[agent_id]

    def class_space(self) -> tuple[str, ...]:
        """The run's class names from `class_names` (a JSON list); () when not set."""
        if not self.class_names:
            return ()
        text = self.class_names if isinstance(self.class_names, str) else ""
        try:
            names = json.loads(text)
        except json.JSONDecodeError:
            names = None
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(n, str) and n.strip() for n in names)
        ):
            raise ValueError(f"class_names must be a list of non-empty names, got {text[:80]!r}")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"class_names names {', '.join(map(repr, twice))} more than once")
        return tuple(names)

    def agent_experiences(self, agent_id: int) -> int:
        """How many experiences agent `agent_id` trains: one with the joint strategy."""
        return 1 if self.agent_spec(agent_id).strategy == "joint" else self.experiences

    def to_dict(self) -> dict[str, Any]:
        """Every field as a flat mapping of scalars (the Flower run config needs that):
        the overrides as one JSON text, `{"1": {"backbone": "cnn"}}`."""
        out = dataclasses.asdict(self)
        out["agent_overrides"] = _overrides_json(self.agent_overrides)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExperimentConfig:
        """Build from a (partial) mapping; unknown keys are an error, not ignored."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        typed: dict[str, Any] = {
            k: v
            if k == "class_names" and not isinstance(v, str)
            else _overrides_from(v)
            if k == "agent_overrides"
            else _coerce(v, known[k].type, k)
            for k, v in values.items()
        }
        return cls(**typed)

    @classmethod
    def from_run_config(cls, values: dict[str, Any]) -> ExperimentConfig:
        """Build from a Flower run config, which also holds deployment keys (ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls.from_dict({k: v for k, v in values.items() if k in known})

    @classmethod
    def from_toml(cls, path: str | Path, base: ExperimentConfig | None = None) -> ExperimentConfig:
        """Read a TOML file: top-level keys or an [experiment] table, and optional
        [agents.N] tables of per-agent overrides. Keys the file leaves out keep `base`'s
        values (default: the defaults); its [agents.N] keys merge into `base`'s one by one."""
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
        values = dict(doc.get("experiment", doc))
        tables = doc.get("agents") if "experiment" in doc else None
        if "experiment" not in doc and isinstance(values.get("agents"), dict):
            tables = values.pop("agents")
        if tables is not None:
            if "agent_overrides" in values:
                raise ValueError("give per-agent overrides as [agents.N] tables or as "
                                 "agent_overrides, not both")  # fmt: skip
            values["agent_overrides"] = tables
        if base is not None:
            merged = {str(a): dict(t) for a, t in base.agent_overrides.items()}
            for agent, table in _overrides_from(values.get("agent_overrides", {})).items():
                own = merged.get(str(agent), {})
                merged[str(agent)] = {**own, **table} if isinstance(table, Mapping) else table
            kept = {f.name: getattr(base, f.name) for f in config_fields()}
            values = {**kept, **values, "agent_overrides": merged}
        return cls.from_dict(values)

    def to_toml(self) -> str:
        """The [experiment] table, then one [agents.N] table per agent with overrides."""
        doc: dict[str, Any] = {
            "experiment": {k: v for k, v in self.to_dict().items() if k != "agent_overrides"}
        }
        if self.agent_overrides:
            doc["agents"] = json.loads(_overrides_json(self.agent_overrides))
        return tomli_w.dumps(doc)

    def replace(self, **changes: Any) -> ExperimentConfig:
        return dataclasses.replace(self, **changes)


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _open_choice(name: str, value: Any) -> bool:
    """Whether an open field (backbone, strategy) takes `value` beyond its built-in names:
    a `module:callable` reference, or for strategy a name registered in this process."""
    from dkt.common.extensions import is_known_strategy, is_reference

    if name == "backbone":
        return isinstance(value, str) and is_reference(value)
    if name == "strategy":
        return isinstance(value, str) and is_known_strategy(value, STRATEGIES)
    return False


def _coerce(value: Any, type_name: Any, key: str) -> Any:
    name = type_name if isinstance(type_name, str) else type_name.__name__
    kind = _TYPES[name.split(" | ")[0]]  # class_names, str | Sequence[str], is kept as str
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    if kind is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{key} must be {kind.__name__}, got {value!r}")
    return value


def _agents_text(ids: list[str]) -> str:
    return f"agent{'s' if len(ids) > 1 else ''} {', '.join(ids)}"


def _teachers(value: Any, agent: int, agents: int, where: str) -> tuple[int, ...]:
    ids = [value] if isinstance(value, int) else value
    if not isinstance(ids, list | tuple) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in ids
    ):
        raise ValueError(
            f"{where}: teachers must be a list of agent ids like [0, 2], got {value!r}"
        )
    for t in ids:
        if t == agent:
            raise ValueError(f"{where}: agent {agent} cannot be its own teacher")
        if not 0 <= t < agents:
            raise ValueError(
                f"{where}: teacher {t} does not exist; this run's agents are 0 to {agents - 1}"
            )
    return tuple(sorted(set(ids)))


def _overrides_json(overrides: dict[int, dict[str, Any]]) -> str:
    tables = {
        str(agent): {k: list(v) if k == "teachers" else v for k, v in table.items()}
        for agent, table in sorted(overrides.items())
    }
    return json.dumps(tables, sort_keys=True)


def _overrides_from(value: Any) -> dict[Any, Any]:
    """Overrides from a TOML table or the JSON text of `to_dict` (Flower run configs)."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as err:
            raise ValueError(f'agent_overrides must be JSON like {{"1": {{...}}}}: {err}') from None
    if not isinstance(value, Mapping):
        raise ValueError(f"agent_overrides must be a table per agent, got {value!r}")
    return dict(value)


def config_fields() -> list[dataclasses.Field[Any]]:
    """The config's one-value fields (each a flag) in declaration order, with help text
    and choices in metadata; the per-agent overrides are not among them."""
    return [f for f in dataclasses.fields(ExperimentConfig) if f.name != "agent_overrides"]


@dataclass(frozen=True)
class FailurePolicy:
    """How a deployed run treats slow, failing and absent agents (`dkt run`, `dkt launch`);
    these do not change an experiment's numbers, so they live apart from it."""

    agent_timeout: float = _opt(900.0, "seconds one experience may take before it is retried")
    retries: int = _opt(2, "re-sends of an experience to an agent that failed")
    wait_agents: float = _opt(120.0, "seconds to wait for all agents to connect")
    rejoin_wait: float = _opt(120.0, "seconds a failed agent has to come back")
