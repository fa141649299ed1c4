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


# Robust aggregation: one bad teacher ------------------------------------------------

HONEST = [[[1.0, 2.0, 3.0, 4.0]], [[2.0, 3.0, 4.0, 5.0]], [[3.0, 4.0, 5.0, 6.0]]]
POISON = [[900.0, -900.0, 900.0, -900.0]]


def test_the_median_of_three_teachers_ignores_one_poisoned_teacher() -> None:
    peers = [predictions(a, logits=rows) for a, rows in enumerate([*HONEST[:2], POISON])]

    teacher = aggregate(peers, "median")

    assert teacher is not None
    assert teacher.logits.tolist() == [[2.0, 2.0, 4.0, 4.0]]


def test_the_median_of_an_even_number_is_the_mean_of_the_middle_two() -> None:
    peers = [predictions(a, logits=rows) for a, rows in enumerate([*HONEST, POISON])]

    teacher = aggregate(peers, "median")

    assert teacher is not None
    assert teacher.logits.tolist() == [[2.5, 2.5, 4.5, 4.5]]


def test_the_trimmed_mean_drops_the_highest_and_lowest_of_each_value() -> None:
    peers = [predictions(a, logits=rows) for a, rows in enumerate([*HONEST, POISON])]

    teacher = aggregate(peers, "trimmed-mean")  # 4 teachers: k = 1 from each end

    assert teacher is not None
    assert teacher.logits.tolist() == [[2.5, 2.5, 4.5, 4.5]]


def test_the_trimmed_mean_of_two_teachers_is_their_mean() -> None:
    peers = [predictions(a, logits=rows) for a, rows in enumerate(HONEST[:2])]

    robust, plain = aggregate(peers, "trimmed-mean"), aggregate(peers, "mean")

    assert robust is not None and plain is not None
    assert torch.equal(robust.logits, plain.logits)


def test_teachers_logits_are_clipped_to_the_relays_bound_before_they_are_combined() -> None:
    peers = [
        predictions(0, logits=[[1e30, -1e30, 0.0, 5.0]]),
        predictions(1, logits=[[0.0, 0.0, 0.0, 5.0]]),
    ]

    teacher = aggregate(peers, "mean")

    assert teacher is not None
    assert teacher.logits.tolist() == [[500.0, -500.0, 0.0, 5.0]]


# -- one set at a time (the relay's FetchTeacherTargets) -----------------------------------


def _running(sets: list, how: str) -> Teacher | None:
    from dkt.common.training.teacher import RunningTeacher

    running = RunningTeacher(how)
    for p in sets:
        running.add(p)
    return running.result()


def test_running_mean_and_coverage_give_the_hand_computed_teachers() -> None:
    a = predictions(0, logits=A_LOGITS, classes_seen=(0, 1))
    b = predictions(1, logits=B_LOGITS, classes_seen=(1, 2))

    mean = _running([a, b], "mean")
    coverage = _running([a, b], "coverage")

    assert mean is not None and coverage is not None
    assert torch.equal(mean.logits, torch.tensor([[2.0, 3.0, 4.0, 6.0], [0.0, 1.0, 4.0, 1.0]]))
    # class 0: only a saw it; 1: both (the mean); 2: only b; 3: nobody (the mean of all)
    expected = torch.tensor([[1.0, 3.0, 5.0, 6.0], [-1.0, 1.0, 6.0, 1.0]])
    assert torch.equal(coverage.logits, expected)
    assert (coverage.classes, coverage.sources) == ((0, 1, 2), ((0, 1), (1, 1)))


@pytest.mark.parametrize("how", ["mean", "coverage"])
def test_running_equals_aggregate_to_float32_rounding(how: str) -> None:
    gen = torch.Generator().manual_seed(3)
    sets = [
        predictions(
            a,
            logits=(torch.randn(9, 6, generator=gen) * (2000 if a == 4 else 5)).tolist(),
            classes_seen=tuple({a % 5, (3 * a) % 5}),
        )
        for a in range(11)
    ]

    running, stacked = _running(sets, how), aggregate(sets, how)

    assert running is not None and stacked is not None
    torch.testing.assert_close(running.logits, stacked.logits, rtol=1e-6, atol=1e-5)
    assert (running.classes, running.sources) == (stacked.classes, stacked.sources)


def test_running_leaves_the_peers_logits_as_they_were() -> None:
    a = predictions(0, logits=[[5000.0, 1.0]], classes_seen=(0,))
    _running([a], "coverage")
    assert a.logits.tolist() == [[5000.0, 1.0]]  # clipped only in the sums


def test_running_refuses_the_robust_aggregations_and_has_no_teacher_before_a_set() -> None:
    from dkt.common.training.teacher import RunningTeacher

    with pytest.raises(ValueError, match="'median' needs every set at once"):
        RunningTeacher("median")
    assert RunningTeacher("mean").result() is None


@pytest.mark.parametrize("how", ["median", "trimmed-mean"])
@pytest.mark.parametrize("peers", [1, 2, 3, 4, 7])
def test_robust_aggregates_in_blocks_of_rows_equal_sorting_all_at_once(
    how: str, peers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dkt.common.training import teacher as module

    stacked = torch.randn(peers, 53, 6, generator=torch.Generator().manual_seed(peers))
    ordered = stacked.sort(dim=0).values
    if how == "median":
        middle = ordered[peers // 2]
        expected = middle if peers % 2 else (ordered[peers // 2 - 1] + middle) / 2
    else:
        k = max(1, peers // 4) if peers >= 3 else 0
        expected = ordered[k : peers - k].mean(dim=0)

    monkeypatch.setattr(module, "_SORT_BLOCK_VALUES", 5 * peers * 6)  # blocks of 5 rows

    got = module.robust_aggregate(stacked, how)

    if how == "median":
        assert torch.equal(got, expected)  # values picked, not computed: exactly the same
    else:
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
