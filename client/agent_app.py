# ruff: noqa: E402 (the clock is read before the imports)
"""The DKT agent as a Flower ClientApp. A message may run in a fresh process (Flower's
subprocess isolation) or in the agent's long-lived worker (client/agent_worker.py), so
the agent's state lives on its disk (see client/agent_runtime.py)."""

from __future__ import annotations

import time

_IMPORTS_START = time.time()  # the imports below (torch above all) are part of every message

import contextlib
import functools
import json
import os
from collections.abc import Callable
from pathlib import Path

from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from dkt.client.agent_runtime import (
    AgentPlacement,
    StepOutcome,
    StepTimings,
    adopt_average,
    fit_for_average,
    tensorboard_log,
    train_experience,
)
from dkt.client.relay_exchange import headline_metrics
from dkt.client.site_errors import site_error
from dkt.common.run.exchange_kinds import exchange_kind
from dkt.common.threads import apply_threads
from dkt.flower.messages import AgentIdentity, FittedWeights, RunQuery, TrainOrder, TrainReply
from dkt.flower.runs import TIMINGS_ENV
from dkt.proto.identity_proof import identity_proof, token_key

# Test-only: seconds the query handler sleeps before answering, to stand in for a
# ClientApp that starts slowly on a loaded host (tests/test_flower_run.py). Unset in use.
QUERY_DELAY_ENV = "DKT_TEST_QUERY_DELAY"

_IMPORTS_DONE = time.time()
# Filled by the long-lived worker for the task in hand: when it acquired the task and
# when it had pulled the message (epoch seconds). Empty in a fresh ClientApp process.
TASK_MARKS: dict[str, float] = {}
TIMINGS_LINE = "dkt-timings: "  # with $DKT_TIMINGS set: one line per train message

app = ClientApp()

Handler = Callable[[Message, Context], Message]


def _site_private(handler: Handler) -> Handler:
    """What leaves the site when `handler` fails is a `SiteError`: a kind, a short
    description and a hash, never a path, a file name or a class name; the whole error
    stays in this agent's log under the same hash (client/site_errors.py)."""

    @functools.wraps(handler)
    def private(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except Exception as err:
            raise site_error(err) from None

    return private


@app.query()
@_site_private
def identify(msg: Message, context: Context) -> Message:
    """Tell the conductor which agent this SuperNode runs."""
    placement = AgentPlacement.from_node_config(dict(context.node_config))
    threads = apply_threads(placement.threads)
    delay = float(os.environ.get(QUERY_DELAY_ENV) or 0)
    if delay > 0:
        time.sleep(delay)
    query = RunQuery.from_message(msg)
    config = placement.run_config(query.config_json, dict(context.run_config))
    # Proof that this node holds the agent's relay token, over the conductor's nonce.
    proof = (
        identity_proof(token_key(placement.token), query.run_id, placement.agent_id, query.nonce)
        if placement.token and query.nonce
        else ""
    )
    plan = placement.plan(config)
    who = AgentIdentity(placement.agent_id, placement.device, threads, plan, proof)
    return Message(who.to_record(), reply_to=msg)


@app.train()
@_site_private
def train(msg: Message, context: Context) -> Message:
    """Train the experience the conductor asks for; reply with metrics, never weights.
    Under exchange fedavg, reply with the trained weights for the round's average."""
    handler_start = time.time()
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
    timings = StepTimings()
    board = tensorboard_log(placement, config, order.run_id, dict(context.run_config))
    with board or contextlib.nullcontext():
        outcome = train_experience(
            placement,
            config,
            run_id=order.run_id,
            experience=order.experience,
            teachers=order.teachers,
            probe_fingerprint=order.probe_fingerprint,
            teacher_last=order.teacher_last,
            timings=timings,
            listener=board,
        )
    if os.environ.get(TIMINGS_ENV):
        _log_timings(placement.agent_id, order.experience, handler_start, timings)
    return _record_reply(msg, placement, outcome, threads)


def _log_timings(
    agent_id: int, experience: int, handler_start: float, timings: StepTimings
) -> None:
    """Where this message's time went, as wall-clock marks and seconds per phase."""
    marks = {
        "process_start": _process_start(),
        "imports_start": _IMPORTS_START,
        "imports_done": _IMPORTS_DONE,
        "handler_start": handler_start,
        "handler_end": time.time(),
        **TASK_MARKS,
    }
    line = {"agent": agent_id, "experience": experience, **marks, **timings.seconds}
    print(TIMINGS_LINE + json.dumps(line), flush=True)


def _process_start() -> float | None:
    """When this process started (epoch seconds), from /proc; None elsewhere."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(") ", 1)[1].split()[19])
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


@app.evaluate()
@_site_private
def evaluate(msg: Message, context: Context) -> Message:
    """Under exchange fedavg: continue from the round's average (the message's
    ArrayRecord), evaluate and checkpoint; reply with the experience's record."""
    placement = AgentPlacement.from_node_config(dict(context.node_config))
    threads = apply_threads(placement.threads)
    order = TrainOrder.from_message(msg)
    config = placement.run_config(order.config_json, dict(context.run_config))
    if order.weights is None:
        raise ValueError("an evaluate message must carry the round's averaged weights")
    board = tensorboard_log(placement, config, order.run_id, dict(context.run_config))
    with board or contextlib.nullcontext():
        outcome = adopt_average(
            placement,
            config,
            order.run_id,
            order.experience,
            order.probe_fingerprint,
            dict(order.weights.to_torch_state_dict()),
            listener=board,
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
