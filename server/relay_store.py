"""The relay's durable store: SQLite (WAL) for metadata, content-addressed payload files.

Layout of a data directory:

    relay.sqlite3            runs, prediction sets, eval sets, agent progress (WAL journal)
    payloads/ab/abcdef...    payload bytes, named by their SHA-256
    tmp/                     payloads being written (emptied on start)

A payload is written to tmp/, fsynced, renamed into payloads/ and the directory
fsynced before its metadata row is committed (synchronous=FULL), so once a write
method returns the data survives a crash of the process or the machine.

Payloads are checked against their SHA-256 when read, once: the store remembers a
verified payload with its file's identity (device, inode, size, mtime, ctime) and serves
it without hashing while the file keeps that identity, for at most `_REVERIFY_S`; then
the next read hashes it again (a lazy scrub for damage that leaves the metadata alone).
A payload it wrote itself counts as verified (its bytes were hashed on arrival) where
the file system gives a file rewritten right after a stat a new mtime (fine-grained or
multigrain timestamps, probed when the store opens); elsewhere a rewrite within one
clock tick would keep the mtime, so only files whose mtime is `_SETTLED_NS` old when
they are verified are remembered. Clients check the SHA-256 of what they receive, too.

A crash between the rename and the commit leaves a payload file that no row refers to
(it was never acknowledged); opening the store removes such orphans and counts them
(`orphans_removed`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("dkt.relay")

RUN_STATES = ("created", "running", "finished", "failed")
SCHEMA_VERSION = 4
# Largest experience count a run can have (RunSpec.experiences is an int32).
MAX_EXPERIENCES = 2**31 - 1
_PAYLOAD_NAME = re.compile(r"^[0-9a-f]{64}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS store_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    num_classes INTEGER NOT NULL,
    expected_agents INTEGER NOT NULL,
    config_json TEXT NOT NULL,
    probe_fingerprint TEXT NOT NULL,
    probe_source TEXT NOT NULL,
    probe_shape TEXT NOT NULL,
    probe_sha256 TEXT NOT NULL,
    probe_bytes INTEGER NOT NULL,
    state TEXT NOT NULL,
    current_experience INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    experiences INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS predictions (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    agent_id INTEGER NOT NULL,
    experience INTEGER NOT NULL,
    classes_seen TEXT NOT NULL,
    probe_fingerprint TEXT NOT NULL,
    dtype TEXT NOT NULL,
    rows INTEGER NOT NULL,
    cols INTEGER NOT NULL,
    encoding TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    payload_bytes INTEGER NOT NULL,
    published_at REAL NOT NULL,
    PRIMARY KEY (run_id, agent_id, experience)
);
CREATE TABLE IF NOT EXISTS agents (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    agent_id INTEGER NOT NULL,
    last_seen REAL NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT '',
    experience INTEGER NOT NULL DEFAULT 0,
    metrics_json TEXT NOT NULL DEFAULT '{}',
    reported_at REAL NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, agent_id)
);
CREATE TABLE IF NOT EXISTS eval_sets (
    run_id TEXT PRIMARY KEY REFERENCES runs(run_id),
    fingerprint TEXT NOT NULL,
    source TEXT NOT NULL,
    shape TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    payload_bytes INTEGER NOT NULL,
    stored_at REAL NOT NULL
);
"""


def _add_agent_reason(db: sqlite3.Connection) -> None:
    """Schema 2: the reason of an agent's latest progress report."""
    db.execute("ALTER TABLE agents ADD COLUMN reason TEXT NOT NULL DEFAULT ''")


def _add_run_experiences(db: sqlite3.Connection) -> None:
    """Schema 3: every run knows its number of experiences.

    A run created before the field existed takes the `experiences` of its run
    configuration (what `dkt run`, `dkt launch` and `dkt simulate --relay` store, so a
    conductor that re-creates the run after an upgrade finds the same definition), and
    otherwise the number of experiences it already holds (current experience or
    newest prediction set, plus one): such a run accepts no newer experiences."""
    db.execute("ALTER TABLE runs ADD COLUMN experiences INTEGER NOT NULL DEFAULT 0")
    rows = db.execute(
        "SELECT run_id, config_json, current_experience, (SELECT MAX(experience) FROM "
        "predictions p WHERE p.run_id = runs.run_id) AS newest FROM runs"
    ).fetchall()
    for row in rows:
        held = max(row["current_experience"], row["newest"] or 0) + 1
        try:
            configured = json.loads(row["config_json"] or "{}").get("experiences")
        except (ValueError, AttributeError):
            configured = None
        valid = isinstance(configured, int) and not isinstance(configured, bool)
        experiences = configured if valid and configured >= held else held
        db.execute(
            "UPDATE runs SET experiences = ? WHERE run_id = ?",
            (min(experiences, MAX_EXPERIENCES), row["run_id"]),
        )


def _add_eval_sets(db: sqlite3.Connection) -> None:
    """Schema 4: a run may hold one labeled eval set (its payload file is content-addressed
    like the others); runs stored before have none."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS eval_sets (run_id TEXT PRIMARY KEY REFERENCES runs(run_id), "
        "fingerprint TEXT NOT NULL, source TEXT NOT NULL, shape TEXT NOT NULL, "
        "sha256 TEXT NOT NULL, payload_bytes INTEGER NOT NULL, stored_at REAL NOT NULL)"
    )


# Steps that bring a store of schema version N to N + 1 (a store written by an older
# relay is migrated in place when it is opened, one transaction per step).
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _add_agent_reason,
    2: _add_run_experiences,
    3: _add_eval_sets,
}

# A verified payload is hashed again on the first read this long after its verification.
_REVERIFY_S = 600.0
# Without fine-grained file timestamps, a verification is only remembered for a file whose
# mtime is this much older than the read (an in-place rewrite then gets a different one).
_SETTLED_NS = 2_000_000_000
# Verified payloads remembered at most (the oldest are forgotten first).
_MAX_VERIFIED = 1 << 16

# Last-seen times are kept in memory and written through at most this often per
# agent: every authenticated call updates them, and a disk write per call would
# put an fsync on every fetch.
_LAST_SEEN_WRITE_INTERVAL_S = 5.0


class StoreError(Exception):
    """A request the store cannot satisfy."""


class RunNotFoundError(StoreError):
    pass


class RunExistsError(StoreError):
    """A run with that id exists with a different probe set or spec."""


class PredictionsExistError(StoreError):
    """Different predictions are already stored for that (run, agent, experience)."""


class EvalSetExistsError(StoreError):
    """A different eval set is already stored for that run."""


class CorruptPayloadError(StoreError):
    """A payload file is missing or does not match its SHA-256.

    The message (what callers of the relay see) names the payload and its hash; `path`,
    the file on the relay's disk, is for the relay's own log."""

    def __init__(self, what: str, sha256: str, path: Path, problem: str) -> None:
        super().__init__(
            f"{what} (SHA-256 {sha256}) {problem}; restore it from a backup or republish"
        )
        self.path = path


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    num_classes: int
    expected_agents: int
    config_json: str
    probe_fingerprint: str
    probe_source: str
    probe_shape: tuple[int, ...]
    probe_sha256: str
    probe_bytes: int
    experiences: int = 1
    state: str = "created"
    current_experience: int = 0
    created_at: float = 0.0

    @property
    def probe_size(self) -> int:
        return self.probe_shape[0]

    def same_definition(self, other: RunRecord) -> bool:
        """Whether `other` describes the same run (ignoring state and timestamps)."""
        return (
            self.num_classes == other.num_classes
            and self.experiences == other.experiences
            and self.expected_agents == other.expected_agents
            and self.config_json == other.config_json
            and self.probe_fingerprint == other.probe_fingerprint
            and self.probe_shape == other.probe_shape
            and self.probe_sha256 == other.probe_sha256
        )


@dataclass(frozen=True)
class PredictionRecord:
    run_id: str
    agent_id: int
    experience: int
    classes_seen: tuple[int, ...]
    probe_fingerprint: str
    dtype: str
    shape: tuple[int, int]
    encoding: str
    sha256: str
    payload_bytes: int
    published_at: float = 0.0

    @property
    def id(self) -> str:
        return f"{self.run_id}/{self.agent_id}/{self.experience}"

    def same_content(self, other: PredictionRecord) -> bool:
        """Whether `other` stores the same prediction set (ignoring the publish time)."""
        return (
            self.classes_seen == other.classes_seen
            and self.probe_fingerprint == other.probe_fingerprint
            and self.shape == other.shape
            and self.encoding == other.encoding
            and self.sha256 == other.sha256
        )


@dataclass(frozen=True)
class EvalSetRecord:
    """A run's labeled eval set: inputs of `shape` (float32) then `shape[0]` int64 labels."""

    run_id: str
    fingerprint: str
    source: str
    shape: tuple[int, ...]
    sha256: str
    payload_bytes: int
    stored_at: float = 0.0

    @property
    def num_rows(self) -> int:
        return self.shape[0]

    def same_content(self, other: EvalSetRecord) -> bool:
        """Whether `other` is the same eval set (ignoring its source and time)."""
        return (
            self.fingerprint == other.fingerprint
            and self.shape == other.shape
            and self.sha256 == other.sha256
        )


@dataclass(frozen=True)
class AgentRecord:
    run_id: str
    agent_id: int
    last_seen: float = 0.0
    state: str = ""
    experience: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    reported_at: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class StoreTotals:
    runs: int
    prediction_sets: int
    payload_bytes: int


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


class RelayStore:
    """Runs, prediction sets and agent progress of one relay, in `data_dir`."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self._payload_dir = self.data_dir / "payloads"
        self._tmp_dir = self.data_dir / "tmp"
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
        # sha256 -> (file identity when verified, time.monotonic() of the verification)
        self._verified: dict[str, tuple[tuple[int, ...], float]] = {}
        self._verified_lock = threading.Lock()
        self._fine_timestamps = False
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
        self._payload_dir.mkdir(parents=True, exist_ok=True)
        self._tmp_dir.mkdir(parents=True, exist_ok=True)
        # Leftovers of writes interrupted by a crash were never acknowledged.
        for leftover in self._tmp_dir.iterdir():
            leftover.unlink(missing_ok=True)
        self._fine_timestamps = _has_fine_timestamps(self._tmp_dir)
        with self._transaction() as db:
            existing = db.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'store_meta'"
            ).fetchone()
        if existing is None:
            with self._connection() as db:
                # executescript commits on its own, so the schema goes outside a transaction.
                db.executescript(_SCHEMA)
            with self._transaction() as db:
                db.execute(
                    "INSERT OR IGNORE INTO store_meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
        self._migrate()
        self.orphans_removed = self._remove_orphans()

    def _remove_orphans(self) -> int:
        """Remove payload files that no row refers to: written by a call the relay never
        acknowledged, because it crashed before committing the row. Runs before the
        store serves anyone, so no write is in progress (those start in tmp/)."""
        with self._connection() as db:
            referenced = {
                sha
                for (sha,) in db.execute(
                    "SELECT sha256 FROM predictions UNION SELECT probe_sha256 FROM runs "
                    "UNION SELECT sha256 FROM eval_sets"
                ).fetchall()
            }
        removed = 0
        for prefix in self._payload_dir.iterdir():
            if not prefix.is_dir():
                continue
            for path in prefix.iterdir():
                # Only files named like a payload: anything else is not the store's.
                if not (path.is_file() and _PAYLOAD_NAME.match(path.name)):
                    continue
                if path.name in referenced and path.name[:2] == prefix.name:
                    continue
                path.unlink(missing_ok=True)
                removed += 1
                log.info("removed orphan payload file %s (its write was never acknowledged)", path)
        if removed:
            _fsync_dir(self._payload_dir)
        return removed

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
                if version not in _MIGRATIONS:
                    raise StoreError(
                        f"{self._db_path} has schema version {version}, this relay reads "
                        f"{SCHEMA_VERSION}; use a matching relay version or a new data directory"
                    )
                _MIGRATIONS[version](db)
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
                raise StoreError("the relay store is closed")
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
        return self._payload_dir / sha256[:2] / sha256

    def _write_payload(self, sha256: str, data: bytes | memoryview) -> bool:
        """Make the payload file durable; True if this call created it."""
        final = self.payload_path(sha256)
        if final.exists():
            try:
                self.read_payload(sha256, len(data))
                return False
            except CorruptPayloadError:
                pass  # rewrite it below: the new bytes are known to be correct
        if not final.parent.is_dir():
            final.parent.mkdir(exist_ok=True)
            # The new directory's own name must be durable too, or the file is lost with it.
            _fsync_dir(self._payload_dir)
        tmp = self._tmp_dir / f"{sha256}.{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        if self._fine_timestamps:
            # `data` was hashed on arrival (chunks.assemble) and is now what the file holds.
            self._remember(sha256, os.stat(final), settled=True)
        else:
            self._forget(sha256)
        return True

    def read_payload(self, sha256: str, expected_bytes: int, what: str = "payload") -> bytes:
        """The payload with this SHA-256, verified (now, or earlier and its file has not
        changed since); raises CorruptPayloadError (naming it as `what`) otherwise."""
        path = self.payload_path(sha256)
        started_ns = time.time_ns()
        try:
            with open(path, "rb") as f:
                data = f.read()
                # After the read: a change made before it shows in the identity.
                stat = os.fstat(f.fileno())
        except FileNotFoundError:
            self._forget(sha256)
            raise CorruptPayloadError(
                what, sha256, path, "is missing from the relay's disk"
            ) from None
        if len(data) == expected_bytes and self._still_verified(sha256, stat):
            return data
        actual = sha256_hex(data)
        if len(data) != expected_bytes or actual != sha256:
            self._forget(sha256)
            raise CorruptPayloadError(
                what,
                sha256,
                path,
                f"is corrupt on the relay's disk ({len(data)} bytes with SHA-256 {actual}, "
                f"expected {expected_bytes} bytes)",
            )
        self._remember(sha256, stat, settled=started_ns - stat.st_mtime_ns >= _SETTLED_NS)
        return data

    def _remember(self, sha256: str, stat: os.stat_result, settled: bool) -> None:
        """Note that the file with `stat` holds the payload `sha256` (just verified); a
        file not `settled` is only remembered with fine-grained timestamps."""
        if not (settled or self._fine_timestamps):
            return
        with self._verified_lock:
            self._verified.pop(sha256, None)
            while len(self._verified) >= _MAX_VERIFIED:
                del self._verified[next(iter(self._verified))]
            self._verified[sha256] = (_identity(stat), time.monotonic())

    def _still_verified(self, sha256: str, stat: os.stat_result) -> bool:
        with self._verified_lock:
            entry = self._verified.get(sha256)
        return (
            entry is not None
            and entry[0] == _identity(stat)
            and time.monotonic() - entry[1] < _REVERIFY_S
        )

    def _forget(self, sha256: str) -> None:
        with self._verified_lock:
            self._verified.pop(sha256, None)

    def _referenced(self, db: sqlite3.Connection, sha256: str) -> bool:
        row = db.execute(
            "SELECT 1 FROM predictions WHERE sha256 = ? UNION ALL "
            "SELECT 1 FROM runs WHERE probe_sha256 = ? UNION ALL "
            "SELECT 1 FROM eval_sets WHERE sha256 = ? LIMIT 1",
            (sha256, sha256, sha256),
        ).fetchone()
        return row is not None

    # -- runs ----------------------------------------------------------------------

    def create_run(self, run: RunRecord, probe_payload: bytes) -> tuple[RunRecord, bool]:
        """Store a run and its probe set; returns (stored run, created).

        An identical run is returned as is; a different one under the same id raises
        RunExistsError.
        """
        with self._run_lock:
            existing = self.get_run(run.run_id)
            if existing is not None:
                if existing.same_definition(run):
                    return existing, False
                raise RunExistsError(
                    f"run {run.run_id!r} already exists with a different probe set or spec; "
                    "choose a new run id"
                )
            created_file = self._write_payload(run.probe_sha256, probe_payload)
            now = time.time()
            try:
                with self._transaction() as db:
                    db.execute(
                        "INSERT INTO runs (run_id, num_classes, expected_agents, config_json, "
                        "probe_fingerprint, probe_source, probe_shape, probe_sha256, "
                        "probe_bytes, state, current_experience, created_at, updated_at, "
                        "experiences) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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

    def require_run(self, run_id: str) -> RunRecord:
        run = self.get_run(run_id)
        if run is None:
            raise RunNotFoundError(
                f"run {run_id!r} does not exist on this relay; create it first (admin)"
            )
        return run

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
        if state not in RUN_STATES:
            raise ValueError(f"unknown run state {state!r}; use one of {', '.join(RUN_STATES)}")
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
        self, record: EvalSetRecord, payload: bytes | memoryview
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
                raise EvalSetExistsError(
                    f"run {record.run_id!r} already has a different eval set (fingerprint "
                    f"{existing.fingerprint}, got {record.fingerprint}); a run's eval set is "
                    "immutable once stored: create a new run for another one"
                )
            created_file = self._write_payload(record.sha256, payload)
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
        self, record: PredictionRecord, payload: bytes | memoryview
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
                raise PredictionsExistError(
                    f"agent {record.agent_id} already published different predictions for "
                    f"experience {record.experience} of run {record.run_id!r} "
                    f"(stored SHA-256 {existing.sha256}, got {record.sha256}); "
                    "predictions are immutable once acknowledged"
                )
            created_file = self._write_payload(record.sha256, payload)
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
            self._forget(sha256)
            self.payload_path(sha256).unlink(missing_ok=True)

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


def _identity(stat: os.stat_result) -> tuple[int, ...]:
    """What changes when a file is replaced or written: device, inode, size, mtime, ctime."""
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def _has_fine_timestamps(directory: Path) -> bool:
    """Whether a file written right after a stat gets a new mtime in `directory`'s file
    system (fine-grained timestamps, or Linux's multigrain ones), so a cached file
    identity notices any later write. Coarse timestamps (one clock tick, or a second)
    give some of 16 immediate rewrites the same mtime."""
    path = directory / f"timestamps-probe.{uuid.uuid4().hex}"
    try:
        with open(path, "wb", buffering=0) as f:
            for i in range(16):
                before = os.fstat(f.fileno()).st_mtime_ns
                f.seek(0)
                f.write(bytes([i]))
                if os.fstat(f.fileno()).st_mtime_ns == before:
                    return False
        return True
    except OSError:
        return False
    finally:
        path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
