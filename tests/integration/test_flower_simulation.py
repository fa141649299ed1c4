"""`dkt simulate --engine flower`: the conductor ServerApp and the agent ClientApp under
Flower's Simulation Engine (Ray), with the same numbers as the in-process engine, on a
local Ray and on an existing Ray cluster given by address."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from dkt.common.engine.simulation import simulate
from dkt.common.run.config import ExperimentConfig
from tests.integration.test_flower_run import assert_same_numbers, records
from tests.support.experiments import numbers
from tests.support.processes import start, stop, wait_for_line


class Simulated(NamedTuple):
    pid: int
    stderr: str
    metrics: dict


def simulate_on_flower(out: Path, flags: list[str]) -> Simulated:
    """`dkt simulate --out OUT FLAGS` in a process of its own: its pid, its stderr and the
    metrics.json it wrote."""
    with subprocess.Popen(
        [sys.executable, "-m", "dkt", "simulate", "--out", str(out), *flags],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    return Simulated(proc.pid, stderr, json.loads((out / "metrics.json").read_text()))


def assert_in_process_numbers(config: ExperimentConfig, metrics: dict) -> None:
    """Every agent's numbers in `metrics` are those of the in-process engine for `config`,
    run at one torch thread per agent as the Flower engine's agents were."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = simulate(config)
    finally:
        torch.set_num_threads(before)
    for a in range(config.agents):
        assert_same_numbers(records(metrics, a), numbers(expected.histories[a]))


@pytest.mark.slow
def test_simulate_on_flowers_engine_gives_the_in_process_engines_numbers(tmp_path):
    out = tmp_path / "fleet"
    flags = ["--engine", "flower", "--num-cpus", "0.5", "--dataset", "digits",
             "--agents", "2", "--experiences", "2", "--seed", "3", "--quiet"]  # fmt: skip
    metrics = simulate_on_flower(out, flags).metrics

    config = ExperimentConfig.from_toml(out / "config.toml")
    assert (config.agents, config.experiences, config.seed) == (2, 2, 3)
    assert metrics["provenance"]["command"].endswith(shlex.join(flags))
    # Each agent trained on one torch thread (--num-cpus 0.5): so does the reference, and
    # the numbers agree (to the bit, here; float rounding allowed).
    assert_in_process_numbers(config, metrics)
    # Each agent's state between messages: a checkpoint per experience in its own folder.
    for a in range(2):
        assert (out / "checkpoints" / f"agent-{a}").is_dir()


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports free now."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]


@contextlib.contextmanager
def ray_head(log: Path) -> Iterator[str]:
    """A Ray head node on loopback (2 CPUs, no dashboard) for the duration; yields its
    address. Its processes run in a process group of their own, and only that group is
    stopped afterwards (`ray stop` would stop every Ray on the machine)."""
    gcs, client, dashboard = free_ports(3)
    # A short temp dir: Ray's socket paths under it must fit a Unix socket's 107 bytes.
    temp = tempfile.mkdtemp(prefix="dkt-ray-")
    ray = str(Path(sys.executable).with_name("ray"))
    head = start(
        [ray, "start", "--head", "--block", f"--port={gcs}", "--node-ip-address=127.0.0.1",
         f"--ray-client-server-port={client}", f"--dashboard-port={dashboard}",
         "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={temp}",
         "--disable-usage-stats"],
        log,
    )  # fmt: skip
    try:
        wait_for_line(log, "Ray runtime started", head, timeout=120)
        yield f"127.0.0.1:{gcs}"
    finally:
        stop(head)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)  # whatever of the group outlived its leader
        shutil.rmtree(temp, ignore_errors=True)


def jobs_of(address: str) -> list[dict]:
    """The Ray cluster's job table (its drivers), read from its GCS."""
    from ray._raylet import GcsClient

    table = GcsClient(address=address).get_all_job_info()
    return [{"pid": job.driver_pid, "dead": job.is_dead} for job in table.values()]


@pytest.mark.slow
def test_simulate_on_an_existing_ray_cluster_gives_the_in_process_engines_numbers(tmp_path):
    out = tmp_path / "fleet"
    with ray_head(tmp_path / "ray-head.log") as address:
        flags = ["--engine", "flower", "--ray-address", address, "--num-cpus", "1",
                 "--dataset", "digits", "--backbone", "mlp", "--agents", "2",
                 "--experiences", "2", "--epochs", "1", "--seed", "5", "--plots", "none",
                 "--quiet"]  # fmt: skip
        run = simulate_on_flower(out, flags)

        # The run was a job of this cluster (its driver: the dkt process), and it left
        # the cluster running: a cluster DKT joined is not DKT's to stop.
        assert {"pid": run.pid, "dead": True} in jobs_of(address)
        assert f"on Ray cluster {address}" in " ".join(run.stderr.split())
    config = ExperimentConfig.from_toml(out / "config.toml")
    assert (config.agents, config.experiences, config.epochs, config.backbone) == (2, 2, 1, "mlp")
    assert_in_process_numbers(config, run.metrics)
    # --plots none reached the conductor, which wrote the results folder without plots.
    assert (out / "summary.md").is_file() and not (out / "plots").exists()
