"""Signals for the long-running commands: SIGTERM (`docker stop`) and SIGINT stop a
command as Ctrl-C does, and its exit code says which signal it was."""

from __future__ import annotations

import signal
import subprocess
import threading


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; `signum` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


def interrupt_on_signals() -> None:
    """Ctrl-C and SIGTERM (`docker stop`, `kill`) both raise `Interrupted`."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def exit_code(err: KeyboardInterrupt) -> int:
    """128 + the signal's number, as a shell reports it: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + getattr(err, "signum", signal.SIGINT)


def ignore_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def wait_for_signal(*watched: subprocess.Popen) -> bool:
    """Block until SIGINT or SIGTERM (True) or until one of `watched` exits (False)."""
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(1.0):
        if any(proc.poll() is not None for proc in watched):
            return False
    return True
