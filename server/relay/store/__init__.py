"""The relay's store, laid out like Flower's `superlink/linkstate/`: the interface
(base.py), what it holds (records.py), the SQLite store with content-addressed payload
files (sqlite.py, schema.py, payload_files.py), an in-memory store behind the same
interface (memory.py) and `open_store`, which picks one."""

from __future__ import annotations

from pathlib import Path

from dkt.server.relay.store.base import LAST_SEEN_INTERVAL_S, RelayStore
from dkt.server.relay.store.memory import InMemoryRelayStore
from dkt.server.relay.store.records import (
    MAX_EXPERIENCES,
    RUN_CREATORS,
    RUN_STATES,
    AgentRecord,
    CorruptPayloadError,
    EvalSetExistsError,
    EvalSetRecord,
    PredictionRecord,
    PredictionsExistError,
    RunExistsError,
    RunNotFoundError,
    RunRecord,
    StoreError,
    StoreTotals,
)
from dkt.server.relay.store.sqlite import SqliteRelayStore

__all__ = [
    "LAST_SEEN_INTERVAL_S",
    "MAX_EXPERIENCES",
    "RUN_CREATORS",
    "RUN_STATES",
    "AgentRecord",
    "CorruptPayloadError",
    "EvalSetExistsError",
    "EvalSetRecord",
    "InMemoryRelayStore",
    "PredictionRecord",
    "PredictionsExistError",
    "RelayStore",
    "RunExistsError",
    "RunNotFoundError",
    "RunRecord",
    "SqliteRelayStore",
    "StoreError",
    "StoreTotals",
    "open_store",
]


def open_store(data_dir: str | Path | None) -> RelayStore:
    """The store of a relay: durable in `data_dir` (SqliteRelayStore, raises StoreError if
    it cannot be opened there), or in this process's memory if `data_dir` is None."""
    if data_dir is None:
        return InMemoryRelayStore()
    return SqliteRelayStore(data_dir)
