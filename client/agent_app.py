"""The DKT agent as a Flower ClientApp. Each message runs in a fresh process, so the
agent's state lives on its disk (see client/agent_runtime.py)."""

from __future__ import annotations

import os
import time

from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from dkt.client.agent_runtime import (
    AgentPlacement,
    StepOutcome,
    adopt_average,
    fit_for_average,
    train_experience,
)
from dkt.client.relay_exchange import headline_metrics
from dkt.common.exchange import exchange_kind
from dkt.common.threads import apply_threads
from dkt.messages import AgentIdentity, FittedWeights, RunQuery, TrainOrder, TrainReply

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
    config = placement.run_config(RunQuery.from_message(msg).config_json, dict(context.run_config))
    who = AgentIdentity(placement.agent_id, placement.device, threads, placement.plan(config))
    return Message(who.to_record(), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the experience the conductor asks for; reply with metrics, never weights.
    Under exchange fedavg, reply with the trained weights for the round's average."""
    placement = AgentPlacement.from_node_config(dict(context.node_config))
    threads = apply_threads(placement.threads)  # before any torch work
    order = TrainOrder.from_message(msg)
    config = placement.run_config(order.config_json, dict(context.run_config))
    if exchange_kind(config.exchange).averages_weights:
        fit = fit_for_average(
            placement, config, order.run_id, order.experience, order.probe_fingerprint
        )
        fitted = FittedWeights(
            agent_id=placement.agent_id,
            experience=order.experience,
            rows=fit.rows,
            weights=ArrayRecord(torch_state_dict=fit.weights),
            retrained=fit.retrained,
            threads=threads,
        )
        return Message(fitted.to_record(), reply_to=msg)
    outcome = train_experience(
        placement,
        config,
        run_id=order.run_id,
        experience=order.experience,
        teachers=order.teachers,
        probe_fingerprint=order.probe_fingerprint,
        teacher_last=order.teacher_last,
    )
    return _record_reply(msg, placement, outcome, threads)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Under exchange fedavg: continue from the round's average (the message's
    ArrayRecord), evaluate and checkpoint; reply with the experience's record."""
    placement = AgentPlacement.from_node_config(dict(context.node_config))
    threads = apply_threads(placement.threads)
    order = TrainOrder.from_message(msg)
    config = placement.run_config(order.config_json, dict(context.run_config))
    if order.weights is None:
        raise ValueError("an evaluate message must carry the round's averaged weights")
    outcome = adopt_average(
        placement,
        config,
        order.run_id,
        order.experience,
        order.probe_fingerprint,
        dict(order.weights.to_torch_state_dict()),
    )
    return _record_reply(msg, placement, outcome, threads)


def _record_reply(
    msg: Message, placement: AgentPlacement, outcome: StepOutcome, threads: int
) -> Message:
    reply = TrainReply(
        agent_id=placement.agent_id,
        record=outcome.record,
        retrained=outcome.retrained,
        threads=threads,
        metrics=tuple(headline_metrics(outcome.record).items()),
    )
    return Message(reply.to_record(), reply_to=msg)
