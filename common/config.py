"""The experiment configuration: one dataclass, the single source for CLI flags,
TOML config files, the Flower run config and the results folder.

Each choice list lives in the module that builds the thing chosen (model.py owns the
backbones, loss.py the distillation losses, ...); the fields here only point at them.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from dkt.common.choices import (
    AGGREGATIONS,
    ASSIGNMENTS,
    BACKBONES,
    DATASETS,
    KD_LOSSES,
    PEER_POLICIES,
    PROBE_SOURCES,
    SCHEDULES,
)


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


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
    # Model and optimisation
    backbone: str = _opt("mlp", "feature extractor", BACKBONES)
    epochs: int = _opt(8, "training epochs per experience")
    batch_size: int = _opt(64, "minibatch size of the agent's own data")
    probe_batch_size: int = _opt(64, "minibatch size of probe inputs per step")
    lr: float = _opt(1e-3, "Adam learning rate")
    clip_grad_norm: float = _opt(5.0, "gradient-norm clipping (0 disables)")
    replay_size: int = _opt(200, "replay buffer capacity, class-balanced (0 disables)")
    # Knowledge transfer
    kd_weight: float = _opt(1.0, "lambda: weight of the distillation term")
    kd_loss: str = _opt("mse", "distillation loss on the st head", KD_LOSSES)
    temperature: float = _opt(2.0, "temperature of the kl distillation loss")
    aggregation: str = _opt(
        "coverage",
        "how several teachers' logits are combined: plain mean, or per class the mean "
        "of the teachers that trained on it (coverage)",
        AGGREGATIONS,
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

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ValueError(f"{f.name} must be one of {', '.join(choices)}; got {value!r}")
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
        if self.replay_size < 0 or self.kd_weight < 0 or self.lr <= 0 or self.temperature <= 0:
            raise ValueError("replay_size and kd_weight must be >= 0; lr and temperature > 0")
        if self.peer_policy == "random-k" and not 1 <= self.peers_k < max(self.agents, 2):
            raise ValueError(f"peers_k must be between 1 and agents-1, got {self.peers_k}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExperimentConfig:
        """Build from a (partial) mapping; unknown keys are an error, not ignored."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        typed = {k: _coerce(v, known[k].type, k) for k, v in values.items()}
        return cls(**typed)

    @classmethod
    def from_run_config(cls, values: dict[str, Any]) -> ExperimentConfig:
        """Build from a Flower run config, which also holds deployment keys (ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls.from_dict({k: v for k, v in values.items() if k in known})

    @classmethod
    def from_toml(cls, path: str | Path) -> ExperimentConfig:
        """Read a TOML file: top-level keys or an [experiment] table."""
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
        return cls.from_dict(doc.get("experiment", doc))

    def to_toml(self) -> str:
        return tomli_w.dumps({"experiment": self.to_dict()})

    def replace(self, **changes: Any) -> ExperimentConfig:
        return dataclasses.replace(self, **changes)


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _coerce(value: Any, type_name: Any, key: str) -> Any:
    kind = _TYPES[type_name if isinstance(type_name, str) else type_name.__name__]
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


def config_fields() -> list[dataclasses.Field]:
    """The config's fields in declaration order, with help text and choices in metadata."""
    return list(dataclasses.fields(ExperimentConfig))


@dataclass(frozen=True)
class FailurePolicy:
    """How a deployed run treats slow, failing and absent agents (`dkt run`, `dkt launch`);
    these do not change an experiment's numbers, so they live apart from it."""

    agent_timeout: float = _opt(900.0, "seconds one experience may take before it is retried")
    retries: int = _opt(2, "re-sends of an experience to an agent that failed")
    wait_agents: float = _opt(120.0, "seconds to wait for all agents to connect")
    rejoin_wait: float = _opt(120.0, "seconds a failed agent has to come back")
