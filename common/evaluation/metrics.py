"""Continual-learning metrics over an accuracy matrix R, where R[e][j] is the accuracy
on the test data of experience j after training experience e."""

from __future__ import annotations

import torch

Matrix = list[list[float]]


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of rows whose argmax equals the target (0.0 for no rows)."""
    if len(targets) == 0:
        return 0.0
    return float((logits.argmax(dim=1) == targets).float().mean())


def average_accuracy(r: Matrix, e: int | None = None) -> float:
    """Mean accuracy over experiences 0..e after training e (default: the last)."""
    e = len(r) - 1 if e is None else e
    return sum(r[e][: e + 1]) / (e + 1)


def forgetting(r: Matrix) -> float:
    """Mean over earlier experiences j of the best accuracy on j after learning it
    (at e = j..T-2) minus the final accuracy on j (Chaudhry et al. 2018); 0 for one
    experience."""
    t = len(r)
    if t < 2:
        return 0.0
    drops = [max(r[e][j] for e in range(j, t - 1)) - r[t - 1][j] for j in range(t - 1)]
    return sum(drops) / len(drops)


def backward_transfer(r: Matrix) -> float:
    """Mean over earlier experiences j of R[T-1][j] - R[j][j] (Lopez-Paz & Ranzato 2017);
    negative means forgetting."""
    t = len(r)
    if t < 2:
        return 0.0
    return sum(r[t - 1][j] - r[j][j] for j in range(t - 1)) / (t - 1)
