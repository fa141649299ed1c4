"""Sending experiences to agents and reading their replies: deadlines, retries on the
same or a rejoined node, and chained experiences (async). A mixin of `Conductor` (run.py),
which holds the state it reads."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, Message

from dkt.common.evaluation.results import ExperienceRecord
from dkt.common.run.exchange_kinds import exchange_kind
from dkt.common.training.peers import teachers_of
from dkt.common.training.strategies import buffer_capacity
from dkt.common.training.weight_averaging import state_mismatch
from dkt.flower.messages import EVALUATE, TRAIN, FittedWeights, TrainOrder, TrainReply
from dkt.flower.runs import NODE_UNAVAILABLE, flower_error
from dkt.proto.relay_client import RelayError
from dkt.server.conductor.discovery import POLL_SECONDS, AgentDiscovery

TRAIN_TTL_MARGIN = 60.0  # a train message outlives --agent-timeout by this much
REPLY_REFUSED = -1  # the code of a reply the conductor refused (it sends the order again)


@dataclass
class Order:
    """One experience sent (or to be sent) to one agent."""

    agent_id: int
    experience: int
    phase: str = TRAIN  # TRAIN, or EVALUATE: adopt the round's average (fedavg)
    attempt: int = 0
    deadline: float = 0.0  # reply deadline while in flight; rejoin deadline while waiting
    last_failure: str = ""  # why the previous attempt failed


class Dispatch(AgentDiscovery):
    """Orders in flight and waiting, and what their replies do."""

    histories: dict[int, list[ExperienceRecord]]
    in_flight: dict[str, Order]
    waiting: list[Order]
    probe_fingerprint: str
    fitted: dict[int, FittedWeights]
    average: ArrayRecord | None
    weights_layout: dict[str, torch.Tensor] | None
    class_rows: list[int] | None

    def _mark(self, event: str, **fields: object) -> None:
        raise NotImplementedError

    def send(self, order: Order) -> None:
        cfg = self.config
        teachers = teachers_of(cfg, order.agent_id, order.experience)
        weights = self.average if order.phase == EVALUATE else None
        train = TrainOrder(
            self.settings.run_id,
            order.experience,
            tuple(teachers),
            self.probe_fingerprint,
            weights,
            teacher_last=tuple(self.experiences_of(t) - 1 for t in teachers),
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

    def drive(self, orders: Iterable[Order], chain: bool = False) -> None:
        """Send `orders` and wait until each is done or its agent is missing. With
        `chain`, an agent that finishes experience e is sent e+1 at once (async)."""
        for first in orders:
            self.send(first)
        while self.in_flight or self.waiting:
            self.sleep(POLL_SECONDS)
            for reply in self.grid.pull_messages(list(self.in_flight)):
                answered = self.in_flight.pop(reply.metadata.reply_to_message_id or "", None)
                if answered is None:
                    continue
                self._mark("reply", agent=answered.agent_id, experience=answered.experience)
                if reply.has_error():
                    code = reply.error.code
                    self._failed(answered, code, flower_error(code, str(reply.error.reason)))
                    continue
                refused = self._refusal(answered, reply)
                if refused:
                    self._failed(answered, REPLY_REFUSED, refused)
                    continue
                self._done(answered, reply)
                if chain and answered.experience + 1 < self.experiences_of(answered.agent_id):
                    self.send(Order(answered.agent_id, answered.experience + 1))
            now = self.clock()
            for mid, order in list(self.in_flight.items()):
                if now > order.deadline:
                    del self.in_flight[mid]
                    self._failed(
                        order, None, f"no reply within {self.settings.agent_timeout:.0f} s"
                    )
            if self.waiting:
                self.discover(max(order.deadline for order in self.waiting))
                self._resend_rejoined()

    def _refusal(self, order: Order, reply: Message) -> str:
        """Why a reply cannot be taken for `order`, or "": it must be about the agent and
        experience asked, and a record of an exchange that shares predictions counts only
        once the relay holds the predictions it stands for (a made-up record once
        passed for an agent that had published nothing)."""
        kind = exchange_kind(self.config.exchange)
        fitted = None
        try:
            if order.phase == TRAIN and kind.averages_weights:
                fitted = FittedWeights.from_message(reply)
                about = (fitted.agent_id, fitted.experience)
            else:
                answer = TrainReply.from_message(reply)
                about = (answer.agent_id, answer.record.experience)
        except (KeyError, TypeError, ValueError) as err:
            return f"a malformed reply ({type(err).__name__})"
        if about != (order.agent_id, order.experience):
            return (
                f"a reply about agent {about[0]}, experience {about[1]}, to the order for "
                f"agent {order.agent_id}, experience {order.experience}"
            )
        if fitted is not None:
            return self._weights_refusal(fitted)
        if kind.averages_weights or not kind.shares_predictions:
            return ""
        try:
            held = self.relay.list_predictions(self.settings.run_id, order.agent_id)
        except RelayError as err:
            return f"the relay could not vouch for the reply ({err.code.name})"
        if not any(p.experience == order.experience for p in held):
            return (
                f"the reply says experience {order.experience} is done, but the relay holds "
                f"no predictions of agent {order.agent_id} for it"
            )
        return ""

    def _weights_refusal(self, fitted: FittedWeights) -> str:
        """Why an agent's trained weights cannot go into the round's average, or "": they
        must have the model's entries, shapes and dtypes and finite values, and their
        `rows` (their weight in the average) at least 1 and at most what the agent's plan
        allows (`rows_allowed`). Otherwise one forged reply could fail the average, fill
        it with NaN or, claiming 10^12 rows, outweigh every other agent."""
        if self.weights_layout is None:
            return "weights, but the conductor has no model layout to check them against"
        try:
            state = fitted.weights.to_torch_state_dict()
        except Exception as err:  # numpy's reader of a forged array raises what it meets
            return f"weights that do not decode ({type(err).__name__})"
        mismatch = state_mismatch(state, self.weights_layout)
        if mismatch:
            return f"weights unlike the model's: {mismatch}"
        most = self.rows_allowed(fitted.agent_id, fitted.experience)
        if fitted.rows < 1 or (most is not None and fitted.rows > most):
            allowed = f"1 to {most}" if most is not None else "at least 1"
            return (
                f"weights trained on {fitted.rows} rows, but agent {fitted.agent_id}'s plan "
                f"allows {allowed} for experience {fitted.experience}"
            )
        return ""

    def rows_allowed(self, agent_id: int, experience: int) -> int | None:
        """The most rows agent `agent_id` can train `experience` on by its plan: the shared
        data set's training rows of the experience's classes, plus what its replay buffer
        can hold of earlier experiences' rows. None where the conductor cannot know: an
        agent with its own data (only its site knows its row counts), or a run whose
        shared data set the conductor did not load; such an agent's count is taken on
        its word."""
        plan = self.plans.get(agent_id)
        if self.class_rows is None or agent_id in self.own_data or plan is None:
            return None
        if experience >= len(plan):
            return 0
        rows = [sum(self.class_rows[c] for c in part) for part in plan]
        spec = self.config.agent_spec(agent_id)
        memory = min(buffer_capacity(spec.strategy, spec.replay_size), sum(rows[:experience]))
        return rows[experience] + memory

    def _done(self, order: Order, reply: Message) -> None:
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

    def _failed(self, order: Order, code: int | None, reason: str) -> None:
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
            self.send(order)  # the agent raised: its node is alive, try again now

    def _resend_rejoined(self) -> None:
        now = self.clock()
        for order in list(self.waiting):
            if order.agent_id in self.book.node_of:
                self.waiting.remove(order)
                self.send(order)
            elif now > order.deadline:
                self.waiting.remove(order)
                self._mark_missing(
                    order.agent_id,
                    order.experience,
                    f"did not come back within {self.settings.rejoin_wait:.0f} s"
                    + (f" after: {order.last_failure}" if order.last_failure else ""),
                )
