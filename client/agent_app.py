"""The DKT agent as a Flower ClientApp. Each message runs in a fresh process, so the
agent's state lives on its disk (see client/agent_runtime.py)."""

from __future__ import annotations

import os
import time

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from dkt.client.agent_runtime import AgentPlacement, train_experience
from dkt.client.relay_exchange import headline_metrics
from dkt.common.config import ExperimentConfig
from dkt.common.threads import apply_threads
from dkt.messages import AgentIdentity, TrainOrder, TrainReply

# Test-only: seconds the query handler sleeps before answering, to stand in for a
# ClientApp that starts slowly on a loaded host (tests/test_flower_run.py). Unset in use.
QUERY_DELAY_ENV = "DKT_TEST_QUERY_DELAY"

app = ClientApp()


@app.query()
def identify(msg: Message, context: Context) -> Message:
    """Tell the conductor which agent this SuperNode runs."""
    placement = AgentPlacement.from_node_config(dict(context.node_config))
    threads = apply_threads(placement.threads)
    delay = float(os.environ.get(QUERY_DELAY_ENV) or 0)
    if delay > 0:
        time.sleep(delay)
    who = AgentIdentity(placement.agent_id, placement.device, threads)
    return Message(who.to_record(), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the experience the conductor asks for; reply with metrics, never weights."""
    placement = AgentPlacement.from_node_config(dict(context.node_config))
    threads = apply_threads(placement.threads)  # before any torch work
    config = ExperimentConfig.from_run_config(dict(context.run_config))
    order = TrainOrder.from_message(msg)
    outcome = train_experience(
        placement,
        config,
        run_id=order.run_id,
        experience=order.experience,
        teachers=order.teachers,
        probe_fingerprint=order.probe_fingerprint,
    )
    reply = TrainReply(
        agent_id=placement.agent_id,
        record=outcome.record,
        retrained=outcome.retrained,
        threads=threads,
        metrics=tuple(headline_metrics(outcome.record).items()),
    )
    return Message(reply.to_record(), reply_to=msg)
