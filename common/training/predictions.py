"""The record an agent publishes after each experience: its logits on the probe set."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dkt.common.choices import EXCHANGE_DTYPES

_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def published_logits(logits: torch.Tensor, exchange_dtype: str) -> torch.Tensor:
    """`logits` as peers get them: float32 as computed, or rounded to float16 (what the
    relay's float16 encoding stores), so in-process and relay runs see the same values
    and every value counts 2 bytes."""
    if exchange_dtype not in EXCHANGE_DTYPES:
        raise ValueError(
            f"unknown exchange dtype {exchange_dtype!r}; choose one of {', '.join(EXCHANGE_DTYPES)}"
        )
    return logits.to(_DTYPES[exchange_dtype])


@dataclass(frozen=True)
class Predictions:
    """`cl`-head logits of one agent on the whole probe set after one experience.

    `logits` is a float tensor of shape (probe size, number of classes), computed
    in eval mode under no_grad. `classes_seen` are the classes the agent had
    trained on when it computed them (its own experiences 0..`experience`).
    """

    agent_id: int
    experience: int
    classes_seen: tuple[int, ...]
    probe_fingerprint: str
    logits: torch.Tensor
    run_id: str = field(default="")

    def __post_init__(self) -> None:
        if self.logits.dim() != 2:
            raise ValueError(
                f"logits must be 2-D (probe size, classes), got {tuple(self.logits.shape)}"
            )
        if self.experience < 0:
            raise ValueError(f"experience must be >= 0, got {self.experience}")

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.logits.shape[0]), int(self.logits.shape[1]))

    @property
    def dtype(self) -> str:
        return str(self.logits.dtype).removeprefix("torch.")

    @property
    def nbytes(self) -> int:
        return self.logits.numel() * self.logits.element_size()
