"""The in-process driver: every agent in one process, exchanging predictions through
an exchange (in memory by default), following the configured schedule."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from dkt.common.data.local_source import LocalSource
from dkt.common.engine.setup import Setup, prepare
from dkt.common.engine.step import fedavg_step, run_step
from dkt.common.evaluation.results import RunResult
from dkt.common.run.config import ExperimentConfig
from dkt.common.training.agent import Agent
from dkt.common.training.checkpoints import checkpoint_path, latest_checkpoint
from dkt.common.training.exchange import InMemoryExchange, PredictionExchange
from dkt.common.training.listeners import Listener


def simulate(
    config: ExperimentConfig,
    *,
    exchange: PredictionExchange | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    device: str = "cpu",
    listener: Listener | None = None,
    setup: Setup | None = None,
    pretrained: Mapping[int, Sequence[Path]] | None = None,
    local: Mapping[int, LocalSource] | None = None,
) -> RunResult:
    """Run every agent through every experience in one process. An agent in `pretrained`
    is restored from its checkpoints (in experience order; each one's predictions are
    published) instead of training those experiences (a cached teacher stage)."""
    if config.schedule == "async":
        raise ValueError(
            "the async schedule needs agents that run independently: use dkt run, "
            "or --schedule sync or sequential here"
        )
    start = time.perf_counter()
    setup = setup or prepare(config, local)
    exchange = exchange if exchange is not None else InMemoryExchange()
    agents = [setup.make_agent(a, device) for a in range(config.agents)]
    first = 0
    if resume:
        if checkpoint_dir is None:
            raise ValueError("resume needs a checkpoint directory")
        first = _restore(agents, exchange, checkpoint_dir)
    if pretrained and agents and agents[0].exchange.averages_weights:
        raise ValueError(
            "exchange fedavg trains every agent in every round: a pretrained (cached) "
            "teacher stage cannot take part; use --no-teacher-cache"
        )
    for agent_id, paths in (pretrained or {}).items():
        for path in paths:
            exchange.publish(agents[agent_id].load_checkpoint(path))
    for experience in range(first, config.experiences):
        if agents and agents[0].exchange.averages_weights:  # no joint agents: config checks
            fedavg_step(agents, experience, listener, checkpoint_dir)
            continue
        for agent in agents:
            # A joint agent has one experience; a pretrained one has done its own.
            if agent.next_experience <= experience < len(agent.stream):
                run_step(agent, experience, exchange, config, listener, checkpoint_dir)
    return RunResult.of_run(
        setup,
        {a.agent_id: a.history for a in agents},
        seconds=time.perf_counter() - start,
        driver="simulate",
        extra={
            "agent_data": {
                str(a): "own" if a in setup.local else "shared" for a in range(config.agents)
            }
        },
    )


def _restore(agents: list[Agent], exchange: PredictionExchange, directory: str | Path) -> int:
    """Load every agent at the newest experience all of them have finished (an agent
    done with its whole, shorter stream at its last), republish their predictions, and
    return the experience to continue with."""
    found = [latest_checkpoint(directory, a.agent_id) for a in agents]
    if any(f is None for f in found):
        return 0
    last = [len(a.stream) - 1 for a in agents]
    unfinished = [f[0] for f, end in zip(found, last, strict=True) if f is not None and f[0] < end]
    common = min(unfinished) if unfinished else max(last)
    for agent, end in zip(agents, last, strict=True):
        at = min(common, end)
        saved = agent.load_checkpoint(checkpoint_path(directory, agent.agent_id, at))
        if agent.exchange.shares_predictions:
            exchange.publish(saved)
    return common + 1
