"""Class-incremental streams: each agent's classes split into a sequence of experiences."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dkt.common.choices import ASSIGNMENTS
from dkt.common.data.labeled_data import LabeledData
from dkt.common.seeding import derive_seed


@dataclass(frozen=True)
class Experience:
    """One task of an agent's stream: its classes and their train and test data."""

    index: int
    classes: tuple[int, ...]
    train: LabeledData
    test: LabeledData


@dataclass(frozen=True)
class AgentStream:
    """The experiences one agent learns, in order."""

    agent_id: int
    experiences: tuple[Experience, ...]

    def __len__(self) -> int:
        return len(self.experiences)

    @property
    def classes(self) -> tuple[int, ...]:
        return tuple(c for exp in self.experiences for c in exp.classes)

    def classes_seen(self, experience: int) -> tuple[int, ...]:
        """Classes of experiences 0..`experience`, sorted."""
        return tuple(sorted(c for exp in self.experiences[: experience + 1] for c in exp.classes))


def _permutation(n: int, seed: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def class_orders(num_classes: int, agents: int, assignment: str, seed: int) -> list[list[int]]:
    """The classes each agent will learn, in the order it learns them."""
    if assignment == "shuffled":
        return [_permutation(num_classes, derive_seed(seed, "order", a)) for a in range(agents)]
    order = _permutation(num_classes, derive_seed(seed, "order"))
    if assignment == "same":
        return [list(order) for _ in range(agents)]
    if assignment == "disjoint":
        if agents > num_classes:
            raise ValueError(
                f"disjoint assignment needs at least one class per agent: "
                f"{agents} agents but only {num_classes} classes"
            )
        return [list(part) for part in _split(order, agents)]
    raise ValueError(f"unknown assignment {assignment!r}; choose one of {', '.join(ASSIGNMENTS)}")


def _split(items: list[int], parts: int) -> list[tuple[int, ...]]:
    """Split into `parts` contiguous chunks whose sizes differ by at most one, larger first."""
    size, extra = divmod(len(items), parts)
    chunks, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        chunks.append(tuple(items[start:end]))
        start = end
    return chunks


class ClassRows:
    """A data set's rows grouped by class, found once: the rows of any set of classes
    without scanning the whole data set again, and one copy of them however many
    agents' experiences hold exactly those classes."""

    def __init__(self, data: LabeledData) -> None:
        self.data = data
        # A stable sort keeps each class's rows in their original order.
        by_label = torch.argsort(data.y, stable=True)
        labels, counts = torch.unique_consecutive(data.y[by_label], return_counts=True)
        self._rows = dict(zip(labels.tolist(), torch.split(by_label, counts.tolist()), strict=True))
        self._subsets: dict[tuple[int, ...], LabeledData] = {}

    def of_classes(self, classes: tuple[int, ...] | list[int]) -> LabeledData:
        """`data.of_classes(classes)`: the rows of `classes` in their original order."""
        key = tuple(sorted(set(classes)))
        found = self._subsets.get(key)
        if found is None:
            parts = [self._rows[c] for c in key if c in self._rows]
            rows = (
                torch.sort(torch.cat(parts)).values if parts else torch.empty(0, dtype=torch.long)
            )
            found = self._subsets[key] = self.data.subset(rows)
        return found


def build_stream(
    agent_id: int,
    order: list[int],
    experiences: int,
    train: LabeledData | ClassRows,
    test: LabeledData | ClassRows,
) -> AgentStream:
    """Split an agent's class order into `experiences` experiences with their data."""
    if experiences > len(order):
        raise ValueError(
            f"agent {agent_id} has {len(order)} classes, too few for {experiences} experiences: "
            "lower --experiences or give each agent more classes"
        )
    exps = tuple(
        Experience(i, classes, train.of_classes(classes), test.of_classes(classes))
        for i, classes in enumerate(_split(order, experiences))
    )
    return AgentStream(agent_id, exps)


def build_streams(
    num_classes: int,
    agents: int,
    experiences: int,
    assignment: str,
    seed: int,
    train: LabeledData,
    test: LabeledData,
) -> list[AgentStream]:
    """Every agent's stream for a class-incremental split of `num_classes` classes. The
    data sets are grouped by class once for all agents (not scanned once per agent and
    experience), and agents whose experiences hold the same classes share their rows."""
    orders = class_orders(num_classes, agents, assignment, seed)
    train_rows, test_rows = ClassRows(train), ClassRows(test)
    return [
        build_stream(a, order, experiences, train_rows, test_rows) for a, order in enumerate(orders)
    ]
