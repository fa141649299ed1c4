"""The DKT loss: cross-entropy on the cl head plus λ times distillation on the st head."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from dkt.common.choices import KD_LOSSES


def kd_loss(
    student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float
) -> torch.Tensor:
    """Distillation loss of student logits towards teacher logits.

    mse: mean squared error on raw logits (the original code's default).
    kl: KL(softmax(t/T) || softmax(s/T)) per sample, averaged, times T² so the
    gradient scale does not shrink as T grows (Hinton et al.).
    """
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind == "kl":
        t = temperature
        log_p_student = F.log_softmax(student / t, dim=1)
        log_p_teacher = F.log_softmax(teacher / t, dim=1)
        kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
        return kl * t * t
    raise ValueError(f"unknown distillation loss {kind!r}; choose one of {', '.join(KD_LOSSES)}")


class LossParts(NamedTuple):
    total: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor


def dkt_loss(
    cl_logits: torch.Tensor,
    targets: torch.Tensor,
    st_logits: torch.Tensor | None,
    teacher_logits: torch.Tensor | None,
    kd_weight: float,
    kind: str = "mse",
    temperature: float = 1.0,
) -> LossParts:
    """`L = CE(cl(x), y) + λ·KD(st(p), t(p))`; the KD term is zero without a teacher."""
    ce = F.cross_entropy(cl_logits, targets)
    if teacher_logits is None or st_logits is None:
        kd = torch.zeros((), device=ce.device)
    else:
        kd = kd_loss(st_logits, teacher_logits, kind, temperature)
    return LossParts(ce + kd_weight * kd, ce, kd)
