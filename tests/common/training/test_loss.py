"""Specification of the DKT loss: CE on the cl head plus λ times distillation on the st head."""

from __future__ import annotations

import math

import pytest
import torch

from dkt.common.training.loss import dkt_loss, kd_loss, lwf_loss

LN2 = math.log(2)


def test_mse_kd_is_the_mean_squared_difference_of_raw_logits() -> None:
    student = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]])
    teacher = torch.tensor([[1.0, 0.0, 3.0], [2.0, 1.0, 1.0]])

    loss = kd_loss(student, teacher, "mse", temperature=1.0)

    # differences: [0, 2, 0], [-2, -2, 3]; squares: 0 + 4 + 0 + 4 + 4 + 9 = 21; 21 / 6 = 3.5
    assert loss.item() == 3.5


def test_mse_kd_ignores_the_temperature() -> None:
    student = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]])
    teacher = torch.tensor([[1.0, 0.0, 3.0], [2.0, 1.0, 1.0]])

    assert kd_loss(student, teacher, "mse", temperature=4.0).item() == 3.5


def test_kl_kd_at_temperature_two_is_t_squared_times_the_batch_mean_kl() -> None:
    # Logits chosen so that softmax(logits / 2) has closed-form probabilities.
    student = torch.tensor([[0.0, 0.0, 0.0], [0.0, 2 * LN2, 2 * LN2]])
    teacher = torch.tensor([[2 * LN2, 0.0, 0.0], [0.0, 0.0, 0.0]])

    loss = kd_loss(student, teacher, "kl", temperature=2.0)

    # Row 0: teacher/2 = [ln2, 0, 0] -> p = [2, 1, 1] / 4 = [1/2, 1/4, 1/4];
    #        student/2 = [0, 0, 0]   -> q = [1/3, 1/3, 1/3];
    #        KL(p||q) = 1/2·ln(3/2) + 2·1/4·ln(3/4) = 1/2·ln(9/8) ≈ 0.0588915
    # Row 1: teacher/2 = [0, 0, 0]     -> p = [1/3, 1/3, 1/3];
    #        student/2 = [0, ln2, ln2] -> q = [1, 2, 2] / 5 = [1/5, 2/5, 2/5];
    #        KL(p||q) = 1/3·ln(5/3) + 2·1/3·ln(5/6) = 1/3·ln(125/108) ≈ 0.0487275
    # batch mean ≈ 0.0538095, times T² = 4 -> ≈ 0.2152380
    row0 = 0.5 * math.log(9 / 8)
    row1 = math.log(125 / 108) / 3
    expected = 4 * (row0 + row1) / 2
    assert expected == pytest.approx(0.2152380, abs=1e-7)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_kl_kd_matches_an_explicit_softmax_computation() -> None:
    student = [[1.0, -0.5, 2.0], [0.3, 0.0, -1.2]]
    teacher = [[0.5, 1.5, -1.0], [2.0, -0.7, 0.1]]
    t = 2.0

    def softmax(row: list[float]) -> list[float]:
        exps = [math.exp(v / t) for v in row]
        return [e / sum(exps) for e in exps]

    kls = []
    for s_row, t_row in zip(student, teacher, strict=True):
        p, q = softmax(t_row), softmax(s_row)
        kls.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True)))
    expected = t * t * sum(kls) / len(kls)

    loss = kd_loss(torch.tensor(student), torch.tensor(teacher), "kl", temperature=t)

    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_kl_kd_is_zero_when_student_equals_teacher() -> None:
    logits = torch.tensor([[1.0, -0.5, 2.0], [0.3, 0.0, -1.2]])

    assert kd_loss(logits, logits.clone(), "kl", temperature=2.0).item() == pytest.approx(
        0.0, abs=1e-7
    )


def test_dkt_loss_without_teacher_has_zero_kd_and_total_equal_to_ce() -> None:
    # All-zero logits over 4 classes: softmax is uniform, so CE = -ln(1/4) = ln 4.
    cl_logits = torch.zeros(3, 4)
    targets = torch.tensor([0, 2, 3])
    st_logits = torch.randn(3, 4)

    parts = dkt_loss(cl_logits, targets, st_logits, None, kd_weight=0.5)

    assert parts.kd.item() == 0.0
    assert parts.ce.item() == pytest.approx(math.log(4), rel=1e-6)
    assert torch.equal(parts.total, parts.ce)


def test_dkt_loss_without_student_logits_has_zero_kd() -> None:
    cl_logits = torch.zeros(3, 4)
    targets = torch.tensor([0, 2, 3])

    parts = dkt_loss(cl_logits, targets, None, torch.ones(3, 4), kd_weight=0.5)

    assert parts.kd.item() == 0.0
    assert torch.equal(parts.total, parts.ce)


def test_dkt_loss_total_is_ce_plus_lambda_times_kd() -> None:
    cl_logits = torch.zeros(2, 4)
    targets = torch.tensor([1, 3])
    st_logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]])
    teacher = torch.tensor([[1.0, 0.0, 3.0], [2.0, 1.0, 1.0]])

    parts = dkt_loss(cl_logits, targets, st_logits, teacher, kd_weight=0.5, kind="mse")

    # ce = ln 4 (uniform over 4 classes); kd = 21 / 6 = 3.5 (see the mse test);
    # total = ln 4 + 0.5 · 3.5 = ln 4 + 1.75 ≈ 3.1362944
    assert parts.ce.item() == pytest.approx(math.log(4), rel=1e-6)
    assert parts.kd.item() == 3.5
    assert parts.total.item() == pytest.approx(math.log(4) + 1.75, rel=1e-6)


def test_dkt_loss_gradient_of_kd_reaches_only_the_student_logits() -> None:
    cl_logits = torch.zeros(2, 3, requires_grad=True)
    st_logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]], requires_grad=True)
    teacher = torch.tensor([[1.0, 0.0, 3.0], [2.0, 1.0, 1.0]])

    parts = dkt_loss(cl_logits, torch.tensor([0, 1]), st_logits, teacher, kd_weight=0.5)
    parts.kd.backward()

    # d/ds mean((s - t)²) = 2 (s - t) / 6 = (s - t) / 3
    assert cl_logits.grad is None
    expected = (st_logits.detach() - teacher) / 3
    assert torch.allclose(st_logits.grad, expected)


# LwF: Avalanche's LearningWithoutForgetting._distillation_loss --------------------------

LN3 = math.log(3)


def test_lwf_is_the_batch_mean_kl_from_the_previous_model_on_its_classes_only() -> None:
    # Old classes 0 and 1; column 2 is a new class and must not count.
    current = torch.tensor([[LN3, 0.0, -7.0], [1.0, 2.0, 50.0]])
    previous = torch.tensor([[0.0, 0.0, 5.0], [1.0, 2.0, -3.0]])

    loss = lwf_loss(current, previous, [0, 1], temperature=1.0)

    # Row 0: previous on [0, 1] -> q = [1/2, 1/2]; current [ln3, 0] -> p = [3/4, 1/4];
    #        KL(q || p) = 1/2 ln((1/2)/(3/4)) + 1/2 ln((1/2)/(1/4)) = 1/2 ln(4/3).
    # Row 1: the same logits on [0, 1] -> 0.  Batch mean: 1/4 ln(4/3).
    assert loss.item() == pytest.approx(0.25 * math.log(4 / 3), abs=1e-6)


def test_lwf_at_temperature_two_divides_the_logits_and_is_not_scaled_by_t_squared() -> None:
    current = torch.tensor([[2 * LN3, 0.0]])  # /2 -> [ln3, 0] -> p = [3/4, 1/4]
    previous = torch.tensor([[0.0, 0.0]])  # q = [1/2, 1/2]

    loss = lwf_loss(current, previous, [0, 1], temperature=2.0)

    # 1/2 ln(4/3), as Avalanche computes it; kd_loss's kl would give 4 times this.
    assert loss.item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)


def test_lwf_is_zero_without_old_classes_and_when_the_models_agree() -> None:
    logits = torch.tensor([[1.0, -2.0, 0.5]])

    assert lwf_loss(logits, torch.zeros(1, 3), [], temperature=2.0).item() == 0.0
    assert lwf_loss(logits, logits.clone(), [0, 2], temperature=2.0).item() == pytest.approx(0.0)


def test_lwf_gradient_reaches_only_the_current_logits_of_old_classes() -> None:
    current = torch.tensor([[0.3, -0.2, 1.0]], requires_grad=True)
    previous = torch.tensor([[1.0, 0.0, 0.0]], requires_grad=True)

    lwf_loss(current, previous, [0, 1], temperature=2.0).backward()

    assert current.grad is not None and current.grad[0, 2] == 0.0
    assert current.grad[0, :2].abs().sum() > 0


# mse-soft: the original README's MSE between temperature-softened probabilities --------


def test_mse_soft_kd_is_t_squared_times_the_mse_of_softened_probabilities() -> None:
    # The kl test's logits: softmax(logits / 2) has closed-form probabilities.
    student = torch.tensor([[0.0, 0.0, 0.0], [0.0, 2 * LN2, 2 * LN2]])
    teacher = torch.tensor([[2 * LN2, 0.0, 0.0], [0.0, 0.0, 0.0]])

    loss = kd_loss(student, teacher, "mse-soft", temperature=2.0)

    # Row 0: q = [1/3, 1/3, 1/3], p = [1/2, 1/4, 1/4]; q - p = [-1/6, 1/12, 1/12];
    #        squares 1/36 + 1/144 + 1/144 = 1/24.
    # Row 1: q = [1/5, 2/5, 2/5], p = [1/3, 1/3, 1/3]; q - p = [-2/15, 1/15, 1/15];
    #        squares 4/225 + 1/225 + 1/225 = 2/75.
    # Mean over 6 entries: (1/24 + 2/75) / 6 = 41/3600; times T² = 4 -> 41/900 ≈ 0.0455556
    assert loss.item() == pytest.approx(41 / 900, rel=1e-6)


def test_mse_soft_kd_at_temperature_one_is_the_readme_equation_and_its_gradient() -> None:
    student = torch.tensor([[0.0, 0.0]], requires_grad=True)  # q = [1/2, 1/2]
    teacher = torch.tensor([[math.log(3), 0.0]])  # p = [3/4, 1/4]

    loss = kd_loss(student, teacher, "mse-soft", temperature=1.0)
    loss.backward()

    # ((1/2 - 3/4)² + (1/2 - 1/4)²) / 2 = 1/16, no T² factor at T = 1.
    assert loss.item() == pytest.approx(1 / 16, rel=1e-6)
    # dL/dq = (q - p) = [-1/4, 1/4]; dq/ds = diag(q) - q qᵀ = [[1/4, -1/4], [-1/4, 1/4]];
    # dL/ds = [-1/8, 1/8].
    assert student.grad is not None
    assert torch.allclose(student.grad, torch.tensor([[-0.125, 0.125]]))


def test_mse_soft_kd_is_zero_for_equal_logits_and_bounded_by_two_t_squared_over_c() -> None:
    logits = torch.tensor([[1.0, -0.5, 2.0, 0.0], [0.3, 0.0, -1.2, 4.0]])
    assert kd_loss(logits, logits.clone(), "mse-soft", temperature=2.0).item() == pytest.approx(
        0.0, abs=1e-9
    )
    # Opposite one-hot distributions: each row's squares sum to 2, so the mean over the
    # 4 classes is 2/4, times T² = 4 -> 2 = 2·T²/C, the largest value possible.
    student = torch.tensor([[1000.0, 0.0, 0.0, 0.0]])
    teacher = torch.tensor([[0.0, 1000.0, 0.0, 0.0]])
    assert kd_loss(student, teacher, "mse-soft", temperature=2.0).item() == pytest.approx(2.0)


def test_dkt_loss_dispatches_mse_soft() -> None:
    cl_logits = torch.zeros(1, 2)
    targets = torch.tensor([0])
    st_logits = torch.zeros(1, 2)
    teacher = torch.tensor([[math.log(3), 0.0]])

    parts = dkt_loss(cl_logits, targets, st_logits, teacher, 2.0, "mse-soft", temperature=1.0)

    # ce = ln 2; kd = 1/16 (see above); total = ln 2 + 2 · 1/16
    assert parts.kd.item() == pytest.approx(1 / 16, rel=1e-6)
    assert parts.total.item() == pytest.approx(LN2 + 0.125, rel=1e-6)
