"""What a DKT agent does for one Flower message, without Flower: restore from disk,
fetch the probe set and its teachers' predictions from the relay, train one
experience, publish, checkpoint, and return the record."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dkt.client.relay_exchange import RelayExchange, headline_metrics
from dkt.common.data.eval_set import EvalSet
from dkt.common.data.local_source import LocalSource
from dkt.common.data.probe import ProbeSet
from dkt.common.engine.setup import Setup, local_plan, prepare_agent
from dkt.common.engine.step import (
    FedAvgFit,
    StepOutcome,
    fedavg_conclude_from_checkpoint,
    fedavg_fit_from_checkpoint,
    step_from_checkpoint,
)
from dkt.common.evaluation.results import reported_heads
from dkt.common.evaluation.tracking import TENSORBOARD_DIR, TensorBoardLog, Tracking
from dkt.common.run.config import ExperimentConfig
from dkt.common.threads import resolve_threads
from dkt.common.training.listeners import Listener
from dkt.proto.relay_client import RelayClient
from dkt.proto.relay_connection import CA_ENV, TOKEN_ENV
from dkt.proto.run_credential import run_credential


@dataclass(frozen=True)
class AgentPlacement:
    """Where and as whom an agent runs: from the SuperNode's node config."""

    agent_id: int
    data_dir: Path
    relay: str
    device: str = "cpu"
    threads: int = 1  # torch threads: node config `threads`, else $DKT_THREADS, else all cores
    token: str | None = None
    root_cert: bytes | None = None
    local: LocalSource | None = None  # the site's own data; None: the shared data set

    @classmethod
    def from_node_config(cls, node_config: dict[str, object]) -> AgentPlacement:
        """Read `agent-id`, `data-dir`, `relay`, `device`, `threads` and, for an agent
        with its own data, `local-data` (and `manifest`) from the node config; the relay
        token and CA come from the environment so they stay out of `ps`."""
        missing = [k for k in ("agent-id", "data-dir", "relay") if k not in node_config]
        if missing:
            raise ValueError(
                f"the SuperNode's node config lacks {', '.join(missing)}: start it with "
                "`dkt agent`, or pass --node-config \"agent-id=0 data-dir='DIR' relay='HOST:PORT'\""
            )
        ca = os.environ.get(CA_ENV)
        return cls(
            agent_id=_int(node_config["agent-id"]),
            data_dir=Path(str(node_config["data-dir"])),
            relay=str(node_config["relay"]),
            device=str(node_config.get("device", "cpu")),
            threads=resolve_threads(_int(node_config.get("threads", 0)), 1),
            token=os.environ.get(TOKEN_ENV) or None,
            root_cert=Path(ca).read_bytes() if ca else None,
            local=(
                LocalSource.of(
                    str(node_config["local-data"]), str(node_config.get("manifest") or "") or None
                )
                if node_config.get("local-data")
                else None
            ),
        )

    def credential(self, run_id: str) -> str | None:
        """What this agent sends the relay in run `run_id`: the run credential derived
        from its token (proto/run_credential.py), never the token; None without one."""
        return run_credential(self.token, self.agent_id, run_id) if self.token else None

    def run_config(self, order_config: str, run_config: dict[str, object]) -> ExperimentConfig:
        """The experiment as the conductor resolved it (sent with every message), else
        the Flower run config."""
        if order_config:
            return ExperimentConfig.from_dict(json.loads(order_config))
        return ExperimentConfig.from_run_config(run_config)

    def plan(self, config: ExperimentConfig) -> tuple[tuple[int, ...], ...] | None:
        """What the agent tells the conductor of its data: its plan (class indices per
        experience) when it has its own data; None on the shared data set."""
        if self.local is None:
            return None
        # The site's data stays in this process for the run's first train message (the
        # long-lived worker's next message), which would otherwise decode it again.
        plan = local_plan(config, self.agent_id, self.local, keep=True)
        return tuple(tuple(p) for p in plan)


@dataclass
class StepTimings:
    """Seconds per phase of one message (a few clock reads; `benchmarks/run_overhead.py`
    reads them from the agent's log, where they go when $DKT_TIMINGS is set)."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name):
                return fn(*args, **kwargs)

        return call

    @contextlib.contextmanager
    def checkpoint_io(self) -> Iterator[None]:
        """Count torch.save/torch.load as checkpoint I/O while the step runs (the step's
        only files are its checkpoints)."""
        save, load = torch.save, torch.load
        torch.save, torch.load = self.timed("checkpoint", save), self.timed("checkpoint", load)
        try:
            yield
        finally:
            torch.save, torch.load = save, load


class _TimedExchange:
    """A prediction exchange whose relay calls count as the `relay` phase."""

    def __init__(self, inner: RelayExchange, timings: StepTimings) -> None:
        self._inner = inner
        self.publish = timings.timed("relay", inner.publish)
        self.fetch = timings.timed("relay", inner.fetch)
        self.latest = timings.timed("relay", inner.latest)
        self.teacher_targets = timings.timed("relay", inner.teacher_targets)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _local_source(node_config: dict[str, object]) -> LocalSource | None:
    path = str(node_config.get("local-data") or "")
    manifest = str(node_config.get("manifest") or "")
    return LocalSource.of(path, manifest or None) if path else None


def cached_probe(client: RelayClient, run_id: str, fingerprint: str, folder: Path) -> ProbeSet:
    """The run's probe set, fetched from the relay once and kept in `folder`."""
    path = folder / "probe.pt"
    if path.exists():
        saved = torch.load(path, weights_only=True)
        probe = ProbeSet(saved["inputs"], saved["source"], saved["fingerprint"])
        probe.verify()
    else:
        probe = client.get_probe(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(
            {"inputs": probe.inputs, "source": probe.source, "fingerprint": probe.fingerprint},
            tmp,
        )
        os.replace(tmp, path)
    if probe.fingerprint != fingerprint:
        raise ValueError(
            f"the relay's probe set for run {run_id} has fingerprint {probe.fingerprint[:12]}…, "
            f"but the conductor announced {fingerprint[:12]}…: the run was re-created; "
            f"delete {path} or use a new run id"
        )
    return probe


def cached_eval_set(client: RelayClient, run_id: str, folder: Path) -> EvalSet:
    """The run's public evaluation set, fetched from the relay once and kept in `folder`."""
    path = folder / "eval-set.pt"
    if path.exists():
        saved = torch.load(path, weights_only=True)
        found = EvalSet(saved["inputs"], saved["labels"], saved["source"], saved["fingerprint"])
        found.verify()
        return found
    found = client.get_eval_set(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"inputs": found.inputs, "labels": found.labels, "source": found.source,
         "fingerprint": found.fingerprint},
        tmp,
    )  # fmt: skip
    os.replace(tmp, path)
    return found


@contextlib.contextmanager
def _agent_setup(
    placement: AgentPlacement,
    config: ExperimentConfig,
    run_id: str,
    probe_fingerprint: str,
    timings: StepTimings,
) -> Iterator[tuple[RelayClient, Setup]]:
    """A relay connection and the run's setup, with the probe set the relay serves (and
    for an agent with its own data, the public evaluation set when the run has one)."""
    credential = placement.credential(run_id)
    with RelayClient(placement.relay, credential, root_cert=placement.root_cert) as client:
        folder = placement.data_dir / run_id
        with timings.phase("probe"):
            probe = cached_probe(client, run_id, probe_fingerprint, folder)
            public = None
            if placement.local is not None and config.eval_from:
                public = cached_eval_set(client, run_id, folder)
        with timings.phase("prepare"):
            setup = prepare_agent(
                config, placement.agent_id, probe, placement.local, public, cache_dir=folder
            )
        yield client, setup


def train_experience(
    placement: AgentPlacement,
    config: ExperimentConfig,
    run_id: str,
    experience: int,
    teachers: tuple[int, ...],
    probe_fingerprint: str,
    teacher_last: tuple[int, ...] = (),
    timings: StepTimings | None = None,
    listener: Listener | None = None,
) -> StepOutcome:
    """One experience of this agent in run `run_id`, idempotently. `teacher_last`:
    each teacher's last experience (as the conductor knows from their plans)."""
    timings = timings if timings is not None else StepTimings()
    run_dir = placement.data_dir / run_id
    with _agent_setup(placement, config, run_id, probe_fingerprint, timings) as (client, setup):
        report = timings.timed("progress", client.report_progress)
        report(run_id, placement.agent_id, experience, "training")
        exchange = _TimedExchange(RelayExchange(client, run_id, config.exchange_dtype), timings)
        with timings.phase("step"), timings.checkpoint_io():
            outcome = step_from_checkpoint(
                setup,
                placement.agent_id,
                experience,
                exchange,  # type: ignore[arg-type]
                run_dir / "checkpoints",
                teachers=teachers,
                teacher_last=(
                    dict(zip(teachers, teacher_last, strict=True)) if teacher_last else None
                ),
                device=placement.device,
                listener=listener,
            )
        report(run_id, placement.agent_id, experience, "trained", headline_metrics(outcome.record))
    return outcome


def fit_for_average(
    placement: AgentPlacement,
    config: ExperimentConfig,
    run_id: str,
    experience: int,
    probe_fingerprint: str,
) -> FedAvgFit:
    """Under fedavg, the first half of this agent's round: train `experience` and
    return the weights for the conductor to average (idempotently)."""
    with _agent_setup(placement, config, run_id, probe_fingerprint, StepTimings()) as (
        client,
        setup,
    ):
        client.report_progress(run_id, placement.agent_id, experience, "training")
        return fedavg_fit_from_checkpoint(
            setup,
            placement.agent_id,
            experience,
            placement.data_dir / run_id / "checkpoints",
            device=placement.device,
        )


def adopt_average(
    placement: AgentPlacement,
    config: ExperimentConfig,
    run_id: str,
    experience: int,
    probe_fingerprint: str,
    average: dict[str, torch.Tensor],
    listener: Listener | None = None,
) -> StepOutcome:
    """The second half: continue from the round's average, evaluate, checkpoint."""
    with _agent_setup(placement, config, run_id, probe_fingerprint, StepTimings()) as (
        client,
        setup,
    ):
        outcome = fedavg_conclude_from_checkpoint(
            setup,
            placement.agent_id,
            experience,
            average,
            placement.data_dir / run_id / "checkpoints",
            device=placement.device,
            listener=listener,
        )
        client.report_progress(
            run_id, placement.agent_id, experience, "trained", headline_metrics(outcome.record)
        )
    return outcome


def tensorboard_log(
    placement: AgentPlacement, config: ExperimentConfig, run_id: str, run_config: dict[str, object]
) -> TensorBoardLog | None:
    """The TensorBoard listener of this agent's step when the run asks for one (`--log
    tensorboard`): events in the run config's tensorboard-dir/agent-N (`dkt run`: the
    results folder's), else DATA_DIR/RUN_ID/tensorboard/agent-N on this host."""
    tracking = Tracking(log=str(run_config.get("log") or ""))
    if "tensorboard" not in tracking.trackers:
        return None
    given = str(run_config.get("tensorboard-dir") or "")
    folder = Path(given) if given else placement.data_dir / run_id / TENSORBOARD_DIR
    return TensorBoardLog(folder, reported_heads(config))


def _int(value: object) -> int:
    """A node-config number (Flower parses `agent-id=0` into an int)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a whole number in the node config, got {value!r}")
    return int(value)
