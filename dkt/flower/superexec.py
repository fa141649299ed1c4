"""Flower's SuperExec, with one change: a task's token reaches its ServerApp process in a
file only this user can read, never on its command line.

Flower 1.42's subprocess executor starts `flwr-serverapp --token TOKEN ...`, so any user
of the server host reads the task token in `ps` and, with it, can act as the run's
ServerApp on the Runtime API. `flwr-serverapp` also takes `--token-file`; this module
runs Flower's own SuperExec (`flower-superexec`, same arguments) with an executor that
writes the token to an owner-only file in an owner-only folder, passes `--token-file`,
and deletes the file when the ServerApp exits.

    python -m dkt.flower.superexec --runtime-api-address 127.0.0.1:PORT ...
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any


def token_file_executor(folder: Path) -> Any:
    """Flower's SubprocessExecutor, launching with `--token-file` in `folder`."""
    from flwr.supercore.constant import TASK_TYPE_TO_APPIO_API_ADDRESS_ARG, TASK_TYPE_TO_COMMAND
    from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
    from flwr.supercore.superexec.executor.types import LaunchResult

    class TokenFileExecutor(SubprocessExecutor):  # type: ignore[misc]
        def launch(self, spec: Any) -> Any:
            fd, name = tempfile.mkstemp(prefix=f"task-{spec.task_id}-", dir=folder)
            with os.fdopen(fd, "w") as fh:  # mkstemp: 0600
                fh.write(spec.token)
            args = [
                TASK_TYPE_TO_COMMAND[spec.task_type],
                TASK_TYPE_TO_APPIO_API_ADDRESS_ARG[spec.task_type],
                spec.runtime_api_address,
                "--token-file",
                name,
            ]
            if spec.insecure:
                args.append("--insecure")
            elif spec.root_certificates_path is not None:
                args += ["--root-certificates", spec.root_certificates_path]
            if spec.parent_pid is not None:
                args += ["--parent-pid", str(spec.parent_pid)]
            if spec.runtime_dependency_install:
                args.append("--allow-runtime-dependency-installation")
            quiet = subprocess.DEVNULL if spec.suppress_output else None
            try:
                proc = subprocess.Popen(args, stdout=quiet, stderr=quiet)
            except OSError:
                os.unlink(name)
                raise
            threading.Thread(target=_remove_after, args=(proc, name), daemon=True).start()
            return LaunchResult.accepted()

    return TokenFileExecutor()


def _remove_after(proc: subprocess.Popen, path: str) -> None:
    proc.wait()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def main(argv: list[str] | None = None) -> None:
    folder = Path(tempfile.mkdtemp(prefix="dkt-superexec-"))  # 0700
    import flwr.supercore.superexec.run_superexec as run_superexec
    from flwr.supercore.cli.flower_superexec import flower_superexec

    run_superexec.get_executor = lambda *_a, **_k: token_file_executor(folder)  # type: ignore[attr-defined]
    sys.argv = ["flower-superexec", *(sys.argv[1:] if argv is None else argv)]
    flower_superexec()


if __name__ == "__main__":
    main()
