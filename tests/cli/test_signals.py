"""Specification of the long-running commands' signal handling (dkt/cli/signals.py):
SIGTERM and SIGINT raise `Interrupted`, a KeyboardInterrupt that says which signal it was;
the exit code is 128 + the signal's number as a shell reports it (143 for SIGTERM, 130 for
Ctrl-C); `ignore_signals` ignores both; `wait_for_signal` returns True on a signal and
False when the watched process exits. Each test restores the handlers it changed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from dkt.cli.signals import (
    Interrupted,
    exit_code,
    ignore_signals,
    interrupt_on_signals,
    wait_for_signal,
)


@pytest.fixture(autouse=True)
def restore_handlers() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def send_to_self(sig: signal.Signals) -> None:
    """Signal this process and give the handler the next bytecode to run at."""
    os.kill(os.getpid(), sig)
    time.sleep(0.2)


# --- Interrupted and exit_code --------------------------------------------------------------


def test_interrupted_is_a_keyboard_interrupt_naming_its_signal() -> None:
    err = Interrupted(signal.SIGTERM)

    assert isinstance(err, KeyboardInterrupt)
    assert err.signum == signal.SIGTERM
    assert str(err) == "SIGTERM"


def test_exit_code_of_sigterm_is_143() -> None:
    assert exit_code(Interrupted(signal.SIGTERM)) == 143


def test_exit_code_of_sigint_and_of_a_plain_keyboard_interrupt_is_130() -> None:
    assert exit_code(Interrupted(signal.SIGINT)) == 130
    assert exit_code(KeyboardInterrupt()) == 130


# --- interrupt_on_signals -------------------------------------------------------------------


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_raises_interrupted_in_the_main_thread(sig: signal.Signals, code: int) -> None:
    interrupt_on_signals()

    with pytest.raises(Interrupted) as caught:
        send_to_self(sig)

    assert caught.value.signum == sig
    assert exit_code(caught.value) == code


# --- ignore_signals -------------------------------------------------------------------------


def test_ignore_signals_lets_sigterm_and_sigint_pass_without_effect() -> None:
    ignore_signals()

    send_to_self(signal.SIGTERM)
    send_to_self(signal.SIGINT)

    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


# --- wait_for_signal ------------------------------------------------------------------------


def test_wait_for_signal_returns_true_when_sigterm_arrives() -> None:
    watched = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        timer.start()
        assert wait_for_signal(watched) is True
    finally:
        timer.cancel()
        watched.kill()
        watched.wait()


def test_wait_for_signal_returns_false_when_the_watched_process_exits() -> None:
    watched = subprocess.Popen([sys.executable, "-c", "pass"])

    assert wait_for_signal(watched) is False
    assert watched.returncode == 0
