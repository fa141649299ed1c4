"""The in-memory relay store: the RelayStore contract (base.py) in dicts, gone with the
process. For tests, simulations and relays that need no durability; every call holds one
lock, so many gRPC worker threads may call it at once.

Payload bytes are copied when stored (a caller's memoryview may be reused) and kept by
their SHA-256, like the SQLite store's content-addressed files: a probe set and a
prediction set with the same bytes share them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

from dkt.server.relay.store.base import LAST_SEEN_INTERVAL_S, RelayStore
from dkt.server.relay.store.records import (
    AgentRecord,
    CorruptPayloadError,
    EvalSetRecord,
    PredictionRecord,
    RunRecord,
    StoreTotals,
    check_run_creator,
    check_run_state,
    eval_set_exists,
    history_metrics,
    predictions_exist,
    run_exists,
    run_not_found,
    store_closed,
)


class InMemoryRelayStore(RelayStore):
    """Runs, prediction sets and agent progress of one relay, in this process's memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._runs: dict[str, RunRecord] = {}
        self._eval_sets: dict[str, EvalSetRecord] = {}
        self._predictions: dict[tuple[str, int, int], PredictionRecord] = {}
        # run id -> agent id -> latest progress report (last_seen left at 0: see below).
        self._progress: dict[str, dict[int, AgentRecord]] = {}
        self._last_seen: dict[tuple[str, int], float] = {}
        self._payloads: dict[str, bytes] = {}

    def _check_open(self) -> None:
        """Raise StoreError once closed (called with the lock held)."""
        if self._closed:
            raise store_closed()

    def _read(self, sha256: str, expected_bytes: int, what: str) -> bytes:
        with self._lock:
            self._check_open()
            data = self._payloads.get(sha256)
        if data is None or len(data) != expected_bytes:
            # Only for a record that this store did not return.
            raise CorruptPayloadError(what, sha256, None, "is not held by this relay")
        return data

    # -- runs ----------------------------------------------------------------------

    def create_run(
        self, run: RunRecord, probe_payload: bytes | bytearray | memoryview
    ) -> tuple[RunRecord, bool]:
        check_run_creator(run.created_by)
        with self._lock:
            self._check_open()
            existing = self._runs.get(run.run_id)
            if existing is not None:
                if existing.same_definition(run):
                    return existing, False
                raise run_exists(run.run_id)
            self._payloads.setdefault(run.probe_sha256, bytes(probe_payload))
            stored = replace(
                run,
                probe_shape=tuple(run.probe_shape),
                state="created",
                current_experience=0,
                created_at=time.time(),
            )
            self._runs[run.run_id] = stored
            return stored, True

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._lock:
            self._check_open()
            return self._runs.get(run_id)

    def list_runs(self) -> list[RunRecord]:
        with self._lock:
            self._check_open()
            runs = list(self._runs.values())
        return sorted(runs, key=lambda r: (r.created_at, r.run_id))

    def read_probe(self, run_id: str) -> tuple[RunRecord, bytes]:
        run = self.require_run(run_id)
        return run, self._read(run.probe_sha256, run.probe_bytes, f"probe set of run {run_id!r}")

    def set_run_state(
        self, run_id: str, state: str, current_experience: int | None = None
    ) -> RunRecord:
        check_run_state(state)
        with self._lock:
            self._check_open()
            run = self._runs.get(run_id)
            if run is None:
                raise run_not_found(run_id)
            if current_experience is None:
                current_experience = run.current_experience
            stored = replace(run, state=state, current_experience=current_experience)
            self._runs[run_id] = stored
            return stored

    # -- eval sets -----------------------------------------------------------------

    def put_eval_set(
        self, record: EvalSetRecord, payload: bytes | bytearray | memoryview
    ) -> tuple[EvalSetRecord, bool]:
        with self._lock:
            self._check_open()
            if record.run_id not in self._runs:
                raise run_not_found(record.run_id)
            existing = self._eval_sets.get(record.run_id)
            if existing is not None:
                if existing.same_content(record):
                    return existing, True
                raise eval_set_exists(existing, record)
            self._payloads.setdefault(record.sha256, bytes(payload))
            stored = replace(record, shape=tuple(record.shape), stored_at=time.time())
            self._eval_sets[record.run_id] = stored
            return stored, False

    def get_eval_set(self, run_id: str) -> EvalSetRecord | None:
        with self._lock:
            self._check_open()
            return self._eval_sets.get(run_id)

    def eval_sets(self) -> dict[str, EvalSetRecord]:
        with self._lock:
            self._check_open()
            return dict(self._eval_sets)

    def read_eval_set(self, record: EvalSetRecord) -> bytes:
        return self._read(record.sha256, record.payload_bytes, f"eval set of run {record.run_id!r}")

    # -- predictions ---------------------------------------------------------------

    def put_predictions(
        self, record: PredictionRecord, payload: bytes | bytearray | memoryview
    ) -> tuple[PredictionRecord, bool]:
        key = (record.run_id, record.agent_id, record.experience)
        with self._lock:
            self._check_open()
            existing = self._predictions.get(key)
            if existing is not None:
                if existing.same_content(record):
                    return existing, True
                raise predictions_exist(existing, record)
            run = self._runs.get(record.run_id)
            if run is None:
                raise run_not_found(record.run_id)
            self._payloads.setdefault(record.sha256, bytes(payload))
            stored = replace(
                record,
                classes_seen=tuple(record.classes_seen),
                shape=(record.shape[0], record.shape[1]),
                published_at=time.time(),
            )
            self._predictions[key] = stored
            # The first publish starts a created run; the current experience follows
            # the newest one published unless the conductor says more.
            self._runs[record.run_id] = replace(
                run,
                state="running" if run.state == "created" else run.state,
                current_experience=max(run.current_experience, record.experience),
            )
            return stored, False

    def get_predictions(
        self, run_id: str, agent_id: int, experience: int
    ) -> PredictionRecord | None:
        with self._lock:
            self._check_open()
            return self._predictions.get((run_id, agent_id, experience))

    def latest_predictions(
        self, run_id: str, agent_id: int, max_experience: int | None = None
    ) -> PredictionRecord | None:
        candidates = [
            p
            for p in self.list_predictions(run_id, agent_id)
            if max_experience is None or p.experience <= max_experience
        ]
        return candidates[-1] if candidates else None

    def list_predictions(self, run_id: str, agent_id: int | None = None) -> list[PredictionRecord]:
        with self._lock:
            self._check_open()
            records = [
                p
                for (r, a, _), p in self._predictions.items()
                if r == run_id and (agent_id is None or a == agent_id)
            ]
        return sorted(records, key=lambda p: (p.agent_id, p.experience))

    def read_predictions(self, record: PredictionRecord) -> bytes:
        return self._read(record.sha256, record.payload_bytes, f"prediction set {record.id}")

    # -- agents --------------------------------------------------------------------

    def touch_agent(self, run_id: str, agent_id: int, at: float | None = None) -> bool:
        at = time.time() if at is None else at
        key = (run_id, agent_id)
        with self._lock:
            self._check_open()
            previous = self._last_seen.get(key, 0.0)
            self._last_seen[key] = max(previous, at)
        return at - previous >= LAST_SEEN_INTERVAL_S

    def record_progress(
        self,
        run_id: str,
        agent_id: int,
        experience: int,
        state: str,
        metrics: dict[str, float],
        reason: str = "",
    ) -> AgentRecord:
        with self._lock:
            self._check_open()
            if run_id not in self._runs:
                raise run_not_found(run_id)
            previous = self._progress.get(run_id, {}).get(agent_id)
            history = dict(previous.history) if previous is not None else {}
            curve = history_metrics(metrics)
            if curve:
                history[experience] = curve
            self._progress.setdefault(run_id, {})[agent_id] = AgentRecord(
                run_id,
                agent_id,
                state=state,
                experience=experience,
                metrics=dict(metrics),
                reported_at=time.time(),
                reason=reason,
                history=history,
            )
        return next(a for a in self.agents(run_id) if a.agent_id == agent_id)

    def agents(self, run_id: str) -> list[AgentRecord]:
        with self._lock:
            self._check_open()
            reported = dict(self._progress.get(run_id, {}))
            published = {a for (r, a, _) in self._predictions if r == run_id}
            seen = {a: t for (r, a), t in self._last_seen.items() if r == run_id}
        records = []
        for agent_id in sorted(set(reported) | published | set(seen)):
            last_seen = seen.get(agent_id, 0.0)
            report = reported.get(agent_id)
            if report is None:
                records.append(AgentRecord(run_id, agent_id, last_seen=last_seen))
            else:
                # A copy of the metrics: the caller's to change.
                records.append(
                    replace(
                        report,
                        last_seen=last_seen,
                        metrics=dict(report.metrics),
                        history={e: dict(m) for e, m in sorted(report.history.items())},
                    )
                )
        return records

    # -- the store -----------------------------------------------------------------

    def totals(self) -> StoreTotals:
        with self._lock:
            self._check_open()
            return StoreTotals(
                runs=len(self._runs),
                prediction_sets=len(self._predictions),
                payload_bytes=sum(p.payload_bytes for p in self._predictions.values()),
            )

    def close(self) -> None:
        with self._lock:
            self._closed = True
