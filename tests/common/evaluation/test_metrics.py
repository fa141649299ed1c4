"""Specification of the continual-learning metrics over an accuracy matrix R[e][j]."""

from __future__ import annotations

import pytest
import torch

from dkt.common.evaluation.metrics import accuracy, average_accuracy, backward_transfer, forgetting

# R[e][j]: accuracy on experience j after training experience e. Accuracy on
# experience 0 rises after experience 1 (0.8 -> 0.9) before falling to 0.5, so the
# best earlier accuracy is not always the diagonal.
R = [
    [0.8, 0.1, 0.0],
    [0.9, 0.7, 0.2],
    [0.5, 0.6, 0.9],
]


def test_accuracy_is_the_fraction_of_rows_whose_argmax_is_the_target() -> None:
    logits = torch.tensor(
        [
            [0.1, 0.9, 0.0],  # argmax 1
            [2.0, 1.0, 0.0],  # argmax 0
            [0.0, 0.0, 5.0],  # argmax 2
            [0.3, 0.2, 0.1],  # argmax 0
        ]
    )
    targets = torch.tensor([1, 0, 2, 2])

    # 3 of 4 correct
    assert accuracy(logits, targets) == 0.75


def test_accuracy_of_no_rows_is_zero() -> None:
    assert accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == 0.0


def test_average_accuracy_is_the_mean_of_the_last_row_up_to_the_diagonal() -> None:
    # (0.5 + 0.6 + 0.9) / 3 = 2.0 / 3
    assert average_accuracy(R) == pytest.approx(2.0 / 3, abs=1e-12)


def test_average_accuracy_after_an_earlier_experience_ignores_later_columns() -> None:
    # after e=1: (0.9 + 0.7) / 2 = 0.8 (R[1][2] = 0.2 is not yet learned)
    assert average_accuracy(R, 1) == pytest.approx(0.8, abs=1e-12)
    # after e=0: 0.8 / 1
    assert average_accuracy(R, 0) == pytest.approx(0.8, abs=1e-12)


def test_forgetting_is_the_mean_drop_from_the_best_earlier_accuracy() -> None:
    # j=0: max(R[0][0], R[1][0]) - R[2][0] = max(0.8, 0.9) - 0.5 = 0.4
    # j=1: max(R[1][1])          - R[2][1] = 0.7 - 0.6           = 0.1
    # mean = (0.4 + 0.1) / 2 = 0.25
    assert forgetting(R) == pytest.approx(0.25, abs=1e-12)


def test_forgetting_takes_the_best_accuracy_before_the_last_experience_only() -> None:
    # The final accuracy on experience 0 (0.9) beats the only earlier one (0.5):
    # max over e in 0..T-2 = 0..0 is 0.5, so the "drop" is 0.5 - 0.9 = -0.4.
    # Were the final row included in the max, the result would be 0.
    r = [
        [0.5, 0.0],
        [0.9, 0.7],
    ]
    assert forgetting(r) == pytest.approx(-0.4, abs=1e-12)


def test_backward_transfer_is_the_mean_change_from_the_diagonal_to_the_last_row() -> None:
    # j=0: R[2][0] - R[0][0] = 0.5 - 0.8 = -0.3
    # j=1: R[2][1] - R[1][1] = 0.6 - 0.7 = -0.1
    # mean = (-0.3 + -0.1) / 2 = -0.2
    assert backward_transfer(R) == pytest.approx(-0.2, abs=1e-12)


def test_a_single_experience_has_no_forgetting_and_no_backward_transfer() -> None:
    r = [[0.7]]

    assert forgetting(r) == 0.0
    assert backward_transfer(r) == 0.0
    assert average_accuracy(r) == 0.7
