"""A run has a number of experiences, and every request that names one stays inside
0..experiences-1: below is INVALID_ARGUMENT, beyond is OUT_OF_RANGE, and neither stores
anything nor moves the run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from dkt.common.data.probe import ProbeSet
from dkt.proto.relay_client import (
    AlreadyExistsError,
    InvalidArgumentError,
    OutOfRangeError,
    RelayClient,
)
from tests.support.relay import (
    EXPERIENCES,
    NUM_CLASSES,
    RelayProcess,
    Tokens,
    logits_payload,
    make_predictions,
    prediction_chunks,
    prediction_meta,
    publish_refused,
)

INT32_MAX = 2**31 - 1


def _run(admin: RelayClient, run_id: str) -> dict[str, Any]:
    (run,) = [r for r in admin.status()["runs"] if r["run_id"] == run_id]
    return run


def _publish_raw(
    relay: RelayProcess, relay_tokens: Tokens, run_id: str, probe: ProbeSet, experience: int
) -> grpc.RpcError:
    """A hand-made publish (as the admin) for `experience`; returns the error it ends with."""
    payload = logits_payload(probe)
    meta = prediction_meta(run_id, probe, payload, experience=experience, classes_seen=[0])
    return publish_refused(relay, relay_tokens.admin, prediction_chunks(meta, payload))


def test_a_publish_far_beyond_the_runs_experiences_is_out_of_range_and_moves_nothing(
    run_id: str,
    probe: ProbeSet,
    relay: RelayProcess,
    relay_tokens: Tokens,
    admin: RelayClient,
) -> None:
    before = relay.store_snapshot()

    err = _publish_raw(relay, relay_tokens, run_id, probe, INT32_MAX)

    assert err.code() == grpc.StatusCode.OUT_OF_RANGE
    assert f"PredictionMeta.experience {INT32_MAX} is outside run {run_id!r}" in err.details()
    assert f"RunSpec.experiences = {EXPERIENCES}" in err.details()
    assert relay.store_snapshot() == before
    run = _run(admin, run_id)
    assert (run["state"], run["current_experience"]) == ("created", 0)


def test_the_last_experience_is_accepted_and_the_next_one_is_out_of_range(
    run_id: str, probe: ProbeSet, relay: RelayProcess, agent_client: Callable, admin: RelayClient
) -> None:
    agent = agent_client(1, run_id)
    agent.publish(make_predictions(run_id, probe, agent_id=1, experience=EXPERIENCES - 1))
    before = relay.store_snapshot()

    with pytest.raises(OutOfRangeError) as failure:
        agent.publish(make_predictions(run_id, probe, agent_id=1, experience=EXPERIENCES))

    assert failure.value.code == grpc.StatusCode.OUT_OF_RANGE
    assert relay.store_snapshot() == before
    assert _run(admin, run_id)["current_experience"] == EXPERIENCES - 1


def test_a_negative_experience_is_invalid_for_publish_and_fetch_alike(
    run_id: str,
    probe: ProbeSet,
    relay: RelayProcess,
    relay_tokens: Tokens,
    agent_client: Callable,
) -> None:
    before = relay.store_snapshot()

    published = _publish_raw(relay, relay_tokens, run_id, probe, -1)
    with pytest.raises(InvalidArgumentError) as fetched:
        agent_client(0, run_id).fetch(run_id, 0, -1)

    assert published.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "PredictionMeta.experience must be >= 0, got -1" in published.details()
    assert fetched.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "FetchPredictionsRequest.experience must be >= 0, got -1" in fetched.value.details
    assert relay.store_snapshot() == before


def test_fetching_an_experience_beyond_the_run_is_out_of_range(
    run_id: str, agent_client: Callable
) -> None:
    with pytest.raises(OutOfRangeError) as failure:
        agent_client(0, run_id).fetch(run_id, 0, EXPERIENCES)

    assert failure.value.code == grpc.StatusCode.OUT_OF_RANGE
    assert f"FetchPredictionsRequest.experience {EXPERIENCES} is outside run" in (
        failure.value.details
    )


def test_latest_takes_any_bound_and_finds_nothing_below_zero(
    run_id: str, probe: ProbeSet, agent_client: Callable
) -> None:
    agent = agent_client(0, run_id)
    agent.publish(make_predictions(run_id, probe, experience=1))

    assert agent.fetch_latest(run_id, 0, max_experience=-1) is None
    assert agent.fetch_latest(run_id, 0, max_experience=INT32_MAX).experience == 1


def test_the_conductor_moves_the_current_experience_only_inside_the_run(
    run_id: str, relay: RelayProcess, admin: RelayClient
) -> None:
    info = admin.set_run_state(run_id, "running", EXPERIENCES - 1)

    with pytest.raises(OutOfRangeError) as beyond:
        admin.set_run_state(run_id, "running", EXPERIENCES)
    with pytest.raises(InvalidArgumentError) as negative:
        admin.set_run_state(run_id, "running", -1)

    assert info.current_experience == EXPERIENCES - 1
    assert "SetRunStateRequest.current_experience 10 is outside run" in beyond.value.details
    assert "SetRunStateRequest.current_experience must be >= 0" in negative.value.details
    assert _run(admin, run_id)["current_experience"] == EXPERIENCES - 1


def test_progress_beyond_the_runs_experiences_is_out_of_range(
    run_id: str, admin: RelayClient
) -> None:
    with pytest.raises(OutOfRangeError) as failure:
        admin.report_progress(run_id, 0, EXPERIENCES, "training")

    assert "ReportProgressRequest.experience 10 is outside run" in failure.value.details
    assert _run(admin, run_id)["agents"] == []


@pytest.mark.parametrize("experiences", [0, -3])
def test_a_run_without_a_positive_number_of_experiences_is_invalid(
    experiences: int, relay: RelayProcess, admin: RelayClient, probe: ProbeSet
) -> None:
    before = relay.store_snapshot()

    with pytest.raises(InvalidArgumentError) as failure:
        admin.create_run(f"no-experiences{experiences}", probe, NUM_CLASSES, experiences)

    assert f"RunSpec.experiences must be >= 1, got {experiences}" in failure.value.details
    assert relay.store_snapshot() == before


def test_a_run_tells_its_experiences_and_another_count_is_another_run(
    run_id: str, probe: ProbeSet, relay: RelayProcess, admin: RelayClient
) -> None:
    again = admin.create_run(
        run_id, probe, NUM_CLASSES, EXPERIENCES, config={"test": True}, expected_agents=40
    )
    before = relay.store_snapshot()

    with pytest.raises(AlreadyExistsError):
        admin.create_run(
            run_id, probe, NUM_CLASSES, EXPERIENCES + 1, config={"test": True}, expected_agents=40
        )

    assert (again.experiences, again.already_existed) == (EXPERIENCES, True)
    assert _run(admin, run_id)["experiences"] == EXPERIENCES
    assert relay.store_snapshot() == before
