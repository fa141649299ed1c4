"""FetchTeacherTargets: the relay combines an agent's peers' sets with the agents' own
`aggregate`, so the one set it sends equals, to float32 tolerance, what the agent would
compute from the raw sets; an agent's credential gets only its own targets in its run."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from dkt.common.data.probe import ProbeSet
from dkt.common.training.peers import PeerSet
from dkt.common.training.predictions import Predictions
from dkt.common.training.teacher import aggregate
from dkt.proto.relay_client import (
    InvalidArgumentError,
    PermissionDeniedError,
    RelayClient,
    ResourceExhaustedError,
)
from tests.support.relay import NUM_CLASSES, make_predictions


def _varied(run_id: str, probe: ProbeSet, agent_id: int, experience: int) -> Predictions:
    """A set whose classes_seen differ from agent to agent (so coverage is not the mean)."""
    p = make_predictions(run_id, probe, agent_id=agent_id, experience=experience)
    classes = tuple(sorted({agent_id % NUM_CLASSES, (agent_id + 3) % NUM_CLASSES}))
    return Predictions(
        p.agent_id, p.experience, classes, p.probe_fingerprint, p.logits, run_id=run_id
    )


@pytest.mark.parametrize("aggregation", ["mean", "coverage", "median", "trimmed-mean"])
@pytest.mark.parametrize("peers", [1, 2, 5])
def test_relay_targets_equal_the_agents_own_aggregate(
    admin: RelayClient,
    agent_client: Callable[[int, str], RelayClient],
    run_id: str,
    probe: ProbeSet,
    aggregation: str,
    peers: int,
) -> None:
    sets = [_varied(run_id, probe, a, 0) for a in range(1, peers + 1)]
    for p in sets:
        admin.publish(p)
    wanted = [PeerSet(p.agent_id, 0) for p in sets]

    got = agent_client(0, run_id).fetch_teacher_targets(run_id, 0, 1, wanted, aggregation)

    own = aggregate(sets, aggregation)
    assert own is not None and got.teacher is not None
    torch.testing.assert_close(got.teacher.logits, own.logits, rtol=1e-6, atol=1e-5)
    assert got.teacher.classes == own.classes
    assert got.teacher.sources == own.sources
    assert got.missing == ()
    assert got.payload_bytes == len(probe) * NUM_CLASSES * 4
    assert sum(got.coverage) == sum(len(p.classes_seen) for p in sets)


def test_latest_selectors_and_missing_peers_are_reported(
    admin: RelayClient,
    agent_client: Callable[[int, str], RelayClient],
    run_id: str,
    probe: ProbeSet,
) -> None:
    for experience in (0, 1, 2):
        admin.publish(make_predictions(run_id, probe, agent_id=1, experience=experience))
    admin.publish(make_predictions(run_id, probe, agent_id=2, experience=0))
    wanted = [PeerSet(1, max_experience=1), PeerSet(2), PeerSet(3, 0)]

    got = agent_client(0, run_id).fetch_teacher_targets(run_id, 0, 2, wanted, "mean")

    assert got.teacher is not None
    assert got.teacher.sources == ((1, 1), (2, 0))
    assert got.missing == (3,)
    own = aggregate(
        [
            make_predictions(run_id, probe, agent_id=1, experience=1),
            make_predictions(run_id, probe, agent_id=2, experience=0),
        ]
    )
    assert own is not None
    torch.testing.assert_close(got.teacher.logits, own.logits, rtol=1e-6, atol=1e-5)


def test_no_published_peer_gives_no_teacher_and_no_bytes(
    agent_client: Callable[[int, str], RelayClient], run_id: str
) -> None:
    got = agent_client(0, run_id).fetch_teacher_targets(run_id, 0, 1, [PeerSet(1, 0)], "mean")

    assert got.teacher is None
    assert got.missing == (1,)
    assert got.payload_bytes == 0


def test_float16_sets_are_widened_as_the_agent_does(
    admin: RelayClient,
    agent_client: Callable[[int, str], RelayClient],
    run_id: str,
    probe: ProbeSet,
) -> None:
    sets = [make_predictions(run_id, probe, agent_id=a) for a in (1, 2, 3)]
    for p in sets:
        admin.publish(p, encoding="float16")
    rounded = [
        Predictions(p.agent_id, 0, p.classes_seen, p.probe_fingerprint, p.logits.half(), run_id)
        for p in sets
    ]

    got = agent_client(0, run_id).fetch_teacher_targets(
        run_id, 0, 1, [PeerSet(p.agent_id, 0) for p in sets], "median"
    )

    own = aggregate(rounded, "median")
    assert got.teacher is not None and own is not None
    torch.testing.assert_close(got.teacher.logits, own.logits, rtol=0, atol=0)


def test_an_agent_gets_only_its_own_targets(
    agent_client: Callable[[int, str], RelayClient], run_id: str
) -> None:
    with pytest.raises(PermissionDeniedError, match="credential of agent 0 cannot fetch"):
        agent_client(0, run_id).fetch_teacher_targets(run_id, 1, 1, [PeerSet(2, 0)], "mean")


def test_an_agent_gets_targets_only_in_its_run(
    admin: RelayClient,
    agent_client: Callable[[int, str], RelayClient],
    run_id: str,
    probe: ProbeSet,
) -> None:
    other = run_id + "-b"
    admin.create_run(other, probe, NUM_CLASSES, 3)
    admin.publish(make_predictions(other, probe, agent_id=1))

    with pytest.raises(PermissionDeniedError, match=f"is for run {run_id!r}, not run"):
        agent_client(0, run_id).fetch_teacher_targets(other, 0, 1, [PeerSet(1, 0)], "mean")


@pytest.mark.parametrize(
    ("peers", "aggregation", "message"),
    [
        ([PeerSet(0, 0)], "mean", "the student itself"),
        ([PeerSet(1, 0), PeerSet(1, 0)], "mean", "named twice"),
        ([PeerSet(1, 0)], "average", "aggregation 'average' is not one of"),
    ],
)
def test_malformed_requests_are_invalid(
    agent_client: Callable[[int, str], RelayClient],
    run_id: str,
    peers: list[PeerSet],
    aggregation: str,
    message: str,
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        agent_client(0, run_id).fetch_teacher_targets(run_id, 0, 1, peers, aggregation)


def test_more_peers_than_the_bound_are_refused(
    agent_client: Callable[[int, str], RelayClient], run_id: str
) -> None:
    peers = [PeerSet(a, 0) for a in range(1, 1026)]

    with pytest.raises(ResourceExhaustedError, match="1025 peers; at most 1024"):
        agent_client(0, run_id).fetch_teacher_targets(run_id, 0, 1, peers, "mean")
