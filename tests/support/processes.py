"""Starting, watching and stopping the real processes that integration tests run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def dkt_command(*args: str) -> list[str]:
    """The `dkt` command line of this interpreter (`python -m dkt ARGS`)."""
    return [sys.executable, "-m", "dkt", *args]


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`cmd` in a session (and process group) of its own, as `docker stop` finds it: only
    it gets a signal sent to it, not its children; stdout and stderr into `log`."""
    with open(log, "wb") as fh:
        return subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            start_new_session=True,
        )  # fmt: skip


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for_line(log: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    """Until `text` appears in `log`; fails with the log if `proc` ends or time runs out."""
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} in {log}:\n{log.read_text(errors='replace')}")
        time.sleep(0.2)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Until `predicate()` holds; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def environment_of(pid: int) -> dict[str, str]:
    """The environment process `pid` was started with (/proc/PID/environ)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def command_of(pid: int) -> str:
    """The command line of process `pid`, its arguments joined by spaces."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
