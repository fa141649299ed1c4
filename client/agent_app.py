"""The DKT agent as a Flower ClientApp. Each message runs in a fresh process, so the
agent's state lives on its disk (see client/agent_runtime.py)."""

from __future__ import annotations

import json

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from dkt.client.agent_runtime import AgentPlacement, train_experience
from dkt.client.relay_exchange import headline_metrics
from dkt.common.config import ExperimentConfig

app = ClientApp()


@app.query()
def identify(msg: Message, context: Context) -> Message:
    """Tell the conductor which agent this SuperNode runs."""
    placement = AgentPlacement.from_node_config(dict(context.node_config))
    info = ConfigRecord({"agent-id": placement.agent_id, "device": placement.device})
    return Message(RecordDict({"agent": info}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the experience the conductor asks for; reply with metrics, never weights."""
    placement = AgentPlacement.from_node_config(dict(context.node_config))
    config = ExperimentConfig.from_run_config(dict(context.run_config))
    order = msg.content["config"]
    outcome = train_experience(
        placement,
        config,
        run_id=str(order["run-id"]),
        experience=int(order["experience"]),  # type: ignore[arg-type]
        teachers=tuple(int(t) for t in order["teachers"]),  # type: ignore[union-attr]
        probe_fingerprint=str(order["probe-fingerprint"]),
    )
    record = ConfigRecord(
        {
            "agent-id": placement.agent_id,
            "record": json.dumps(outcome.record.to_dict()),
            "retrained": outcome.retrained,
        }
    )
    metrics = MetricRecord(headline_metrics(outcome.record))
    return Message(RecordDict({"result": record, "metrics": metrics}), reply_to=msg)
