"""The conductor's message lifetimes, retries and agent states, on a fake Flower Grid and
a fake clock: seconds of Flower time pass in microseconds.

The fake Grid behaves like a SuperLink with SuperNodes that run one ClientApp at a
time: a node takes each message it is sent in order, spends `cold_start` seconds
starting a ClientApp plus the work, and answers. A reply to a message whose TTL has
passed is dropped, and pulling an expired message yields Flower's error reply."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from flwr.app import ArrayRecord, Error, Message

from dkt.common.engine.setup import prepare, shared_plans
from dkt.common.engine.step import averaged_part
from dkt.common.evaluation.results import ExperienceRecord
from dkt.common.run.config import ExperimentConfig
from dkt.common.training.weight_averaging import average_states, state_mismatch
from dkt.flower.messages import (
    AgentIdentity,
    FittedWeights,
    RunQuery,
    TrainOrder,
    TrainReply,
)
from dkt.flower.runs import FLOWER_ERRORS
from dkt.proto.identity_proof import identity_proof, proof_matches, token_key
from dkt.proto.relay_client import IdentityCheck
from dkt.server.conductor.dispatch import Order
from dkt.server.conductor.run import Conductor
from dkt.server.conductor.settings import ConductorSettings
from tests.support.experiments import SMALL

CLIENT_APP_RAISED, MESSAGE_UNAVAILABLE, NODE_UNAVAILABLE = 2, 3, 5


@pytest.fixture(autouse=True)
def serverapp_identity(monkeypatch):
    """What a ServerApp process has set before the conductor builds a Message."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.grid: FakeGrid | None = None
        self.events: list[tuple[float, Callable[[], None]]] = []  # (when, what)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        for event in [e for e in self.events if e[0] <= self.now]:
            self.events.remove(event)
            event[1]()
        assert self.grid is not None
        self.grid.advance()


@dataclass
class Node:
    agent_id: int
    cold_start: float = 1.0  # seconds before a ClientApp can start work
    train_seconds: float = 5.0
    raises: int = 0  # how many train messages fail with the ClientApp raising
    alive: bool = True
    queue: list[str] = field(default_factory=list)  # message ids, in arrival order
    fit: tuple[float, int] | None = None  # fedavg: (its one weight after training, rows)
    plan: tuple[tuple[int, ...], ...] | None = None  # an agent with its own data says it
    averages: list[float] = field(default_factory=list)  # fedavg: the averages it was sent
    busy_until: float = 0.0
    current: str | None = None
    token: str | None = None  # the relay token it proves its identity with (default: its own)


@dataclass
class Sent:
    msg: Message
    node: int
    created: float
    ttl: float
    reply: Message | None = None
    pulled: bool = False


class FakeGrid:
    """Just enough of `flwr.serverapp.Grid` for the conductor."""

    def __init__(self, clock: Clock, nodes: dict[int, Node]) -> None:
        self.clock = clock
        clock.grid = self
        self.nodes = nodes
        self.sent: dict[str, Sent] = {}

    def get_node_ids(self) -> Iterable[int]:
        return [n for n, node in self.nodes.items() if node.alive]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            mid = f"m{len(self.sent)}"
            msg.metadata.__dict__["_message_id"] = mid  # the SuperLink sets it
            node = msg.metadata.dst_node_id
            self.sent[mid] = Sent(msg, node, self.clock.now, msg.metadata.ttl)
            self.nodes[node].queue.append(mid)
            ids.append(mid)
        self.advance()
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.advance()
        out = []
        for mid in message_ids:
            sent = self.sent[mid]
            if sent.pulled:
                continue
            if sent.reply is not None:
                out.append(sent.reply)
                sent.pulled = True
            elif not self.nodes[sent.node].alive:
                reason = "Error: Node Unavailable - no heartbeat"
                out.append(Message(Error(NODE_UNAVAILABLE, reason), reply_to=sent.msg))
                sent.pulled = True
            elif self.clock.now > sent.created + sent.ttl:
                reason = "Error: Message Unavailable - ... It may have expired due to its TTL"
                out.append(Message(Error(MESSAGE_UNAVAILABLE, reason), reply_to=sent.msg))
                sent.pulled = True
        return out

    def advance(self) -> None:
        """Run every node's ClientApps up to now, one at a time."""
        now = self.clock.now
        for node in self.nodes.values():
            while node.alive:
                if node.current is not None:
                    if now < node.busy_until:
                        break
                    self._answer(node, self.sent[node.current], node.busy_until)
                    node.current = None
                if not node.queue:
                    break
                mid = node.queue.pop(0)
                sent = self.sent[mid]
                work = node.train_seconds if sent.msg.metadata.message_type == "train" else 0
                node.current = mid
                node.busy_until = max(node.busy_until, sent.created) + node.cold_start + work

    def _answer(self, node: Node, sent: Sent, at: float) -> None:
        if at > sent.created + sent.ttl:
            return  # the SuperLink refuses a reply to an expired message
        msg = sent.msg
        if msg.metadata.message_type == "query":
            query = RunQuery.from_message(msg)
            token = node.token if node.token is not None else agent_token(node.agent_id)
            proof = identity_proof(token_key(token), query.run_id, node.agent_id, query.nonce)
            content = AgentIdentity(node.agent_id, "cpu", 1, node.plan, proof).to_record()
            sent.reply = Message(content, reply_to=msg)
        elif node.raises:
            node.raises -= 1
            error = Error(CLIENT_APP_RAISED, "ValueError: the relay is gone")
            sent.reply = Message(error, reply_to=msg)
        elif node.fit is not None and msg.metadata.message_type == "train":
            order = TrainOrder.from_message(msg)
            weight, rows = node.fit
            arrays = ArrayRecord(torch_state_dict={"w": torch.tensor([weight])})
            fitted = FittedWeights(node.agent_id, order.experience, rows, arrays, retrained=True)
            sent.reply = Message(fitted.to_record(), reply_to=msg)
        else:
            order = TrainOrder.from_message(msg)
            if msg.metadata.message_type == "evaluate":
                assert order.weights is not None
                node.averages.append(float(order.weights.to_torch_state_dict()["w"]))
            reply = TrainReply(node.agent_id, record(order.experience), retrained=True)
            sent.reply = Message(reply.to_record(), reply_to=msg)

    def queries_to(self, node: int) -> int:
        return sum(
            1
            for s in self.sent.values()
            if s.node == node and s.msg.metadata.message_type == "query"
        )


def record(experience: int) -> ExperienceRecord:
    return ExperienceRecord(
        experience=experience, classes=[0], teachers=[], acc_cl=[0.5], acc_st=[0.5],
        acc_all_cl=0.5, acc_all_st=0.5, transfer_classes=[], transfer_st=None,
        transfer_cl=None, loss_ce=1.0, loss_kd=0.0, steps=1, train_seconds=1.0,
    )  # fmt: skip


def agent_token(agent_id: int) -> str:
    return f"token-of-agent-{agent_id}-0123456789"


class FakeRelay:
    """Records the conductor's progress reports; checks identity proofs as the relay
    does, against every agent's token `agent_token(a)`."""

    def __init__(self) -> None:
        self.reports: list[tuple[int, int, str, str]] = []
        self.verified: list[tuple[int, bool]] = []
        self.unpublished: set[tuple[int, int]] = set()  # (agent, experience) not held

    def list_predictions(self, run_id, agent_id=None) -> list[SimpleNamespace]:
        """Every experience of every agent is held, but those in `unpublished`."""
        return [
            SimpleNamespace(agent_id=agent_id, experience=e)
            for e in range(10)
            if (agent_id, e) not in self.unpublished
        ]

    def verify_identity(self, run_id, agent_id, nonce, proof) -> IdentityCheck:
        valid = len(nonce) >= 16 and proof_matches(
            token_key(agent_token(agent_id)), run_id, agent_id, nonce, proof
        )
        self.verified.append((agent_id, valid))
        return IdentityCheck(valid=valid, auth_enabled=True)

    def report_progress(self, run_id, agent_id, experience, state, metrics=None, reason=""):
        self.reports.append((agent_id, experience, state, reason))

    def states(self, agent_id: int) -> list[str]:
        return [state for a, _, state, _ in self.reports if a == agent_id]


def conductor(
    nodes: dict[int, Node], agents: int, **settings: float
) -> tuple[Conductor, FakeGrid, FakeRelay, list[str]]:
    clock = Clock()
    grid = FakeGrid(clock, nodes)
    relay = FakeRelay()
    lines: list[str] = []
    config = ExperimentConfig(dataset="synthetic", agents=agents, experiences=2)
    run = ConductorSettings(run_id="r", results_dir=Path("unused"), relay="unused", **settings)
    c = Conductor(grid, config, run, relay, log=lines.append, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    return c, grid, relay, lines


def test_agents_whose_clientapp_starts_in_more_than_a_minute_are_found():
    # Issue 11.1: ClientApp cold starts of 71-88 s on a loaded host outlived the 60 s
    # query TTL, so every reply expired and the run failed after --wait-agents.
    nodes = {7: Node(agent_id=0, cold_start=88.0), 8: Node(agent_id=1, cold_start=71.0)}
    c, grid, _, lines = conductor(nodes, agents=2, wait_agents=300.0)
    c.wait_for_agents()
    assert c.book.node_of == {0: 7, 1: 8}
    assert c.book.missing == set()
    # One query per node: a node whose query is still alive is not asked again.
    assert (grid.queries_to(7), grid.queries_to(8)) == (1, 1)
    assert not any("did not say" in line for line in lines)


def test_a_query_lives_as_long_as_the_wait_for_agents():
    c, grid, _, _ = conductor({7: Node(agent_id=0)}, agents=1, wait_agents=250.0)
    c.wait_for_agents()
    (query,) = [s for s in grid.sent.values() if s.msg.metadata.message_type == "query"]
    assert query.ttl == pytest.approx(250.0, abs=1.0)


def test_connected_nodes_that_never_answer_are_named_in_the_error():
    nodes = {7: Node(agent_id=0, cold_start=1000.0), 8: Node(agent_id=1, cold_start=1000.0)}
    c, _, _, _ = conductor(nodes, agents=2, wait_agents=120.0)
    with pytest.raises(RuntimeError) as err:
        c.wait_for_agents()
    assert str(err.value) == (
        "2 SuperNode(s) were connected (nodes 7, 8) but none said which agent it runs "
        "within 120 s (queries unanswered after up to 120 s): a ClientApp can take minutes "
        "to start on a loaded host; raise --wait-agents, or see the agents' logs"
    )


def test_an_error_reply_to_a_query_is_logged_with_flowers_code_and_reason():
    nodes = {7: Node(agent_id=0, cold_start=50.0), 8: Node(agent_id=1, cold_start=1000.0)}
    c, grid, _, lines = conductor(nodes, agents=2, wait_agents=120.0)
    c.clock.events.append((1020.0, lambda: setattr(nodes[8], "alive", False)))  # type: ignore[attr-defined]
    c.wait_for_agents()
    assert c.book.node_of == {0: 7}
    (line,) = [line for line in lines if line.startswith("node 8 did not say")]
    assert f"Flower error 5 ({FLOWER_ERRORS[5]}): Error: Node Unavailable" in line
    assert grid.queries_to(8) == 1  # a node that left is not asked again


def test_no_supernode_at_all_says_to_start_agents():
    c, _, _, _ = conductor({}, agents=2, wait_agents=30.0)
    with pytest.raises(RuntimeError, match="no SuperNode connected within 30 s: start agents"):
        c.wait_for_agents()


def test_an_agent_absent_at_the_start_is_missing_with_its_reason():
    c, _, relay, _ = conductor({7: Node(agent_id=0)}, agents=2, wait_agents=30.0)
    c.wait_for_agents()
    assert c.book.missing == {1}
    assert relay.reports == [(1, 0, "missing", "did not connect within 30 s")]


def test_a_train_message_outlives_the_agent_timeout():
    c, grid, relay, _ = conductor({7: Node(agent_id=0)}, agents=1, agent_timeout=500.0)
    c.wait_for_agents()
    c.drive([Order(0, 0)])
    (train,) = [s for s in grid.sent.values() if s.msg.metadata.message_type == "train"]
    assert train.ttl > 500.0
    assert relay.states(0) == ["training"]
    assert len(c.histories[0]) == 1


def test_a_clientapp_that_raises_is_reported_failed_then_retrying():
    nodes = {7: Node(agent_id=0, raises=1)}
    c, _, relay, _ = conductor(nodes, agents=1, retries=2)
    c.wait_for_agents()
    c.drive([Order(0, 0)])
    assert relay.states(0) == ["training", "failed", "retrying"]
    failed = [r for r in relay.reports if r[2] == "failed"][0]
    assert "ClientApp raised" in failed[3] and "the relay is gone" in failed[3]
    retrying = [r for r in relay.reports if r[2] == "retrying"][0]
    assert retrying[3].startswith("try 2 of 3 after: Flower error 2")
    assert len(c.histories[0]) == 1


def test_an_agent_on_a_new_node_is_reported_rejoined():
    nodes = {7: Node(agent_id=0, train_seconds=1000.0)}
    c, grid, relay, lines = conductor(nodes, agents=1, agent_timeout=60.0, rejoin_wait=300.0)
    c.wait_for_agents()
    nodes[7].alive = False  # its SuperNode died mid-experience ...
    grid.nodes[9] = Node(agent_id=0, cold_start=40.0)  # ... and a new one comes up
    c.drive([Order(0, 0)])
    assert relay.states(0) == ["training", "failed", "rejoined", "retrying"]
    assert "SuperNode unavailable" in [r for r in relay.reports if r[2] == "failed"][0][3]
    assert any(line.startswith("agent 0 rejoined on node 9") for line in lines)
    assert len(c.histories[0]) == 1


def test_an_agent_that_does_not_come_back_is_missing_with_the_last_failure():
    nodes = {7: Node(agent_id=0, train_seconds=1000.0)}
    c, grid, relay, _ = conductor(nodes, agents=1, agent_timeout=60.0, rejoin_wait=30.0)
    c.wait_for_agents()
    c.drive([Order(0, 0)])  # its ClientApp hangs: the query after the timeout waits behind it
    assert c.book.missing == {0}
    assert relay.states(0) == ["training", "failed", "missing"]
    why = relay.reports[-1][3]
    assert why == "did not come back within 30 s after: no reply within 60 s"
    assert grid.queries_to(7) == 2  # once at the start, once after the timeout


def test_directed_teachers_and_a_joint_agent_shape_the_orders():
    # seed-exp1's shape: agent 0 learns all its classes in one (joint) experience and
    # teaches agent 1, which has a directed link to it and no other teacher.
    nodes = {7: Node(agent_id=0), 8: Node(agent_id=1)}
    c, grid, _, _ = conductor(nodes, agents=2)
    c.config = ExperimentConfig(
        dataset="synthetic",
        agents=2,
        experiences=2,
        agent_overrides={0: {"strategy": "joint", "teachers": []}, 1: {"teachers": [0]}},
    )
    c.wait_for_agents()
    for e in range(2):
        c.drive([Order(a, e) for a in c.active(e)])
    sent = [
        (s.node, TrainOrder.from_message(s.msg))
        for s in grid.sent.values()
        if s.msg.metadata.message_type == "train"
    ]
    assert [(node, o.experience, o.teachers) for node, o in sent] == [
        (7, 0, ()),
        (8, 0, (0,)),
        (8, 1, (0,)),
    ]
    assert c.experience_of(0) == 0  # done with its one experience, not "experience 1"


def test_a_fedavg_round_averages_the_fitted_weights_by_rows_and_sends_the_average_back():
    # Agent 1's first train message fails (its ClientApp raises) and is re-sent; agent 2
    # never connects, so the average is over agents 0 and 1 only.
    nodes = {
        7: Node(agent_id=0, fit=(1.0, 100)),
        8: Node(agent_id=1, fit=(4.0, 300), raises=1),
    }
    c, grid, relay, lines = fedavg_conductor(nodes, agents=3, wait_agents=20.0)
    c.wait_for_agents()
    c.fedavg_round(0)

    # (100·1 + 300·4) / 400 = 3.25, sent to both agents that trained
    assert [nodes[7].averages, nodes[8].averages] == [[3.25], [3.25]]
    kinds = [(s.node, s.msg.metadata.message_type) for s in grid.sent.values()]
    assert [k for k in kinds if k[1] != "query"] == [
        (7, "train"), (8, "train"), (8, "train"), (7, "evaluate"), (8, "evaluate"),
    ]  # fmt: skip
    assert [len(c.histories[a]) for a in range(3)] == [1, 1, 0]
    assert relay.states(2) == ["missing"]
    assert "experience 0: averaged the weights of agents 0, 1 (4 B); sending the average" in lines


def fedavg_conductor(
    nodes: dict[int, Node], agents: int, **settings: float
) -> tuple[Conductor, FakeGrid, FakeRelay, list[str]]:
    """A conductor under fedavg whose model is one float32 weight "w", as the fake
    nodes send, and whose agent a learns class a first: class 0 has 100 training rows,
    the others 300."""
    c, grid, relay, lines = conductor(nodes, agents, **settings)
    c.config = ExperimentConfig(
        dataset="synthetic", agents=agents, experiences=2, exchange="fedavg", replay_size=0
    )
    c.weights_layout = {"w": torch.empty(1, device="meta")}
    c.class_rows = [100] + [300] * (2 * agents - 1)
    c.plans = {a: [[a], [agents + a]] for a in range(agents)}
    return c, grid, relay, lines


@pytest.mark.parametrize(
    ("weights", "rows", "reason"),
    [
        (
            {"w": torch.tensor([4.0, 4.0])},
            200,
            "weights unlike the model's: 'w' has shape [2], not [1]",
        ),
        (
            {"w": torch.tensor([4.0]), "w2": torch.tensor([9.0])},
            200,
            "weights unlike the model's: entries the model does not have: 'w2'",
        ),
        ({"v": torch.tensor([4.0])}, 200, "entries the model does not have: 'v'"),
        (
            {"w": torch.tensor([4.0], dtype=torch.float64)},
            200,
            "weights unlike the model's: 'w' is torch.float64, not torch.float32",
        ),
        (
            {"w": torch.tensor([float("nan")])},
            200,
            "weights unlike the model's: 'w' holds values that are not finite",
        ),
        (
            {"w": torch.tensor([float("inf")])},
            200,
            "weights unlike the model's: 'w' holds values that are not finite",
        ),
        (
            {"w": torch.tensor([4.0])},
            10**12,
            "weights trained on 1000000000000 rows, but agent 1's plan allows 1 to 300 "
            "for experience 0",
        ),
        (
            {"w": torch.tensor([4.0])},
            0,
            "weights trained on 0 rows, but agent 1's plan allows 1 to 300 for experience 0",
        ),
    ],
    ids=["shape", "extra-entry", "other-entry", "dtype", "nan", "inf", "rows", "no-rows"],
)
def test_forged_fedavg_weights_are_refused_and_the_round_averages_the_others(weights, rows, reason):
    # Agent 1's train reply is forged: it would fail the average, fill it with NaN or
    # outweigh agent 0. It is refused (with retries 0 the agent is then missing) and
    # the average is agent 0's weights alone.
    nodes = {7: Node(agent_id=0, fit=(1.0, 100)), 8: Node(agent_id=1, fit=(4.0, 300))}
    c, grid, relay, lines = fedavg_conductor(nodes, agents=2, retries=0.0)
    c.wait_for_agents()
    original = grid._answer

    def forged(node, sent, at):
        original(node, sent, at)
        if node.agent_id == 1 and sent.msg.metadata.message_type == "train":
            arrays = ArrayRecord(torch_state_dict=weights)
            fitted = FittedWeights(1, 0, rows, arrays, retrained=True)
            sent.reply = Message(fitted.to_record(), reply_to=sent.msg)

    grid._answer = forged  # type: ignore[method-assign]
    c.fedavg_round(0)

    failed = [line for line in lines if line.startswith("agent 1: experience 0 failed: ")]
    assert len(failed) == 1 and reason in failed[0], lines
    assert c.book.missing == {1}
    assert nodes[7].averages == [1.0] and nodes[8].averages == []
    assert [len(c.histories[a]) for a in range(2)] == [1, 0]


def test_weights_that_do_not_decode_are_refused():
    nodes = {7: Node(agent_id=0, fit=(1.0, 100))}
    c, grid, relay, lines = fedavg_conductor(nodes, agents=1, retries=0.0)
    c.wait_for_agents()
    original = grid._answer

    def garbled(node, sent, at):
        original(node, sent, at)
        if sent.msg.metadata.message_type == "train":
            arrays = ArrayRecord(torch_state_dict={"w": torch.tensor([1.0])})
            arrays["w"].data = b"\x93NUMPY not an array"
            fitted = FittedWeights(0, 0, 100, arrays, retrained=True)
            sent.reply = Message(fitted.to_record(), reply_to=sent.msg)

    grid._answer = garbled  # type: ignore[method-assign]
    c.fedavg_round(0)

    assert c.book.missing == {0}
    assert any("failed: weights that do not decode (" in line for line in lines), lines


def test_the_rows_an_agent_may_claim_are_its_experiences_rows_plus_its_replay_memory():
    c, _, _, _ = conductor({}, agents=3)
    c.config = ExperimentConfig(
        dataset="synthetic", agents=3, experiences=3, replay_size=150,
        agent_overrides={1: {"strategy": "naive"}},
    )  # fmt: skip
    c.class_rows = [100, 200, 300, 400, 500, 600]
    c.plans = {0: [[0], [1, 2], [3]], 1: [[0], [1, 2], [3]], 2: [[4], [5]]}
    c.own_data = {2}

    # replay: 100; 500 + min(150, 100); 400 + min(150, 600). naive keeps no memory.
    assert [c.rows_allowed(0, e) for e in range(3)] == [100, 600, 550]
    assert [c.rows_allowed(1, e) for e in range(3)] == [100, 500, 400]
    assert c.rows_allowed(2, 0) is None  # only its site knows: its word is taken


def test_real_agents_weights_and_rows_pass_the_conductors_checks():
    # What the conductor knows of a run (its layout and class rows, from the data set it
    # loads) admits what honest agents send: their averaged part and their rows.
    config = SMALL.replace(exchange="fedavg", agents=2, agent_overrides={1: {"replay_size": 0}})
    setup = prepare(config)
    agents = [setup.make_agent(a) for a in range(config.agents)]
    c, _, _, _ = conductor({}, agents=2)
    c.config = config
    conductor_setup = prepare(config, agents=())
    c._know_weights(conductor_setup)
    c.plans = dict(enumerate(shared_plans(config, conductor_setup.num_classes)))

    for e in range(2):
        fits = [agent.fit(e, None) for agent in agents]
        for agent, fit in zip(agents, fits, strict=True):
            state = averaged_part(agent)
            assert c.weights_layout is not None
            assert state_mismatch(state, c.weights_layout) == ""
            # the replay buffer is full from experience 1 on, so the bound is met exactly
            assert fit.rows == c.rows_allowed(agent.agent_id, e)
        average = average_states([averaged_part(a) for a in agents], [f.rows for f in fits])
        for agent, fit in zip(agents, fits, strict=True):
            agent.adopt_weights(average)
            agent.conclude(fit)


def test_an_agent_with_its_own_data_is_scheduled_by_the_plan_it_reports():
    # Agent 0 has one experience of its own (classes 3 and 1); agent 1's plan asks for
    # more experiences than the run has, so it is left out, with the reason logged.
    nodes = {
        7: Node(agent_id=0, plan=((3, 1),)),
        8: Node(agent_id=1, plan=((0,), (1,), (2,))),
    }
    c, grid, _, lines = conductor(nodes, agents=2, wait_agents=20.0)
    c.num_classes = 6
    c.wait_for_agents()
    for e in range(2):
        c.drive([Order(a, e) for a in c.active(e)])

    assert c.plans[0] == [[3, 1]] and c.own_data == {0}
    trains = [s for s in grid.sent.values() if s.msg.metadata.message_type == "train"]
    assert [(s.node, TrainOrder.from_message(s.msg).experience) for s in trains] == [(7, 0)]
    assert "agent 0 learns its own data: experience 0: classes [3, 1]" in lines
    assert (
        "node 8 runs agent 1 with a plan this run cannot hold (3 experiences, the run has "
        "1 to 2); ignored"
    ) in lines
    assert 1 in c.book.missing


def test_a_node_that_cannot_prove_it_runs_an_agent_gets_none_of_its_orders():
    # Issue 17.1: a rogue SuperNode without agent 0's relay token answered the query
    # first, while the real agent 0 was slow, and took both of its train orders.
    nodes = {
        6: Node(agent_id=0, cold_start=1.0, token="a-rogue-guessing-a-token"),
        7: Node(agent_id=0, cold_start=20.0),
    }
    c, grid, relay, lines = conductor(nodes, agents=1)

    c.wait_for_agents()
    c.drive([Order(0, 0)])

    assert c.book.node_of == {0: 7}
    assert c.book.impostors == {6: 0}
    assert relay.verified[0] == (0, False) and (0, True) in relay.verified
    to_rogue = [s.msg.metadata.message_type for s in grid.sent.values() if s.node == 6]
    assert to_rogue == ["query"]
    assert c.histories[0][0].experience == 0
    assert any(
        "node 6 claims to run agent 0 but sent a proof the relay does not accept" in line
        for line in lines
    ), lines


def test_a_record_the_relay_cannot_vouch_for_is_refused_and_the_order_sent_again():
    # Issue 17.1: the conductor accepted "agent 0: experience 0 done" from a node that
    # had published nothing.
    nodes = {7: Node(agent_id=0)}
    c, grid, relay, lines = conductor(nodes, agents=1, retries=1.0)
    relay.unpublished.add((0, 0))

    c.wait_for_agents()
    c.drive([Order(0, 0)])

    assert c.histories[0] == []
    assert c.book.missing == {0}
    refused = "the reply says experience 0 is done, but the relay holds no predictions of agent 0"
    failed = [line for line in lines if line.startswith("agent 0: experience 0 failed: ")]
    assert len(failed) == 2 and all(refused in line for line in failed), lines  # try, retry


def test_a_reply_about_another_agent_is_refused():
    nodes = {7: Node(agent_id=0), 8: Node(agent_id=1)}
    c, grid, relay, lines = conductor(nodes, agents=2, retries=0.0)
    c.wait_for_agents()
    original = grid._answer

    def misaddressed(node, sent, at):  # node 7 answers its train order as agent 1
        original(node, sent, at)
        if node.agent_id == 0 and sent.msg.metadata.message_type == "train":
            reply = TrainReply(1, record(0), retrained=True)
            sent.reply = Message(reply.to_record(), reply_to=sent.msg)

    grid._answer = misaddressed  # type: ignore[method-assign]
    c.drive([Order(a, 0) for a in c.active(0)])

    assert c.histories[0] == [] and len(c.histories[1]) == 1
    assert c.book.missing == {0}
    assert any(
        "a reply about agent 1, experience 0, to the order for agent 0, experience 0" in line
        for line in lines
    ), lines
