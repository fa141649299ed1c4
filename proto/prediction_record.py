"""What describes one stored prediction set, on both sides of the wire: the relay's store
keeps it (server/relay/store/) and its client returns it (`PredictionInfo`,
proto/relay_client/results.py). One definition, so a field of `PredictionMeta` in
relay.proto touches one class. Pure: no gRPC, no torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PredictionRecord:
    """Metadata of one prediction set (no logits): whose, which experience, which classes
    it had seen, on which probe set, and its payload's encoding, size and SHA-256."""

    run_id: str
    agent_id: int
    experience: int
    classes_seen: tuple[int, ...]
    probe_fingerprint: str
    dtype: str
    shape: tuple[int, int]
    encoding: str
    sha256: str
    payload_bytes: int
    published_at: float = 0.0

    @property
    def id(self) -> str:
        """The set's id on the relay: RUN/AGENT/EXPERIENCE."""
        return f"{self.run_id}/{self.agent_id}/{self.experience}"

    def same_content(self, other: PredictionRecord) -> bool:
        """Whether `other` stores the same prediction set (ignoring the publish time)."""
        return (
            self.classes_seen == other.classes_seen
            and self.probe_fingerprint == other.probe_fingerprint
            and self.shape == other.shape
            and self.encoding == other.encoding
            and self.sha256 == other.sha256
        )
