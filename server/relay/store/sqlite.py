"""The relay's durable store: SQLite (WAL) for metadata, content-addressed payload files.

Layout of a data directory:

    relay.sqlite3            runs, prediction sets, eval sets, agent progress (WAL journal)
    payloads/ab/abcdef...    payload bytes, named by their SHA-256 (payload_files.py)
    tmp/                     payloads being written (emptied on start)

A payload is made durable (payload_files.py) before its metadata row is committed
(synchronous=FULL), so once a write method returns the data survives a crash of the
process or the machine. Clients check the SHA-256 of what they receive, too.

A crash between the rename and the commit leaves a payload file that no row refers to
(it was never acknowledged); opening the store removes such orphans and counts them
(`orphans_removed`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from dkt.server.relay.store.base import LAST_SEEN_INTERVAL_S, RelayStore
from dkt.server.relay.store.payload_files import PayloadFiles
from dkt.server.relay.store.records import (
    AgentRecord,
    EvalSetRecord,
    PredictionRecord,
    RunRecord,
    StoreError,
    StoreTotals,
    check_run_creator,
    check_run_state,
    eval_set_exists,
    history_metrics,
    predictions_exist,
    run_exists,
    store_closed,
)
from dkt.server.relay.store.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION

log = logging.getLogger("dkt.relay")

# Last-seen times are kept in memory and written through at most this often per
# agent: every authenticated call updates them, and a disk write per call would
# put an fsync on every fetch.
_LAST_SEEN_WRITE_INTERVAL_S = LAST_SEEN_INTERVAL_S


class SqliteRelayStore(RelayStore):
    """Runs, prediction sets and agent progress of one relay, in `data_dir` (SQLite
    metadata, content-addressed payload files); the contract is RelayStore's (base.py)."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.payloads = PayloadFiles(self.data_dir)
        self._db_path = self.data_dir / "relay.sqlite3"
        self._idle: list[sqlite3.Connection] = []
        self._open: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._run_lock = threading.Lock()
        # Striped by key so publishes of different (run, agent, experience) proceed in
        # parallel while two publishes of the same key are serialised.
        self._key_locks = [threading.Lock() for _ in range(64)]
        self._last_seen: dict[tuple[str, int], float] = {}
        self._last_seen_written: dict[tuple[str, int], float] = {}
        self._last_seen_lock = threading.Lock()
        self._closed = False
        # Payload files found without a row when the store was opened, and removed.
        self.orphans_removed = 0
        try:
            self._open_store()
        except (OSError, sqlite3.Error) as err:
            self.close()
            raise StoreError(
                f"cannot open the relay store in {self.data_dir}: {err}; "
                "pass a writable directory as --data-dir"
            ) from None
        except BaseException:
            self.close()
            raise

    def _open_store(self) -> None:
        self.payloads.open()
        with self._transaction() as db:
            existing = db.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'store_meta'"
            ).fetchone()
        if existing is None:
            with self._connection() as db:
                # executescript commits on its own, so the schema goes outside a transaction.
                db.executescript(SCHEMA)
            with self._transaction() as db:
                db.execute(
                    "INSERT OR IGNORE INTO store_meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
        self._migrate()
        self.orphans_removed = self._remove_orphans()

    def _remove_orphans(self) -> int:
        """Remove payload files that no row refers to (payload_files.remove_orphans)."""
        with self._connection() as db:
            referenced = {
                sha
                for (sha,) in db.execute(
                    "SELECT sha256 FROM predictions UNION SELECT probe_sha256 FROM runs "
                    "UNION SELECT sha256 FROM eval_sets"
                ).fetchall()
            }
        return self.payloads.remove_orphans(referenced)

    def _migrate(self) -> None:
        """Bring a store written by an older relay to SCHEMA_VERSION."""
        while True:
            with self._transaction() as db:
                (value,) = db.execute(
                    "SELECT value FROM store_meta WHERE key = 'schema_version'"
                ).fetchone()
                version = int(value)
                if version == SCHEMA_VERSION:
                    return
                if version not in MIGRATIONS:
                    raise StoreError(
                        f"{self._db_path} has schema version {version}, this relay reads "
                        f"{SCHEMA_VERSION}; use a matching relay version or a new data directory"
                    )
                MIGRATIONS[version](db)
                db.execute(
                    "UPDATE store_meta SET value = ? WHERE key = 'schema_version'",
                    (str(version + 1),),
                )

    # -- connections ---------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._db_path, isolation_level=None, check_same_thread=False)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk when it returns, which is what an ack promises.
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=30000")
        except BaseException:
            db.close()
            raise
        return db

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A connection for the duration of the block. Connections are pooled, not kept
        per thread: callers include short-lived threads (one per HTTP request), whose
        connections would otherwise stay open until the store closes."""
        with self._pool_lock:
            if self._closed:
                raise store_closed()
            db = self._idle.pop() if self._idle else None
        if db is None:
            db = self._connect()
            with self._pool_lock:
                self._open.append(db)
        try:
            yield db
        finally:
            with self._pool_lock:
                if self._closed:
                    self._open.remove(db)
                    db.close()
                else:
                    self._idle.append(db)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # Writers that find SQLite's write lock taken wait in its busy handler (sleeps of
        # up to 100 ms). Queueing them on a Python lock instead cut the tail of 32
        # threads' commits (benchmarks/store_commits.py) but, with 256 agents, kept more
        # publishes waiting with a stream slot held: the relay refused ~170 streams as
        # busy (UNAVAILABLE, retried) against 0-9, at the same throughput
        # (benchmarks/relay_scale.py --agents 256; docs/benchmarks.md). So no lock here.
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                # A failed COMMIT can leave the transaction open; never pool it so.
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def open_connections(self) -> int:
        """SQLite connections currently open (pooled or in use)."""
        with self._pool_lock:
            return len(self._open)

    def close(self) -> None:
        """Write pending last-seen times and close every idle connection (those in use
        close when their block ends)."""
        if self._closed:
            return
        self._flush_last_seen()
        with self._pool_lock:
            self._closed = True
            for db in self._idle:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
                self._open.remove(db)
            self._idle.clear()

    # -- payload files -------------------------------------------------------------

    def payload_path(self, sha256: str) -> Path:
        return self.payloads.path(sha256)

    def read_payload(self, sha256: str, expected_bytes: int, what: str = "payload") -> bytes:
        """The payload with this SHA-256, verified; raises CorruptPayloadError otherwise."""
        return self.payloads.read(sha256, expected_bytes, what)

    def _referenced(self, db: sqlite3.Connection, sha256: str) -> bool:
        row = db.execute(
            "SELECT 1 FROM predictions WHERE sha256 = ? UNION ALL "
            "SELECT 1 FROM runs WHERE probe_sha256 = ? UNION ALL "
            "SELECT 1 FROM eval_sets WHERE sha256 = ? LIMIT 1",
            (sha256, sha256, sha256),
        ).fetchone()
        return row is not None

    # -- runs ----------------------------------------------------------------------

    def create_run(
        self, run: RunRecord, probe_payload: bytes | bytearray | memoryview
    ) -> tuple[RunRecord, bool]:
        """Store a run and its probe set; returns (stored run, created).

        An identical run is returned as is; a different one under the same id raises
        RunExistsError.
        """
        check_run_creator(run.created_by)
        with self._run_lock:
            existing = self.get_run(run.run_id)
            if existing is not None:
                if existing.same_definition(run):
                    return existing, False
                raise run_exists(run.run_id)
            created_file = self.payloads.write(run.probe_sha256, probe_payload)
            now = time.time()
            try:
                with self._transaction() as db:
                    db.execute(
                        "INSERT INTO runs (run_id, num_classes, expected_agents, config_json, "
                        "probe_fingerprint, probe_source, probe_shape, probe_sha256, "
                        "probe_bytes, state, current_experience, created_at, updated_at, "
                        "experiences, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                        "?, ?)",
                        (
                            run.run_id,
                            run.num_classes,
                            run.expected_agents,
                            run.config_json,
                            run.probe_fingerprint,
                            run.probe_source,
                            json.dumps(list(run.probe_shape)),
                            run.probe_sha256,
                            run.probe_bytes,
                            "created",
                            0,
                            now,
                            now,
                            run.experiences,
                            run.created_by,
                        ),
                    )
            except BaseException:
                self._discard_payload(run.probe_sha256, created_file)
                raise
        stored = self.get_run(run.run_id)
        assert stored is not None
        return stored, True

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._connection() as db:
            row = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return _run_record(row) if row else None

    def list_runs(self) -> list[RunRecord]:
        with self._connection() as db:
            rows = db.execute("SELECT * FROM runs ORDER BY created_at, run_id").fetchall()
        return [_run_record(r) for r in rows]

    def read_probe(self, run_id: str) -> tuple[RunRecord, bytes]:
        run = self.require_run(run_id)
        return run, self.read_payload(
            run.probe_sha256, run.probe_bytes, f"probe set of run {run_id!r}"
        )

    def set_run_state(
        self, run_id: str, state: str, current_experience: int | None = None
    ) -> RunRecord:
        check_run_state(state)
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE runs SET state = ?, current_experience = "
                "COALESCE(?, current_experience), updated_at = ? WHERE run_id = ?",
                (state, current_experience, time.time(), run_id),
            ).rowcount
        if not changed:
            self.require_run(run_id)
        return self.require_run(run_id)

    # -- eval sets -----------------------------------------------------------------

    def put_eval_set(
        self, record: EvalSetRecord, payload: bytes | bytearray | memoryview
    ) -> tuple[EvalSetRecord, bool]:
        """Store a validated eval set of an existing run durably; returns (stored record,
        already stored). Raises EvalSetExistsError if the run holds a different one: a
        run's eval set is immutable."""
        with self._run_lock:
            self.require_run(record.run_id)
            existing = self.get_eval_set(record.run_id)
            if existing is not None:
                if existing.same_content(record):
                    return existing, True
                raise eval_set_exists(existing, record)
            created_file = self.payloads.write(record.sha256, payload)
            try:
                with self._transaction() as db:
                    db.execute(
                        "INSERT INTO eval_sets (run_id, fingerprint, source, shape, sha256, "
                        "payload_bytes, stored_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            record.run_id,
                            record.fingerprint,
                            record.source,
                            json.dumps(list(record.shape)),
                            record.sha256,
                            record.payload_bytes,
                            time.time(),
                        ),
                    )
            except BaseException:
                self._discard_payload(record.sha256, created_file)
                raise
        stored = self.get_eval_set(record.run_id)
        assert stored is not None
        return stored, False

    def get_eval_set(self, run_id: str) -> EvalSetRecord | None:
        with self._connection() as db:
            row = db.execute("SELECT * FROM eval_sets WHERE run_id = ?", (run_id,)).fetchone()
        return _eval_set_record(row) if row else None

    def eval_sets(self) -> dict[str, EvalSetRecord]:
        """Every stored eval set, by run id."""
        with self._connection() as db:
            rows = db.execute("SELECT * FROM eval_sets").fetchall()
        return {r["run_id"]: _eval_set_record(r) for r in rows}

    def read_eval_set(self, record: EvalSetRecord) -> bytes:
        return self.read_payload(
            record.sha256, record.payload_bytes, f"eval set of run {record.run_id!r}"
        )

    # -- predictions ---------------------------------------------------------------

    def put_predictions(
        self, record: PredictionRecord, payload: bytes | bytearray | memoryview
    ) -> tuple[PredictionRecord, bool]:
        """Store a validated prediction set durably; returns (stored record, already stored).

        Raises PredictionsExistError if different predictions are stored under the
        same (run, agent, experience): prediction sets are immutable.
        """
        key = (record.run_id, record.agent_id, record.experience)
        with self._key_locks[hash(key) % len(self._key_locks)]:
            existing = self.get_predictions(*key)
            if existing is not None:
                if existing.same_content(record):
                    return existing, True
                raise predictions_exist(existing, record)
            # Checked here, not left to the foreign key: a publish to an unknown run is
            # RunNotFoundError (as in every store) and writes no payload file.
            self.require_run(record.run_id)
            created_file = self.payloads.write(record.sha256, payload)
            now = time.time()
            try:
                with self._transaction() as db:
                    db.execute(
                        "INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            record.run_id,
                            record.agent_id,
                            record.experience,
                            json.dumps(list(record.classes_seen)),
                            record.probe_fingerprint,
                            record.dtype,
                            record.shape[0],
                            record.shape[1],
                            record.encoding,
                            record.sha256,
                            record.payload_bytes,
                            now,
                        ),
                    )
                    # The first publish starts a created run; the current experience
                    # follows the newest one published unless the conductor says more.
                    db.execute(
                        "UPDATE runs SET state = CASE WHEN state = 'created' THEN 'running' "
                        "ELSE state END, current_experience = MAX(current_experience, ?), "
                        "updated_at = ? WHERE run_id = ?",
                        (record.experience, now, record.run_id),
                    )
            except BaseException:
                self._discard_payload(record.sha256, created_file)
                raise
        stored = self.get_predictions(*key)
        assert stored is not None
        return stored, False

    def _discard_payload(self, sha256: str, created: bool) -> None:
        """Remove a payload file this call created if no row refers to it."""
        if not created:
            return
        with self._connection() as db:
            referenced = self._referenced(db, sha256)
        if not referenced:
            self.payloads.discard(sha256)

    def get_predictions(
        self, run_id: str, agent_id: int, experience: int
    ) -> PredictionRecord | None:
        with self._connection() as db:
            row = db.execute(
                "SELECT * FROM predictions WHERE run_id = ? AND agent_id = ? AND experience = ?",
                (run_id, agent_id, experience),
            ).fetchone()
        return _prediction_record(row) if row else None

    def latest_predictions(
        self, run_id: str, agent_id: int, max_experience: int | None = None
    ) -> PredictionRecord | None:
        with self._connection() as db:
            row = db.execute(
                "SELECT * FROM predictions WHERE run_id = ? AND agent_id = ? "
                "AND (? IS NULL OR experience <= ?) ORDER BY experience DESC LIMIT 1",
                (run_id, agent_id, max_experience, max_experience),
            ).fetchone()
        return _prediction_record(row) if row else None

    def list_predictions(self, run_id: str, agent_id: int | None = None) -> list[PredictionRecord]:
        with self._connection() as db:
            rows = db.execute(
                "SELECT * FROM predictions WHERE run_id = ? AND (? IS NULL OR agent_id = ?) "
                "ORDER BY agent_id, experience",
                (run_id, agent_id, agent_id),
            ).fetchall()
        return [_prediction_record(r) for r in rows]

    def read_predictions(self, record: PredictionRecord) -> bytes:
        return self.read_payload(record.sha256, record.payload_bytes, f"prediction set {record.id}")

    # -- agents --------------------------------------------------------------------

    def touch_agent(self, run_id: str, agent_id: int, at: float | None = None) -> bool:
        """Note that an agent made a call in a run; True if it was not seen in the
        last few seconds (worth an event)."""
        if self._closed:
            raise store_closed()  # a time noted now would never be written
        at = time.time() if at is None else at
        key = (run_id, agent_id)
        with self._last_seen_lock:
            previous = self._last_seen.get(key, 0.0)
            self._last_seen[key] = max(previous, at)
            write = at - self._last_seen_written.get(key, 0.0) >= _LAST_SEEN_WRITE_INTERVAL_S
            if write:
                self._last_seen_written[key] = at
        if write:
            self._write_last_seen(run_id, agent_id, at)
        return at - previous >= _LAST_SEEN_WRITE_INTERVAL_S

    def _flush_last_seen(self) -> None:
        with self._last_seen_lock:
            pending = dict(self._last_seen)
        for (run_id, agent_id), at in pending.items():
            self._write_last_seen(run_id, agent_id, at)

    def _write_last_seen(self, run_id: str, agent_id: int, at: float) -> None:
        """Write an agent's last-seen time through (never backwards), if its run exists."""
        if self.get_run(run_id) is None:
            return
        with self._transaction() as db:
            db.execute(
                "INSERT INTO agents (run_id, agent_id, last_seen) VALUES (?, ?, ?) "
                "ON CONFLICT (run_id, agent_id) DO UPDATE SET "
                "last_seen = MAX(last_seen, excluded.last_seen)",
                (run_id, agent_id, at),
            )

    def record_progress(
        self,
        run_id: str,
        agent_id: int,
        experience: int,
        state: str,
        metrics: dict[str, float],
        reason: str = "",
    ) -> AgentRecord:
        self.require_run(run_id)
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO agents (run_id, agent_id, state, experience, metrics_json, "
                "reported_at, reason) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, "
                "agent_id) DO UPDATE SET state = excluded.state, experience = "
                "excluded.experience, metrics_json = excluded.metrics_json, reported_at = "
                "excluded.reported_at, reason = excluded.reason",
                (run_id, agent_id, state, experience, json.dumps(metrics), now, reason),
            )
            curve = history_metrics(metrics)
            if curve:
                db.execute(
                    "INSERT INTO agent_history (run_id, agent_id, experience, metrics_json) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (run_id, agent_id, experience) DO UPDATE "
                    "SET metrics_json = excluded.metrics_json",
                    (run_id, agent_id, experience, json.dumps(curve)),
                )
        return next(a for a in self.agents(run_id) if a.agent_id == agent_id)

    def agents(self, run_id: str) -> list[AgentRecord]:
        """Every agent known in a run: reported, seen, or with published predictions."""
        with self._connection() as db:
            rows = {
                r["agent_id"]: r
                for r in db.execute("SELECT * FROM agents WHERE run_id = ?", (run_id,)).fetchall()
            }
            published = {
                a
                for (a,) in db.execute(
                    "SELECT DISTINCT agent_id FROM predictions WHERE run_id = ?", (run_id,)
                ).fetchall()
            }
            history: dict[int, dict[int, dict[str, float]]] = {}
            for row in db.execute(
                "SELECT agent_id, experience, metrics_json FROM agent_history WHERE run_id = ? "
                "ORDER BY experience",
                (run_id,),
            ).fetchall():
                curve = json.loads(row["metrics_json"])
                history.setdefault(row["agent_id"], {})[row["experience"]] = curve
        with self._last_seen_lock:
            seen = {a: t for (r, a), t in self._last_seen.items() if r == run_id}
        records = []
        for agent_id in sorted(set(rows) | published | set(seen)):
            row = rows.get(agent_id)
            last_seen = max(seen.get(agent_id, 0.0), row["last_seen"] if row else 0.0)
            if row is None:
                records.append(AgentRecord(run_id, agent_id, last_seen=last_seen))
                continue
            records.append(
                AgentRecord(
                    run_id,
                    agent_id,
                    last_seen=last_seen,
                    state=row["state"],
                    experience=row["experience"],
                    metrics=json.loads(row["metrics_json"]),
                    reported_at=row["reported_at"],
                    reason=row["reason"],
                    history=history.get(agent_id, {}),
                )
            )
        return records

    def totals(self) -> StoreTotals:
        with self._connection() as db:
            (runs,) = db.execute("SELECT COUNT(*) FROM runs").fetchone()
            sets, size = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(payload_bytes), 0) FROM predictions"
            ).fetchone()
        return StoreTotals(runs=runs, prediction_sets=sets, payload_bytes=size)


def _run_record(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        run_id=row["run_id"],
        num_classes=row["num_classes"],
        expected_agents=row["expected_agents"],
        config_json=row["config_json"],
        probe_fingerprint=row["probe_fingerprint"],
        probe_source=row["probe_source"],
        probe_shape=tuple(json.loads(row["probe_shape"])),
        probe_sha256=row["probe_sha256"],
        probe_bytes=row["probe_bytes"],
        experiences=row["experiences"],
        state=row["state"],
        current_experience=row["current_experience"],
        created_at=row["created_at"],
        created_by=row["created_by"],
    )


def _eval_set_record(row: sqlite3.Row) -> EvalSetRecord:
    return EvalSetRecord(
        run_id=row["run_id"],
        fingerprint=row["fingerprint"],
        source=row["source"],
        shape=tuple(json.loads(row["shape"])),
        sha256=row["sha256"],
        payload_bytes=row["payload_bytes"],
        stored_at=row["stored_at"],
    )


def _prediction_record(row: sqlite3.Row | tuple) -> PredictionRecord:
    (
        run_id,
        agent_id,
        experience,
        classes_seen,
        probe_fingerprint,
        dtype,
        rows,
        cols,
        encoding,
        sha256,
        payload_bytes,
        published_at,
    ) = tuple(row)
    return PredictionRecord(
        run_id=run_id,
        agent_id=agent_id,
        experience=experience,
        classes_seen=tuple(json.loads(classes_seen)),
        probe_fingerprint=probe_fingerprint,
        dtype=dtype,
        shape=(rows, cols),
        encoding=encoding,
        sha256=sha256,
        payload_bytes=payload_bytes,
        published_at=published_at,
    )
