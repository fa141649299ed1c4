"""Labeled data: inputs and their integer labels, the unit every data source yields."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LabeledData:
    """Inputs `x` (float32, N×C×H×W, normalised) and integer labels `y` (int64, N)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} rows but y has {self.y.shape[0]}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, index: torch.Tensor) -> LabeledData:
        return LabeledData(self.x[index], self.y[index])

    def of_classes(self, classes: tuple[int, ...] | list[int]) -> LabeledData:
        """The rows whose label is one of `classes`, in their original order."""
        mask = torch.isin(self.y, torch.as_tensor(list(classes), dtype=self.y.dtype))
        return self.subset(mask.nonzero().squeeze(1))

    def classes(self) -> tuple[int, ...]:
        return tuple(int(c) for c in torch.unique(self.y).tolist())
