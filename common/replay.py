"""A class-balanced replay buffer of fixed capacity."""

from __future__ import annotations

from typing import Any

import torch

from dkt.common.data import LabeledData


class ReplayBuffer:
    """Keeps up to `capacity` samples split evenly across the classes seen so far.

    When new classes arrive, every class's share shrinks to capacity // classes
    (the first classes in sorted order take the remainder); a class keeps a prefix
    of its randomly drawn samples, so the buffer stays a uniform sample per class.
    """

    def __init__(self, capacity: int, seed: int) -> None:
        self.capacity = capacity
        self.generator = torch.Generator().manual_seed(seed)
        self._per_class: dict[int, LabeledData] = {}

    def __len__(self) -> int:
        return sum(len(d) for d in self._per_class.values())

    def class_counts(self) -> dict[int, int]:
        return {c: len(d) for c, d in sorted(self._per_class.items())}

    def data(self) -> LabeledData | None:
        """All buffered samples, ordered by class; None when empty."""
        if not self._per_class or len(self) == 0:
            return None
        parts = [self._per_class[c] for c in sorted(self._per_class)]
        return LabeledData(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))

    def update(self, data: LabeledData) -> None:
        """Add the classes of an experience and rebalance."""
        if self.capacity == 0:
            return
        for c in data.classes():
            if c in self._per_class:
                continue
            rows = (data.y == c).nonzero().squeeze(1)
            rows = rows[torch.randperm(len(rows), generator=self.generator)]
            self._per_class[c] = data.subset(rows)
        classes = sorted(self._per_class)
        quota, extra = divmod(self.capacity, len(classes))
        for i, c in enumerate(classes):
            keep = quota + (1 if i < extra else 0)
            d = self._per_class[c]
            self._per_class[c] = LabeledData(d.x[:keep], d.y[:keep])

    def state_dict(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "generator": self.generator.get_state(),
            "per_class": {c: (d.x, d.y) for c, d in self._per_class.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.capacity = state["capacity"]
        self.generator.set_state(state["generator"])
        self._per_class = {c: LabeledData(x, y) for c, (x, y) in state["per_class"].items()}
