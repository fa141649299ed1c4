"""`dkt compare`: every combination of varied options × seeds, run in-process by
`simulate` in parallel worker processes, resumably, then one table (common/run/grid.py,
common/evaluation/compare_table.py)."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dkt.cli import SuggestingParser

if TYPE_CHECKING:
    from rich.console import Console

    from dkt.common.evaluation.compare_table import CellRow
    from dkt.common.run.config import ExperimentConfig
    from dkt.common.run.grid import Grid


class _CommandLineParser(SuggestingParser):
    """Records the arguments it parses, so compare.md can start with the exact command."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        namespace, extras = super().parse_known_args(args, namespace)
        namespace.command_line = list(sys.argv[2:] if args is None else args)
        return namespace, extras


def add_compare_parser(subparsers: Any) -> argparse.ArgumentParser:
    from dkt.cli.flags import add_config_flags, add_tracking_flags, positive_int
    from dkt.cli.out_folder import add_out_flags, add_plots_flag
    from dkt.common.threads import usable_cores

    parser = subparsers.add_parser(
        "compare",
        help="run a grid of experiments × seeds and write one comparison table",
        description="Run every combination of the varied options at every seed in worker "
        "processes (dkt simulate's engine), resumably, and write compare.md, compare.csv, "
        "compare-runs.csv and compare.png into --out. Experiment options given as flags or "
        "with --config are the base every cell starts from.",
    )
    parser.add_argument(
        "--grid",
        type=Path,
        metavar="FILE",
        help="grid TOML: seeds = [0, 1, 2], baseline = { kd_weight = 0 }, [base] (experiment "
        "options), [vary] (option = [values]); flags add to it and win",
    )
    parser.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="OPTION=V1,V2",
        help="an experiment option and the values to try, e.g. kd_weight=0,0.1,1 "
        "(repeat for a grid: every combination runs)",
    )
    parser.add_argument(
        "--seeds", metavar="S1,S2", help="seeds of every cell (default: the grid's, else 0,1,2)"
    )
    parser.add_argument(
        "--baseline",
        action="append",
        metavar="OPTION=VALUE",
        help="the cell each cell is compared with at the same seed (default: exchange=none if "
        "exchange varies over none, else kd_weight=0 if kd_weight varies over 0); "
        "'none' for no baseline",
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="output folder (default: runs/compare-DATE-TIME)"
    )
    add_out_flags(
        parser,
        resume_help="continue the grid in --out (it must hold one); without it a folder "
        "holding a grid is extended all the same, and any other non-empty folder is refused",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help=f"runs at a time, each in its own process (default: usable cores // --threads, "
        f"here {usable_cores()})",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        metavar="N",
        help="CPU threads for torch in each worker (default: 1)",
    )
    parser.add_argument(
        "--device", default="cpu", help="torch device of every run: cpu, cuda, cuda:1"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or table")
    add_plots_flag(parser)
    add_tracking_flags(parser)
    add_config_flags(parser)
    parser.set_defaults(func=run_compare)
    # `add_parser` builds the parent's parser class; this one also records its arguments.
    parser.__class__ = _CommandLineParser
    return parser


def grid_from_args(args: argparse.Namespace) -> Grid:
    """The grid: defaults < --preset < --config < the grid file's [base] < flags; the
    file's [vary], seeds and baseline < --vary, --seeds, --baseline."""
    from dkt.cli.flags import config_from_args, preset_base
    from dkt.common.run.config import ExperimentConfig
    from dkt.common.run.grid import (
        GridError,
        GridSpec,
        build_grid,
        option_name,
        parse_baseline_flag,
        parse_seeds,
        parse_vary_flag,
        read_grid_file,
    )

    if hasattr(args, "seed"):  # experiment flags are only present when given
        raise GridError("--seed: every cell runs at each of --seeds; write --seeds instead")
    spec = read_grid_file(args.grid) if args.grid else GridSpec({}, None, [], None)
    base = preset_base(args)
    if args.config:
        base = ExperimentConfig.from_toml(args.config, base=base)
    if spec.base:
        where = f"{args.grid} [base]"
        names = {option_name(key, where, in_base=True): value for key, value in spec.base.items()}
        try:
            base = ExperimentConfig.from_dict({**base.to_dict(), **names})
        except ValueError as exc:
            raise GridError(f"{where}: {exc}") from None
    base = config_from_args(argparse.Namespace(**{**vars(args), "config": None}), base)
    vary = spec.vary + [(*parse_vary_flag(text), "--vary") for text in args.vary]
    seeds = parse_seeds(args.seeds) if args.seeds else spec.seeds
    baseline = spec.baseline
    if args.baseline == ["none"]:
        baseline = []
    elif args.baseline:
        baseline = [(*parse_baseline_flag(text), "--baseline") for text in args.baseline]
    return build_grid(base, seeds, vary, baseline)


# The worker side: one run, in a spawned process --------------------------------------


@dataclass(frozen=True)
class RunJob:
    config: ExperimentConfig
    folder: str
    device: str
    log: str = ""  # --log: TensorBoard events are written here, in the worker
    plots: str = "auto"  # --plots: which plots each run's results folder gets


@dataclass(frozen=True)
class RunOutcome:
    folder: str
    seconds: float
    error: str | None = None  # one line; the traceback is in FOLDER.partial/error.txt


def init_worker(threads: int) -> None:
    """Before torch loads: this process's thread pools; Ctrl-C is the parent's to handle."""
    from dkt.common.threads import apply_threads, thread_env

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(thread_env(threads))
    apply_threads(threads)


def run_one(job: RunJob) -> RunOutcome:
    """Train one run into FOLDER.partial (checkpoints per experience, so an interrupted
    run continues), write its results folder there, drop the checkpoints, then rename
    it to FOLDER: a folder with metrics.json is always a finished run."""
    from dkt.common.engine.simulation import simulate
    from dkt.common.evaluation.results import reported_heads, write_results
    from dkt.common.evaluation.tracking import Tracking

    start = time.perf_counter()
    final = Path(job.folder)
    partial = final.with_name(final.name + ".partial")
    try:
        saved = partial / "config.toml"
        if partial.exists() and (not saved.exists() or saved.read_text() != job.config.to_toml()):
            shutil.rmtree(partial)
        partial.mkdir(parents=True, exist_ok=True)
        saved.write_text(job.config.to_toml())
        checkpoints = partial / "checkpoints"
        board = Tracking(log=job.log).tensorboard(partial, reported_heads(job.config))
        try:
            result = simulate(
                job.config,
                checkpoint_dir=checkpoints,
                resume=True,
                device=job.device,
                listener=board,
            )
        finally:
            if board is not None:
                board.close()
        result.extra["compare"] = {"device": job.device, "threads": _torch_threads()}
        write_results(result, partial, job.plots)
        shutil.rmtree(checkpoints, ignore_errors=True)
        partial.rename(final)
        return RunOutcome(job.folder, time.perf_counter() - start)
    except Exception as exc:  # reported by the parent; the other runs go on
        partial.mkdir(parents=True, exist_ok=True)
        (partial / "error.txt").write_text(traceback.format_exc())
        line = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return RunOutcome(job.folder, time.perf_counter() - start, line)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# The command -------------------------------------------------------------------------


def run_compare(args: argparse.Namespace) -> int:
    """`dkt compare`; returns the exit code."""
    from rich.console import Console

    from dkt.cli.flags import tracking
    from dkt.cli.out_folder import check_out, clear_out
    from dkt.common.evaluation.compare_table import run_numbers, write_table
    from dkt.common.run.grid import GRID_FILE, check_resumable, write_grid_file
    from dkt.common.threads import usable_cores

    console = Console(stderr=True)
    track = tracking(args)
    track.check_installed()
    grid = grid_from_args(args)
    out: Path = args.out or Path("runs") / time.strftime("compare-%Y%m%d-%H%M%S")
    # A folder holding a grid is extended (done runs are kept), as documented; any other
    # non-empty folder only with --overwrite.
    grown = (out / GRID_FILE).is_file() and not args.overwrite
    check_out(out, resume=args.resume or grown, overwrite=args.overwrite)
    if args.resume and not (out / GRID_FILE).is_file():
        raise ValueError(f"--resume: {out} holds no grid ({GRID_FILE}); drop --resume")
    if args.overwrite:
        clear_out(out)
    else:
        check_resumable(grid, out)
    write_grid_file(grid, out)
    runs = grid.runs()
    pending = [r for r in runs if not r.is_done(out)]
    workers = min(args.workers or max(1, usable_cores() // args.threads), max(1, len(pending)))
    cells = len(grid.cells())
    console.print(
        f"[bold]dkt compare[/]: {cells} cell{'s' if cells != 1 else ''} × {len(grid.seeds)} "
        f"seed{'s' if len(grid.seeds) != 1 else ''} = {len(runs)} runs, "
        f"{len(runs) - len(pending)} done, {len(pending)} to run on {workers} worker"
        f"{'s' if workers != 1 else ''} × {args.threads} thread{'s' if args.threads != 1 else ''}"
        f"; out {out}",
        soft_wrap=True,
    )
    jobs = [
        RunJob(r.config, str(r.folder(out)), args.device, track.log, args.plots) for r in pending
    ]
    try:
        failures = _run_jobs(jobs, grid, workers, args.threads, args.quiet, console)
    except KeyboardInterrupt:
        console.print(
            f"interrupted; finished runs are kept: resume with the same command and --out {out}",
            soft_wrap=True,
        )
        return 130
    numbers = {
        (r.cell.key, r.seed): run_numbers(json.loads((r.folder(out) / "metrics.json").read_text()))
        for r in runs
        if r.is_done(out)
    }
    # One MLflow run per run trained now, logged here, one at a time (the workers would
    # contend for one SQLite store), by default into the grid's OUT/mlflow.db.
    for r in pending:
        if r.is_done(out):
            tags = {"dkt.cell": r.cell.label, "dkt.seed": str(r.seed)}
            name = f"{r.cell.label}, seed {r.seed}"
            track.finish(r.folder(out), tags, store_folder=out, run_name=name)
    command = shlex.join(["dkt", "compare", *getattr(args, "command_line", sys.argv[2:])])
    rows = write_table(out, grid, numbers, command)
    if not args.quiet:
        _print_table(grid, rows)
    for folder, error in failures:
        console.print(f"[red]failed:[/] {folder}: {error}", soft_wrap=True)
        console.print(f"  traceback: {folder}.partial/error.txt", soft_wrap=True)
    console.print(f"table: [bold]{out / 'compare.md'}[/]", soft_wrap=True)
    if failures:
        console.print(f"{len(failures)} run(s) failed; rerun the same command to retry them")
        return 1
    return 0


def _run_jobs(
    jobs: list[RunJob], grid: Grid, workers: int, threads: int, quiet: bool, console: Console
) -> list[tuple[str, str]]:
    """Run the jobs in a pool of spawned workers (torch does not survive fork); returns
    (folder, error) of the runs that failed."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if not jobs:
        return []
    seeds_left: dict[str, int] = {}
    for job in jobs:
        cell = Path(job.folder).parent.name
        seeds_left[cell] = seeds_left.get(cell, 0) + 1
    cells_total = len(grid.cells())
    cells_done = cells_total - len(seeds_left)
    total_runs = len(grid.cells()) * len(grid.seeds)
    progress = Progress(
        TextColumn("[bold]runs"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("cells {task.fields[cells]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
        console=console,
        disable=quiet,
    )
    task = progress.add_task(
        "",
        total=total_runs,
        completed=total_runs - len(jobs),
        cells=f"{cells_done}/{cells_total}",
        note="",
    )
    failures: list[tuple[str, str]] = []
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(workers, initializer=init_worker, initargs=(threads,))
    try:
        with progress:
            for outcome in pool.imap_unordered(run_one, jobs):
                cell = Path(outcome.folder).parent.name
                seed = Path(outcome.folder).name
                if outcome.error is None:
                    seeds_left[cell] -= 1
                    cells_done += seeds_left[cell] == 0
                    note = f"{cell} {seed} {outcome.seconds:.0f} s"
                else:
                    failures.append((outcome.folder, outcome.error))
                    note = f"[red]{cell} {seed} failed"
                progress.update(task, advance=1, cells=f"{cells_done}/{cells_total}", note=note)
        pool.close()
    finally:
        pool.terminate()
        pool.join()
    return failures


def _print_table(grid: Grid, rows: list[CellRow]) -> None:
    from rich.console import Console
    from rich.table import Table

    from dkt.common.evaluation.compare_table import METRICS, format_stat
    from dkt.common.run.grid import format_value

    title = "dkt compare: mean ± std over seeds (accuracies in %)"
    if grid.baseline:
        title += f"; Δ: paired difference against {grid.baseline_label}"
    table = Table(title=title, title_justify="left")
    for head in grid.varied or ["cell"]:
        table.add_column(head)
    table.add_column("seeds", justify="right")
    for m in METRICS:
        table.add_column(m.label, justify="right")
    for r in rows:
        cells = [format_value(v) for _, v in r.cell.values] if grid.varied else ["base"]
        values = []
        for m in METRICS:
            text = format_stat(r.stats[m.name], m.unit)
            if r.diffs and not r.is_baseline and r.diffs[m.name].mean is not None:
                text += f"\nΔ {format_stat(r.diffs[m.name], m.unit, signed=True)}"
            values.append(text)
        table.add_row(*cells, str(len(r.seeds_done)), *values)
    Console().print(table)
