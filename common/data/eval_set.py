"""A run's evaluation set: public labeled inputs on which agents measure accuracy (e.g.
the student head's transfer accuracy on classes they never trained on), with a
fingerprint computed as relay.proto documents on `EvalSetMeta.fingerprint`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


def _canonical(inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs as contiguous CPU float32 and labels as contiguous CPU int64, checked to be
    N×... inputs (>= 2 dimensions, each >= 1) with one label per row."""
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"eval labels must be class indices (integers), got {labels.dtype}")
    x = inputs.detach().to("cpu", torch.float32).contiguous()
    y = labels.detach().to("cpu", torch.int64).contiguous()
    if x.dim() < 2 or any(d < 1 for d in x.shape):
        raise ValueError(
            f"eval inputs must be N×C×H×W (>= 2 dimensions, each >= 1), got {tuple(x.shape)}"
        )
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"eval labels must be one per input row ({x.shape[0]}), got shape {tuple(y.shape)}"
        )
    return x, y


def eval_fingerprint(inputs: torch.Tensor, labels: torch.Tensor) -> str:
    """Hex SHA-256 of "eval:float32:<shape>:" + the inputs as little-endian float32 +
    "int64:<N>:" + the labels as little-endian int64 (relay.proto, EvalSetMeta)."""
    x, y = _canonical(inputs, labels)
    digest = hashlib.sha256()
    digest.update(b"eval:float32:" + ",".join(str(d) for d in x.shape).encode() + b":")
    digest.update(x.numpy().astype("<f4", copy=False).tobytes())
    digest.update(b"int64:" + str(y.shape[0]).encode() + b":")
    digest.update(y.numpy().astype("<i8", copy=False).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class EvalSet:
    """Labeled inputs (float32 N×C×H×W, int64 labels of length N) and their fingerprint."""

    inputs: torch.Tensor
    labels: torch.Tensor
    source: str
    fingerprint: str

    @classmethod
    def from_tensors(cls, inputs: torch.Tensor, labels: torch.Tensor, source: str) -> EvalSet:
        x, y = _canonical(inputs, labels)
        return cls(x, y, source, eval_fingerprint(x, y))

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def verify(self) -> None:
        """Raise ValueError if inputs and labels no longer match the fingerprint."""
        actual = eval_fingerprint(self.inputs, self.labels)
        if actual != self.fingerprint:
            raise ValueError(
                f"eval set fingerprint mismatch: expected {self.fingerprint}, got {actual}"
            )
