"""Specification of the typed Flower messages between conductor and agents
(dkt/flower/messages.py): each of RunQuery, AgentIdentity, TrainOrder, TrainReply and
FittedWeights comes back unchanged from the record it writes, carried in a `flwr.app.Message`
and read with `from_message` (or `from_record`), both in memory and after Flower's own
serialisation of the record (what crosses the wire between SuperLink and SuperNode)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from dkt.common.evaluation.results import ExperienceRecord
from dkt.flower.messages import (
    ARRAYS,
    EVALUATE,
    QUERY,
    TRAIN,
    AgentIdentity,
    FittedWeights,
    RunQuery,
    TrainOrder,
    TrainReply,
)

Carry = Callable[[RecordDict, str], Message]


@pytest.fixture(autouse=True)
def serverapp_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a ServerApp process has set before a Message is built."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


@pytest.fixture(params=["in-memory", "serialised"])
def carry(request: pytest.FixtureRequest) -> Iterator[Carry]:
    """A Message around `record` addressed to node 7, as the other end reads it."""

    def in_memory(record: RecordDict, message_type: str) -> Message:
        return Message(record, dst_node_id=7, message_type=message_type)

    def serialised(record: RecordDict, message_type: str) -> Message:
        proto = ProtoRecordDict.FromString(recorddict_to_proto(record).SerializeToString())
        return Message(recorddict_from_proto(proto), dst_node_id=7, message_type=message_type)

    yield in_memory if request.param == "in-memory" else serialised


def weights() -> ArrayRecord:
    return ArrayRecord(
        {
            "layer.weight": Array(np.arange(6, dtype=np.float32).reshape(2, 3)),
            "layer.bias": Array(np.array([-1.5, 2.25], dtype=np.float32)),
        }
    )


def experience_record() -> ExperienceRecord:
    return ExperienceRecord(
        experience=2,
        classes=[4, 5],
        teachers=[[0, 1], [3, 2]],
        acc_cl=[0.5, 0.75, 0.125],
        acc_st=[0.25, 0.5, 1.0],
        acc_all_cl=0.625,
        acc_all_st=0.375,
        transfer_classes=[6],
        transfer_st=0.875,
        transfer_cl=None,
        loss_ce=1.0625,
        loss_kd=0.03125,
        steps=40,
        train_seconds=2.5,
        loss_lwf=0.0,
        bytes_published=1024,
        bytes_fetched=4096,
        extra={"device": "cpu", "rows": 320},
        kd_weight=1.0,
    )


# --- RunQuery -------------------------------------------------------------------------------


def test_run_query_carries_the_runs_config(carry: Carry) -> None:
    query = RunQuery('{"agents": 3, "class_names": "[\\"ant\\", \\"bee\\"]"}')

    assert RunQuery.from_message(carry(query.to_record(), QUERY)) == query


def test_run_query_without_a_config_is_an_empty_record(carry: Carry) -> None:
    record = RunQuery().to_record()

    assert len(record) == 0
    assert RunQuery.from_message(carry(record, QUERY)) == RunQuery("")


# --- AgentIdentity --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "identity",
    [
        AgentIdentity(agent_id=3, device="cuda:1", threads=8, plan=((2, 0), (5,), (1, 4, 3))),
        AgentIdentity(agent_id=0, device="cpu", threads=0, plan=None),
        AgentIdentity(agent_id=11, plan=()),
    ],
    ids=["with-plan", "without-plan", "empty-plan"],
)
def test_agent_identity_round_trips_with_and_without_a_plan(
    carry: Carry, identity: AgentIdentity
) -> None:
    message = carry(identity.to_record(), QUERY)

    assert AgentIdentity.from_message(message) == identity
    assert AgentIdentity.from_record(message.content) == identity


# --- TrainOrder -----------------------------------------------------------------------------


def test_train_order_round_trips_with_teachers_and_config(carry: Carry) -> None:
    order = TrainOrder(
        run_id="run-7",
        experience=3,
        teachers=(4, 0, 9),
        probe_fingerprint="ab" * 32,
        teacher_last=(3, 2, 3),
        config_json='{"agents": 10}',
    )

    message = carry(order.to_record(), TRAIN)

    assert TrainOrder.from_message(message) == order
    assert ARRAYS not in message.content.array_records


def test_train_order_without_teachers_round_trips(carry: Carry) -> None:
    order = TrainOrder(run_id="r", experience=0, teachers=(), probe_fingerprint="")

    assert TrainOrder.from_message(carry(order.to_record(), TRAIN)) == order


def test_train_order_with_averaged_weights_round_trips(carry: Carry) -> None:
    order = TrainOrder("run-7", 1, (), "fp", weights=weights())

    back = TrainOrder.from_message(carry(order.to_record(), EVALUATE))

    assert back == order
    assert back.weights is not None
    assert [a.tolist() for a in back.weights.to_numpy_ndarrays()] == [
        [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]],
        [-1.5, 2.25],
    ]


# --- TrainReply -----------------------------------------------------------------------------


def test_train_reply_round_trips_the_experience_record_and_metrics(carry: Carry) -> None:
    reply = TrainReply(
        agent_id=4,
        record=experience_record(),
        retrained=True,
        threads=6,
        metrics=(("acc_all_cl", 0.625), ("transfer_st", 0.875)),
    )

    assert TrainReply.from_message(carry(reply.to_record(), TRAIN)) == reply


def test_train_reply_of_a_republished_experience_without_metrics_round_trips(
    carry: Carry,
) -> None:
    reply = TrainReply(agent_id=0, record=experience_record(), retrained=False)

    assert TrainReply.from_message(carry(reply.to_record(), TRAIN)) == reply


# --- FittedWeights --------------------------------------------------------------------------


@pytest.mark.parametrize("retrained", [True, False])
def test_fitted_weights_round_trip(carry: Carry, retrained: bool) -> None:
    fitted = FittedWeights(
        agent_id=2, experience=1, rows=320, weights=weights(), retrained=retrained, threads=4
    )

    back = FittedWeights.from_message(carry(fitted.to_record(), TRAIN))

    assert back == fitted
    assert back.weights.to_numpy_ndarrays()[1].tolist() == [-1.5, 2.25]
