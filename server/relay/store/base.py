"""The relay store's interface: what the relay asks of a store, whatever keeps the data.

Two implementations: `SqliteRelayStore` (sqlite.py: durable, SQLite metadata and
content-addressed payload files) and `InMemoryRelayStore` (memory.py: dicts, gone with
the process). `open_store` (the package) picks one. Every implementation is safe to call
from many threads at once (the relay's gRPC workers and HTTP status requests) and keeps
the same contract:

- a run, its probe set, its eval set and a prediction set are immutable once stored:
  storing the same again is idempotent, storing something different under the same key
  raises (RunExistsError, EvalSetExistsError, PredictionsExistError) and changes nothing;
- a write method returns once the data is stored (for a durable store: survives a
  crash), and the record it returns is the stored one (with the store's timestamps);
- payload bytes are taken as already verified against the record's SHA-256 (the relay
  hashes them on arrival) and are read back exactly as stored;
- lists come in a fixed order: runs by (created_at, run_id), prediction sets by
  (agent_id, experience), agents by agent_id;
- a closed store raises StoreError("the relay store is closed") on every call but close.
"""

from __future__ import annotations

import abc

from dkt.server.relay.store.records import (
    AgentRecord,
    EvalSetRecord,
    PredictionRecord,
    RunRecord,
    StoreTotals,
    run_not_found,
)

# An agent not seen for this many seconds counts as newly seen (touch_agent returns
# True, worth an event); the SQLite store writes last-seen times through at most this
# often per agent.
LAST_SEEN_INTERVAL_S = 5.0


class RelayStore(abc.ABC):
    """Runs, probe sets, eval sets, prediction sets and agent progress of one relay."""

    # Payload files found without a row when the store was opened, and removed (a crash
    # between a payload's write and its commit); 0 for a store without files.
    orphans_removed: int = 0

    # -- runs ----------------------------------------------------------------------

    @abc.abstractmethod
    def create_run(
        self, run: RunRecord, probe_payload: bytes | bytearray | memoryview
    ) -> tuple[RunRecord, bool]:
        """Store a run (state 'created', experience 0, its `created_by` as given) and its
        probe set; returns (stored run, created): an identical run is returned as is (with
        the creator it was stored with) and False, a different one under the same id raises
        RunExistsError. A creator not in RUN_CREATORS raises ValueError."""

    @abc.abstractmethod
    def get_run(self, run_id: str) -> RunRecord | None:
        """The run with this id, or None."""

    def require_run(self, run_id: str) -> RunRecord:
        """The run with this id; raises RunNotFoundError if there is none."""
        run = self.get_run(run_id)
        if run is None:
            raise run_not_found(run_id)
        return run

    @abc.abstractmethod
    def list_runs(self) -> list[RunRecord]:
        """Every run, by (created_at, run_id)."""

    @abc.abstractmethod
    def read_probe(self, run_id: str) -> tuple[RunRecord, bytes]:
        """A run and its probe set's bytes; raises RunNotFoundError if there is no such run
        (CorruptPayloadError where stored bytes are lost or damaged)."""

    @abc.abstractmethod
    def set_run_state(
        self, run_id: str, state: str, current_experience: int | None = None
    ) -> RunRecord:
        """Set a run's state (and current experience unless None); returns the run. Raises
        ValueError for a state not in RUN_STATES, RunNotFoundError for an unknown run."""

    # -- eval sets -----------------------------------------------------------------

    @abc.abstractmethod
    def put_eval_set(
        self, record: EvalSetRecord, payload: bytes | bytearray | memoryview
    ) -> tuple[EvalSetRecord, bool]:
        """Store a run's eval set; returns (stored record, already stored): the same one
        again gives (stored, True), a different one raises EvalSetExistsError, an unknown
        run RunNotFoundError."""

    @abc.abstractmethod
    def get_eval_set(self, run_id: str) -> EvalSetRecord | None:
        """The run's eval set, or None."""

    @abc.abstractmethod
    def eval_sets(self) -> dict[str, EvalSetRecord]:
        """Every stored eval set, by run id."""

    @abc.abstractmethod
    def read_eval_set(self, record: EvalSetRecord) -> bytes:
        """The bytes of a stored eval set (CorruptPayloadError where they are lost)."""

    # -- predictions ---------------------------------------------------------------

    @abc.abstractmethod
    def put_predictions(
        self, record: PredictionRecord, payload: bytes | bytearray | memoryview
    ) -> tuple[PredictionRecord, bool]:
        """Store a prediction set; returns (stored record, already stored): the same one
        again gives (stored, True), different content for its (run, agent, experience)
        raises PredictionsExistError, an unknown run RunNotFoundError. The first publish
        turns a 'created' run 'running'; its current experience follows the newest one."""

    @abc.abstractmethod
    def get_predictions(
        self, run_id: str, agent_id: int, experience: int
    ) -> PredictionRecord | None:
        """The prediction set of (run, agent, experience), or None."""

    @abc.abstractmethod
    def latest_predictions(
        self, run_id: str, agent_id: int, max_experience: int | None = None
    ) -> PredictionRecord | None:
        """The agent's prediction set of the newest experience <= max_experience, or None."""

    @abc.abstractmethod
    def list_predictions(self, run_id: str, agent_id: int | None = None) -> list[PredictionRecord]:
        """A run's prediction sets (of one agent unless None), by (agent_id, experience)."""

    @abc.abstractmethod
    def read_predictions(self, record: PredictionRecord) -> bytes:
        """The bytes of a stored prediction set (CorruptPayloadError where they are lost)."""

    # -- agents --------------------------------------------------------------------

    @abc.abstractmethod
    def touch_agent(self, run_id: str, agent_id: int, at: float | None = None) -> bool:
        """Note that an agent made a call in a run at `at` (now if None; last-seen never
        goes back); True if it was not seen in the last LAST_SEEN_INTERVAL_S seconds."""

    @abc.abstractmethod
    def record_progress(
        self,
        run_id: str,
        agent_id: int,
        experience: int,
        state: str,
        metrics: dict[str, float],
        reason: str = "",
    ) -> AgentRecord:
        """Replace an agent's latest progress report; returns its record. Raises
        RunNotFoundError for an unknown run."""

    @abc.abstractmethod
    def agents(self, run_id: str) -> list[AgentRecord]:
        """Every agent known in a run (reported, seen, or with published predictions), by
        agent_id; metrics are the caller's own copy."""

    # -- the store -----------------------------------------------------------------

    @abc.abstractmethod
    def totals(self) -> StoreTotals:
        """Runs, prediction sets and their payload bytes in the store."""

    @abc.abstractmethod
    def close(self) -> None:
        """Write what is pending and release resources; idempotent. Any later call but
        close raises StoreError."""
