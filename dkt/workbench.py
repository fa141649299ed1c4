"""The researcher's workbench: `dkt.simulate`, `dkt.compare` and `dkt.load_results`, the
commands `dkt simulate` and `dkt compare` as Python functions that return Python
objects (`RunResult`, `Comparison`) with tidy tables. Torch loads when a run starts."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dkt.common.data.local_source import LocalSource
from dkt.common.run.config import ExperimentConfig

if TYPE_CHECKING:
    from dkt.common.evaluation.results import RunResult
    from dkt.common.evaluation.tables import Comparison
    from dkt.common.training.listeners import Listener

SourceLike = LocalSource | str | Path


def simulate(
    config: ExperimentConfig | None = None,
    *,
    local: Mapping[int, SourceLike] | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    device: str = "cpu",
    threads: int | None = None,
    listener: Listener | None = None,
) -> RunResult:
    """Run every agent of `config` (default: the defaults) in this process, as
    `dkt simulate` does, and return the run's result.

    local: agents that learn their own data instead of the shared data set, as
        {agent id: path or LocalSource}: a folder of class-named image folders or an
        .npz with x and y (docs/how-to/own-data.md).
    out: also write a results folder there (metrics.json, matrices, plots, checkpoints),
        as `dkt simulate --out`; it must be new or empty unless `resume` continues it
        from its checkpoints. None: nothing is written.
    device: torch device of every agent (cpu, cuda, cuda:1).
    threads: torch CPU threads for this process (None: leave torch's setting).
    listener: receives experience_started, epoch_done and experience_done events
        (any object with those methods, see `dkt.Listener`; `dkt.Listeners` joins several).
    """
    from dkt.common.engine.simulation import simulate as run_in_process

    config = config if config is not None else ExperimentConfig()
    sources = local_sources(local, config.agents)
    if threads is not None:
        from dkt.common.threads import apply_threads

        apply_threads(threads)
    if out is None:
        if resume:
            raise ValueError("resume continues a results folder: give out=FOLDER as well")
        return run_in_process(config, device=device, listener=listener, local=sources)
    folder = Path(out)
    if resume and not (folder / "checkpoints").is_dir():
        raise FileNotFoundError(f"{folder} holds no checkpoints to resume: drop resume=True")
    if not resume and folder.exists() and any(folder.iterdir()):
        raise FileExistsError(
            f"{folder} is not empty: pick a new out folder, delete it, or resume=True to "
            "continue the run in it"
        )
    folder.mkdir(parents=True, exist_ok=True)
    result = run_in_process(
        config,
        checkpoint_dir=folder / "checkpoints",
        resume=resume,
        device=device,
        listener=listener,
        local=sources,
    )
    result.write(folder)
    return result


def local_sources(
    local: Mapping[int, SourceLike] | None, agents: int
) -> dict[int, LocalSource] | None:
    """{agent id: LocalSource} from paths or sources; one clear error for a bad entry."""
    if not local:
        return None
    found = {}
    for agent_id, source in local.items():
        if not isinstance(agent_id, int) or not 0 <= agent_id < agents:
            raise ValueError(
                f"local names agent {agent_id!r}; this run's agents are 0 to {agents - 1}"
            )
        if isinstance(source, LocalSource):  # LocalSource("x.npz") holds a str: made a Path
            source = LocalSource.of(source.path, source.manifest)
        else:
            source = LocalSource.of(source)
        if not source.path.exists():
            raise FileNotFoundError(f"agent {agent_id}'s data {source.path} does not exist")
        found[agent_id] = source
    return found


def compare(
    base: ExperimentConfig | None = None,
    *,
    vary: Mapping[str, Sequence[Any]] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    baseline: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    workers: int = 1,
    threads: int | None = None,
    device: str = "cpu",
) -> Comparison:
    """Run every combination of `vary`'s values at every seed, each cell starting from
    `base`, as `dkt compare` does, and return the table.

    vary: {option: [values]}, e.g. {"kd_weight": [0, 1]}; every combination runs.
    baseline: the cell each cell is compared with at the same seed, e.g.
        {"kd_weight": 0}; None: dkt compare's default (exchange=none or kd_weight=0
        when varied); {}: no baseline.
    out: the output folder (grid.toml, compare.md, compare.csv, runs/CELL/seed-S/);
        runs already done there are kept, so a larger grid only runs the new cells.
        None: a temporary folder, deleted afterwards.
    workers: runs at a time. 1 runs them one after another in this process; more runs
        them in spawned processes (in a script, call compare under
        `if __name__ == "__main__":`), each with `threads` torch threads (default 1).
    """
    from dkt.common.run.grid import build_grid

    grid = build_grid(
        base if base is not None else ExperimentConfig(),
        seeds,
        [(name, list(values), "vary") for name, values in (vary or {}).items()],
        None if baseline is None else [(k, v, "baseline") for k, v in baseline.items()],
    )
    if out is not None:
        return _compare_into(grid, Path(out), workers, threads, device)
    with tempfile.TemporaryDirectory(prefix="dkt-compare-") as scratch:
        table = _compare_into(grid, Path(scratch), workers, threads, device)
        return type(table)(table.grid, table.rows, table.numbers, None)


def _compare_into(
    grid: Any, out: Path, workers: int, threads: int | None, device: str
) -> Comparison:
    import json

    from rich.console import Console

    from dkt.cli.compare import RunJob, _run_jobs, run_one
    from dkt.common.evaluation.compare_table import run_numbers, write_table
    from dkt.common.evaluation.tables import Comparison
    from dkt.common.run.grid import check_resumable, write_grid_file

    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    check_resumable(grid, out)
    write_grid_file(grid, out)
    jobs = [RunJob(r.config, str(r.folder(out)), device) for r in grid.runs() if not r.is_done(out)]
    start = time.perf_counter()
    if workers == 1:
        if threads is not None:
            from dkt.common.threads import apply_threads

            apply_threads(threads)
        outcomes = [run_one(job) for job in jobs]
        failures = [(o.folder, o.error) for o in outcomes if o.error is not None]
    else:
        console = Console(stderr=True, quiet=True)
        failures = _run_jobs(jobs, grid, workers, threads or 1, True, console)
    if failures:
        listed = "; ".join(f"{folder}: {error}" for folder, error in failures)
        raise RuntimeError(
            f"{len(failures)} run(s) failed ({listed}); each traceback is in FOLDER.partial/"
            "error.txt; call compare again with the same out to retry only them"
        )
    numbers = {
        (r.cell.key, r.seed): run_numbers(json.loads((r.folder(out) / "metrics.json").read_text()))
        for r in grid.runs()
    }
    command = f"# dkt.compare from Python in {time.perf_counter() - start:.0f} s; the same "
    command += f"grid: dkt compare --grid {out / 'grid.toml'} --out {out}"
    rows = write_table(out, grid, numbers, command)
    return Comparison(grid, rows, numbers, out)


def load_results(folder: str | Path) -> RunResult:
    """A results folder (of dkt simulate, dkt run, dkt compare's runs/CELL/seed-S, or
    `simulate(out=...)`) read back from its metrics.json as a RunResult."""
    from dkt.common.evaluation.results import RunResult

    return RunResult.read(folder)
