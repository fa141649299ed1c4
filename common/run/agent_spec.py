"""One agent's spec: the run's options with that agent's own overrides applied.

An experiment is one `ExperimentConfig`; any agent may override some of its options
(an `[agents.N]` table in the experiment TOML, `--agent N:key=value,...` on the command
line). The fields of `AgentSpec` are the keys an agent may override, defined here once;
the run-wide defaults, help texts and checks of those keys are `ExperimentConfig`'s fields
of the same name. `device` and `teachers` exist only per agent. Torch-free, like config.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AgentSpec:
    """What one agent is built and trained with (`ExperimentConfig.agent_spec(N)`)."""

    agent_id: int
    backbone: str
    strategy: str
    replay_size: int
    replay_mixing: str
    lwf_alpha: float
    lwf_temperature: float
    ewc_lambda: float
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    momentum: float
    weight_decay: float
    lr_schedule: str
    lr_step_epochs: int
    lr_gamma: float
    clip_grad_norm: float
    precision: str
    compile: bool
    kd_weight: float
    kd_loss: str
    temperature: float
    device: str = field(
        default="",
        metadata={"help": "this agent's torch device (default: the driver's or host's --device)"},
    )
    teachers: tuple[int, ...] | None = field(
        default=None,
        metadata={
            "help": "the agents this one distils from, a directed link that replaces the peer "
            "policy for it ([] = it learns alone; default: the peer policy)"
        },
    )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["teachers"] = None if self.teachers is None else list(self.teachers)
        return out


# Keys only an agent has; every other overridable key is also an ExperimentConfig field.
AGENT_ONLY_KEYS = ("device", "teachers")
OVERRIDABLE_KEYS = tuple(f.name for f in dataclasses.fields(AgentSpec) if f.name != "agent_id")
RUN_OPTION_KEYS = tuple(k for k in OVERRIDABLE_KEYS if k not in AGENT_ONLY_KEYS)


def parse_agent_flag(text: str) -> tuple[int, dict[str, Any]]:
    """`N:key=value,key=value` (the `--agent` flag) as (N, {key: value}).

    Values stay text (the config coerces them like any flag); `teachers` takes a list
    in brackets, `teachers=[0,2]`, or one id, `teachers=0`.
    """
    usage = f"--agent takes N:key=value,key=value (e.g. 1:backbone=cnn,kd_weight=0), got {text!r}"
    number, sep, rest = text.partition(":")
    if not sep or not number.strip().isdigit() or not rest.strip():
        raise ValueError(usage)
    values: dict[str, Any] = {}
    for item in _split_outside_brackets(rest):
        key, eq, value = item.partition("=")
        key, value = key.strip().replace("-", "_"), value.strip()
        if not eq or not key:
            raise ValueError(usage)
        if key == "teachers":
            values[key] = _id_list(value, text)
        else:
            values[key] = value
    return int(number), values


def _split_outside_brackets(text: str) -> list[str]:
    items, depth, current = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    items.append(current)
    return [i for i in items if i.strip()]


def _id_list(value: str, text: str) -> list[int]:
    inner = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    parts = [p.strip() for p in inner.split(",") if p.strip()]
    if not all(p.isdigit() for p in parts):
        raise ValueError(f"teachers must be agent ids like [0,2] or [], got {value!r} in {text!r}")
    return [int(p) for p in parts]
