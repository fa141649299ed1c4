"""dkt/flower/superexec.py: Flower's SuperExec, handing each ServerApp its task token in
an owner-only file that is gone once the ServerApp exits, never on a command line."""

from __future__ import annotations

import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor.types import ExecutionSpec

from dkt.flower import superexec

TOKEN = "task-token-that-must-not-show-in-ps"


def test_the_serverapp_gets_a_token_file_not_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[list[str]] = []
    seen: dict[str, Any] = {}
    real_popen = subprocess.Popen

    def popen(args: list[str], **kwargs: Any) -> subprocess.Popen:
        started.append(list(args))
        path = Path(args[args.index("--token-file") + 1])
        seen["content"] = path.read_text()
        seen["mode"] = stat.S_IMODE(path.stat().st_mode)
        seen["path"] = path
        return real_popen(["sleep", "0.3"])  # stands in for flwr-serverapp

    monkeypatch.setattr(superexec.subprocess, "Popen", popen)
    executor = superexec.token_file_executor(tmp_path)
    spec = ExecutionSpec(
        task_type=TaskType.SERVER_APP, runtime_api_address="127.0.0.1:9091", token=TOKEN,
        insecure=True, root_certificates_path=None, runtime_dependency_install=False,
        parent_pid=None, suppress_output=False, task_id=7,
    )  # fmt: skip
    executor.launch(spec)
    (args,) = started
    assert args[0] == "flwr-serverapp"
    assert TOKEN not in " ".join(args)
    assert "--token" not in args and "--insecure" in args
    assert seen["content"] == TOKEN and seen["mode"] == 0o600
    assert seen["path"].parent == tmp_path
    deadline = time.monotonic() + 10
    while seen["path"].exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not seen["path"].exists()  # removed once the ServerApp exited
