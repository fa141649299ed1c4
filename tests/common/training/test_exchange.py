"""Specification of the in-memory prediction exchange."""

from __future__ import annotations

import pytest
import torch

from dkt.common.training.exchange import InMemoryExchange
from tests.support.predictions import predictions


def test_fetch_returns_what_was_published_for_that_agent_and_experience() -> None:
    exchange = InMemoryExchange()
    a0, a1, b0 = predictions(0, 0), predictions(0, 1), predictions(1, 0)
    for p in (a0, a1, b0):
        exchange.publish(p)

    assert exchange.fetch(0, 0) is a0
    assert exchange.fetch(0, 1) is a1
    assert exchange.fetch(1, 0) is b0


def test_fetch_of_something_never_published_is_none() -> None:
    exchange = InMemoryExchange()
    exchange.publish(predictions(0, 0))

    assert exchange.fetch(0, 1) is None
    assert exchange.fetch(1, 0) is None


def test_latest_is_the_newest_experience_of_that_agent() -> None:
    exchange = InMemoryExchange()
    # published out of order; agent 1's experience 5 must not count for agent 0
    for agent_id, experience in [(0, 2), (0, 0), (0, 1), (1, 5)]:
        exchange.publish(predictions(agent_id, experience))

    latest = exchange.latest(0)

    assert latest is not None
    assert (latest.agent_id, latest.experience) == (0, 2)


def test_latest_with_max_experience_is_the_newest_at_or_before_it() -> None:
    exchange = InMemoryExchange()
    for experience in (0, 2, 4):
        exchange.publish(predictions(0, experience))

    assert exchange.latest(0, max_experience=4).experience == 4
    assert exchange.latest(0, max_experience=3).experience == 2
    assert exchange.latest(0, max_experience=1).experience == 0
    assert exchange.latest(0, max_experience=0).experience == 0
    assert exchange.latest(0, max_experience=-1) is None


def test_latest_of_an_agent_that_published_nothing_is_none() -> None:
    exchange = InMemoryExchange()
    exchange.publish(predictions(0, 0))

    assert exchange.latest(1) is None
    assert exchange.latest(1, max_experience=3) is None


def test_republishing_identical_predictions_is_accepted() -> None:
    exchange = InMemoryExchange()
    exchange.publish(predictions(0, 0, [[1.0, 2.0]]))

    exchange.publish(predictions(0, 0, [[1.0, 2.0]]))

    stored = exchange.fetch(0, 0)
    assert torch.equal(stored.logits, torch.tensor([[1.0, 2.0]]))


def test_publishing_different_logits_for_the_same_experience_is_an_error() -> None:
    exchange = InMemoryExchange()
    first = predictions(0, 1, [[1.0, 2.0]])
    exchange.publish(first)

    with pytest.raises(
        ValueError, match="agent 0 already published different predictions for experience 1"
    ):
        exchange.publish(predictions(0, 1, [[1.0, 2.5]]))

    assert exchange.fetch(0, 1) is first


def test_publishing_different_classes_for_the_same_experience_is_an_error() -> None:
    exchange = InMemoryExchange()
    exchange.publish(predictions(0, 1, [[1.0, 2.0]], classes_seen=(0, 1)))

    with pytest.raises(ValueError, match="already published different predictions"):
        exchange.publish(predictions(0, 1, [[1.0, 2.0]], classes_seen=(0, 2)))


def test_publishing_a_different_shape_for_the_same_experience_is_an_error() -> None:
    exchange = InMemoryExchange()
    exchange.publish(predictions(0, 1, [[1.0, 2.0]]))

    with pytest.raises(ValueError, match="already published different predictions"):
        exchange.publish(predictions(0, 1, [[1.0, 2.0], [1.0, 2.0]]))


def test_encoded_size_is_the_bytes_of_the_logits() -> None:
    exchange = InMemoryExchange()
    zeros = [[0.0] * 4] * 3

    # 3 × 4 float32 = 12 · 4 bytes = 48; float16: 12 · 2 = 24
    as_float32 = predictions(0, 0, zeros)
    as_float16 = predictions(0, 0, zeros, dtype=torch.float16)
    assert exchange.encoded_size(as_float32) == as_float32.nbytes == 48
    assert exchange.encoded_size(as_float16) == as_float16.nbytes == 24
