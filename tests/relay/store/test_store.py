"""The RelayStore contract, for every store: the same calls give the same answers, errors
and orderings from the SQLite store and from the in-memory one. (What only a store with
files on disk does is in test_sqlite_store.py.)"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dkt.server.relay.store import (
    LAST_SEEN_INTERVAL_S,
    RUN_STATES,
    EvalSetExistsError,
    InMemoryRelayStore,
    PredictionsExistError,
    RelayStore,
    RunExistsError,
    RunNotFoundError,
    SqliteRelayStore,
    StoreError,
    StoreTotals,
    open_store,
)
from tests.relay.store.samples import EVAL, PROBE, eval_set, predictions, run_record


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RelayStore]:
    """A store holding run 'r1' (no predictions yet)."""
    s = open_store(tmp_path / "relay" if request.param == "sqlite" else None)
    s.create_run(run_record(), PROBE)
    yield s
    s.close()


def _publish(store: RelayStore, fill: int, agent_id: int = 0, experience: int = 0) -> bytes:
    payload = bytes([fill]) * 48
    store.put_predictions(predictions(payload, agent_id, experience), payload)
    return payload


def test_open_store_keeps_none_in_memory_and_a_directory_in_sqlite(tmp_path: Path) -> None:
    memory = open_store(None)
    on_disk = open_store(str(tmp_path / "relay"))

    assert type(memory) is InMemoryRelayStore and type(on_disk) is SqliteRelayStore
    assert isinstance(memory, RelayStore) and isinstance(on_disk, RelayStore)
    assert (tmp_path / "relay" / "relay.sqlite3").is_file()
    memory.close()
    on_disk.close()


def test_the_interface_cannot_be_instantiated() -> None:
    with pytest.raises(TypeError, match="abstract"):
        RelayStore()  # type: ignore[abstract]


def test_a_new_store_has_removed_no_orphans(store: RelayStore) -> None:
    assert store.orphans_removed == 0


# -- runs ------------------------------------------------------------------------------


def test_a_new_run_is_created_at_experience_0_whatever_the_record_says(
    store: RelayStore,
) -> None:
    stored, created = store.create_run(
        run_record("r2", state="finished", current_experience=3, experiences=5), PROBE
    )

    assert created is True
    assert (stored.state, stored.current_experience, stored.experiences) == ("created", 0, 5)
    assert stored.created_at > 0 and stored.probe_shape == (4, 3)
    assert store.get_run("r2") == stored


def test_creating_a_run_twice_is_idempotent_and_a_different_spec_is_rejected(
    store: RelayStore,
) -> None:
    first = store.get_run("r1")
    again, created = store.create_run(run_record(), PROBE)

    assert (created, again) == (False, first)
    with pytest.raises(RunExistsError, match="run 'r1' already exists .* choose a new run id"):
        store.create_run(run_record(num_classes=5), PROBE)
    assert store.get_run("r1").num_classes == 3


def test_a_run_keeps_its_creator_and_a_repeat_by_another_creator_does_not_change_it(
    store: RelayStore,
) -> None:
    made, _ = store.create_run(run_record("by-conductor", created_by="conductor"), PROBE)
    again, created = store.create_run(run_record("by-conductor"), PROBE)  # by the admin

    assert (made.created_by, store.get_run("r1").created_by) == ("conductor", "admin")
    assert (created, again.created_by) == (False, "conductor")
    assert [r.created_by for r in store.list_runs()] == ["admin", "conductor"]


def test_an_unknown_creator_is_a_value_error_and_stores_nothing(store: RelayStore) -> None:
    with pytest.raises(
        ValueError, match="unknown run creator 'agent'; use one of admin, conductor"
    ):
        store.create_run(run_record("r2", created_by="agent"), PROBE)

    assert store.get_run("r2") is None


def test_an_unknown_run_is_none_and_requiring_it_raises(store: RelayStore) -> None:
    assert store.get_run("nope") is None
    with pytest.raises(RunNotFoundError, match="run 'nope' does not exist on this relay"):
        store.require_run("nope")
    assert store.require_run("r1").run_id == "r1"


def test_runs_are_listed_by_creation_time_then_id(store: RelayStore) -> None:
    for run_id in ("c", "a", "b"):
        store.create_run(run_record(run_id), PROBE)

    runs = store.list_runs()

    assert sorted(runs, key=lambda r: (r.created_at, r.run_id)) == runs
    assert {r.run_id for r in runs} == {"r1", "a", "b", "c"}
    assert runs[0].run_id == "r1"  # created first, by the fixture


def test_the_probe_set_reads_back_as_stored(store: RelayStore) -> None:
    run, payload = store.read_probe("r1")

    assert (run.run_id, payload) == ("r1", PROBE)
    with pytest.raises(RunNotFoundError):
        store.read_probe("nope")


def test_set_run_state_keeps_the_experience_unless_given_one(store: RelayStore) -> None:
    running = store.set_run_state("r1", "running", 2)
    finished = store.set_run_state("r1", "finished")

    assert (running.state, running.current_experience) == ("running", 2)
    assert (finished.state, finished.current_experience) == ("finished", 2)
    assert store.get_run("r1") == finished


def test_an_unknown_run_state_is_a_value_error_and_changes_nothing(store: RelayStore) -> None:
    with pytest.raises(ValueError, match="unknown run state 'paused'; use one of created, "):
        store.set_run_state("r1", "paused", 4)

    assert (store.get_run("r1").state, store.get_run("r1").current_experience) == ("created", 0)
    assert RUN_STATES == ("created", "running", "finished", "failed")


def test_setting_the_state_of_an_unknown_run_raises(store: RelayStore) -> None:
    with pytest.raises(RunNotFoundError, match="run 'nope' does not exist"):
        store.set_run_state("nope", "running")

    assert store.get_run("nope") is None


# -- predictions -----------------------------------------------------------------------


def test_a_stored_prediction_set_reads_back_as_published(store: RelayStore) -> None:
    payload = bytes(range(48))

    stored, already = store.put_predictions(predictions(payload), memoryview(payload))

    assert already is False and stored.published_at > 0
    assert (stored.classes_seen, stored.shape, stored.id) == ((0, 1), (4, 3), "r1/0/0")
    assert store.get_predictions("r1", 0, 0) == stored
    assert store.read_predictions(stored) == payload
    assert isinstance(store.read_predictions(stored), bytes)


def test_identical_publish_is_idempotent(store: RelayStore) -> None:
    payload = bytes(48)
    first, first_existed = store.put_predictions(predictions(payload), payload)
    second, second_existed = store.put_predictions(predictions(payload), payload)

    assert (first_existed, second_existed) == (False, True)
    assert second == first
    assert store.totals().prediction_sets == 1


def test_different_content_for_the_same_key_is_rejected_and_changes_nothing(
    store: RelayStore,
) -> None:
    payload = _publish(store, 0)
    before = (store.list_predictions("r1"), store.totals(), store.get_run("r1"))
    other = bytes([1]) * 48

    with pytest.raises(
        PredictionsExistError,
        match="agent 0 already published different predictions for experience 0 of run 'r1'"
        ".* predictions are immutable once acknowledged",
    ):
        store.put_predictions(predictions(other), other)

    assert store.read_predictions(store.get_predictions("r1", 0, 0)) == payload
    assert (store.list_predictions("r1"), store.totals(), store.get_run("r1")) == before


def test_publishing_to_an_unknown_run_raises_and_stores_nothing(store: RelayStore) -> None:
    payload = bytes(48)

    with pytest.raises(RunNotFoundError, match="run 'nope' does not exist"):
        store.put_predictions(predictions(payload, run_id="nope"), payload)

    assert store.get_predictions("nope", 0, 0) is None
    assert store.totals() == StoreTotals(runs=1, prediction_sets=0, payload_bytes=0)


def test_the_first_publish_starts_a_created_run_and_the_experience_follows_the_newest(
    store: RelayStore,
) -> None:
    _publish(store, 1, experience=1)
    after_first = store.get_run("r1")
    _publish(store, 3, experience=3)
    _publish(store, 2, experience=2)  # an older experience does not move it back

    assert (after_first.state, after_first.current_experience) == ("running", 1)
    assert (store.get_run("r1").state, store.get_run("r1").current_experience) == ("running", 3)


def test_a_publish_leaves_a_finished_run_finished(store: RelayStore) -> None:
    store.set_run_state("r1", "finished", 0)

    _publish(store, 0, experience=2)

    assert (store.get_run("r1").state, store.get_run("r1").current_experience) == ("finished", 2)


def test_latest_is_the_newest_experience_at_or_before_the_bound(store: RelayStore) -> None:
    for e in (0, 1, 3):
        _publish(store, e, experience=e)

    assert store.latest_predictions("r1", 0).experience == 3
    assert store.latest_predictions("r1", 0, max_experience=2).experience == 1
    assert store.latest_predictions("r1", 0, max_experience=-1) is None
    assert store.latest_predictions("r1", 1) is None


def test_predictions_are_listed_by_agent_then_experience(store: RelayStore) -> None:
    for agent_id, experience in ((1, 1), (0, 2), (1, 0), (0, 0)):
        _publish(store, 10 * agent_id + experience, agent_id, experience)

    everyone = [(p.agent_id, p.experience) for p in store.list_predictions("r1")]
    agent_1 = [(p.agent_id, p.experience) for p in store.list_predictions("r1", 1)]

    assert everyone == [(0, 0), (0, 2), (1, 0), (1, 1)]
    assert agent_1 == [(1, 0), (1, 1)]
    assert store.list_predictions("nope") == []


def test_a_prediction_set_and_a_probe_set_with_the_same_bytes_both_read_back(
    store: RelayStore,
) -> None:
    record, _ = store.put_predictions(predictions(PROBE), PROBE)

    assert store.read_predictions(record) == PROBE
    assert store.read_probe("r1")[1] == PROBE


# -- eval sets -------------------------------------------------------------------------


def test_an_eval_set_is_idempotent_and_immutable(store: RelayStore) -> None:
    first, already_first = store.put_eval_set(eval_set(), EVAL)
    again, already = store.put_eval_set(eval_set(source="renamed"), EVAL)
    other = bytes([1]) * len(EVAL)

    with pytest.raises(EvalSetExistsError, match="run 'r1' already has a different eval set"):
        store.put_eval_set(eval_set(other, fingerprint="d" * 64), other)

    assert (already_first, already, again) == (False, True, first)
    assert first.stored_at > 0 and first.source == "test" and first.num_rows == 4
    assert store.read_eval_set(store.get_eval_set("r1")) == EVAL


def test_an_eval_set_needs_its_run(store: RelayStore) -> None:
    with pytest.raises(RunNotFoundError, match="run 'nope' does not exist"):
        store.put_eval_set(eval_set(run_id="nope"), EVAL)

    assert store.get_eval_set("nope") is None
    assert store.eval_sets() == {}


def test_eval_sets_are_listed_by_run_id(store: RelayStore) -> None:
    store.create_run(run_record("r2"), PROBE)
    first, _ = store.put_eval_set(eval_set(), memoryview(EVAL))
    second, _ = store.put_eval_set(eval_set(run_id="r2"), EVAL)

    assert store.eval_sets() == {"r1": first, "r2": second}
    assert store.get_eval_set("r2") == second


# -- agents ----------------------------------------------------------------------------


def test_progress_and_last_seen_show_in_the_agent_records(store: RelayStore) -> None:
    store.touch_agent("r1", 1, at=100.0)
    store.record_progress("r1", 1, 2, "training", {"accuracy": 0.5})

    (agent,) = store.agents("r1")

    assert (agent.agent_id, agent.last_seen, agent.state, agent.experience) == (
        1,
        100.0,
        "training",
        2,
    )
    assert agent.metrics == {"accuracy": 0.5}


def test_an_agent_is_news_when_not_seen_for_the_interval(store: RelayStore) -> None:
    interval = LAST_SEEN_INTERVAL_S

    news = [
        store.touch_agent("r1", 0, at=100.0),
        store.touch_agent("r1", 0, at=100.0 + interval / 2),
        store.touch_agent("r1", 0, at=100.0 + interval),  # within the interval of the last
        store.touch_agent("r1", 0, at=100.0 + 2.5 * interval),
        store.touch_agent("r1", 0, at=50.0),  # an older time does not move it back
    ]

    assert news == [True, False, False, True, False]
    (agent,) = store.agents("r1")
    assert agent.last_seen == 100.0 + 2.5 * interval


def test_agents_are_the_seen_the_reported_and_the_publishers_by_id(store: RelayStore) -> None:
    store.touch_agent("r1", 5, at=10.0)
    store.record_progress("r1", 3, 0, "training", {})
    _publish(store, 1, agent_id=4)
    store.touch_agent("other", 1, at=10.0)

    agents = store.agents("r1")

    assert [a.agent_id for a in agents] == [3, 4, 5]
    assert [(a.state, a.last_seen) for a in agents] == [("training", 0.0), ("", 0.0), ("", 10.0)]
    assert [a.agent_id for a in store.agents("other")] == [1]


def test_a_progress_report_replaces_the_last_and_keeps_last_seen(store: RelayStore) -> None:
    store.touch_agent("r1", 0, at=100.0)
    store.record_progress("r1", 0, 1, "training", {"accuracy": 0.5})

    after = store.record_progress("r1", 0, 2, "failed", {}, reason="disk full")

    assert (after.state, after.experience, after.metrics, after.reason) == (
        "failed",
        2,
        {},
        "disk full",
    )
    assert after.last_seen == 100.0 and after.reported_at > 0
    assert store.agents("r1") == [after]


def test_progress_in_an_unknown_run_raises_and_records_nothing(store: RelayStore) -> None:
    with pytest.raises(RunNotFoundError, match="run 'nope' does not exist"):
        store.record_progress("nope", 0, 0, "training", {})

    assert store.agents("nope") == []


def test_the_metrics_of_an_agent_record_are_the_callers_copy(store: RelayStore) -> None:
    metrics = {"accuracy": 0.5}
    returned = store.record_progress("r1", 0, 0, "training", metrics)
    metrics["accuracy"] = 0.0
    returned.metrics["accuracy"] = 0.1
    store.agents("r1")[0].metrics["loss"] = 1.0

    assert store.agents("r1")[0].metrics == {"accuracy": 0.5}


# -- the store -------------------------------------------------------------------------


def test_totals_count_runs_prediction_sets_and_their_bytes(store: RelayStore) -> None:
    store.create_run(run_record("r2"), PROBE)
    _publish(store, 0)
    _publish(store, 1, agent_id=1)
    store.put_eval_set(eval_set(), EVAL)  # not a prediction set

    assert store.totals() == StoreTotals(runs=2, prediction_sets=2, payload_bytes=96)


def test_a_closed_store_refuses_every_call(store: RelayStore) -> None:
    store.close()
    store.close()  # idempotent

    calls = [
        lambda: store.get_run("r1"),
        lambda: store.list_runs(),
        lambda: store.create_run(run_record("r2"), PROBE),
        lambda: store.put_predictions(predictions(bytes(48)), bytes(48)),
        lambda: store.list_predictions("r1"),
        lambda: store.eval_sets(),
        lambda: store.touch_agent("r1", 0),
        lambda: store.agents("r1"),
        lambda: store.totals(),
    ]
    for call in calls:
        with pytest.raises(StoreError, match="the relay store is closed"):
            call()


def test_concurrent_publishes_store_every_set_once(store: RelayStore) -> None:
    results: list[tuple[int, int, bool]] = []
    lock = threading.Lock()

    def publish(agent_id: int) -> None:
        for experience in range(3):
            # Every agent publishes each experience twice: the second is a re-put.
            for _ in range(2):
                payload = bytes([agent_id, experience]) * 24
                _, already = store.put_predictions(
                    predictions(payload, agent_id, experience), payload
                )
                with lock:
                    results.append((agent_id, experience, already))
            store.touch_agent("r1", agent_id)

    threads = [threading.Thread(target=publish, args=(a,)) for a in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == sorted(
        (a, e, already) for a in range(6) for e in range(3) for already in (False, True)
    )
    assert store.totals() == StoreTotals(runs=1, prediction_sets=18, payload_bytes=18 * 48)
    assert [a.agent_id for a in store.agents("r1")] == list(range(6))
    assert store.get_run("r1").current_experience == 2


def test_concurrent_identical_publishes_create_the_set_once(store: RelayStore) -> None:
    payload = bytes(48)
    already: list[bool] = []
    start = threading.Barrier(8)

    def publish() -> None:
        start.wait()
        already.append(store.put_predictions(predictions(payload), payload)[1])

    threads = [threading.Thread(target=publish) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(already) == [False] + [True] * 7
    assert store.read_predictions(store.get_predictions("r1", 0, 0)) == payload


def test_each_experience_keeps_the_curve_metrics_of_its_latest_report(store: RelayStore) -> None:
    store.record_progress("r1", 0, 0, "trained", {"acc_all_cl": 0.9, "steps": 12.0})
    store.record_progress("r1", 0, 1, "training", {})
    store.record_progress("r1", 0, 1, "trained", {"acc_all_cl": 0.5, "transfer_st": 0.2})
    store.record_progress("r1", 0, 1, "trained", {"acc_all_cl": 0.6, "transfer_st": 0.3})

    (agent,) = store.agents("r1")

    # Only the HISTORY_METRICS are kept per experience ("steps" is not); a report without
    # metrics leaves the curve alone; a later report for an experience replaces its point.
    assert agent.history == {0: {"acc_all_cl": 0.9}, 1: {"acc_all_cl": 0.6, "transfer_st": 0.3}}
    assert agent.metrics == {"acc_all_cl": 0.6, "transfer_st": 0.3}
