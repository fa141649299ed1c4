"""The shared probe set: unlabeled inputs every agent predicts on, with a fingerprint."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dkt.common.choices import PROBE_SOURCES
from dkt.common.data.datasets import DatasetSplits
from dkt.common.data.labeled_data import LabeledData
from dkt.common.seeding import derive_seed

# A held-out slice of the run's own training data, or another data set's inputs.


def fingerprint(inputs: torch.Tensor) -> str:
    """SHA-256 over the canonical bytes of `inputs`: dtype, shape, then the values as
    contiguous little-endian float32."""
    canonical = inputs.detach().to("cpu", torch.float32).contiguous()
    digest = hashlib.sha256()
    digest.update(b"float32:" + ",".join(str(d) for d in canonical.shape).encode() + b":")
    digest.update(canonical.numpy().astype("<f4", copy=False).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class ProbeSet:
    """Probe inputs (float32, P×C×H×W) and their fingerprint. Labels are never shared."""

    inputs: torch.Tensor
    source: str
    fingerprint: str

    @classmethod
    def from_inputs(cls, inputs: torch.Tensor, source: str) -> ProbeSet:
        inputs = inputs.detach().to("cpu", torch.float32).contiguous()
        return cls(inputs, source, fingerprint(inputs))

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def verify(self) -> None:
        """Raise if the inputs no longer match the fingerprint."""
        actual = fingerprint(self.inputs)
        if actual != self.fingerprint:
            raise ValueError(
                f"probe set fingerprint mismatch: expected {self.fingerprint}, got {actual}"
            )


def split_holdout(
    train: LabeledData, size: int, seed: int
) -> tuple[ProbeSet, LabeledData, LabeledData]:
    """Hold out `size` training rows, stratified by class and seeded, as the probe set.

    Returns the probe set, the held-out rows with their labels (for diagnostics
    only) and the remaining training data that the agents' streams are built from.
    """
    if not 0 < size < len(train):
        raise ValueError(f"probe size must be between 1 and {len(train) - 1}, got {size}")
    gen = torch.Generator().manual_seed(derive_seed(seed, "probe"))
    classes = train.classes()
    chosen: list[torch.Tensor] = []
    # Stratified: each class contributes in proportion to its share; the rows left by
    # rounding down go first to classes whose share rounded to zero, so a small probe
    # covers as many classes as it can (best effort), then in class order.
    per_class = {c: int((train.y == c).sum()) for c in classes}
    quota = {c: size * n // len(train) for c, n in per_class.items()}
    for c in sorted(classes, key=lambda c: (quota[c] > 0, c))[: size - sum(quota.values())]:
        quota[c] += 1
    for c in classes:
        rows = (train.y == c).nonzero().squeeze(1)
        chosen.append(rows[torch.randperm(len(rows), generator=gen)[: quota[c]]])
    probe_rows = torch.sort(torch.cat(chosen)).values
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[probe_rows] = False
    held_out = train.subset(probe_rows)
    probe = ProbeSet.from_inputs(held_out.x, source="holdout")
    return probe, held_out, train.subset(keep.nonzero().squeeze(1))


def sample_probe(data: LabeledData, size: int, seed: int, source: str) -> ProbeSet:
    """A seeded random sample of another data set's inputs as the probe set."""
    if not 0 < size <= len(data):
        raise ValueError(f"probe size must be between 1 and {len(data)}, got {size}")
    gen = torch.Generator().manual_seed(derive_seed(seed, "probe"))
    rows = torch.sort(torch.randperm(len(data), generator=gen)[:size]).values
    return ProbeSet.from_inputs(data.x[rows], source=source)


def build_probe(
    source: str,
    data: DatasetSplits,
    size: int,
    seed: int,
    load: Callable[[str], DatasetSplits],
) -> tuple[ProbeSet, LabeledData]:
    """The probe set from `source` for a run on `data`, and the training data left for
    the streams. `load` reads another data set by name (only called for one)."""
    if source == "holdout":
        probe, _, train = split_holdout(data.train, size, seed)
        return probe, train
    if source not in PROBE_SOURCES:
        raise ValueError(
            f"unknown probe source {source!r}; choose one of {', '.join(PROBE_SOURCES)}"
        )
    other = load(source)
    if other.input_shape != data.input_shape:
        raise ValueError(
            f"probe source {source} has inputs of shape {other.input_shape}, "
            f"but {data.name} has {data.input_shape}: choose a matching data set"
        )
    return sample_probe(other.train, size, seed, source), data.train
