"""A class-balanced replay buffer of fixed capacity, and how its rows are mixed into an
epoch's minibatches (`epoch_batches`)."""

from __future__ import annotations

from typing import Any

import torch

from dkt.common.choices import REPLAY_MIXING
from dkt.common.data.labeled_data import LabeledData


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
            self._per_class[c] = LabeledData(d.x[:keep].clone(), d.y[:keep].clone())  # own storage

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


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Row indices 0..n-1 shuffled and split into minibatches; a trailing batch of one
    row is dropped because batch norm cannot train on a single sample."""
    order = torch.randperm(n, generator=generator)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches.pop()
    return batches


def epoch_batches(
    data_rows: int, memory_rows: int, batch_size: int, mixing: str, generator: torch.Generator
) -> list[torch.Tensor]:
    """One epoch's minibatches as row indices into the experience's data followed by the
    replay memory (rows data_rows .. data_rows + memory_rows - 1).

    concat: data and memory are one pool, shuffled together and split into minibatches
    of `batch_size`; an epoch has ceil((data + memory) / batch_size) steps.
    batch (Avalanche's ReplayPlugin): the data alone is shuffled into minibatches of
    `batch_size`, and beside each goes one memory minibatch of min(batch_size, memory)
    rows, drawn without replacement from a shuffled memory that is reshuffled when it
    runs out (and at each epoch); an epoch has ceil(data / batch_size) steps.
    """
    if mixing not in REPLAY_MIXING:
        raise ValueError(
            f"unknown replay mixing {mixing!r}; choose one of {', '.join(REPLAY_MIXING)}"
        )
    if mixing == "concat" or memory_rows == 0:
        return shuffled_batches(data_rows + memory_rows, batch_size, generator)
    take = min(batch_size, memory_rows)
    order, pos = torch.empty(0, dtype=torch.long), 0
    mixed = []
    for rows in shuffled_batches(data_rows, batch_size, generator):
        if pos + take > len(order):
            order, pos = torch.randperm(memory_rows, generator=generator), 0
        mixed.append(torch.cat([rows, data_rows + order[pos : pos + take]]))
        pos += take
    return mixed
