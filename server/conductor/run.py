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
from collections.abc import Callable
from typing import Any, cast

import torch
from flwr.app import ArrayRecord
from flwr.serverapp import Grid

from dkt.common.byte_sizes import format_bytes
from dkt.common.engine.setup import Setup, prepare, shared_plans
from dkt.common.engine.step import averaged_layout
from dkt.common.evaluation.results import ExperienceRecord, RunResult, write_results
from dkt.common.evaluation.tracking import Tracking
from dkt.common.run.config import ExperimentConfig
from dkt.common.run.exchange_kinds import exchange_kind
from dkt.common.training.weight_averaging import average_states, state_nbytes
from dkt.flower.messages import (
    EVALUATE,
    FittedWeights,
)
from dkt.flower.runs import TIMINGS_ENV
from dkt.proto.relay_client import RelayClient, RelayError
from dkt.server.conductor.discovery import AgentBook, ids
from dkt.server.conductor.dispatch import Dispatch, Order
from dkt.server.conductor.settings import ConductorSettings

SUMMARY_LINE = "dkt-summary: "  # the log line that carries the summary table's numbers
TIMING_LINE = "dkt-timing: "  # with $DKT_TIMINGS set: when each order was sent and answered
MAX_REASON = 500  # characters of a reason sent to the relay (Flower's may hold a traceback)


class Conductor(Dispatch):
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
        self.book = AgentBook()
        self.histories: dict[int, list[ExperienceRecord]] = {a: [] for a in range(config.agents)}
        self.in_flight: dict[str, Order] = {}
        self.waiting: list[Order] = []  # failed orders waiting for their agent to rejoin
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
        # fedavg: the entries, shapes and dtypes an agent's weights must have (meta
        # tensors), and the shared data set's training rows per class, when it is loaded
        # here: what a reply's weights and rows are checked against.
        self.weights_layout: dict[str, torch.Tensor] | None = None
        self.class_rows: list[int] | None = None
        self.timing = bool(os.environ.get(TIMINGS_ENV))

    def _mark(self, event: str, **fields: Any) -> None:
        """A timing line for benchmarks/run_overhead.py (wall clock: the agents' lines
        are compared with it)."""
        if self.timing:
            self.log(TIMING_LINE + json.dumps({"event": event, "t": time.time(), **fields}))

    def run(self) -> RunResult:
        start = time.perf_counter()
        self._mark("run_start")
        cfg, run_id = self.config, self.settings.run_id
        setup = prepare(cfg, agents=())  # the class space and public sets, no agent's data
        self.probe_fingerprint = setup.probe.fingerprint
        self.num_classes = setup.num_classes
        self.plans = dict(enumerate(shared_plans(cfg, setup.num_classes)))
        if exchange_kind(cfg.exchange).averages_weights:
            self._know_weights(setup)
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
            self.wait_for_agents()
            self._mark("agents_ready")
            if exchange_kind(cfg.exchange).averages_weights:
                for e in range(cfg.experiences):
                    self.fedavg_round(e)
                    self.relay.set_run_state(run_id, "running", e)
            elif cfg.schedule == "sync":
                for e in range(cfg.experiences):
                    self.drive([Order(a, e) for a in self.active(e)])
                    self.relay.set_run_state(run_id, "running", e)
            elif cfg.schedule == "sequential":
                for e in range(cfg.experiences):
                    for a in self.active(e):
                        self.drive([Order(a, e)])
                    self.relay.set_run_state(run_id, "running", e)
            else:
                self.drive([Order(a, 0) for a in self.active()], chain=True)
            if not self.active():
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

    def _know_weights(self, setup: Setup) -> None:
        """What fedavg checks each agent's weights against: the layout of the run's one
        backbone (the config allows no other under fedavg) and the rows of each class."""
        shape = cast("tuple[int, int, int]", tuple(int(d) for d in setup.probe.inputs.shape[1:]))
        backbone = self.config.agent_spec(0).backbone
        self.weights_layout = averaged_layout(backbone, shape, setup.num_classes)
        if setup.train is not None:
            counts = torch.bincount(setup.train.y, minlength=setup.num_classes)
            self.class_rows = [int(n) for n in counts.tolist()]

    def fedavg_round(self, experience: int) -> None:
        """One FedAvg round: every agent trains `experience` and sends its weights (a
        train message's reply); the conductor averages them, weighted by the rows each
        trained on (`common.weight_averaging`, as `dkt simulate` does), and sends the
        average back (an evaluate message); each agent adopts it, evaluates and
        replies with its record. Agents missing by then are left out of the average."""
        self.fitted, self.average = {}, None
        self.drive([Order(a, experience) for a in self.active(experience)])
        fitted = [self.fitted[a] for a in sorted(self.fitted) if a not in self.book.missing]
        if not fitted:
            return
        states = [dict(f.weights.to_torch_state_dict()) for f in fitted]
        average = average_states(states, [f.rows for f in fitted])
        self.average = ArrayRecord(torch_state_dict=average)
        self.log(
            f"experience {experience}: averaged the weights of agents "
            f"{ids(f.agent_id for f in fitted)} ({format_bytes(state_nbytes(average))}); "
            "sending the average"
        )
        self.drive([Order(f.agent_id, experience, EVALUATE) for f in fitted])

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
        write_results(self.result, self.settings.results_dir, self.settings.plots)
        self._track()
        self.relay.set_run_state(run_id, "finished", cfg.experiences - 1)
        self.log(f"run {run_id} finished; results in {self.settings.results_dir}")
        return self.result

    def _track(self) -> None:
        """The MLflow run of the results folder, when the run asks for one (the agents
        wrote their TensorBoard events themselves). The results are already written, so
        a tracker that fails is logged, not a failed run."""
        tracking = Tracking(log=self.settings.log, mlflow_uri=self.settings.mlflow_uri)
        try:
            logged = tracking.finish(self.settings.results_dir)
        except Exception as err:  # an unreachable tracking server, a missing package
            self.log(f"MLflow logging failed ({type(err).__name__}: {err}); the results "
                     f"folder {self.settings.results_dir} is complete")  # fmt: skip
            return
        if logged:
            self.log(logged)

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

    def active(self, experience: int = 0) -> list[int]:
        """The agents not missing whose stream has `experience` (a joint agent has one)."""
        return [
            a
            for a in range(self.config.agents)
            if a not in self.book.missing and experience < self.experiences_of(a)
        ]

    def experiences_of(self, agent_id: int) -> int:
        """How many experiences agent `agent_id` learns (its plan's; before the run has
        its plans, the config's)."""
        plan = self.plans.get(agent_id)
        return len(plan) if plan is not None else self.config.agent_experiences(agent_id)

    def experience_of(self, agent_id: int) -> int:
        for order in [*self.in_flight.values(), *self.waiting]:
            if order.agent_id == agent_id:
                return order.experience
        return min(len(self.histories[agent_id]), self.experiences_of(agent_id) - 1)

    def _report(self, agent_id: int, experience: int, state: str, reason: str = "") -> None:
        """Tell the relay's status what the conductor sees of an agent. Best effort: the
        run does not stop because a status report failed."""
        try:
            self.relay.report_progress(
                self.settings.run_id, agent_id, experience, state, reason=reason[:MAX_REASON]
            )
        except RelayError as err:
            self.log(f"could not report agent {agent_id} {state} to the relay: {err}")
