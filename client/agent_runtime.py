"""What a DKT agent does for one Flower message, without Flower: restore from disk,
fetch the probe set and its teachers' predictions from the relay, train one
experience, publish, checkpoint, and return the record."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from dkt.client.relay_client import RelayClient
from dkt.client.relay_exchange import RelayExchange, headline_metrics
from dkt.common.config import ExperimentConfig
from dkt.common.probe import ProbeSet
from dkt.common.run_setup import Setup, prepare
from dkt.common.step import (
    FedAvgFit,
    StepOutcome,
    fedavg_conclude_from_checkpoint,
    fedavg_fit_from_checkpoint,
    step_from_checkpoint,
)
from dkt.common.threads import resolve_threads
from dkt.proto.relay_connection import CA_ENV, TOKEN_ENV


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

    @classmethod
    def from_node_config(cls, node_config: dict[str, object]) -> AgentPlacement:
        """Read `agent-id`, `data-dir`, `relay`, `device` and `threads` from the node
        config; the relay token and CA come from the environment so they stay out of
        `ps`."""
        missing = [k for k in ("agent-id", "data-dir", "relay") if k not in node_config]
        if missing:
            raise ValueError(
                f"the SuperNode's node config lacks {', '.join(missing)}: start it with "
                "`dkt agent`, or pass --node-config \"agent-id=0 data-dir='DIR' relay='HOST:PORT'\""
            )
        ca = os.environ.get(CA_ENV)
        return cls(
            agent_id=int(node_config["agent-id"]),  # type: ignore[arg-type]
            data_dir=Path(str(node_config["data-dir"])),
            relay=str(node_config["relay"]),
            device=str(node_config.get("device", "cpu")),
            threads=resolve_threads(int(node_config.get("threads", 0)), 1),  # type: ignore[arg-type]
            token=os.environ.get(TOKEN_ENV) or None,
            root_cert=Path(ca).read_bytes() if ca else None,
        )


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


@contextlib.contextmanager
def _agent_setup(
    placement: AgentPlacement, config: ExperimentConfig, run_id: str, probe_fingerprint: str
) -> Iterator[tuple[RelayClient, Setup]]:
    """A relay connection and the run's setup, with the probe set the relay serves."""
    with RelayClient(placement.relay, placement.token, root_cert=placement.root_cert) as client:
        probe = cached_probe(client, run_id, probe_fingerprint, placement.data_dir / run_id)
        setup = prepare(config)
        if setup.probe.fingerprint != probe.fingerprint and config.probe_source == "holdout":
            # The hold-out is carved out of this agent's own copy of the data: if the
            # copies differ, its streams may contain probe inputs.
            raise ValueError(
                f"agent {placement.agent_id}'s copy of {config.dataset} gives a different "
                "probe hold-out than the conductor's: give every host the same data files"
            )
        yield client, dataclasses.replace(setup, probe=probe)


def train_experience(
    placement: AgentPlacement,
    config: ExperimentConfig,
    run_id: str,
    experience: int,
    teachers: tuple[int, ...],
    probe_fingerprint: str,
) -> StepOutcome:
    """One experience of this agent in run `run_id`, idempotently."""
    run_dir = placement.data_dir / run_id
    with _agent_setup(placement, config, run_id, probe_fingerprint) as (client, setup):
        client.report_progress(run_id, placement.agent_id, experience, "training")
        outcome = step_from_checkpoint(
            setup,
            placement.agent_id,
            experience,
            RelayExchange(client, run_id, config.exchange_dtype),
            run_dir / "checkpoints",
            teachers=teachers,
            device=placement.device,
        )
        client.report_progress(
            run_id, placement.agent_id, experience, "trained", headline_metrics(outcome.record)
        )
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
    with _agent_setup(placement, config, run_id, probe_fingerprint) as (client, setup):
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
) -> StepOutcome:
    """The second half: continue from the round's average, evaluate, checkpoint."""
    with _agent_setup(placement, config, run_id, probe_fingerprint) as (client, setup):
        outcome = fedavg_conclude_from_checkpoint(
            setup,
            placement.agent_id,
            experience,
            average,
            placement.data_dir / run_id / "checkpoints",
            device=placement.device,
        )
        client.report_progress(
            run_id, placement.agent_id, experience, "trained", headline_metrics(outcome.record)
        )
    return outcome
