"""Specification of teacher aggregation: several peers' probe logits into one teacher."""

from __future__ import annotations

import pytest
import torch

from dkt.common.training.teacher import Teacher, aggregate
from tests.support.predictions import predictions

# Two probe rows, four classes.
A_LOGITS = [[1.0, 2.0, 3.0, 4.0], [-1.0, 0.0, 2.0, 2.0]]
B_LOGITS = [[3.0, 4.0, 5.0, 8.0], [1.0, 2.0, 6.0, 0.0]]


def test_mean_is_the_average_of_the_peers_logits() -> None:
    a = predictions(0, logits=A_LOGITS, classes_seen=(0, 1))
    b = predictions(1, logits=B_LOGITS, classes_seen=(1, 2))

    teacher = aggregate([a, b], "mean")

    assert isinstance(teacher, Teacher)
    # (A + B) / 2 element-wise: row 0 (1+3)/2, (2+4)/2, (3+5)/2, (4+8)/2;
    #                           row 1 (-1+1)/2, (0+2)/2, (2+6)/2, (2+0)/2
    expected = torch.tensor([[2.0, 3.0, 4.0, 6.0], [0.0, 1.0, 4.0, 1.0]])
    assert torch.equal(teacher.logits, expected)


def test_mean_is_the_default_aggregation() -> None:
    a = predictions(0, logits=A_LOGITS, classes_seen=(0, 1))
    b = predictions(1, logits=B_LOGITS, classes_seen=(1, 2))

    assert torch.equal(aggregate([a, b]).logits, aggregate([a, b], "mean").logits)


def test_coverage_averages_each_class_over_only_the_peers_that_saw_it() -> None:
    a = predictions(0, logits=A_LOGITS, classes_seen=(0, 1))
    b = predictions(1, logits=B_LOGITS, classes_seen=(1, 2))

    teacher = aggregate([a, b], "coverage")

    # class 0: only A saw it -> A's logit          (1, -1)
    # class 1: both saw it   -> (A + B) / 2         ((2+4)/2, (0+2)/2) = (3, 1)
    # class 2: only B saw it -> B's logit          (5, 6)
    # class 3: nobody saw it -> mean of all peers   ((4+8)/2, (2+0)/2) = (6, 1)
    expected = torch.tensor([[1.0, 3.0, 5.0, 6.0], [-1.0, 1.0, 6.0, 1.0]])
    assert torch.equal(teacher.logits, expected)


def test_teacher_records_the_union_of_classes_and_its_sources() -> None:
    a = predictions(2, logits=A_LOGITS, classes_seen=(1, 0), experience=3)
    b = predictions(0, logits=B_LOGITS, classes_seen=(2, 1), experience=4)

    teacher = aggregate([a, b], "coverage")

    assert teacher.classes == (0, 1, 2)
    assert teacher.sources == ((2, 3), (0, 4))


def test_a_single_peer_is_its_own_teacher() -> None:
    a = predictions(0, logits=A_LOGITS, classes_seen=(0, 1))

    assert torch.equal(aggregate([a], "mean").logits, torch.tensor(A_LOGITS))
    # coverage: classes 0, 1 are A's own, classes 2, 3 fall back to the mean = A
    assert torch.equal(aggregate([a], "coverage").logits, torch.tensor(A_LOGITS))


def test_teacher_logits_are_float32_even_from_half_precision_peers() -> None:
    a = predictions(0, logits=A_LOGITS, classes_seen=(0,), dtype=torch.float16)

    assert aggregate([a]).logits.dtype == torch.float32


def test_no_peers_means_no_teacher() -> None:
    assert aggregate([], "mean") is None
    assert aggregate([], "coverage") is None


def test_peers_with_different_probe_fingerprints_are_rejected() -> None:
    a = predictions(0, logits=A_LOGITS, classes_seen=(0, 1), fingerprint="a" * 64)
    b = predictions(1, logits=B_LOGITS, classes_seen=(1, 2), fingerprint="b" * 64)

    with pytest.raises(ValueError, match="fingerprints differ"):
        aggregate([a, b])


def test_peers_with_different_logit_shapes_are_rejected() -> None:
    a = predictions(0, logits=A_LOGITS, classes_seen=(0, 1))
    b = predictions(1, logits=[[1.0, 2.0, 3.0]], classes_seen=(1, 2))

    with pytest.raises(ValueError, match=r"different shapes: \[\(1, 3\), \(2, 4\)\]"):
        aggregate([a, b])


def test_coverage_leaves_the_peers_logits_as_they_were() -> None:
    a = predictions(0, logits=A_LOGITS, classes_seen=(0, 1, 2, 3))
    b = predictions(1, logits=B_LOGITS, classes_seen=(1,))

    aggregate([a, b], "coverage")

    assert torch.equal(a.logits, torch.tensor(A_LOGITS))
    assert torch.equal(b.logits, torch.tensor(B_LOGITS))
