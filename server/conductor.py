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

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from dkt.client.relay_client import RelayClient
from dkt.common.agent import ExperienceRecord
from dkt.common.config import ExperimentConfig, FailurePolicy
from dkt.common.peers import assign_teachers
from dkt.common.results import RunResult, write_results
from dkt.common.run_setup import Setup, prepare

POLL_SECONDS = 0.2
RELAY_ADDRESS_ENV = "DKT_RELAY_ADDRESS"  # set by `dkt server` for its ServerApps
RESULTS_ROOT_ENV = "DKT_RESULTS_ROOT"
NODE_UNAVAILABLE = 5  # flwr's ErrorCode for a SuperNode that went away


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


@dataclass
class _Order:
    """One experience sent (or to be sent) to one agent."""

    agent_id: int
    experience: int
    attempt: int = 0
    deadline: float = 0.0  # reply deadline while in flight; rejoin deadline while waiting


@dataclass
class _AgentBook:
    node_of: dict[int, int] = field(default_factory=dict)  # agent id -> node id
    asked: dict[int, str] = field(default_factory=dict)  # node id -> query message id
    known_nodes: set[int] = field(default_factory=set)  # nodes that answered a query
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
    ) -> None:
        self.grid = grid
        self.config = config
        self.settings = settings
        self.relay = relay
        self.log = log
        self.book = _AgentBook()
        self.histories: dict[int, list[ExperienceRecord]] = {a: [] for a in range(config.agents)}
        self.in_flight: dict[str, _Order] = {}
        self.waiting: list[_Order] = []  # failed orders waiting for their agent to rejoin
        self.probe_fingerprint = ""
        self.result: RunResult | None = None

    # The run ---------------------------------------------------------------------------

    def run(self) -> RunResult:
        start = time.perf_counter()
        cfg, run_id = self.config, self.settings.run_id
        setup = prepare(cfg)
        self.probe_fingerprint = setup.probe.fingerprint
        self.relay.create_run(
            run_id, setup.probe, setup.data.num_classes, config=cfg.to_dict(),
            expected_agents=cfg.agents,
        )  # fmt: skip
        self.relay.set_run_state(run_id, "running", 0)
        self.log(
            f"run {run_id}: {cfg.agents} agents x {cfg.experiences} experiences, "
            f"schedule {cfg.schedule}; waiting for agents"
        )
        try:
            self._wait_for_agents()
            if cfg.schedule == "sync":
                for e in range(cfg.experiences):
                    self._drive([_Order(a, e) for a in self._active()])
                    self.relay.set_run_state(run_id, "running", e)
            elif cfg.schedule == "sequential":
                for e in range(cfg.experiences):
                    for a in self._active():
                        self._drive([_Order(a, e)])
                    self.relay.set_run_state(run_id, "running", e)
            else:
                self._drive([_Order(a, 0) for a in self._active()], chain=True)
            if not self._active():
                raise RuntimeError(
                    "every agent is missing, so the run has no results; see the agents' logs"
                )
            result = self._finish(setup, start)
        except BaseException:
            self.relay.set_run_state(run_id, "failed")
            raise
        return result

    def _finish(self, setup: Setup, start: float) -> RunResult:
        cfg, run_id = self.config, self.settings.run_id
        self.result = RunResult.of_run(
            setup,
            self.histories,
            seconds=time.perf_counter() - start,
            driver="flower",
            missing_agents=self.book.missing,
            extra={"run_id": run_id},
        )
        write_results(self.result, self.settings.results_dir)
        self.relay.set_run_state(run_id, "finished", cfg.experiences - 1)
        self.log(f"run {run_id} finished; results in {self.settings.results_dir}")
        return self.result

    def _active(self) -> list[int]:
        return [a for a in range(self.config.agents) if a not in self.book.missing]

    # Agents and nodes ------------------------------------------------------------------

    def _discover(self) -> None:
        """Ask every node we have not heard from which agent it runs; read answers."""
        book = self.book
        for node in self.grid.get_node_ids():
            if node in book.known_nodes or node in book.asked:
                continue
            msg = Message(RecordDict(), dst_node_id=node, message_type="query", ttl=60.0)
            (mid,) = self.grid.push_messages([msg])
            book.asked[node] = mid
        if not book.asked:
            return
        by_id = {mid: node for node, mid in book.asked.items()}
        for reply in self.grid.pull_messages(list(by_id)):
            node = by_id[reply.metadata.reply_to_message_id]
            del book.asked[node]
            if reply.has_error():
                continue  # a dead node; a new one will be asked when it appears
            agent_id = int(reply.content["agent"]["agent-id"])  # type: ignore[arg-type]
            book.known_nodes.add(node)
            if not 0 <= agent_id < self.config.agents:
                self.log(f"node {node} runs agent {agent_id}, not in this run; ignored")
                continue
            previous = book.node_of.get(agent_id)
            book.node_of[agent_id] = node
            if previous is not None and previous != node:
                self.log(f"agent {agent_id} is now on node {node} (was {previous})")
            elif previous is None:
                self.log(f"agent {agent_id} joined on node {node}")

    def _wait_for_agents(self) -> None:
        deadline = time.monotonic() + self.settings.wait_agents
        while len(self.book.node_of) < self.config.agents and time.monotonic() < deadline:
            self._discover()
            time.sleep(POLL_SECONDS)
        absent = [a for a in range(self.config.agents) if a not in self.book.node_of]
        if len(absent) == self.config.agents:
            raise RuntimeError(
                f"no agent connected within {self.settings.wait_agents:.0f} s: start agents "
                "with `dkt agent --server HOST --agent-id N`"
            )
        for a in absent:
            self._mark_missing(a, 0, f"did not connect within {self.settings.wait_agents:.0f} s")

    def _mark_missing(self, agent_id: int, experience: int, why: str) -> None:
        self.book.missing.add(agent_id)
        self.log(f"agent {agent_id} is missing ({why}); the run goes on without it")
        self.relay.report_progress(self.settings.run_id, agent_id, experience, "missing")

    # Sending and receiving -------------------------------------------------------------

    def _send(self, order: _Order) -> None:
        cfg = self.config
        teachers = assign_teachers(
            order.agent_id, order.experience, cfg.agents, cfg.peer_policy, cfg.peers_k, cfg.seed
        )
        content = RecordDict(
            {
                "config": ConfigRecord(
                    {
                        "run-id": self.settings.run_id,
                        "experience": order.experience,
                        "teachers": list(teachers),
                        "probe-fingerprint": self.probe_fingerprint,
                    }
                )
            }
        )
        msg = Message(
            content,
            dst_node_id=self.book.node_of[order.agent_id],
            message_type="train",
            group_id=str(order.experience),
            ttl=self.settings.agent_timeout + 60.0,
        )
        (mid,) = self.grid.push_messages([msg])
        order.deadline = time.monotonic() + self.settings.agent_timeout
        self.in_flight[mid] = order
        self.log(
            f"agent {order.agent_id}: experience {order.experience} sent"
            + (f" (retry {order.attempt})" if order.attempt else "")
        )

    def _drive(self, orders: Iterable[_Order], chain: bool = False) -> None:
        """Send `orders` and wait until each is done or its agent is missing. With
        `chain`, an agent that finishes experience e is sent e+1 at once (async)."""
        for order in orders:
            self._send(order)
        while self.in_flight or self.waiting:
            time.sleep(POLL_SECONDS)
            for reply in self.grid.pull_messages(list(self.in_flight)):
                order = self.in_flight.pop(reply.metadata.reply_to_message_id, None)
                if order is None:
                    continue
                if reply.has_error():
                    self._failed(order, reply.error.code, reply.error.reason)
                    continue
                self._done(order, reply)
                if chain and order.experience + 1 < self.config.experiences:
                    self._send(_Order(order.agent_id, order.experience + 1))
            now = time.monotonic()
            for mid, order in list(self.in_flight.items()):
                if now > order.deadline:
                    del self.in_flight[mid]
                    self._failed(order, None, f"no reply in {self.settings.agent_timeout:.0f} s")
            if self.waiting:
                self._discover()
                self._resend_rejoined()

    def _done(self, order: _Order, reply: Message) -> None:
        result = reply.content["result"]
        record = ExperienceRecord(**json.loads(str(result["record"])))
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
        if order.attempt >= self.settings.retries:
            self._mark_missing(
                order.agent_id, order.experience, f"{order.attempt + 1} tries failed"
            )
            return
        order.attempt += 1
        if code is None or code == NODE_UNAVAILABLE:
            # Its node is gone or silent: wait for the agent to answer a query again,
            # from a restarted SuperNode (new node id) or the same one.
            node = self.book.node_of.pop(order.agent_id, None)
            self.book.known_nodes.discard(node)  # type: ignore[arg-type]
            order.deadline = time.monotonic() + self.settings.rejoin_wait
            self.waiting.append(order)
        else:
            self._send(order)  # the agent raised: its node is alive, try again now

    def _resend_rejoined(self) -> None:
        now = time.monotonic()
        for order in list(self.waiting):
            if order.agent_id in self.book.node_of:
                self.waiting.remove(order)
                self._send(order)
            elif now > order.deadline:
                self.waiting.remove(order)
                self._mark_missing(
                    order.agent_id,
                    order.experience,
                    f"did not come back within {self.settings.rejoin_wait:.0f} s",
                )
