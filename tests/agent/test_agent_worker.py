"""The agent's long-lived worker (client/agent_worker.py) as a real process: it lives and
dies with its SuperNode, and it runs only DKT's app. (Runs through it, with the same
numbers as `dkt simulate`, are in tests/integration/test_flower_run.py.)"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from dkt.flower.runs import write_app
from dkt.flower.runtime import check_app as _check_app


def start_worker(stand_in: str, tmp_path: Path) -> subprocess.Popen:
    """The worker with `stand_in` (Python code) in the SuperNode's place; the stand-in
    writes its pid to tmp_path/child.pid first."""
    code = f"import os, time, sys; open({str(tmp_path / 'child.pid')!r}, 'w').write(str(os.getpid())); {stand_in}"  # noqa: E501
    return subprocess.Popen(
        [sys.executable, "-m", "dkt.client.agent_worker", "--runtime-api-address",
         "127.0.0.1:9", "--", sys.executable, "-c", code],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def child_pid(tmp_path: Path, timeout: float = 60) -> int:
    path = tmp_path / "child.pid"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError("the stand-in SuperNode never started")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def test_the_worker_exits_with_its_supernodes_exit_code(tmp_path):
    worker = start_worker("time.sleep(1); sys.exit(3)", tmp_path)
    output, _ = worker.communicate(timeout=120)
    assert worker.returncode == 3
    assert "the SuperNode exited (code 3)" in output


def test_sigterm_stops_the_supernode_then_the_worker(tmp_path):
    worker = start_worker("time.sleep(300)", tmp_path)
    pid = child_pid(tmp_path)
    time.sleep(0.5)
    worker.send_signal(signal.SIGTERM)
    worker.communicate(timeout=60)
    assert worker.returncode == 128 + signal.SIGTERM  # the SuperNode's end, as a shell says
    assert wait_gone(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_supernode_does_not_outlive_a_worker_killed_with_sigkill(tmp_path):
    worker = start_worker("time.sleep(300)", tmp_path)
    pid = child_pid(tmp_path)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(30)
    assert wait_gone(pid), "the SuperNode outlived its worker"


def fab_of(app_folder: Path, **replace: str) -> bytes:
    """A FAB (a zip holding the app's pyproject.toml), with text replaced."""
    text = (app_folder / "pyproject.toml").read_text()
    for old, new in replace.items():
        text = text.replace(old, new)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as fab:
        fab.writestr("pyproject.toml", text)
    return buffer.getvalue()


def test_the_worker_runs_dkts_app_and_refuses_any_other(tmp_path):
    app = write_app(tmp_path / "app")
    _check_app("dkt/dkt-app", fab_of(app))  # DKT's own: accepted
    with pytest.raises(ValueError, match="runs only the DKT app.*--fresh-process"):
        _check_app("someone/other-app", fab_of(app))
    other = fab_of(app, **{"dkt.client.agent_app:app": "their.module:app"})
    with pytest.raises(ValueError, match="ClientApp their.module:app"):
        _check_app("dkt/dkt-app", other)
