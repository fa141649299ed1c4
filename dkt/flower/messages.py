"""The Flower messages between the conductor (server/) and the agents (client/), typed.

One module for both ends, so the keys of a message are written once: the conductor
and the agent app import these dataclasses instead of indexing records by string.
It lives in `dkt/flower/` (every use of Flower in one package) because `server/` never
imports `client/` and `common/` imports no Flower. Only Flower's public `flwr.app` API is
used here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from dkt.common.evaluation.results import ExperienceRecord

QUERY = "query"  # flwr.app.MessageType.QUERY: "which agent do you run?"
TRAIN = "train"  # flwr.app.MessageType.TRAIN: "train this experience"
# flwr.app.MessageType.EVALUATE, under exchange fedavg only: "adopt this average of the
# round's weights, then evaluate and checkpoint" (FedAvg's evaluate step).
EVALUATE = "evaluate"
ARRAYS = "arrays"  # the ArrayRecord's key, as in Flower's own strategies


@dataclass(frozen=True)
class RunQuery:
    """The query ("which agent do you run?"), carrying the run's resolved experiment
    config as the conductor holds it (JSON of `ExperimentConfig.to_dict()`), so an
    agent with its own data maps its classes onto the run's class space."""

    config_json: str = ""
    run_id: str = ""
    # Fresh for every query: the agent answers with a proof over it that only the holder
    # of its relay token can compute (proto/identity_proof.py).
    nonce: str = ""

    def to_record(self) -> RecordDict:
        if not (self.config_json or self.nonce):
            return RecordDict()
        run = ConfigRecord({"config": self.config_json, "run-id": self.run_id, "nonce": self.nonce})
        return RecordDict({"run": run})

    @classmethod
    def from_message(cls, msg: Message) -> RunQuery:
        run = msg.content.config_records.get("run")
        if run is None:
            return cls()
        return cls(
            str(run.get("config", "")), str(run.get("run-id", "")), str(run.get("nonce", ""))
        )


@dataclass(frozen=True)
class AgentIdentity:
    """The reply to a query: which agent a SuperNode runs, and how. An agent with its
    own data also says its plan: the class indices of each experience it will learn
    (class lists only, never data); None for one on the shared data set, whose plan
    the conductor derives from the config."""

    agent_id: int
    device: str = "cpu"
    threads: int = 0  # torch's intra-op threads in the ClientApp's process (0: unknown)
    plan: tuple[tuple[int, ...], ...] | None = None
    # The proof over the query's nonce that this node holds the agent's relay token.
    proof: str = ""

    def to_record(self) -> RecordDict:
        plan = json.dumps([list(p) for p in self.plan]) if self.plan is not None else ""
        info = ConfigRecord(
            {
                "agent-id": self.agent_id,
                "device": self.device,
                "threads": self.threads,
                "plan": plan,
                "proof": self.proof,
            }
        )
        return RecordDict({"agent": info})

    @classmethod
    def from_record(cls, content: RecordDict) -> AgentIdentity:
        info = content["agent"]
        plan = str(info.get("plan", "") or "")
        return cls(
            agent_id=int(info["agent-id"]),  # type: ignore[arg-type]
            device=str(info.get("device", "cpu")),
            threads=int(info.get("threads", 0)),  # type: ignore[arg-type]
            plan=tuple(tuple(int(c) for c in part) for part in json.loads(plan)) if plan else None,
            proof=str(info.get("proof", "")),
        )

    @classmethod
    def from_message(cls, reply: Message) -> AgentIdentity:
        return cls.from_record(reply.content)


@dataclass(frozen=True)
class TrainOrder:
    """What the conductor asks of an agent: one experience, with these teachers; under
    fedavg, in an evaluate message, the round's averaged weights (`weights`)."""

    run_id: str
    experience: int
    teachers: tuple[int, ...]
    probe_fingerprint: str
    weights: ArrayRecord | None = None
    teacher_last: tuple[int, ...] = ()  # each teacher's last experience, as `teachers`
    config_json: str = ""  # the run's resolved config (see RunQuery); "": the run config

    def to_record(self) -> RecordDict:
        order = ConfigRecord(
            {
                "run-id": self.run_id,
                "experience": self.experience,
                "teachers": list(self.teachers),
                "probe-fingerprint": self.probe_fingerprint,
                "teacher-last": list(self.teacher_last),
                "config": self.config_json,
            }
        )
        content = RecordDict({"config": order})
        if self.weights is not None:
            content[ARRAYS] = self.weights
        return content

    @classmethod
    def from_record(cls, content: RecordDict) -> TrainOrder:
        order = content["config"]
        return cls(
            run_id=str(order["run-id"]),
            experience=int(order["experience"]),  # type: ignore[arg-type]
            teachers=tuple(int(t) for t in order["teachers"]),  # type: ignore[union-attr]
            probe_fingerprint=str(order["probe-fingerprint"]),
            weights=content.array_records.get(ARRAYS),
            teacher_last=tuple(int(t) for t in order.get("teacher-last", []) or []),  # type: ignore[union-attr]
            config_json=str(order.get("config", "") or ""),
        )

    @classmethod
    def from_message(cls, msg: Message) -> TrainOrder:
        return cls.from_record(msg.content)


@dataclass(frozen=True)
class TrainReply:
    """What an agent answers: the experience's record (metrics, never weights)."""

    agent_id: int
    record: ExperienceRecord
    retrained: bool  # False when the experience was already done and was republished
    threads: int = 0  # torch's intra-op threads in the ClientApp's process
    metrics: tuple[tuple[str, float], ...] = ()  # headline numbers, for Flower's own tools

    def to_record(self) -> RecordDict:
        result = ConfigRecord(
            {
                "agent-id": self.agent_id,
                "record": json.dumps(self.record.to_dict()),
                "retrained": self.retrained,
                "threads": self.threads,
            }
        )
        return RecordDict({"result": result, "metrics": MetricRecord(dict(self.metrics))})

    @classmethod
    def from_record(cls, content: RecordDict) -> TrainReply:
        result = content["result"]
        metrics = content.metric_records.get("metrics")
        return cls(
            agent_id=int(result["agent-id"]),  # type: ignore[arg-type]
            record=ExperienceRecord(**json.loads(str(result["record"]))),
            retrained=bool(result["retrained"]),
            threads=int(result.get("threads", 0)),  # type: ignore[arg-type]
            metrics=tuple((k, float(v)) for k, v in (metrics or {}).items()),  # type: ignore[arg-type]
        )

    @classmethod
    def from_message(cls, reply: Message) -> TrainReply:
        return cls.from_record(reply.content)


@dataclass(frozen=True)
class FittedWeights:
    """An agent's answer to a train message under fedavg: its weights after training
    the experience (all but the st head) and how many rows it trained on (FedAvg's
    n_k), for the conductor to average. The record comes after the evaluate message."""

    agent_id: int
    experience: int
    rows: int
    weights: ArrayRecord
    retrained: bool  # False when the experience was already fitted and only re-sent
    threads: int = 0

    def to_record(self) -> RecordDict:
        result = ConfigRecord(
            {
                "agent-id": self.agent_id,
                "experience": self.experience,
                "rows": self.rows,
                "retrained": self.retrained,
                "threads": self.threads,
            }
        )
        return RecordDict({"fit": result, ARRAYS: self.weights})

    @classmethod
    def from_record(cls, content: RecordDict) -> FittedWeights:
        result = content["fit"]
        return cls(
            agent_id=int(result["agent-id"]),  # type: ignore[arg-type]
            experience=int(result["experience"]),  # type: ignore[arg-type]
            rows=int(result["rows"]),  # type: ignore[arg-type]
            weights=content.array_records[ARRAYS],
            retrained=bool(result["retrained"]),
            threads=int(result.get("threads", 0)),  # type: ignore[arg-type]
        )

    @classmethod
    def from_message(cls, reply: Message) -> FittedWeights:
        return cls.from_record(reply.content)
