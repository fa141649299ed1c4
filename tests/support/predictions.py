"""Prediction sets for tests that need no relay: one factory, small logits by hand."""

from __future__ import annotations

import torch

from dkt.common.training.predictions import Predictions

FINGERPRINT = "f" * 64


def predictions(
    agent_id: int,
    experience: int = 1,
    logits: list[list[float]] | None = None,
    classes_seen: tuple[int, ...] = (0, 1),
    fingerprint: str = FINGERPRINT,
    dtype: torch.dtype = torch.float32,
) -> Predictions:
    """Agent `agent_id`'s set for `experience`; without `logits`, one row
    [agent_id, experience]."""
    values = logits if logits is not None else [[float(agent_id), float(experience)]]
    return Predictions(
        agent_id, experience, classes_seen, fingerprint, torch.tensor(values, dtype=dtype)
    )
