"""Which agent runs on which node: the conductor asks every SuperNode ("which agent do
you run?") and keeps the answers, the silent nodes and the agents that left or are missing.
A mixin of `Conductor` (run.py), which holds the state it reads."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flwr.app import Message
from flwr.serverapp import Grid

from dkt.common.run.config import ExperimentConfig
from dkt.flower.messages import QUERY, AgentIdentity, RunQuery
from dkt.flower.runs import flower_error
from dkt.proto.relay_client import RelayError

if TYPE_CHECKING:
    from dkt.proto.relay_client import RelayClient
    from dkt.server.conductor.settings import ConductorSettings

POLL_SECONDS = 0.1
QUERY_TTL_FLOOR = 30.0  # the shortest life of a query, even when little wait is left
QUERY_RETRY_SECONDS = 5.0  # after a failed query, before asking that node again
REPLY_GRACE = 10.0  # after a message's TTL, for the SuperLink's expiry error to arrive


@dataclass
class Query:
    """A query ("which agent do you run?") in flight to one node."""

    message_id: str
    sent: float
    expires: float  # sent + its TTL
    nonce: str = ""  # the answer must carry a proof over it (proto/identity_proof.py)


@dataclass
class AgentBook:
    node_of: dict[int, int] = field(default_factory=dict)  # agent id -> node id
    asked: dict[int, Query] = field(default_factory=dict)  # node id -> its live query
    known_nodes: set[int] = field(default_factory=set)  # nodes that answered a query
    seen_nodes: set[int] = field(default_factory=set)  # every node the SuperLink listed
    silent: dict[int, str] = field(default_factory=dict)  # node -> why its query failed
    retry_at: dict[int, float] = field(default_factory=dict)  # node -> when to ask again
    left: set[int] = field(default_factory=set)  # agents whose node went away
    impostors: dict[int, int] = field(default_factory=dict)  # node -> agent it claimed
    missing: set[int] = field(default_factory=set)


class AgentDiscovery:
    """Finding the run's agents among the SuperLink's nodes."""

    grid: Grid
    config: ExperimentConfig
    settings: ConductorSettings
    relay: RelayClient
    book: AgentBook
    log: Callable[[str], None]
    clock: Callable[[], float]
    sleep: Callable[[float], None]
    config_json: str
    num_classes: int
    plans: dict[int, list[list[int]]]
    own_data: set[int]

    def experiences_of(self, agent_id: int) -> int:
        raise NotImplementedError

    def experience_of(self, agent_id: int) -> int:
        raise NotImplementedError

    def _report(self, agent_id: int, experience: int, state: str, reason: str = "") -> None:
        raise NotImplementedError

    def discover(self, until: float) -> None:
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
            nonce = secrets.token_hex(16)
            record = RunQuery(self.config_json, self.settings.run_id, nonce).to_record()
            msg = Message(record, dst_node_id=node, message_type=QUERY, ttl=ttl)
            (mid,) = self.grid.push_messages([msg])
            book.asked[node] = Query(mid, now, now + ttl, nonce)
        if not book.asked:
            return
        by_id = {query.message_id: node for node, query in book.asked.items()}
        for reply in self.grid.pull_messages(list(by_id)):
            answered = by_id.get(reply.metadata.reply_to_message_id)
            if answered is None or answered not in book.asked:
                continue
            query = book.asked.pop(answered)
            if reply.has_error():
                why = flower_error(reply.error.code, str(reply.error.reason))
                self._query_failed(answered, query, why)
                continue
            self._identified(answered, AgentIdentity.from_message(reply), query.nonce)
        # The SuperLink answers an expired message with an error reply; if even that
        # does not come, stop waiting for it and ask again.
        for node, query in list(book.asked.items()):
            if now > query.expires + REPLY_GRACE:
                del book.asked[node]
                self._query_failed(node, query, "no reply, not even an error, from the SuperLink")

    def _proven(self, node: int, who: AgentIdentity, nonce: str) -> bool:
        """Whether the node that claims agent `who.agent_id` holds that agent's relay
        token: the relay checks the proof over this query's nonce. A node that cannot
        prove it gets none of the agent's orders (a rogue SuperNode once took them while
        the real agent was slow); without tokens on the relay there is nothing to prove."""
        try:
            check = self.relay.verify_identity(self.settings.run_id, who.agent_id, nonce, who.proof)
        except RelayError as err:
            # Not refused for good: the node is asked again once the relay answers.
            self.log(f"could not check node {node}'s claim to run agent {who.agent_id}: {err}")
            self.book.known_nodes.discard(node)
            self.book.retry_at[node] = self.clock() + QUERY_RETRY_SECONDS
            return False
        if check.valid or not check.auth_enabled:
            return True
        why = "no proof" if not who.proof else "a proof the relay does not accept"
        self.log(
            f"node {node} claims to run agent {who.agent_id} but sent {why} that it holds "
            f"agent {who.agent_id}'s relay token; ignored (is its token right?)"
        )
        self.book.impostors[node] = who.agent_id
        return False

    def _query_failed(self, node: int, query: Query, why: str) -> None:
        waited = self.clock() - query.sent
        self.log(
            f"node {node} did not say which agent it runs ({waited:.0f} s after the query, "
            f"which lived {query.expires - query.sent:.0f} s): {why}"
        )
        self.book.silent[node] = why
        self.book.retry_at[node] = self.clock() + QUERY_RETRY_SECONDS

    def _identified(self, node: int, who: AgentIdentity, nonce: str = "") -> None:
        book = self.book
        book.known_nodes.add(node)
        book.silent.pop(node, None)
        agent_id = who.agent_id
        if not 0 <= agent_id < self.config.agents:
            self.log(f"node {node} runs agent {agent_id}, not in this run; ignored")
            return
        if not self._proven(node, who, nonce):
            return
        if who.plan is not None and not self._take_plan(node, agent_id, who.plan):
            return
        previous = book.node_of.get(agent_id)
        book.node_of[agent_id] = node
        how = f"device {who.device}, {who.threads} threads"
        if agent_id in book.left:
            book.left.discard(agent_id)
            self.log(f"agent {agent_id} rejoined on node {node} ({how})")
            self._report(agent_id, self.experience_of(agent_id), "rejoined", f"node {node}")
        elif previous is not None and previous != node:
            self.log(f"agent {agent_id} is now on node {node} (was {previous}; {how})")
        elif previous is None:
            self.log(f"agent {agent_id} joined on node {node} ({how})")

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

    def wait_for_agents(self) -> None:
        wait = self.settings.wait_agents
        deadline = self.clock() + wait
        while len(self.book.node_of) < self.config.agents and self.clock() < deadline:
            self.discover(deadline)
            self.sleep(POLL_SECONDS)
        absent = [a for a in range(self.config.agents) if a not in self.book.node_of]
        if len(absent) == self.config.agents:
            raise RuntimeError(self._nobody_answered(wait))
        unidentified = self._silent_nodes()
        for a in absent:
            why = f"did not connect within {wait:.0f} s"
            if unidentified:
                why += f"; nodes {ids(unidentified)} were connected but did not answer"
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
                f"{len(silent)} SuperNode(s) were connected (nodes {ids(silent)}) but none "
                f"said which agent it runs within {wait:.0f} s{last}: a ClientApp can take "
                "minutes to start on a loaded host; raise --wait-agents, or see the agents' logs"
            )
        others = sorted(self.book.known_nodes)
        if others:
            return (
                f"the connected SuperNodes (nodes {ids(others)}) run no agent of this run "
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


def ids(values: Iterable[int]) -> str:
    return ", ".join(str(v) for v in values)
