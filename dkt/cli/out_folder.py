"""The `--out` folder of `dkt simulate`, `dkt run` and `dkt compare`: checked before
anything is written, so results of two runs never mix in one folder."""

from __future__ import annotations

import shutil
from pathlib import Path

# What DKT writes into a results folder (simulate, run) or a compare folder. Only these
# are deleted by --overwrite; a folder holding anything else is refused.
DKT_OUTPUTS = frozenset(
    {
        # simulate and run
        "config.toml",
        "metrics.json",
        "summary.md",
        "matrices",
        "plots",
        "checkpoints",
        "cluster",
        # experiment tracking
        "tensorboard",
        "mlflow",
        "mlruns",
        "mlflow.db",
        "mlartifacts",
        # compare
        "grid.toml",
        "runs",
        "compare.md",
        "compare.csv",
        "compare-runs.csv",
        "compare.png",
    }
)


def check_out(out: Path, *, resume: bool = False, overwrite: bool = False) -> None:
    """Raise ValueError (one line that says what to do) unless `out` may take this run:
    missing or empty; with `resume`, existing; with `overwrite`, holding only DKT's
    outputs (which `clear_out` then deletes). Writes nothing."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: give one")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; give a folder path")
    if resume:
        if not out.is_dir():
            raise ValueError(
                f"--resume: {out} does not exist, so there is nothing to resume; "
                "drop --resume to start a fresh run there"
            )
        return
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not entries:
        return
    if not overwrite:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise ValueError(
            f"--out {out} is not empty (it holds {shown}); give --resume to continue the run "
            "there, --overwrite to replace its DKT results, or a new --out"
        )
    foreign = [name for name in entries if name not in DKT_OUTPUTS]
    if foreign:
        shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise ValueError(
            f"--overwrite: {out} holds files DKT did not write ({shown}); refusing to delete "
            "anything there: move them away or give a new --out"
        )


def clear_out(out: Path) -> list[str]:
    """Delete DKT's outputs in `out` (after `check_out(..., overwrite=True)` passed);
    returns the names deleted."""
    removed = []
    for path in sorted(out.iterdir()) if out.is_dir() else []:
        if path.name not in DKT_OUTPUTS:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path.name)
    return removed


def add_out_flags(parser, *, resume_help: str | None = None) -> None:
    """`--overwrite` (and `--resume` where given help for it)."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the DKT results already in --out (only what DKT wrote there is deleted; "
        "a folder holding other files is refused). Without it (or --resume) a non-empty "
        "--out is refused",
    )
    if resume_help is not None:
        parser.add_argument("--resume", action="store_true", help=resume_help)


def add_plots_flag(parser) -> None:
    """`--plots`: which plots the results folder gets (the data files are always whole)."""
    from dkt.common.choices import ALL_PLOTS_UP_TO, PLOT_SETS

    parser.add_argument(
        "--plots",
        choices=PLOT_SETS,
        default="auto",
        help="plots in the results folder: all (a heatmap per agent, accuracy.png, "
        "transfer.png), summary (accuracy.png and transfer.png), none; auto: all up to "
        f"{ALL_PLOTS_UP_TO} agents, summary beyond (default). metrics.json, matrices/ and "
        "summary.md are the same whichever; draw the rest later with "
        "dkt.load_results(DIR).write_plots(DIR)",
    )
