"""Combining the predictions of several peers into one teacher."""

from __future__ import annotations

import math
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
    check_compatible(
        {p.probe_fingerprint for p in predictions}, {tuple(p.shape) for p in predictions}
    )
    # peers × P × C; float16 sets are stacked as they are and converted once.
    stacked = torch.stack([p.logits for p in predictions]).float()
    stacked.clamp_(-TEACHER_CLIP, TEACHER_CLIP)
    if how == "mean":
        logits = stacked.mean(dim=0)
    elif how in ROBUST_AGGREGATIONS:
        logits = robust_aggregate(stacked, how)
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


# The aggregations that order every peer's value (`robust_aggregate`).
ROBUST_AGGREGATIONS = ("median", "trimmed-mean")
# Values sorted at once by `robust_aggregate`: sorting keeps values and int64 indices, so
# all of 255 peers' 2.1 MB sets at once would take 1.6 GB beside the sets themselves.
_SORT_BLOCK_VALUES = 1 << 22


def robust_aggregate(stacked: torch.Tensor, how: str) -> torch.Tensor:
    """ "median" or "trimmed-mean" (see `aggregate`) over dim 0 of peers x rows x ...
    clipped logits, a block of rows at a time: the same values as sorting all at once."""
    if how not in ROBUST_AGGREGATIONS:
        raise ValueError(f"{how!r} is not one of {', '.join(ROBUST_AGGREGATIONS)}")
    n, rows = stacked.shape[0], stacked.shape[1]
    per_row = n * math.prod(stacked.shape[2:])
    step = max(1, _SORT_BLOCK_VALUES // max(per_row, 1))
    out = torch.empty(stacked.shape[1:], dtype=stacked.dtype)
    k = max(1, n // 4) if n >= 3 else 0
    for start in range(0, rows, step):
        ordered = stacked[:, start : start + step].sort(dim=0).values
        if how == "median":
            middle = ordered[n // 2]
            block = middle if n % 2 else (ordered[n // 2 - 1] + middle) / 2
        else:
            block = ordered[k : n - k].mean(dim=0)
        out[start : start + step] = block
    return out


def check_compatible(fingerprints: set[str], shapes: set[tuple[int, ...]]) -> None:
    """Teachers can be combined only on one probe set, with one shape; ValueError if not."""
    if len(fingerprints) > 1:
        raise ValueError("teachers predicted on different probe sets (fingerprints differ)")
    if len(shapes) > 1:
        raise ValueError(f"teachers' logits have different shapes: {sorted(shapes)}")


# The aggregations `RunningTeacher` computes one set at a time.
RUNNING_AGGREGATIONS = ("mean", "coverage")


class RunningTeacher:
    """`aggregate` for "mean" and "coverage", one set at a time: it holds two sums, not
    every peer's logits (the relay combining hundreds of peers' sets for each agent).
    The sums are float64, so the result equals `aggregate`'s to float32 rounding.
    The caller checks the sets are compatible first (`check_compatible`)."""

    def __init__(self, how: str) -> None:
        if how not in RUNNING_AGGREGATIONS:
            raise ValueError(
                f"{how!r} needs every set at once; one set at a time: "
                f"{', '.join(RUNNING_AGGREGATIONS)}"
            )
        self.how = how
        self._total: torch.Tensor | None = None  # P x C, sum of clipped logits
        self._covered_total: torch.Tensor | None = None  # P x C, sum over covering peers
        self._counts: torch.Tensor | None = None  # C, peers that have trained on the class
        self._classes: set[int] = set()
        self._sources: list[tuple[int, int]] = []

    def add(self, predictions: Predictions) -> None:
        logits = predictions.logits.to(torch.float64, copy=True).clamp_(-TEACHER_CLIP, TEACHER_CLIP)
        if self._total is None:
            self._total = logits.clone()
        else:
            self._total.add_(logits)
        if self.how == "coverage":
            covered = torch.zeros(logits.shape[1], dtype=torch.float64)
            covered[list(predictions.classes_seen)] = 1.0
            masked = logits.mul_(covered)
            if self._covered_total is None or self._counts is None:
                self._covered_total, self._counts = masked, covered
            else:
                self._covered_total.add_(masked)
                self._counts.add_(covered)
        self._classes.update(predictions.classes_seen)
        self._sources.append((predictions.agent_id, predictions.experience))

    def result(self) -> Teacher | None:
        """The teacher of the sets added so far; None before the first."""
        if self._total is None:
            return None
        logits = self._total / len(self._sources)
        if self.how == "coverage":
            assert self._covered_total is not None and self._counts is not None
            covering = self._covered_total / self._counts.clamp(min=1)
            logits = torch.where(self._counts > 0, covering, logits)
        return Teacher(logits.float(), tuple(sorted(self._classes)), tuple(self._sources))


def _covered(predictions: list[Predictions], num_classes: int) -> torch.Tensor:
    """peers × C: 1 where the peer has trained on the class."""
    covered = torch.zeros(len(predictions), num_classes)
    for i, p in enumerate(predictions):
        covered[i, list(p.classes_seen)] = 1.0
    return covered
