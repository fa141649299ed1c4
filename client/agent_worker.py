"""The DKT agent as one long-lived process: a Flower SuperNode (started here as a child,
with `--isolation process`) plus this process, which takes the SuperNode's tasks and
runs the DKT ClientApp for each of them in-process.

Flower's default (`--isolation subprocess`) starts a fresh `flwr-clientapp` process for
every message: Python, Flower, torch and dkt are imported again for each experience of
each agent, which cost ~22 of the ~26 s a message took on a 2-core host. Here they are
imported once. For each task this process does what Flower's SuperExec and
`flwr-clientapp` do between them, through the same Runtime API and Flower's own
functions: acquire the task (`AcquireTask`), pull its message, context and run, call
the ClientApp, push the reply and the task's outcome, and send task heartbeats while it
runs. The agent's state still lives on its disk (checkpoints per experience), so a
message gives the same result in this process as in a fresh one, and a kill -9 of the
whole agent loses no more than it did.

Only DKT's own app runs here: a task of any other Flower app is answered with an error
reply. `dkt agent --fresh-process` (and `dkt run --fresh-process`) start a plain
SuperNode instead, Flower's per-message process isolation.

    python -m dkt.client.agent_worker -- flower-supernode ... --isolation process
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from logging import ERROR, INFO
from typing import Any

STOP_GRACE = 15.0  # seconds the SuperNode gets to stop after SIGTERM


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dkt.client.agent_worker",
        description="Start a Flower SuperNode (the command after --, which must use "
        "--isolation process) and run the DKT ClientApp for its messages in this process.",
    )
    parser.add_argument("--runtime-api-address", required=True, metavar="HOST:PORT",
                        help="the SuperNode's Runtime API (its --host and --port)")  # fmt: skip
    parser.add_argument(
        "--superexec-secret-file",
        metavar="FILE",
        help="write a new random SuperExec secret here (owner-only) before starting the "
        "SuperNode, whose command must name the same file in --superexec-auth-secret-file: "
        "then only this process can take the SuperNode's tasks",
    )
    parser.add_argument(
        "--fresh-process",
        action="store_true",
        help="run each task in a fresh process of the installed dkt (Python, torch and the "
        "data loaded again for every message) instead of in this one",
    )
    parser.add_argument(
        "--run-task",
        action="store_true",
        help="(internal) run one task, whose token comes on standard input, and exit",
    )
    parser.add_argument("supernode", nargs=argparse.REMAINDER, help="-- flower-supernode ...")
    args = parser.parse_args(argv)
    if args.run_task:
        return run_one_task(args.runtime_api_address, sys.stdin.read().strip())
    command = args.supernode[1:] if args.supernode[:1] == ["--"] else args.supernode
    if not command:
        parser.error("give the SuperNode command after --")
    secret = None
    if args.superexec_secret_file:
        from pathlib import Path

        from dkt.flower.processes import write_secret

        secret = write_secret(Path(args.superexec_secret_file)).read_bytes()
    return Worker(args.runtime_api_address, command, secret, args.fresh_process).run()


def run_one_task(address: str, token: str) -> int:
    """`--run-task`: the ClientApp for one task of the SuperNode at `address`, in this
    fresh process (the worker of `--fresh-process` starts one per task)."""
    from dkt.client.agent_app import TASK_MARKS, app
    from dkt.flower.runtime import TaskAbandoned, TaskRunner

    abandoned, in_task = threading.Event(), threading.Event()

    def on_sigint(_signum: int, _frame: Any) -> None:
        if abandoned.is_set() and in_task.is_set():
            raise TaskAbandoned
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    TaskRunner(address, in_task, abandoned, TASK_MARKS).run_task(token, app)
    return 0


class Worker:
    """The SuperNode child and the task loop. Exits when the SuperNode does (with its
    exit code), and stops the SuperNode when told to stop (SIGTERM, SIGINT)."""

    def __init__(
        self,
        runtime_api_address: str,
        supernode: list[str],
        secret: bytes | None = None,
        fresh_process: bool = False,
    ) -> None:
        self.address = runtime_api_address
        self.secret = secret
        self.fresh_process = fresh_process  # a process of its own for each task
        self.command = supernode
        self.supernode: subprocess.Popen | None = None
        self.stopping = threading.Event()
        self.abandoned = threading.Event()
        self.in_task = threading.Event()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        try:
            # The SuperNode first: it connects to the SuperLink while torch imports here.
            from dkt.flower.processes import dying_with_parent

            self.supernode = subprocess.Popen(dying_with_parent(self.command))
            threading.Thread(target=self._watch_supernode, daemon=True).start()
            from dkt.flower.runs import CLIENTAPP

            if self.fresh_process:
                app = None  # imported by each task's own process
                _log(INFO, f"DKT agent worker ready (pid {os.getpid()}): ClientApp {CLIENTAPP} "
                     "in a fresh process per message")  # fmt: skip
                marks: dict[str, float] = {}
            else:
                app = _import_app_politely()  # torch, dkt: once for every message
                _log(INFO, f"DKT agent worker ready (pid {os.getpid()}): ClientApp {CLIENTAPP}")
                from dkt.client.agent_app import TASK_MARKS

                marks = TASK_MARKS
            from dkt.flower.runtime import TaskRunner

            runner = TaskRunner(self.address, self.in_task, self.abandoned, marks, self.secret)
            runner.serve(app)
        except _Stop:
            pass
        finally:
            self.stopping.set()
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            stop_start = time.monotonic()
            code = self._stop_supernode()
            _log(INFO, f"SuperNode stopped in {time.monotonic() - stop_start:.1f} s")
        return code

    # -- the SuperNode ---------------------------------------------------------------

    def _watch_supernode(self) -> None:
        assert self.supernode is not None
        code = self.supernode.wait()
        if not self.stopping.is_set():
            _log(ERROR, f"the SuperNode exited (code {code}); the agent worker stops too")
            os._exit(_shell_code(code))

    def _stop_supernode(self) -> int:
        from dkt.flower.processes import stop_process

        if self.supernode is None:
            return 0
        stop_process(self.supernode, grace=STOP_GRACE)
        return _shell_code(self.supernode.returncode)

    def _on_stop_signal(self, signum: int, _frame: Any) -> None:
        if self.stopping.is_set():
            return
        if signum == signal.SIGINT and self.abandoned.is_set():
            # Sent by the heartbeat thread: drop the task in hand and go on (a Ctrl-C
            # in the same instant is lost; the next one stops the worker).
            self.abandoned.clear()
            if self.in_task.is_set():
                from dkt.flower.runtime import TaskAbandoned

                raise TaskAbandoned
            return
        self.stopping.set()
        raise _Stop


def _import_app_politely() -> Any:
    """Import the ClientApp (torch and dkt: seconds of CPU) in a thread at the lowest
    CPU priority. When a whole cluster starts on one host, the conductor's process
    imports torch at the same time and is on the critical path; the agents only need to
    be ready for the first message. Only that thread is niced (Linux priorities are per
    thread); the training threads start later from the main thread at normal priority."""
    found: dict[str, Any] = {}

    def load() -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        try:
            from dkt.client.agent_app import app

            found["app"] = app
        except BaseException as err:  # re-raised in the main thread
            found["error"] = err

    loader = threading.Thread(target=load, name="import-clientapp", daemon=True)
    loader.start()
    while loader.is_alive():
        loader.join(0.2)  # in slices, so SIGTERM is handled while importing
    if "error" in found:
        raise found["error"]
    return found["app"]


class _Stop(BaseException):
    """SIGTERM or SIGINT: stop the SuperNode and leave."""


def _shell_code(code: int | None) -> int:
    if code is None:
        return 1
    return 128 - code if code < 0 else code


def _log(level: int, text: str, exc_info: BaseException | None = None) -> None:
    from dkt.flower.runtime import log

    log(level, text, exc_info)


if __name__ == "__main__":
    code = main()
    # Nothing is left to clean up (the agent's state is on disk, every write of it
    # atomic): skip the interpreter's teardown of torch, seconds on a loaded host.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
