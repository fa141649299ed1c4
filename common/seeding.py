"""Seeds derived from the run seed, so every random choice is reproducible and
independent of the order in which things are created."""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, *labels: object) -> int:
    """A 63-bit seed from the run seed and labels (e.g. ``"model", agent_id``)."""
    text = ":".join([str(seed), *(str(label) for label in labels)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1
