"""Specification of class-incremental streams: class orders per agent, split into experiences."""

from __future__ import annotations

import itertools

import pytest
import torch

from dkt.common.data.datasets import make_synthetic
from dkt.common.data.labeled_data import LabeledData
from dkt.common.data.streams import (
    ASSIGNMENTS,
    AgentStream,
    ClassRows,
    build_stream,
    build_streams,
    class_orders,
)

NUM_CLASSES = 10
DATA = make_synthetic(num_classes=NUM_CLASSES, train_per_class=4, test_per_class=2, seed=0)
ALL_CLASSES = list(range(NUM_CLASSES))
# (agents, experiences) that every assignment supports with 10 classes: disjoint gives
# 5 agents 2 classes each, 3 agents 4/3/3 classes.
SHAPES = [(1, 1), (1, 10), (2, 5), (3, 3), (5, 2)]


def streams(agents: int, experiences: int, assignment: str, seed: int = 0) -> list[AgentStream]:
    return build_streams(NUM_CLASSES, agents, experiences, assignment, seed, DATA.train, DATA.test)


def rows_of(data: LabeledData, classes: tuple[int, ...]) -> list[int]:
    return [i for i, label in enumerate(data.y.tolist()) if label in classes]


@pytest.mark.parametrize(("agents", "experiences"), SHAPES)
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_every_class_of_an_agent_is_in_exactly_one_experience(
    assignment: str, agents: int, experiences: int
) -> None:
    result = streams(agents, experiences, assignment)

    assert [s.agent_id for s in result] == list(range(agents))
    for stream in result:
        assert len(stream) == experiences
        assert [e.index for e in stream.experiences] == list(range(experiences))
        per_experience = [set(e.classes) for e in stream.experiences]
        for a, b in itertools.combinations(per_experience, 2):
            assert a.isdisjoint(b)
        assert set().union(*per_experience) == set(stream.classes)
        assert len(stream.classes) == len(set(stream.classes))
        # sizes differ by at most one, larger first
        sizes = [len(e.classes) for e in stream.experiences]
        assert sizes == sorted(sizes, reverse=True)
        assert sizes[0] - sizes[-1] <= 1


@pytest.mark.parametrize(("agents", "experiences"), SHAPES)
def test_disjoint_agents_have_pairwise_disjoint_classes_covering_all(
    agents: int, experiences: int
) -> None:
    result = streams(agents, experiences, "disjoint")

    class_sets = [set(s.classes) for s in result]
    for a, b in itertools.combinations(class_sets, 2):
        assert a.isdisjoint(b)
    assert sorted(set().union(*class_sets)) == ALL_CLASSES


def test_disjoint_splits_classes_as_evenly_as_possible_larger_first() -> None:
    orders = class_orders(NUM_CLASSES, 3, "disjoint", seed=0)

    # 10 classes over 3 agents: 10 = 4 + 3 + 3
    assert [len(o) for o in orders] == [4, 3, 3]


def test_shuffled_gives_each_agent_its_own_permutation_of_all_classes() -> None:
    orders = class_orders(NUM_CLASSES, 3, "shuffled", seed=0)

    for order in orders:
        assert sorted(order) == ALL_CLASSES
    # For seed 0 all three orders differ (checked: they start 0,2,5 / 4,9,1 / 0,3,6).
    assert orders[0] != orders[1]
    assert orders[0] != orders[2]
    assert orders[1] != orders[2]


def test_same_gives_every_agent_the_same_permutation_of_all_classes() -> None:
    orders = class_orders(NUM_CLASSES, 4, "same", seed=0)

    assert sorted(orders[0]) == ALL_CLASSES
    assert orders[0] != ALL_CLASSES  # shuffled, not the identity, for seed 0
    assert orders == [orders[0]] * 4


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_the_same_seed_gives_the_same_orders(assignment: str) -> None:
    first = class_orders(NUM_CLASSES, 3, assignment, seed=7)
    second = class_orders(NUM_CLASSES, 3, assignment, seed=7)
    other = class_orders(NUM_CLASSES, 3, assignment, seed=8)

    assert first == second
    assert first != other


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_each_experience_holds_all_rows_of_its_classes_and_no_others(assignment: str) -> None:
    result = streams(3, 3, assignment)

    for stream in result:
        for exp in stream.experiences:
            for data, source in ((exp.train, DATA.train), (exp.test, DATA.test)):
                assert set(data.y.tolist()) == set(exp.classes)
                rows = rows_of(source, exp.classes)
                # train: 4 rows per class, test: 2 rows per class
                per_class = 4 if source is DATA.train else 2
                assert len(data) == len(rows) == per_class * len(exp.classes)
                assert torch.equal(data.x, source.x[rows])
                assert torch.equal(data.y, source.y[rows])


def test_build_stream_splits_the_order_into_contiguous_experiences() -> None:
    order = [7, 2, 5, 0, 9, 1, 4]

    stream = build_stream(0, order, 3, DATA.train, DATA.test)

    # 7 classes over 3 experiences: 3 + 2 + 2, in order
    assert [e.classes for e in stream.experiences] == [(7, 2, 5), (0, 9), (1, 4)]
    assert stream.classes == (7, 2, 5, 0, 9, 1, 4)


def test_classes_seen_are_the_sorted_classes_of_experiences_up_to_e() -> None:
    stream = build_stream(0, [7, 2, 5, 0, 9, 1], 3, DATA.train, DATA.test)

    assert stream.classes_seen(0) == (2, 7)
    assert stream.classes_seen(1) == (0, 2, 5, 7)
    assert stream.classes_seen(2) == (0, 1, 2, 5, 7, 9)


def test_more_experiences_than_classes_is_an_error_that_says_what_to_do() -> None:
    with pytest.raises(ValueError) as info:
        streams(1, NUM_CLASSES + 1, "shuffled")

    assert str(info.value) == (
        "agent 0 has 10 classes, too few for 11 experiences: "
        "lower --experiences or give each agent more classes"
    )


def test_disjoint_agents_with_too_few_classes_for_the_experiences_is_an_error() -> None:
    # 3 disjoint agents get 4, 3, 3 classes: agent 1 cannot have 4 experiences.
    with pytest.raises(ValueError, match="agent 1 has 3 classes, too few for 4 experiences"):
        streams(3, 4, "disjoint")


def test_disjoint_with_more_agents_than_classes_is_an_error() -> None:
    with pytest.raises(ValueError) as info:
        class_orders(NUM_CLASSES, NUM_CLASSES + 1, "disjoint", seed=0)

    assert str(info.value) == (
        "disjoint assignment needs at least one class per agent: 11 agents but only 10 classes"
    )


@pytest.mark.parametrize("classes", [(3,), (7, 2, 5), (0, 9), (9, 0), (4, 4, 1), (), (11,)])
def test_class_rows_gives_the_rows_of_the_classes_in_their_original_order(
    classes: tuple[int, ...],
) -> None:
    for source in (DATA.train, DATA.test):
        found = ClassRows(source).of_classes(classes)
        expected = source.of_classes(classes)

        assert torch.equal(found.x, expected.x)
        assert torch.equal(found.y, expected.y)


def test_agents_whose_experiences_hold_the_same_classes_share_one_copy_of_their_rows() -> None:
    first, second = streams(2, 5, "same")

    for a, b in zip(first.experiences, second.experiences, strict=True):
        assert a.train.x is b.train.x
        assert a.test.x is b.test.x
