"""What only the SQLite store does: payload files on disk, named by their SHA-256 and
checked when read (with a verification cache), made durable (fsync), orphans removed,
schema migrations, a store that survives closing and reopening. (The contract every store
keeps is tested in test_store.py.)"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dkt.server.relay.store import (
    CorruptPayloadError,
    EvalSetExistsError,
    PredictionsExistError,
    RunNotFoundError,
    SqliteRelayStore,
    StoreError,
    payload_files,
    schema,
)
from tests.relay.store.samples import EVAL, PROBE
from tests.relay.store.samples import eval_set as _eval_set
from tests.relay.store.samples import predictions as _predictions
from tests.relay.store.samples import run_record as _run


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteRelayStore]:
    s = SqliteRelayStore(tmp_path / "relay")
    s.create_run(_run(), PROBE)
    yield s
    s.close()


def test_stored_predictions_survive_reopening_the_store(store: SqliteRelayStore) -> None:
    payload = bytes(range(48))
    store.put_predictions(_predictions(payload), payload)
    store.close()

    reopened = SqliteRelayStore(store.data_dir)
    record = reopened.get_predictions("r1", 0, 0)

    assert record is not None and record.classes_seen == (0, 1) and record.shape == (4, 3)
    assert reopened.read_predictions(record) == payload
    assert reopened.get_run("r1").state == "running"  # the first publish starts the run
    reopened.close()


def test_payload_files_are_named_by_their_sha256(store: SqliteRelayStore) -> None:
    payload = bytes(48)
    record, _ = store.put_predictions(_predictions(payload), payload)

    path = store.payload_path(record.sha256)

    assert path.read_bytes() == payload
    assert path.name == hashlib.sha256(payload).hexdigest()


def test_a_rejected_publish_leaves_the_files_as_they_were(store: SqliteRelayStore) -> None:
    payload = bytes(48)
    store.put_predictions(_predictions(payload), payload)
    files_before = sorted(p.name for p in store.data_dir.rglob("*") if p.is_file())
    other = bytes([1]) * 48

    with pytest.raises(PredictionsExistError, match="immutable once acknowledged"):
        store.put_predictions(_predictions(other), other)

    assert store.read_predictions(store.get_predictions("r1", 0, 0)) == payload
    assert not store.payload_path(hashlib.sha256(other).hexdigest()).exists()
    assert sorted(p.name for p in store.data_dir.rglob("*") if p.is_file()) == files_before


def test_a_corrupted_payload_file_is_detected_on_read(store: SqliteRelayStore) -> None:
    payload = bytes(48)
    record, _ = store.put_predictions(_predictions(payload), payload)
    store.payload_path(record.sha256).write_bytes(b"\x01" + payload[1:])

    with pytest.raises(CorruptPayloadError, match="is corrupt"):
        store.read_predictions(record)


def test_a_payload_missing_from_disk_is_reported_without_its_path(
    store: SqliteRelayStore,
) -> None:
    payload = bytes(48)
    record, _ = store.put_predictions(_predictions(payload), payload)
    path = store.payload_path(record.sha256)
    path.unlink()

    with pytest.raises(CorruptPayloadError, match="is missing from the relay's disk") as err:
        store.read_predictions(record)

    assert err.value.path == path  # for the relay's log
    assert str(store.data_dir) not in str(err.value)  # not for whoever asked


def test_a_publish_to_an_unknown_run_writes_no_payload_file(store: SqliteRelayStore) -> None:
    payload = bytes([7]) * 48
    files_before = sorted(p.name for p in store.data_dir.rglob("*") if p.is_file())

    with pytest.raises(RunNotFoundError):
        store.put_predictions(_predictions(payload, run_id="nope"), payload)

    assert not store.payload_path(hashlib.sha256(payload).hexdigest()).exists()
    assert sorted(p.name for p in store.data_dir.rglob("*") if p.is_file()) == files_before


def test_last_seen_times_are_written_through_and_survive_reopening(
    store: SqliteRelayStore,
) -> None:
    store.touch_agent("r1", 0, at=100.0)  # written through
    store.touch_agent("r1", 0, at=101.0)  # kept in memory until close
    store.close()

    reopened = SqliteRelayStore(store.data_dir)
    (agent,) = reopened.agents("r1")
    news = reopened.touch_agent("r1", 0, at=102.0)  # a new process has not seen it yet
    reopened.close()

    assert agent.last_seen == 101.0
    assert news is True


def _hashes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the store's SHA-256 computations of payloads (one entry per call)."""
    calls: list[int] = []
    real = payload_files.sha256_hex

    def counting(data: bytes | memoryview) -> str:
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(payload_files, "sha256_hex", counting)
    return calls


def _age(path: Path, seconds: float = 60.0) -> None:
    """Make a file look written `seconds` ago (its mtime; its ctime becomes now)."""
    old = path.stat().st_mtime_ns - int(seconds * 1e9)
    os.utime(path, ns=(old, old))


def test_a_verified_payload_is_not_hashed_again_while_its_file_is_unchanged(
    store: SqliteRelayStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = bytes(48)
    record, _ = store.put_predictions(_predictions(payload), payload)
    _age(store.payload_path(record.sha256))  # a changed file: verified again once
    hashes = _hashes(monkeypatch)

    reads = [store.read_predictions(record) for _ in range(3)]

    assert reads == [payload] * 3
    assert hashes == [48]


def test_a_file_corrupted_after_its_verification_is_detected_on_read(
    store: SqliteRelayStore,
) -> None:
    payload = bytes(48)
    record, _ = store.put_predictions(_predictions(payload), payload)
    path = store.payload_path(record.sha256)
    _age(path)
    assert store.read_predictions(record) == payload  # verified and remembered

    path.write_bytes(b"\x01" + payload[1:])  # same size, same inode, right away

    with pytest.raises(CorruptPayloadError, match="is corrupt"):
        store.read_predictions(record)


def test_a_verified_payload_is_hashed_again_once_its_verification_is_old(
    store: SqliteRelayStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = bytes(48)
    record, _ = store.put_predictions(_predictions(payload), payload)
    _age(store.payload_path(record.sha256))
    store.read_predictions(record)
    monkeypatch.setattr(payload_files, "_REVERIFY_S", 0.0)
    hashes = _hashes(monkeypatch)

    store.read_predictions(record)
    store.read_predictions(record)

    assert hashes == [48, 48]


def test_without_fine_timestamps_a_fresh_file_is_hashed_on_every_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(payload_files, "_has_fine_timestamps", lambda _directory: False)
    coarse = SqliteRelayStore(tmp_path / "coarse")
    coarse.create_run(_run(), PROBE)
    payload = bytes(48)
    record, _ = coarse.put_predictions(_predictions(payload), payload)
    hashes = _hashes(monkeypatch)

    coarse.read_predictions(record)
    coarse.read_predictions(record)
    _age(coarse.payload_path(record.sha256))  # settled: remembered from now on
    coarse.read_predictions(record)
    coarse.read_predictions(record)

    assert hashes == [48, 48, 48]
    coarse.close()


def test_republishing_identical_content_repairs_a_corrupted_file(store: SqliteRelayStore) -> None:
    payload = bytes(48)
    record, _ = store.put_predictions(_predictions(payload), payload)
    store.payload_path(record.sha256).write_bytes(b"garbage")

    store.put_predictions(_predictions(payload, agent_id=1), payload)

    assert store.read_predictions(record) == payload


def test_unfinished_temporary_files_are_removed_on_open(tmp_path: Path) -> None:
    SqliteRelayStore(tmp_path).close()
    (tmp_path / "tmp" / "half-written").write_bytes(b"x")

    SqliteRelayStore(tmp_path).close()

    assert list((tmp_path / "tmp").iterdir()) == []


def test_short_lived_threads_do_not_leave_connections_open(store: SqliteRelayStore) -> None:
    def one_call() -> None:
        store.totals()

    for _ in range(20):  # e.g. one thread per HTTP status request
        thread = threading.Thread(target=one_call)
        thread.start()
        thread.join()

    assert store.open_connections() <= 2


def test_a_data_directory_that_cannot_hold_a_store_is_a_store_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")

    with pytest.raises(StoreError, match="pass a writable directory as --data-dir"):
        SqliteRelayStore(not_a_dir)


def test_a_new_payload_directory_is_itself_made_durable(
    store: SqliteRelayStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []
    monkeypatch.setattr(payload_files, "fsync_dir", synced.append)
    payload = bytes(48)
    sha = hashlib.sha256(payload).hexdigest()
    prefix = store.payload_path(sha).parent
    assert not prefix.exists()  # the probe set's file lives under another prefix

    store.put_predictions(_predictions(payload), payload)

    assert synced == [prefix.parent, prefix]  # payloads/ (new entry ab/), then ab/ (the file)


_SCHEMA_V1 = """
CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO store_meta VALUES ('schema_version', '1');
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY, num_classes INTEGER NOT NULL, expected_agents INTEGER NOT NULL,
    config_json TEXT NOT NULL, probe_fingerprint TEXT NOT NULL, probe_source TEXT NOT NULL,
    probe_shape TEXT NOT NULL, probe_sha256 TEXT NOT NULL, probe_bytes INTEGER NOT NULL,
    state TEXT NOT NULL, current_experience INTEGER NOT NULL, created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE predictions (
    run_id TEXT NOT NULL REFERENCES runs(run_id), agent_id INTEGER NOT NULL,
    experience INTEGER NOT NULL, classes_seen TEXT NOT NULL, probe_fingerprint TEXT NOT NULL,
    dtype TEXT NOT NULL, rows INTEGER NOT NULL, cols INTEGER NOT NULL, encoding TEXT NOT NULL,
    sha256 TEXT NOT NULL, payload_bytes INTEGER NOT NULL, published_at REAL NOT NULL,
    PRIMARY KEY (run_id, agent_id, experience)
);
CREATE TABLE agents (
    run_id TEXT NOT NULL REFERENCES runs(run_id), agent_id INTEGER NOT NULL,
    last_seen REAL NOT NULL DEFAULT 0, state TEXT NOT NULL DEFAULT '',
    experience INTEGER NOT NULL DEFAULT 0, metrics_json TEXT NOT NULL DEFAULT '{}',
    reported_at REAL NOT NULL DEFAULT 0, PRIMARY KEY (run_id, agent_id)
);
"""


def _version_1_store(data_dir: Path, config_json: str = "{}", newest: int = 0) -> Path:
    """A data directory as a relay of schema version 1 left it: one run at experience 1,
    one agent, one prediction set of experience `newest`."""
    (data_dir / "payloads").mkdir(parents=True)
    db = sqlite3.connect(data_dir / "relay.sqlite3")
    db.executescript(_SCHEMA_V1)
    sha = hashlib.sha256(PROBE).hexdigest()
    db.execute(
        "INSERT INTO runs VALUES ('old', 3, 2, ?, 'fp', 'test', '[4, 3]', ?, ?, 'running', 1, "
        "10.0, 10.0)",
        (config_json, sha, len(PROBE)),
    )
    # The probe's bytes stand in for a prediction set (same file, content-addressed).
    db.execute(
        "INSERT INTO predictions VALUES ('old', 0, ?, '[0]', 'fp', 'float32', 4, 3, 'float32', "
        "?, ?, 11.0)",
        (newest, sha, len(PROBE)),
    )
    db.execute("INSERT INTO agents VALUES ('old', 0, 5.0, 'training', 1, '{\"acc\": 0.5}', 6.0)")
    db.commit()
    db.close()
    (data_dir / "payloads" / sha[:2]).mkdir()
    (data_dir / "payloads" / sha[:2] / sha).write_bytes(PROBE)
    return data_dir


def test_a_version_1_store_is_migrated_and_keeps_its_agents(tmp_path: Path) -> None:
    store = SqliteRelayStore(_version_1_store(tmp_path / "old"))

    (agent,) = store.agents("old")
    store.record_progress("old", 0, 1, "failed", {}, reason="disk full")
    (after,) = store.agents("old")
    store.close()

    assert (agent.state, agent.experience, agent.metrics, agent.reason) == (
        "training",
        1,
        {"acc": 0.5},
        "",
    )
    assert (after.state, after.reason) == ("failed", "disk full")
    db = sqlite3.connect(tmp_path / "old" / "relay.sqlite3")
    (version,) = db.execute("SELECT value FROM store_meta").fetchone()
    db.close()
    assert int(version) == schema.SCHEMA_VERSION


def test_a_store_from_a_newer_relay_is_refused(tmp_path: Path) -> None:
    SqliteRelayStore(tmp_path).close()
    db = sqlite3.connect(tmp_path / "relay.sqlite3")
    db.execute("UPDATE store_meta SET value = '999'")
    db.commit()
    db.close()

    with pytest.raises(StoreError, match="has schema version 999"):
        SqliteRelayStore(tmp_path)


@pytest.mark.parametrize(
    ("config_json", "newest", "experiences"),
    [
        ('{"experiences": 7, "agents": 2}', 0, 7),  # from the run's configuration
        ("{}", 3, 4),  # what it holds: the newest prediction set is experience 3
        ('{"test": true}', 0, 2),  # what it holds: the current experience is 1
        ('{"experiences": 2}', 5, 6),  # a configuration that does not cover what it holds
        ("not json", 0, 2),
    ],
)
def test_runs_from_before_the_experience_count_get_one_on_upgrade(
    tmp_path: Path, config_json: str, newest: int, experiences: int
) -> None:
    store = SqliteRelayStore(_version_1_store(tmp_path / "old", config_json, newest))

    run = store.get_run("old")
    store.close()

    assert run.experiences == experiences
    assert (run.state, run.current_experience, run.num_classes) == ("running", 1, 3)


def test_a_migrated_run_is_the_same_run_when_its_conductor_creates_it_again(
    tmp_path: Path,
) -> None:
    config = '{"experiences": 7}'
    store = SqliteRelayStore(_version_1_store(tmp_path / "old", config))
    again = _run("old", expected_agents=2, config_json=config, probe_shape=(4, 3), experiences=7)

    stored, created = store.create_run(again, PROBE)
    store.close()

    assert (created, stored.experiences) == (False, 7)


# -- eval sets -------------------------------------------------------------------------


def test_a_stored_eval_set_survives_reopening_and_its_file_is_no_orphan(
    store: SqliteRelayStore,
) -> None:
    stored, already = store.put_eval_set(_eval_set(), EVAL)
    store.close()

    reopened = SqliteRelayStore(store.data_dir)
    record = reopened.get_eval_set("r1")
    orphans = reopened.orphans_removed
    reopened.close()

    assert already is False and stored.stored_at > 0
    assert record == stored and record.num_rows == 4
    assert orphans == 0
    assert store.payload_path(record.sha256).read_bytes() == EVAL


def test_an_eval_set_file_without_its_row_is_an_orphan(tmp_path: Path) -> None:
    SqliteRelayStore(tmp_path).close()
    sha = hashlib.sha256(EVAL).hexdigest()
    (tmp_path / "payloads" / sha[:2]).mkdir()
    (tmp_path / "payloads" / sha[:2] / sha).write_bytes(EVAL)

    reopened = SqliteRelayStore(tmp_path)
    reopened.close()

    assert reopened.orphans_removed == 1
    assert not (tmp_path / "payloads" / sha[:2] / sha).exists()


def test_a_rejected_eval_set_leaves_the_files_as_they_were(store: SqliteRelayStore) -> None:
    first, _ = store.put_eval_set(_eval_set(), EVAL)
    again, already = store.put_eval_set(_eval_set(source="renamed"), EVAL)
    other = bytes([1]) * len(EVAL)
    files_before = sorted(p.name for p in store.data_dir.rglob("*") if p.is_file())

    with pytest.raises(EvalSetExistsError, match="already has a different eval set"):
        store.put_eval_set(_eval_set(other, fingerprint="d" * 64), other)

    assert (already, again) == (True, first)
    assert store.read_eval_set(store.get_eval_set("r1")) == EVAL
    assert sorted(p.name for p in store.data_dir.rglob("*") if p.is_file()) == files_before


def test_an_eval_set_of_an_unknown_run_writes_no_file(store: SqliteRelayStore) -> None:
    with pytest.raises(RunNotFoundError):
        store.put_eval_set(_eval_set(run_id="nope"), EVAL)

    assert store.get_eval_set("nope") is None
    assert not store.payload_path(hashlib.sha256(EVAL).hexdigest()).exists()


def test_a_corrupted_eval_set_file_is_detected_on_read(store: SqliteRelayStore) -> None:
    record, _ = store.put_eval_set(_eval_set(), EVAL)
    store.payload_path(record.sha256).write_bytes(EVAL[:-1] + b"\x01")

    with pytest.raises(CorruptPayloadError, match="eval set of run 'r1' .* is corrupt"):
        store.read_eval_set(record)


def _version_3_store(data_dir: Path) -> Path:
    """A data directory as a relay of schema version 3 (before eval sets) left it: the
    version 1 store above, with the columns versions 2 and 3 added."""
    _version_1_store(data_dir, '{"experiences": 4}', newest=2)
    db = sqlite3.connect(data_dir / "relay.sqlite3")
    db.execute("ALTER TABLE agents ADD COLUMN reason TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE runs ADD COLUMN experiences INTEGER NOT NULL DEFAULT 0")
    db.execute("UPDATE runs SET experiences = 4")
    db.execute("UPDATE store_meta SET value = '3' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    return data_dir


def test_a_version_3_store_is_migrated_and_takes_an_eval_set(tmp_path: Path) -> None:
    data_dir = _version_3_store(tmp_path / "old")

    store = SqliteRelayStore(data_dir)
    run = store.get_run("old")
    before = store.get_eval_set("old")
    stored, _ = store.put_eval_set(_eval_set(run_id="old"), EVAL)
    (predictions,) = store.list_predictions("old")
    orphans = store.orphans_removed
    store.close()

    assert (run.experiences, run.current_experience, run.state) == (4, 1, "running")
    assert before is None and orphans == 0
    assert predictions.experience == 2
    db = sqlite3.connect(data_dir / "relay.sqlite3")
    (version,) = db.execute("SELECT value FROM store_meta").fetchone()
    (rows,) = db.execute("SELECT COUNT(*) FROM eval_sets").fetchone()
    db.close()
    assert (int(version), rows) == (schema.SCHEMA_VERSION, 1)
    reopened = SqliteRelayStore(data_dir)
    assert reopened.read_eval_set(reopened.get_eval_set("old")) == EVAL
    reopened.close()


def _version_4_store(data_dir: Path) -> Path:
    """A data directory as a relay of schema version 4 (before run creators) left it: the
    version 3 store above, with the eval_sets table of version 4."""
    _version_3_store(data_dir)
    db = sqlite3.connect(data_dir / "relay.sqlite3")
    db.execute(
        "CREATE TABLE eval_sets (run_id TEXT PRIMARY KEY REFERENCES runs(run_id), "
        "fingerprint TEXT NOT NULL, source TEXT NOT NULL, shape TEXT NOT NULL, "
        "sha256 TEXT NOT NULL, payload_bytes INTEGER NOT NULL, stored_at REAL NOT NULL)"
    )
    db.execute("UPDATE store_meta SET value = '4' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    return data_dir


def test_a_version_4_store_is_migrated_and_its_runs_count_as_the_admins(tmp_path: Path) -> None:
    data_dir = _version_4_store(tmp_path / "old")

    store = SqliteRelayStore(data_dir)
    old = store.get_run("old")
    new, _ = store.create_run(_run("new", created_by="conductor"), PROBE)
    (predictions,) = store.list_predictions("old")
    store.close()
    reopened = SqliteRelayStore(data_dir)
    runs = {r.run_id: r.created_by for r in reopened.list_runs()}
    reopened.close()
    db = sqlite3.connect(data_dir / "relay.sqlite3")
    (version,) = db.execute("SELECT value FROM store_meta").fetchone()
    db.close()

    assert (old.created_by, old.experiences, old.state) == ("admin", 4, "running")
    assert predictions.experience == 2
    assert new.created_by == "conductor"
    assert runs == {"old": "admin", "new": "conductor"}
    assert (int(version), schema.SCHEMA_VERSION) == (6, 6)


def test_the_curve_of_every_agent_survives_a_restart(tmp_path: Path) -> None:
    store = SqliteRelayStore(tmp_path / "relay")
    store.create_run(_run("r"), PROBE)
    store.record_progress("r", 2, 0, "trained", {"acc_all_cl": 0.9, "acc_all_st": 0.1})
    store.record_progress("r", 2, 1, "trained", {"acc_all_cl": 0.7, "acc_all_st": 0.4})
    store.close()

    reopened = SqliteRelayStore(tmp_path / "relay")
    (agent,) = reopened.agents("r")
    reopened.close()

    assert agent.history == {
        0: {"acc_all_cl": 0.9, "acc_all_st": 0.1},
        1: {"acc_all_cl": 0.7, "acc_all_st": 0.4},
    }


def test_a_version_5_store_is_migrated_and_keeps_curves_from_then_on(tmp_path: Path) -> None:
    data_dir = _version_4_store(tmp_path / "old")
    db = sqlite3.connect(data_dir / "relay.sqlite3")
    db.execute("ALTER TABLE runs ADD COLUMN created_by TEXT NOT NULL DEFAULT 'admin'")
    db.execute("UPDATE store_meta SET value = '5' WHERE key = 'schema_version'")
    db.commit()
    db.close()

    store = SqliteRelayStore(data_dir)
    store.record_progress("old", 0, 2, "trained", {"acc_all_cl": 0.8})
    (agent,) = [a for a in store.agents("old") if a.agent_id == 0]
    store.close()

    assert agent.history == {2: {"acc_all_cl": 0.8}}
