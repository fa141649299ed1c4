"""Which streaming calls the relay takes on, so that no participant can stall it.

A streaming call holds one of the server's worker threads for as long as it lasts. An
agent credential that opened 64 publish streams and never sent a chunk once took every
worker, and the admin's `GetStatus` timed out behind them. Three rules stop that:

- **per credential:** an agent (or, with auth off, anyone) has at most
  `per_credential` streams open at once; one more is RESOURCE_EXHAUSTED. An honest agent
  has one at a time.
- **reserved capacity:** agents' streams together (watches included) take at most
  `agent_streams` workers (with 64 workers: 56), so the rest stay free for the admin
  (the conductor) and for unary calls such as `GetStatus`; a stream beyond that is
  UNAVAILABLE ("busy"), which clients retry with backoff (`RelayClient` does).
- **idle deadline:** a client stream that sends no chunk for `idle_seconds` is
  cancelled, and its worker freed.

The admin's calls are not limited: the admin is the operator's own conductor.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from dkt.server.relay.rejection import Rejection

T = TypeVar("T")


@dataclass(frozen=True)
class StreamLimits:
    """The admission rules' numbers (`dkt relay --streams-per-agent`, `--stream-idle-timeout`)."""

    per_credential: int = 4
    agent_streams: int = 56
    idle_seconds: float = 30.0


class StreamAdmission:
    """Counts the open streams of each credential and of all agents together."""

    def __init__(self, limits: StreamLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}
        self._total = 0

    def acquire(self, credential: str, own_limit: bool = True) -> None:
        """Take one stream slot of `credential` (e.g. "agent 3"); raises a Rejection when
        the credential's own limit (unless not `own_limit`: watches have a limit of their
        own) or the agents' share of the workers is reached. Give it back with `release`."""
        with self._lock:
            held = self._open.get(credential, 0)
            if own_limit and held >= self.limits.per_credential:
                raise Rejection(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{credential} already has {held} streams open, the most one credential "
                    "may have; finish or cancel one first",
                )
            if self._total >= self.limits.agent_streams:
                raise Rejection(
                    grpc.StatusCode.UNAVAILABLE,
                    f"the relay is busy ({self._total} agent streams open); retry shortly",
                )
            self._open[credential] = held + 1
            self._total += 1

    def release(self, credential: str) -> None:
        with self._lock:
            self._total -= 1
            left = self._open[credential] - 1
            if left:
                self._open[credential] = left
            else:
                del self._open[credential]


class IdleDeadline:
    """A request stream that cancels its call when no message arrives for `seconds`
    (the handler's next read then fails and its worker is freed)."""

    def __init__(self, requests: Iterator[T], context: grpc.ServicerContext, seconds: float):
        self._requests = requests
        self._context = context
        self._seconds = seconds
        self.expired = False

    def __iter__(self) -> IdleDeadline:
        return self

    def __next__(self) -> Any:
        timer = threading.Timer(self._seconds, self._expire)
        timer.daemon = True
        timer.start()
        try:
            return next(self._requests)
        except grpc.RpcError:
            if self.expired:
                raise Rejection(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no chunk arrived for {self._seconds:g} s; the stream was ended",
                ) from None
            raise
        finally:
            timer.cancel()

    def _expire(self) -> None:
        self.expired = True
        self._context.cancel()
