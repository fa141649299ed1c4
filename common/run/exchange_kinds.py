"""The four kinds of exchange a run's `exchange` names (dkt, none, fedavg, fedmd): what
each moves between agents and where it lands. A fact of the run spec, read by training,
evaluation and the conductor alike."""

from __future__ import annotations

from dataclasses import dataclass

from dkt.common.choices import EXCHANGES


@dataclass(frozen=True)
class ExchangeKind:
    """What one kind of exchange moves between agents and where it lands.

    dkt: cl-head logits on the probe set; the teachers' aggregate is distilled into the
    st head. none: nothing, isolated agents (the reference). fedavg: model weights,
    averaged after every experience (weight_averaging.py). fedmd: logits, as dkt, but
    their consensus is distilled into the cl head itself (FedMD's digest step); there
    is no st head to speak of.
    """

    name: str
    shares_predictions: bool  # publishes its probe logits and fetches its teachers'
    kd_head: str | None  # the head teachers' logits are distilled into, if any
    averages_weights: bool

    @property
    def reports_st_head(self) -> bool:
        """Whether the st head learns anything, so its metrics mean something."""
        return self.kd_head == "st"

    def kd_weight(self, configured: float) -> float:
        """The λ that actually weights the KD term: 0 where nothing is distilled."""
        return configured if self.kd_head is not None else 0.0


_KINDS = {
    "dkt": ExchangeKind("dkt", shares_predictions=True, kd_head="st", averages_weights=False),
    "none": ExchangeKind("none", shares_predictions=False, kd_head=None, averages_weights=False),
    "fedavg": ExchangeKind("fedavg", shares_predictions=False, kd_head=None, averages_weights=True),
    "fedmd": ExchangeKind("fedmd", shares_predictions=True, kd_head="cl", averages_weights=False),
}


def exchange_kind(name: str) -> ExchangeKind:
    """The kind of exchange called `name` (a config's `exchange`)."""
    if name not in _KINDS:
        raise ValueError(f"unknown exchange {name!r}; choose one of {', '.join(EXCHANGES)}")
    return _KINDS[name]
