"""The cl head's continual-learning strategies: what an agent's stream and replay buffer
look like under each. The training loop in agent.py applies them:

- naive: each experience's own data only; no buffer.
- replay: the experience's data plus a class-balanced replay buffer (replay.py says how
  the two are mixed into minibatches).
- lwf: the experience's data only, plus Li & Hoiem's distillation of the agent's own
  model as it was after the previous experience (frozen, eval mode) into the cl head
  (`loss.lwf_loss`); no buffer.
- joint: the upper bound: one single experience holding all of the agent's classes.
"""

from __future__ import annotations

import torch

from dkt.common.choices import STRATEGIES
from dkt.common.data.labeled_data import LabeledData
from dkt.common.data.streams import AgentStream, Experience


def _check(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def stream_for(strategy: str, stream: AgentStream) -> AgentStream:
    """The stream an agent with `strategy` learns: its own, or for joint all of it as
    one experience (its accuracy matrix is then 1×1)."""
    _check(strategy)
    if strategy != "joint" or len(stream) == 1:
        return stream
    exps = stream.experiences
    joint = Experience(
        index=0,
        classes=stream.classes,
        train=_concat([e.train for e in exps]),
        test=_concat([e.test for e in exps]),
    )
    return AgentStream(stream.agent_id, (joint,))


def buffer_capacity(strategy: str, replay_size: int) -> int:
    """Replay buffer capacity under `strategy`: only replay keeps one."""
    _check(strategy)
    return replay_size if strategy == "replay" else 0


def _concat(parts: list[LabeledData]) -> LabeledData:
    return LabeledData(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))
