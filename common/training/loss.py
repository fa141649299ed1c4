"""The DKT loss: cross-entropy on the cl head plus λ times distillation on the st head;
and the lwf strategy's distillation of the agent's own previous model into the cl head."""

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
    mse-soft: the original README's equation, the mean squared difference of the
    temperature-softened probabilities softmax(t/T) and softmax(s/T) (mean over samples
    and classes), times T². At T = 1 it is exactly the form in
    docs/explanation/method.md; the T² factor,
    as for kl, keeps the gradient's scale from shrinking as 1/T² when T grows (for
    large T it tends to the class-centred raw-logit MSE divided by C²). Unlike mse it
    is bounded (at most 2·T²/C), so λ·KD cannot grow without limit.
    """
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind == "kl":
        t = temperature
        log_p_student = F.log_softmax(student / t, dim=1)
        log_p_teacher = F.log_softmax(teacher / t, dim=1)
        kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
        return kl * t * t
    if kind == "mse-soft":
        t = temperature
        p_student = F.softmax(student / t, dim=1)
        p_teacher = F.softmax(teacher / t, dim=1)
        return F.mse_loss(p_student, p_teacher) * t * t
    raise ValueError(f"unknown distillation loss {kind!r}; choose one of {', '.join(KD_LOSSES)}")


def lwf_loss(
    current: torch.Tensor,
    previous: torch.Tensor,
    classes: list[int] | tuple[int, ...],
    temperature: float,
) -> torch.Tensor:
    """Learning without Forgetting (Li & Hoiem 2017) as Avalanche computes it
    (`LearningWithoutForgetting._distillation_loss`): on the columns of `classes` (those
    the previous model had learned) only, KL(softmax(previous/T) || softmax(current/T))
    per sample, averaged over the batch. Unlike `kd_loss`'s kl it is *not* multiplied by
    T², exactly as in Avalanche, so the same α gives the same loss there and here.
    """
    if not classes:
        return torch.zeros((), device=current.device)
    columns = torch.as_tensor(list(classes), device=current.device)
    log_p_current = F.log_softmax(current[:, columns] / temperature, dim=1)
    log_p_previous = F.log_softmax(previous[:, columns] / temperature, dim=1)
    return F.kl_div(log_p_current, log_p_previous, log_target=True, reduction="batchmean")


class LossParts(NamedTuple):
    total: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor
    lwf: torch.Tensor | None = None  # the lwf strategy's term, before its weight α


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
