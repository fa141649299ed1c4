"""FedAvg's aggregation (McMahan et al. 2017): the average of several models' weights,
each weighted by how many training rows it learned from, and the bytes that moves.

The `fedavg` exchange calls it after every experience (`step.fedavg_step`); it is plain
tensor arithmetic on state dicts, so it is testable without agents.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

State = Mapping[str, torch.Tensor]


def average_states(states: Sequence[State], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """`Σ_k w_k·state_k / Σ_k w_k`, entry by entry, on the CPU.

    Accumulated in float64 in agent order (so the result does not depend on the
    devices the agents ran on) and cast back to each entry's dtype; integer entries
    (batch norm's `num_batches_tracked`) are rounded to the nearest whole number.
    """
    if not states or len(states) != len(weights):
        raise ValueError(f"need one weight per state, got {len(states)} states, {len(weights)}")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
    keys = list(states[0])
    for i, state in enumerate(states[1:], start=1):
        if set(state) != set(keys) or any(state[k].shape != states[0][k].shape for k in keys):
            raise ValueError(f"model {i} has other entries or shapes than model 0: same backbone?")
    total = float(sum(weights))
    averaged: dict[str, torch.Tensor] = {}
    for key in keys:
        acc = torch.zeros(states[0][key].shape, dtype=torch.float64)
        for state, weight in zip(states, weights, strict=True):
            acc += state[key].detach().to("cpu", torch.float64) * (weight / total)
        dtype = states[0][key].dtype
        averaged[key] = (acc if dtype.is_floating_point else acc.round()).to(dtype)
    return averaged


def state_mismatch(state: State, layout: State) -> str:
    """Why `state` cannot be averaged with models of `layout` (tensors on any device,
    "meta" included: only their entries, shapes and dtypes count), or "" when it can: it
    must hold exactly the layout's entries, each of its shape and dtype, with finite
    values. A forged state of other shapes once could have failed the whole average,
    and a single NaN poisons every model that adopts it."""
    extra = [k for k in state if k not in layout]
    lacking = [k for k in layout if k not in state]
    if extra:
        return f"entries the model does not have: {_names(extra)}"
    if lacking:
        return f"none of the model's {_names(lacking)}"
    for key, want in layout.items():
        got = state[key]
        if tuple(got.shape) != tuple(want.shape):
            return f"{_names([key])} has shape {list(got.shape)}, not {list(want.shape)}"
        if got.dtype != want.dtype:
            return f"{_names([key])} is {got.dtype}, not {want.dtype}"
        if got.dtype.is_floating_point and not bool(torch.isfinite(got).all()):
            return f"{_names([key])} holds values that are not finite (NaN or infinity)"
    return ""


def _names(keys: Sequence[str], shown: int = 3, length: int = 60) -> str:
    """A few entry names, each cut short (the names may come from a forged state)."""
    names = ", ".join(repr(k if len(k) <= length else k[:length] + "…") for k in keys[:shown])
    return names + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def state_nbytes(state: State) -> int:
    """Bytes of a state dict's tensors as they are held (float32 weights: 4 per value)."""
    return sum(t.numel() * t.element_size() for t in state.values())
