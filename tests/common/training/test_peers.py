"""Specification of peer policies (who teaches whom) and schedules (which predictions)."""

from __future__ import annotations

import pytest
import torch

from dkt.common.run.config import ExperimentConfig
from dkt.common.training.exchange import InMemoryExchange
from dkt.common.training.peers import assign_teachers, teacher_predictions, teachers_of
from dkt.common.training.predictions import Predictions

FINGERPRINT = "f" * 64


# assign_teachers ---------------------------------------------------------------------


def test_all_assigns_every_other_agent_sorted() -> None:
    assert assign_teachers(0, 0, 4, "all") == (1, 2, 3)
    assert assign_teachers(2, 5, 4, "all") == (0, 1, 3)
    assert assign_teachers(0, 0, 1, "all") == ()


def test_ring_assigns_the_previous_agent_wrapping_around() -> None:
    assert assign_teachers(2, 0, 4, "ring") == (1,)
    assert assign_teachers(0, 0, 4, "ring") == (3,)
    assert assign_teachers(1, 0, 2, "ring") == (0,)
    assert assign_teachers(0, 0, 1, "ring") == ()


@pytest.mark.parametrize("k", [1, 2, 4])
def test_random_k_assigns_k_distinct_sorted_peers_never_itself(k: int) -> None:
    for agent in range(5):
        for experience in range(4):
            teachers = assign_teachers(agent, experience, 5, "random-k", k=k, seed=0)

            assert len(teachers) == k
            assert len(set(teachers)) == k
            assert agent not in teachers
            assert list(teachers) == sorted(teachers)
            assert all(0 <= t < 5 for t in teachers)


def test_random_k_is_deterministic_for_the_same_seed() -> None:
    first = [assign_teachers(1, e, 6, "random-k", k=2, seed=3) for e in range(5)]
    second = [assign_teachers(1, e, 6, "random-k", k=2, seed=3) for e in range(5)]

    assert first == second


def test_random_k_varies_across_experiences() -> None:
    # seed 0, agent 0 of 5, k=2: experiences 0..5 give (1,2) (1,3) (2,4) (2,4) (3,4) (1,2)
    picks = [assign_teachers(0, e, 5, "random-k", k=2, seed=0) for e in range(6)]

    assert picks == [(1, 2), (1, 3), (2, 4), (2, 4), (3, 4), (1, 2)]


@pytest.mark.parametrize("k", [0, 5])
def test_random_k_with_k_outside_1_to_peers_is_an_error(k: int) -> None:
    with pytest.raises(ValueError, match=f"random-k needs 1 <= k <= 4, got k={k}"):
        assign_teachers(0, 0, 5, "random-k", k=k)


# teacher_predictions -----------------------------------------------------------------


def published(agent_id: int, experience: int) -> Predictions:
    """A 1×1 prediction whose logit 10·agent + experience says whose it is."""
    logits = torch.tensor([[float(10 * agent_id + experience)]])
    return Predictions(agent_id, experience, (0,), FINGERPRINT, logits)


def exchange_with(*keys: tuple[int, int]) -> InMemoryExchange:
    exchange = InMemoryExchange()
    for agent_id, experience in keys:
        exchange.publish(published(agent_id, experience))
    return exchange


def sources(found: list[Predictions]) -> list[tuple[int, int]]:
    return [(p.agent_id, p.experience) for p in found]


# Agents 0, 1, 2 have each published experiences 0, 1 and 2.
EVERYTHING = [(a, e) for a in range(3) for e in range(3)]


def test_sync_at_the_first_experience_has_no_teachers() -> None:
    exchange = exchange_with(*EVERYTHING)

    assert teacher_predictions(exchange, 1, (0, 2), 0, "sync") == []


def test_sync_uses_every_teachers_previous_experience() -> None:
    exchange = exchange_with(*EVERYTHING)

    found = teacher_predictions(exchange, 1, (0, 2), 2, "sync")

    assert sources(found) == [(0, 1), (2, 1)]
    assert [p.logits.item() for p in found] == [1.0, 21.0]


def test_sync_skips_a_teacher_without_the_previous_experience() -> None:
    # agent 2 published only experience 0: nothing for experience 2 - 1 = 1
    exchange = exchange_with((0, 0), (0, 1), (2, 0))

    assert sources(teacher_predictions(exchange, 1, (0, 2), 2, "sync")) == [(0, 1)]


def test_sequential_uses_this_experience_of_lower_ids_and_the_previous_of_higher() -> None:
    exchange = exchange_with(*EVERYTHING)

    found = teacher_predictions(exchange, 1, (0, 2), 1, "sequential")

    # teacher 0 < 1 has already trained experience 1; teacher 2 > 1 only experience 0
    assert sources(found) == [(0, 1), (2, 0)]
    assert [p.logits.item() for p in found] == [1.0, 20.0]


def test_sequential_first_experience_uses_only_lower_ids() -> None:
    exchange = exchange_with(*EVERYTHING)

    found = teacher_predictions(exchange, 1, (0, 2), 0, "sequential")

    assert sources(found) == [(0, 0)]


def test_sequential_falls_back_to_a_teachers_newest_earlier_predictions() -> None:
    # teacher 0 stopped after experience 0; agent 1 at experience 2 takes that
    exchange = exchange_with((0, 0), (2, 0), (2, 1))

    found = teacher_predictions(exchange, 1, (0, 2), 2, "sequential")

    assert sources(found) == [(0, 0), (2, 1)]


def test_teachers_that_published_nothing_are_skipped() -> None:
    exchange = exchange_with((0, 0), (0, 1))

    assert sources(teacher_predictions(exchange, 1, (0, 2), 2, "sync")) == [(0, 1)]
    assert sources(teacher_predictions(exchange, 1, (0, 2), 2, "sequential")) == [(0, 1)]
    assert teacher_predictions(exchange, 0, (1, 2), 2, "sequential") == []


def test_async_uses_each_teachers_newest_predictions_whatever_the_experience() -> None:
    # teacher 0 is ahead (experience 2), teacher 2 behind (experience 0)
    exchange = exchange_with((0, 0), (0, 1), (0, 2), (2, 0))

    found = teacher_predictions(exchange, 1, (0, 2), 1, "async")

    assert sources(found) == [(0, 2), (2, 0)]


def test_random_k_with_a_single_agent_has_no_teachers() -> None:
    assert assign_teachers(0, 3, agents=1, policy="random-k", k=1, seed=0) == ()


def test_sync_uses_the_final_predictions_of_a_teacher_whose_stream_has_ended() -> None:
    exchange = InMemoryExchange()
    exchange.publish(Predictions(1, 0, (0, 1), FINGERPRINT, torch.zeros(2, 3)))

    found = teacher_predictions(exchange, 0, (1,), 3, "sync", last_experience={1: 0})

    assert [(p.agent_id, p.experience) for p in found] == [(1, 0)]


# teachers_of: an agent's spec before the peer policy ------------------------------------


def test_teachers_of_follows_the_peer_policy_without_directed_teachers() -> None:
    config = ExperimentConfig(agents=3, peer_policy="ring")

    assert [teachers_of(config, a, 1) for a in range(3)] == [(2,), (0,), (1,)]


def test_directed_teachers_replace_the_policy_for_their_agent_only() -> None:
    config = ExperimentConfig(
        agents=3, agent_overrides={1: {"teachers": [2, 0]}, 2: {"teachers": []}}
    )

    assert teachers_of(config, 0, 1) == (1, 2)
    assert teachers_of(config, 1, 1) == (0, 2)
    assert teachers_of(config, 2, 1) == ()
