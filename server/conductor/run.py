"""The conductor: drives every agent through its experiences over Flower messages,
following the sync, sequential or async schedule, and writes the results folder.

It talks to agents through a Flower `Grid` (push and pull, never blocking on one
agent) and to the relay as its admin. Messages carry small configs; replies carry
metrics. An agent whose message fails or times out is retried, on whatever node
it rejoins from; one that stays away is reported missing and the run goes on.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Message
from flwr.serverapp import Grid

from dkt.common.byte_sizes import format_bytes
from dkt.common.evaluation.results import RunResult, write_results
from dkt.common.run.config import ExperimentConfig, FailurePolicy
from dkt.common.run.setup import Setup, prepare, shared_plans
from dkt.common.training.agent import ExperienceRecord
from dkt.common.training.exchange import exchange_kind
from dkt.common.training.peers import teachers_of
from dkt.common.training.weight_averaging import average_states, state_nbytes
from dkt.flower.messages import (
    EVALUATE,
    QUERY,
    TRAIN,
    AgentIdentity,
    FittedWeights,
    RunQuery,
    TrainOrder,
    TrainReply,
)
from dkt.flower.runs import FLOWER_ERRORS, NODE_UNAVAILABLE, TIMINGS_ENV
from dkt.proto.relay_client import RelayClient, RelayError
from dkt.proto.relay_connection import ADDRESS_ENV as RELAY_ADDRESS_ENV

POLL_SECONDS = 0.1
RESULTS_ROOT_ENV = "DKT_RESULTS_ROOT"
# `dkt server --classes/--probe-from/...`: JSON of experiment fields the server host
# supplies to every run that leaves them empty (its public data lives there).
SERVER_DEFAULTS_ENV = "DKT_SERVER_DEFAULTS"
SERVER_DEFAULT_FIELDS = (
    "class_names", "input_shape", "input_mean", "input_std", "probe_from", "eval_from",
)  # fmt: skip
SUMMARY_LINE = "dkt-summary: "  # the log line that carries the summary table's numbers
TIMING_LINE = "dkt-timing: "  # with $DKT_TIMINGS set: when each order was sent and answered
QUERY_TTL_FLOOR = 30.0  # the shortest life of a query, even when little wait is left
QUERY_RETRY_SECONDS = 5.0  # after a failed query, before asking that node again
TRAIN_TTL_MARGIN = 60.0  # a train message outlives --agent-timeout by this much
MAX_REASON = 500  # characters of a reason sent to the relay (Flower's may hold a traceback)
REPLY_GRACE = 10.0  # after a message's TTL, for the SuperLink's expiry error to arrive


@dataclass(frozen=True)
class ConductorSettings:
    """Deployment settings from the run config (next to the experiment's fields)."""

    run_id: str
    results_dir: Path
    relay: str
    agent_timeout: float = FailurePolicy.agent_timeout  # one experience, send to reply
    retries: int = FailurePolicy.retries  # re-sends of one experience to one agent
    wait_agents: float = FailurePolicy.wait_agents  # for all agents at the start
    rejoin_wait: float = FailurePolicy.rejoin_wait  # for a failed agent to come back

    @classmethod
    def from_run_config(
        cls, values: dict[str, Any], environ: dict[str, str] | None = None
    ) -> ConductorSettings:
        """Read the deployment keys; `dkt server` supplies the relay address and the
        results folder through the environment when a run leaves them empty."""
        env = dict(os.environ if environ is None else environ)
        run_id = str(values.get("run-id") or "")
        relay = str(values.get("relay") or env.get(RELAY_ADDRESS_ENV, ""))
        results = str(values.get("results-dir") or "")
        if not results and env.get(RESULTS_ROOT_ENV) and run_id:
            results = str(Path(env[RESULTS_ROOT_ENV]) / run_id)
        missing = [k for k, v in (("run-id", run_id), ("relay", relay), ("results-dir", results))
                   if not v]  # fmt: skip
        if missing:
            raise ValueError(
                f"the run config lacks {', '.join(missing)}: submit runs with `dkt launch` "
                "to a SuperLink started by `dkt server`"
            )
        return cls(
            run_id=run_id,
            results_dir=Path(results),
            relay=relay,
            agent_timeout=float(values.get("agent-timeout", cls.agent_timeout)),
            retries=int(values.get("retries", cls.retries)),
            wait_agents=float(values.get("wait-agents", cls.wait_agents)),
            rejoin_wait=float(values.get("rejoin-wait", cls.rejoin_wait)),
        )


def with_server_defaults(
    config: ExperimentConfig, environ: dict[str, str] | None = None
) -> ExperimentConfig:
    """`config` with the server host's defaults (`dkt server --classes ...`) filled in
    where the run left a field empty; the run's own values win."""
    text = (os.environ if environ is None else environ).get(SERVER_DEFAULTS_ENV, "")
    if not text:
        return config
    defaults = json.loads(text)
    changes = {
        k: v
        for k, v in defaults.items()
        if k in SERVER_DEFAULT_FIELDS and v and not getattr(config, k)
    }
    return config.replace(**changes) if changes else config


@dataclass
class _Order:
    """One experience sent (or to be sent) to one agent."""

    agent_id: int
    experience: int
    phase: str = TRAIN  # TRAIN, or EVALUATE: adopt the round's average (fedavg)
    attempt: int = 0
    deadline: float = 0.0  # reply deadline while in flight; rejoin deadline while waiting
    last_failure: str = ""  # why the previous attempt failed


@dataclass
class _Query:
    """A query ("which agent do you run?") in flight to one node."""

    message_id: str
    sent: float
    expires: float  # sent + its TTL


@dataclass
class _AgentBook:
    node_of: dict[int, int] = field(default_factory=dict)  # agent id -> node id
    asked: dict[int, _Query] = field(default_factory=dict)  # node id -> its live query
    known_nodes: set[int] = field(default_factory=set)  # nodes that answered a query
    seen_nodes: set[int] = field(default_factory=set)  # every node the SuperLink listed
    silent: dict[int, str] = field(default_factory=dict)  # node -> why its query failed
    retry_at: dict[int, float] = field(default_factory=dict)  # node -> when to ask again
    left: set[int] = field(default_factory=set)  # agents whose node went away
    missing: set[int] = field(default_factory=set)


class Conductor:
    """Runs one DKT experiment over the agents connected to a SuperLink."""

    def __init__(
        self,
        grid: Grid,
        config: ExperimentConfig,
        settings: ConductorSettings,
        relay: RelayClient,
        log: Callable[[str], None] = print,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.grid = grid
        self.config = config
        self.settings = settings
        self.relay = relay
        self.log = log
        self.clock = clock  # the tests drive a fake Grid on a fake clock
        self.sleep = sleep
        self.book = _AgentBook()
        self.histories: dict[int, list[ExperienceRecord]] = {a: [] for a in range(config.agents)}
        self.in_flight: dict[str, _Order] = {}
        self.waiting: list[_Order] = []  # failed orders waiting for their agent to rejoin
        self.probe_fingerprint = ""
        self.result: RunResult | None = None
        self.fitted: dict[int, FittedWeights] = {}  # fedavg: this round's trained weights
        # Per agent, per experience it learns, its classes: derived from the config for
        # agents on the shared data set, reported by those with their own data.
        self.plans: dict[int, list[list[int]]] = {}
        self.own_data: set[int] = set()  # agents that reported their own data
        self.config_json = json.dumps(config.to_dict())
        self.num_classes = 0  # the run's class space, once prepared
        self.average: ArrayRecord | None = None  # fedavg: this round's average
        self.timing = bool(os.environ.get(TIMINGS_ENV))

    def _mark(self, event: str, **fields: Any) -> None:
        """A timing line for benchmarks/run_overhead.py (wall clock: the agents' lines
        are compared with it)."""
        if self.timing:
            self.log(TIMING_LINE + json.dumps({"event": event, "t": time.time(), **fields}))

    # The run ---------------------------------------------------------------------------

    def run(self) -> RunResult:
        start = time.perf_counter()
        self._mark("run_start")
        cfg, run_id = self.config, self.settings.run_id
        setup = prepare(cfg, agents=())  # the class space and public sets, no agent's data
        self.probe_fingerprint = setup.probe.fingerprint
        self.num_classes = setup.num_classes
        self.plans = dict(enumerate(shared_plans(cfg, setup.num_classes)))
        self.relay.create_run(
            run_id, setup.probe, setup.num_classes, cfg.experiences,
            config=cfg.to_dict(), expected_agents=cfg.agents,
        )  # fmt: skip
        if setup.eval_set is not None:
            self.relay.put_eval_set(run_id, setup.eval_set)
            self.log(
                f"public evaluation set: {len(setup.eval_set)} labeled inputs from "
                f"{setup.eval_set.source}, fingerprint {setup.eval_set.fingerprint[:12]}…"
            )
        self.relay.set_run_state(run_id, "running", 0)
        self.log(
            f"run {run_id}: {cfg.agents} agents x {cfg.experiences} experiences, "
            f"schedule {cfg.schedule}; waiting for agents"
        )
        try:
            self._wait_for_agents()
            self._mark("agents_ready")
            if exchange_kind(cfg.exchange).averages_weights:
                for e in range(cfg.experiences):
                    self._fedavg_round(e)
                    self.relay.set_run_state(run_id, "running", e)
            elif cfg.schedule == "sync":
                for e in range(cfg.experiences):
                    self._drive([_Order(a, e) for a in self._active(e)])
                    self.relay.set_run_state(run_id, "running", e)
            elif cfg.schedule == "sequential":
                for e in range(cfg.experiences):
                    for a in self._active(e):
                        self._drive([_Order(a, e)])
                    self.relay.set_run_state(run_id, "running", e)
            else:
                self._drive([_Order(a, 0) for a in self._active()], chain=True)
            if not self._active():
                raise RuntimeError(
                    "every agent is missing, so the run has no results; see the agents' logs"
                )
            result = self._finish(setup, start)
            self._mark("finished")
            self._log_summary()
        except BaseException:
            self.relay.set_run_state(run_id, "failed")
            raise
        return result

    def _fedavg_round(self, experience: int) -> None:
        """One FedAvg round: every agent trains `experience` and sends its weights (a
        train message's reply); the conductor averages them, weighted by the rows each
        trained on (`common.weight_averaging`, as `dkt simulate` does), and sends the
        average back (an evaluate message); each agent adopts it, evaluates and
        replies with its record. Agents missing by then are left out of the average."""
        self.fitted, self.average = {}, None
        self._drive([_Order(a, experience) for a in self._active(experience)])
        fitted = [self.fitted[a] for a in sorted(self.fitted) if a not in self.book.missing]
        if not fitted:
            return
        states = [dict(f.weights.to_torch_state_dict()) for f in fitted]
        average = average_states(states, [f.rows for f in fitted])
        self.average = ArrayRecord(torch_state_dict=average)
        self.log(
            f"experience {experience}: averaged the weights of agents "
            f"{_ids(f.agent_id for f in fitted)} ({format_bytes(state_nbytes(average))}); "
            "sending the average"
        )
        self._drive([_Order(f.agent_id, experience, EVALUATE) for f in fitted])

    def _finish(self, setup: Setup, start: float) -> RunResult:
        cfg, run_id = self.config, self.settings.run_id
        self.result = RunResult.of_run(
            setup,
            self.histories,
            seconds=time.perf_counter() - start,
            driver="flower",
            missing_agents=self.book.missing,
            extra={
                "run_id": run_id,
                "agent_data": {
                    str(a): "own" if a in self.own_data else "shared" for a in range(cfg.agents)
                },
            },
            class_orders=[self.plans[a] for a in range(cfg.agents)],
        )
        write_results(self.result, self.settings.results_dir)
        self.relay.set_run_state(run_id, "finished", cfg.experiences - 1)
        self.log(f"run {run_id} finished; results in {self.settings.results_dir}")
        return self.result

    def _log_summary(self) -> None:
        """One log line with the numbers of the summary table: `dkt launch` prints the
        table from it (the results folder is on the server host; the log reaches the
        launcher wherever it runs)."""
        metrics = json.loads((self.settings.results_dir / "metrics.json").read_text())
        summary: dict[str, Any] = {
            "results_dir": str(self.settings.results_dir),
            "agents": {a: {"summary": m["summary"]} for a, m in metrics["agents"].items()},
            "mean_over_agents": metrics.get("mean_over_agents", {}),
            "missing_agents": metrics.get("missing_agents", []),
        }
        self.log(SUMMARY_LINE + json.dumps(summary))

    def _active(self, experience: int = 0) -> list[int]:
        """The agents not missing whose stream has `experience` (a joint agent has one)."""
        return [
            a
            for a in range(self.config.agents)
            if a not in self.book.missing and experience < self._experiences(a)
        ]

    # Agents and nodes ------------------------------------------------------------------

    def _discover(self, until: float) -> None:
        """Ask every node we have not heard from which agent it runs, and read answers.

        A query lives until `until` (the end of --wait-agents, or of the longest
        --rejoin-wait in progress), never less than QUERY_TTL_FLOOR: a ClientApp can
        take minutes to start on a loaded host, and a node runs one ClientApp after
        another, so a short-lived query expires while it waits its turn, and every
        re-sent one does too. A node is asked again only when its query has failed."""
        book, now = self.book, self.clock()
        nodes = list(self.grid.get_node_ids())
        book.seen_nodes.update(nodes)
        for node in nodes:
            if node in book.known_nodes or node in book.asked:
                continue
            if now < book.retry_at.get(node, 0.0):
                continue
            ttl = max(until - now, QUERY_TTL_FLOOR)
            query = RunQuery(self.config_json).to_record()
            msg = Message(query, dst_node_id=node, message_type=QUERY, ttl=ttl)
            (mid,) = self.grid.push_messages([msg])
            book.asked[node] = _Query(mid, now, now + ttl)
        if not book.asked:
            return
        by_id = {query.message_id: node for node, query in book.asked.items()}
        for reply in self.grid.pull_messages(list(by_id)):
            node = by_id.get(reply.metadata.reply_to_message_id)
            if node is None or node not in book.asked:
                continue
            query = book.asked.pop(node)
            if reply.has_error():
                self._query_failed(node, query, flower_error(reply.error.code, reply.error.reason))
                continue
            self._identified(node, AgentIdentity.from_message(reply))
        # The SuperLink answers an expired message with an error reply; if even that
        # does not come, stop waiting for it and ask again.
        for node, query in list(book.asked.items()):
            if now > query.expires + REPLY_GRACE:
                del book.asked[node]
                self._query_failed(node, query, "no reply, not even an error, from the SuperLink")

    def _query_failed(self, node: int, query: _Query, why: str) -> None:
        waited = self.clock() - query.sent
        self.log(
            f"node {node} did not say which agent it runs ({waited:.0f} s after the query, "
            f"which lived {query.expires - query.sent:.0f} s): {why}"
        )
        self.book.silent[node] = why
        self.book.retry_at[node] = self.clock() + QUERY_RETRY_SECONDS

    def _identified(self, node: int, who: AgentIdentity) -> None:
        book = self.book
        book.known_nodes.add(node)
        book.silent.pop(node, None)
        agent_id = who.agent_id
        if not 0 <= agent_id < self.config.agents:
            self.log(f"node {node} runs agent {agent_id}, not in this run; ignored")
            return
        if who.plan is not None and not self._take_plan(node, agent_id, who.plan):
            return
        previous = book.node_of.get(agent_id)
        book.node_of[agent_id] = node
        how = f"device {who.device}, {who.threads} threads"
        if agent_id in book.left:
            book.left.discard(agent_id)
            self.log(f"agent {agent_id} rejoined on node {node} ({how})")
            self._report(agent_id, self._experience_of(agent_id), "rejoined", f"node {node}")
        elif previous is not None and previous != node:
            self.log(f"agent {agent_id} is now on node {node} (was {previous}; {how})")
        elif previous is None:
            self.log(f"agent {agent_id} joined on node {node} ({how})")

    def _experiences(self, agent_id: int) -> int:
        """How many experiences agent `agent_id` learns (its plan's; before the run has
        its plans, the config's)."""
        plan = self.plans.get(agent_id)
        return len(plan) if plan is not None else self.config.agent_experiences(agent_id)

    def _take_plan(self, node: int, agent_id: int, plan: tuple[tuple[int, ...], ...]) -> bool:
        """An agent with its own data told its plan: check it against the run and
        schedule with it. A plan the run cannot hold leaves the agent out (logged)."""
        cfg = self.config
        problem = ""
        if not 1 <= len(plan) <= cfg.experiences:
            problem = f"{len(plan)} experiences, the run has 1 to {cfg.experiences}"
        elif any(not part for part in plan):
            problem = "an experience without classes"
        elif any(not 0 <= c < self.num_classes for part in plan for c in part):
            problem = f"classes outside the run's class space 0..{self.num_classes - 1}"
        if problem:
            self.log(f"node {node} runs agent {agent_id} with a plan this run cannot hold "
                     f"({problem}); ignored")  # fmt: skip
            return False
        if self.plans.get(agent_id) != [list(p) for p in plan] or agent_id not in self.own_data:
            self.log(
                f"agent {agent_id} learns its own data: "
                + "; ".join(f"experience {e}: classes {list(p)}" for e, p in enumerate(plan))
            )
        self.plans[agent_id] = [list(p) for p in plan]
        self.own_data.add(agent_id)
        return True

    def _experience_of(self, agent_id: int) -> int:
        for order in [*self.in_flight.values(), *self.waiting]:
            if order.agent_id == agent_id:
                return order.experience
        return min(len(self.histories[agent_id]), self._experiences(agent_id) - 1)

    def _wait_for_agents(self) -> None:
        wait = self.settings.wait_agents
        deadline = self.clock() + wait
        while len(self.book.node_of) < self.config.agents and self.clock() < deadline:
            self._discover(deadline)
            self.sleep(POLL_SECONDS)
        absent = [a for a in range(self.config.agents) if a not in self.book.node_of]
        if len(absent) == self.config.agents:
            raise RuntimeError(self._nobody_answered(wait))
        unidentified = self._silent_nodes()
        for a in absent:
            why = f"did not connect within {wait:.0f} s"
            if unidentified:
                why += f"; nodes {_ids(unidentified)} were connected but did not answer"
            self._mark_missing(a, 0, why)

    def _silent_nodes(self) -> list[int]:
        """Connected nodes that never said which agent they run."""
        return sorted(set(self.grid.get_node_ids()) - self.book.known_nodes)

    def _nobody_answered(self, wait: float) -> str:
        """What happened when no agent of the run could be found, in one line."""
        silent, now = self._silent_nodes(), self.clock()
        if silent:
            reasons = sorted({self.book.silent[n] for n in silent if n in self.book.silent})
            pending = [n for n in silent if n in self.book.asked]
            if pending:
                waited = max(now - self.book.asked[n].sent for n in pending)
                reasons.append(f"queries unanswered after up to {waited:.0f} s")
            last = f" ({'; '.join(reasons)})" if reasons else ""
            return (
                f"{len(silent)} SuperNode(s) were connected (nodes {_ids(silent)}) but none "
                f"said which agent it runs within {wait:.0f} s{last}: a ClientApp can take "
                "minutes to start on a loaded host; raise --wait-agents, or see the agents' logs"
            )
        others = sorted(self.book.known_nodes)
        if others:
            return (
                f"the connected SuperNodes (nodes {_ids(others)}) run no agent of this run "
                f"(agents 0..{self.config.agents - 1}): check each `dkt agent --agent-id`"
            )
        return (
            f"no SuperNode connected within {wait:.0f} s: start agents with "
            "`dkt agent --server HOST --agent-id N`"
        )

    def _mark_missing(self, agent_id: int, experience: int, why: str) -> None:
        self.book.missing.add(agent_id)
        self.log(f"agent {agent_id} is missing ({why}); the run goes on without it")
        self._report(agent_id, experience, "missing", why)

    def _report(self, agent_id: int, experience: int, state: str, reason: str = "") -> None:
        """Tell the relay's status what the conductor sees of an agent. Best effort: the
        run does not stop because a status report failed."""
        try:
            self.relay.report_progress(
                self.settings.run_id, agent_id, experience, state, reason=reason[:MAX_REASON]
            )
        except RelayError as err:
            self.log(f"could not report agent {agent_id} {state} to the relay: {err}")

    # Sending and receiving -------------------------------------------------------------

    def _send(self, order: _Order) -> None:
        cfg = self.config
        teachers = teachers_of(cfg, order.agent_id, order.experience)
        weights = self.average if order.phase == EVALUATE else None
        train = TrainOrder(
            self.settings.run_id,
            order.experience,
            tuple(teachers),
            self.probe_fingerprint,
            weights,
            teacher_last=tuple(self._experiences(t) - 1 for t in teachers),
            config_json=self.config_json,
        )
        msg = Message(
            train.to_record(),
            dst_node_id=self.book.node_of[order.agent_id],
            message_type=order.phase,
            group_id=str(order.experience),
            # The message outlives our own deadline, so a reply that comes just in
            # time is not dropped by the SuperLink.
            ttl=self.settings.agent_timeout + TRAIN_TTL_MARGIN,
        )
        (mid,) = self.grid.push_messages([msg])
        self._mark("sent", agent=order.agent_id, experience=order.experience)
        order.deadline = self.clock() + self.settings.agent_timeout
        self.in_flight[mid] = order
        what = "the average for experience" if order.phase == EVALUATE else "experience"
        self.log(
            f"agent {order.agent_id}: {what} {order.experience} sent"
            + (f" (retry {order.attempt})" if order.attempt else "")
        )
        if order.attempt:
            self._report(
                order.agent_id,
                order.experience,
                "retrying",
                f"try {order.attempt + 1} of {self.settings.retries + 1} after: "
                f"{order.last_failure}",
            )
        else:
            self._report(order.agent_id, order.experience, "training", "sent")

    def _drive(self, orders: Iterable[_Order], chain: bool = False) -> None:
        """Send `orders` and wait until each is done or its agent is missing. With
        `chain`, an agent that finishes experience e is sent e+1 at once (async)."""
        for order in orders:
            self._send(order)
        while self.in_flight or self.waiting:
            self.sleep(POLL_SECONDS)
            for reply in self.grid.pull_messages(list(self.in_flight)):
                order = self.in_flight.pop(reply.metadata.reply_to_message_id, None)
                if order is None:
                    continue
                self._mark("reply", agent=order.agent_id, experience=order.experience)
                if reply.has_error():
                    code = reply.error.code
                    self._failed(order, code, flower_error(code, reply.error.reason))
                    continue
                self._done(order, reply)
                if chain and order.experience + 1 < self._experiences(order.agent_id):
                    self._send(_Order(order.agent_id, order.experience + 1))
            now = self.clock()
            for mid, order in list(self.in_flight.items()):
                if now > order.deadline:
                    del self.in_flight[mid]
                    self._failed(
                        order, None, f"no reply within {self.settings.agent_timeout:.0f} s"
                    )
            if self.waiting:
                self._discover(max(order.deadline for order in self.waiting))
                self._resend_rejoined()

    def _done(self, order: _Order, reply: Message) -> None:
        if order.phase == TRAIN and exchange_kind(self.config.exchange).averages_weights:
            fitted = FittedWeights.from_message(reply)
            self.fitted[order.agent_id] = fitted
            self.log(
                f"agent {order.agent_id}: experience {order.experience} trained on "
                f"{fitted.rows} rows; its weights received"
            )
            return
        record = TrainReply.from_message(reply).record
        history = self.histories[order.agent_id]
        if len(history) == order.experience:
            history.append(record)
        transfer = (
            f", transfer st {100 * record.transfer_st:.1f}%"
            if record.transfer_st is not None
            else ""
        )
        self.log(
            f"agent {order.agent_id}: experience {order.experience} done, acc cl "
            f"{100 * record.acc_all_cl:.1f}% st {100 * record.acc_all_st:.1f}%{transfer}"
        )

    def _failed(self, order: _Order, code: int | None, reason: str) -> None:
        self.log(f"agent {order.agent_id}: experience {order.experience} failed: {reason}")
        self._report(order.agent_id, order.experience, "failed", reason)
        if order.attempt >= self.settings.retries:
            self._mark_missing(
                order.agent_id,
                order.experience,
                f"{order.attempt + 1} tries failed, the last: {reason}",
            )
            return
        order.attempt += 1
        order.last_failure = reason
        if code is None or code == NODE_UNAVAILABLE:
            # Its node is gone or silent: wait for the agent to answer a query again,
            # from a restarted SuperNode (new node id) or the same one.
            node = self.book.node_of.pop(order.agent_id, None)
            if node is not None:
                self.book.known_nodes.discard(node)
            self.book.left.add(order.agent_id)
            order.deadline = self.clock() + self.settings.rejoin_wait
            self.waiting.append(order)
        else:
            self._send(order)  # the agent raised: its node is alive, try again now

    def _resend_rejoined(self) -> None:
        now = self.clock()
        for order in list(self.waiting):
            if order.agent_id in self.book.node_of:
                self.waiting.remove(order)
                self._send(order)
            elif now > order.deadline:
                self.waiting.remove(order)
                self._mark_missing(
                    order.agent_id,
                    order.experience,
                    f"did not come back within {self.settings.rejoin_wait:.0f} s"
                    + (f" after: {order.last_failure}" if order.last_failure else ""),
                )


def flower_error(code: int, reason: str) -> str:
    """A Flower error reply in one line: its code's name and Flower's reason."""
    return f"Flower error {code} ({FLOWER_ERRORS.get(code, 'unknown code')}): {reason}"


def _ids(values: Iterable[int]) -> str:
    return ", ".join(str(v) for v in values)
