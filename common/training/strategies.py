"""The cl head's continual-learning strategies: what an agent's stream and replay buffer
look like under each. The training loop in agent.py applies them:

- naive: each experience's own data only; no buffer.
- replay: the experience's data plus a class-balanced replay buffer (replay.py says how
  the two are mixed into minibatches).
- lwf: the experience's data only, plus Li & Hoiem's distillation of the agent's own
  model as it was after the previous experience (frozen, eval mode) into the cl head
  (`loss.lwf_loss`); no buffer.
- joint: the upper bound: one single experience holding all of the agent's classes.
- ewc: Elastic Weight Consolidation (Kirkpatrick et al. 2017), added through the
  registry: after each experience the diagonal Fisher information of the cl head's
  loss on that experience's data; while learning the next ones the penalty
  `λ/2 Σ_i F_i (θ_i − θ*_i)²` pulls each weight towards its value θ* after the previous
  experience (Fisher summed over experiences: online EWC with γ = 1); no buffer.

Each strategy is a `Strategy` (the protocol below) built per agent by a factory
registered under its name (common/extensions.py; users register their own the same way or name
them `module:callable`). The training loop calls its hooks; naive, replay and ewc are
nothing but hooks, lwf's distillation and joint's single experience are built into the
loop (`agent.py`, `stream_for`) and their `Strategy` objects add nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dkt.common.choices import STRATEGIES
from dkt.common.data.labeled_data import LabeledData
from dkt.common.data.streams import AgentStream, Experience
from dkt.common.extensions import is_known_strategy, register_strategy, strategy_factory
from dkt.common.run.agent_spec import AgentSpec


class Strategy:
    """What a continual-learning strategy may do to an agent's training; the base class is
    the naive strategy (every hook does nothing). One object per agent, made by the
    strategy's factory from the agent's `AgentSpec`. `model` is the agent's `DualHeadNet`:
    `model(x)` gives (cl logits, st logits); the strategy acts on the cl head's learning.
    """

    def buffer_capacity(self, replay_size: int) -> int:
        """Rows the agent's class-balanced replay buffer keeps (0: no buffer)."""
        return 0

    def before_experience(self, model: nn.Module, experience: int) -> None:
        """Called before training `experience` (0-based)."""

    def penalty(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """A term added to every training step's loss (x, y: the step's own minibatch;
        None: nothing added). It is differentiated with the rest of the loss."""
        return None

    def after_experience(self, model: nn.Module, data: LabeledData, experience: int) -> None:
        """Called after training `experience` on `data` (its own rows, without replay)."""

    def state_dict(self) -> dict[str, Any]:
        """What must survive a checkpoint (tensors and plain values); {} when stateless."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` gave."""


class Replay(Strategy):
    def buffer_capacity(self, replay_size: int) -> int:
        return replay_size


@register_strategy("naive")
@register_strategy("lwf")  # its distillation is in the training loop (agent.py)
@register_strategy("joint")  # its single experience is `stream_for`'s
def _plain(spec: AgentSpec) -> Strategy:
    return Strategy()


@register_strategy("replay")
def _replay(spec: AgentSpec) -> Strategy:
    return Replay()


def ewc_penalty(
    params: Sequence[torch.Tensor],
    fisher: Sequence[torch.Tensor],
    anchor: Sequence[torch.Tensor],
    weight: float,
) -> torch.Tensor:
    """EWC's `weight/2 · Σ_i F_i (θ_i − θ*_i)²` over matching lists of tensors."""
    total = params[0].new_zeros(())
    for p, f, a in zip(params, fisher, anchor, strict=True):
        total = total + (f * (p - a).pow(2)).sum()
    return 0.5 * weight * total


def fisher_diagonal(
    model: nn.Module, data: LabeledData, batch_size: int, device: torch.device
) -> list[torch.Tensor]:
    """The empirical Fisher's diagonal of the cl head's cross-entropy on `data`: per
    parameter the mean over minibatches (in order, so no randomness is drawn) of the
    squared minibatch gradient, computed in eval mode (BatchNorm statistics untouched)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fisher = [torch.zeros_like(p) for p in params]
    was_training = model.training
    model.eval()
    batches = 0
    for start in range(0, len(data), batch_size):
        x = data.x[start : start + batch_size].to(device)
        y = data.y[start : start + batch_size].to(device)
        cl, _ = model(x)
        grads = torch.autograd.grad(F.cross_entropy(cl, y), params, allow_unused=True)
        for f, g in zip(fisher, grads, strict=True):
            if g is not None:
                f += g.detach().pow(2)
        batches += 1
    model.train(was_training)
    return [f / max(batches, 1) for f in fisher]


class EWC(Strategy):
    """Elastic Weight Consolidation with the Fisher summed over experiences."""

    def __init__(self, weight: float, batch_size: int) -> None:
        self.weight = weight
        self.batch_size = batch_size
        self.fisher: list[torch.Tensor] = []
        self.anchor: list[torch.Tensor] = []

    def penalty(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        if not self.fisher or self.weight == 0:
            return None
        params = [p for p in model.parameters() if p.requires_grad]
        return ewc_penalty(params, self.fisher, self.anchor, self.weight)

    def after_experience(self, model: nn.Module, data: LabeledData, experience: int) -> None:
        device = next(model.parameters()).device
        fisher = fisher_diagonal(model, data, self.batch_size, device)
        if self.fisher:
            fisher = [old + new for old, new in zip(self.fisher, fisher, strict=True)]
        self.fisher = fisher
        self.anchor = [p.detach().clone() for p in model.parameters() if p.requires_grad]

    def state_dict(self) -> dict[str, Any]:
        return {"fisher": self.fisher, "anchor": self.anchor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fisher = list(state["fisher"])
        self.anchor = list(state["anchor"])


@register_strategy("ewc")
def _ewc(spec: AgentSpec) -> Strategy:
    return EWC(spec.ewc_lambda, spec.batch_size)


def build_strategy(spec: AgentSpec) -> Strategy:
    """The agent's strategy object, from its registered factory or `module:callable`."""
    strategy = strategy_factory(spec.strategy)(spec)
    if not isinstance(strategy, Strategy):
        raise ValueError(
            f"strategy {spec.strategy}: the factory returned {type(strategy).__name__}, "
            "not a dkt Strategy (subclass dkt.common.training.strategies.Strategy)"
        )
    return strategy


def _check(strategy: str) -> None:
    if not is_known_strategy(strategy, STRATEGIES):
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
