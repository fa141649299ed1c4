"""Your own continual-learning strategy, registered by name and run beside a built-in.

A strategy is a `dkt.Strategy` subclass whose hooks the training loop calls (before and
after each experience, a penalty added to every step's loss, its replay buffer's size,
its checkpointed state); a factory registered with `dkt.register_strategy("name")` builds
one per agent from the agent's spec. This one is the "L2" baseline of the continual
learning literature: after each experience it keeps a copy of the weights θ*, then
adds `weight/2 · Σ (θ − θ*)²` to the loss (EWC with every Fisher value 1).

Registered names exist in this process only; for `dkt simulate` or `dkt run` name the
factory `module:callable` instead (importable on every agent's host):

    PYTHONPATH=examples dkt simulate --strategy user_strategy:l2_anchor --agents 2 \\
        --experiences 2 --epochs 1

Runs in seconds on a CPU:

    python examples/user_strategy.py
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import dkt
from dkt.common.run.agent_spec import AgentSpec

WEIGHT = 10.0  # the penalty's weight; a real strategy would take it from a config field


class L2Anchor(dkt.Strategy):
    """Pull every weight towards its value after the previous experience."""

    def __init__(self, weight: float) -> None:
        self.weight = weight
        self.anchor: list[torch.Tensor] = []

    def penalty(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        if not self.anchor:
            return None  # the first experience: nothing to hold on to yet
        params = [p for p in model.parameters() if p.requires_grad]
        squared = sum(((p - a) ** 2).sum() for p, a in zip(params, self.anchor, strict=True))
        return 0.5 * self.weight * squared

    def after_experience(self, model: nn.Module, data: Any, experience: int) -> None:
        self.anchor = [p.detach().clone() for p in model.parameters() if p.requires_grad]

    # Its state goes into the agent's checkpoints, so a resumed run goes on the same.
    def state_dict(self) -> dict[str, Any]:
        return {"anchor": self.anchor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.anchor = list(state["anchor"])


@dkt.register_strategy("l2-anchor")
def l2_anchor(spec: AgentSpec) -> dkt.Strategy:
    """One L2Anchor per agent (`spec` holds the agent's options, e.g. spec.lr)."""
    return L2Anchor(WEIGHT)


def main() -> None:
    for strategy in ("naive", "l2-anchor"):
        config = dkt.ExperimentConfig(
            agents=2, experiences=2, epochs=4, exchange="none", strategy=strategy
        )
        result = dkt.simulate(config, threads=1)  # digits are tiny: one thread is fastest
        for row in result.to_records("agent"):
            print(
                f"strategy {strategy}: agent {row['agent']}: average accuracy "
                f"cl {100 * row['avg_acc_cl']:.1f}%, forgetting cl "
                f"{100 * row['forgetting_cl']:.1f}"
            )


if __name__ == "__main__":
    main()
