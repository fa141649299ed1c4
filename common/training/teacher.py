"""Combining the predictions of several peers into one teacher."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dkt.common.choices import AGGREGATIONS
from dkt.common.training.predictions import Predictions

# Teachers' logits are clipped to this magnitude before they are combined: the relay's
# default bound on published logits (`dkt relay --max-logit`), so a set that reached an
# agent another way (in memory, or from a relay with a looser bound) cannot make the
# distillation loss overflow. Honest logits are far inside it and are left as they are.
TEACHER_CLIP = 1000.0


@dataclass(frozen=True)
class Teacher:
    """Aggregated teacher logits on the probe set and where they came from."""

    logits: torch.Tensor
    classes: tuple[int, ...]
    sources: tuple[tuple[int, int], ...]  # (agent id, experience) of each peer


def aggregate(predictions: list[Predictions], how: str = "mean") -> Teacher | None:
    """Combine peers' probe logits; None when there are none.

    mean: the average of all peers' logits.
    coverage: for each class, the average over only the peers that have trained on
    it, since a peer's logit for a class it never saw carries no knowledge of it;
    a class no peer has seen falls back to the mean of all peers.
    median: per value, the median of the peers' logits (the mean of the two middle
    ones for an even number): one bad teacher among three moves nothing.
    trimmed-mean: per value, the mean without the k highest and k lowest peers' logits,
    k = max(1, n // 4) from 3 peers on (with 1 or 2 peers, the mean).
    Every peer's logits are first clipped to ±TEACHER_CLIP.
    """
    if not predictions:
        return None
    fingerprints = {p.probe_fingerprint for p in predictions}
    if len(fingerprints) > 1:
        raise ValueError("teachers predicted on different probe sets (fingerprints differ)")
    shapes = {p.shape for p in predictions}
    if len(shapes) > 1:
        raise ValueError(f"teachers' logits have different shapes: {sorted(shapes)}")
    # peers × P × C; float16 sets are stacked as they are and converted once.
    stacked = torch.stack([p.logits for p in predictions]).float()
    stacked.clamp_(-TEACHER_CLIP, TEACHER_CLIP)
    if how == "mean":
        logits = stacked.mean(dim=0)
    elif how in ("median", "trimmed-mean"):
        ordered = stacked.sort(dim=0).values
        n = ordered.shape[0]
        if how == "median":
            middle = ordered[n // 2]
            logits = middle if n % 2 else (ordered[n // 2 - 1] + middle) / 2
        else:
            k = max(1, n // 4) if n >= 3 else 0
            logits = ordered[k : n - k].mean(dim=0)
    elif how == "coverage":
        num_classes = stacked.shape[2]
        covered = _covered(predictions, num_classes)
        counts = covered.sum(dim=0)  # C
        # The mean of all peers only for classes no peer has seen (often none).
        mean = stacked.mean(dim=0) if bool((counts == 0).any()) else None
        summed = stacked.mul_(covered[:, None, :]).sum(dim=0)
        logits = summed / counts.clamp(min=1)
        if mean is not None:
            logits = torch.where(counts > 0, logits, mean)
    else:
        raise ValueError(f"unknown aggregation {how!r}; choose one of {', '.join(AGGREGATIONS)}")
    classes = tuple(sorted({c for p in predictions for c in p.classes_seen}))
    sources = tuple((p.agent_id, p.experience) for p in predictions)
    return Teacher(logits, classes, sources)


def _covered(predictions: list[Predictions], num_classes: int) -> torch.Tensor:
    """peers × C: 1 where the peer has trained on the class."""
    covered = torch.zeros(len(predictions), num_classes)
    for i, p in enumerate(predictions):
        covered[i, list(p.classes_seen)] = 1.0
    return covered


def class_coverage(predictions: list[Predictions], num_classes: int) -> list[int]:
    """Per class, how many of the peers have trained on it (what "coverage" divides by)."""
    return [int(c) for c in _covered(predictions, num_classes).sum(dim=0).tolist()]
