"""Fan-out of relay events to the `Watch` streams subscribed to them."""

from __future__ import annotations

import itertools
import queue
import threading
import time
from typing import Any

from dkt.proto.dkt.v1 import relay_pb2

# A watcher that falls this many events behind is dropped (its stream ends with
# RESOURCE_EXHAUSTED) rather than letting the relay buffer without bound.
MAX_PENDING_EVENTS = 10_000


class Subscription:
    """The events of one watcher, optionally of one run only."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.overflowed = False
        self._queue: queue.Queue[relay_pb2.Event] = queue.Queue(MAX_PENDING_EVENTS)

    def offer(self, event: relay_pb2.Event) -> None:
        if self.run_id and event.run_id != self.run_id:
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.overflowed = True

    def next(self, timeout: float) -> relay_pb2.Event | None:
        """The next event, or None if none came within `timeout` seconds."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None


class EventBus:
    """Numbers events and hands each to every subscription."""

    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()
        self._lock = threading.Lock()
        self._seq = itertools.count(1)

    def subscribe(self, run_id: str = "", limit: int | None = None) -> Subscription | None:
        """A new subscription, or None if `limit` subscriptions already exist."""
        sub = Subscription(run_id)
        with self._lock:
            if limit is not None and len(self._subscriptions) >= limit:
                return None
            self._subscriptions.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subscriptions.discard(sub)

    def emit(self, run_id: str, **kind: Any) -> relay_pb2.Event:
        """Build an event with one `kind` field (e.g. `published=...`) and deliver it."""
        with self._lock:
            event = relay_pb2.Event(seq=next(self._seq), time=time.time(), run_id=run_id, **kind)
            subscriptions = list(self._subscriptions)
        for sub in subscriptions:
            sub.offer(event)
        return event

    def subscribed_event(self, run_id: str) -> relay_pb2.Event:
        """The first event of a watch stream (not delivered to anyone else)."""
        return relay_pb2.Event(
            seq=0, time=time.time(), run_id=run_id, subscribed=relay_pb2.Subscribed()
        )
