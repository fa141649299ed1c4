"""Where a result came from: the versions, the code's git commit, the command line, the
host and the device, recorded in metrics.json and config.toml."""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import tomli_w

PACKAGES = ("torch", "flwr", "numpy")


def package_versions() -> dict[str, str | None]:
    """dkt's and the key packages' installed versions (None where not installed); read
    from the installed metadata, so nothing is imported."""
    from dkt import __version__

    versions: dict[str, str | None] = {"dkt": __version__}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(where: Path | None = None) -> str | None:
    """The commit of the checkout DKT's code runs from (with "-dirty" where it has
    uncommitted changes), or None outside a checkout or without git: best effort."""
    where = where or Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    return commit + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def provenance(*, command: list[str] | None = None, device: str | None = None) -> dict[str, Any]:
    """The provenance record: `command` defaults to this process's command line."""
    argv = command if command is not None else ["dkt", *sys.argv[1:]]
    return {
        "versions": package_versions(),
        "git_commit": git_commit(),
        "command": shlex.join(argv),
        "host": socket.gethostname(),
        "device": device,
        "python": sys.version.split()[0],
    }


def provenance_toml(record: dict[str, Any]) -> str:
    """The record as a [provenance] table to append to config.toml (TOML has no null:
    missing values are left out). `ExperimentConfig.from_toml` reads only [experiment]
    and [agents], so the file still loads as a config."""
    table = {k: v for k, v in record.items() if v is not None and k != "versions"}
    table["versions"] = {k: v for k, v in record["versions"].items() if v is not None}
    return "\n" + tomli_w.dumps({"provenance": table})
