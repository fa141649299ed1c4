"""The SQLite store's schema and the steps that migrate an older store to it."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

from dkt.server.relay.store.records import MAX_EXPERIENCES

SCHEMA_VERSION = 6

SCHEMA = """
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
    experiences INTEGER NOT NULL,
    created_by TEXT NOT NULL DEFAULT 'admin'
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
CREATE TABLE IF NOT EXISTS agent_history (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    agent_id INTEGER NOT NULL,
    experience INTEGER NOT NULL,
    metrics_json TEXT NOT NULL,
    PRIMARY KEY (run_id, agent_id, experience)
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


def _add_run_creator(db: sqlite3.Connection) -> None:
    """Schema 5: who created a run ('admin' or 'conductor'; the conductor token reaches
    only the runs it created). Runs stored before were created with the admin token (the
    ServerApp held it then), so they count as the admin's."""
    db.execute("ALTER TABLE runs ADD COLUMN created_by TEXT NOT NULL DEFAULT 'admin'")


def _add_agent_history(db: sqlite3.Connection) -> None:
    """Schema 6: per agent and experience, the curve metrics of its latest report for that
    experience (the dashboard and /metrics); older runs start with none."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS agent_history (run_id TEXT NOT NULL REFERENCES "
        "runs(run_id), agent_id INTEGER NOT NULL, experience INTEGER NOT NULL, "
        "metrics_json TEXT NOT NULL, PRIMARY KEY (run_id, agent_id, experience))"
    )


# Steps that bring a store of schema version N to N + 1 (a store written by an older
# relay is migrated in place when it is opened, one transaction per step).
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _add_agent_reason,
    2: _add_run_experiences,
    3: _add_eval_sets,
    4: _add_run_creator,
    5: _add_agent_history,
}
