"""Every choice a config field offers is accepted by the code that builds it, and
only those: an unknown name is a one-line error that lists the choices."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from dkt.common.data.datasets import load_dataset, make_synthetic
from dkt.common.data.probe import build_probe
from dkt.common.data.streams import build_stream, class_orders
from dkt.common.engine.step import fetch_teacher
from dkt.common.run.config import ExperimentConfig, config_fields
from dkt.common.run.exchange_kinds import exchange_kind
from dkt.common.training.agent import autocast, make_optimizer, scheduled_lr
from dkt.common.training.exchange import InMemoryExchange
from dkt.common.training.loss import kd_loss
from dkt.common.training.model import build_backbone
from dkt.common.training.peers import PeerSet, assign_teachers, teacher_predictions
from dkt.common.training.predictions import Predictions, published_logits
from dkt.common.training.replay import epoch_batches
from dkt.common.training.strategies import stream_for
from dkt.common.training.teacher import aggregate

SYNTHETIC = make_synthetic()


def _dataset(name: str, root: Path) -> Any:
    try:
        return load_dataset(name, root, download=False)
    except FileNotFoundError:  # a file-based data set, recognised, whose files are absent
        return None


def _aggregation(name: str, root: Path) -> Any:
    peer = Predictions(1, 0, (0,), "f" * 64, torch.zeros(2, 3))
    return aggregate([peer], name)


def _schedule(name: str, root: Path) -> Any:
    exchange = InMemoryExchange()
    exchange.publish(Predictions(1, 0, (0,), "f" * 64, torch.zeros(2, 3)))
    return teacher_predictions(exchange, 0, (1,), 1, name)


def _teacher_source(name: str, root: Path) -> Any:
    exchange = InMemoryExchange()
    exchange.publish(Predictions(1, 0, (0,), "f" * 64, torch.zeros(2, 3)))
    return fetch_teacher(exchange, 0, 1, [PeerSet(1, 0)], "mean", name)


def _unchecked(**values: Any) -> ExperimentConfig:
    """The default config with `values` set past its own checks (the builder's are tested)."""
    config = ExperimentConfig()
    for name, value in values.items():
        object.__setattr__(config, name, value)
    return config


# The code that builds each choice field's thing, called with one choice.
BUILDERS: dict[str, Callable[[str, Path], Any]] = {
    "dataset": _dataset,
    "assignment": lambda name, root: class_orders(6, 2, name, seed=0),
    "probe_source": lambda name, root: build_probe(name, SYNTHETIC, 10, 0, lambda _: SYNTHETIC),
    "backbone": lambda name, root: build_backbone(name, (1, 8, 8)),
    "kd_loss": lambda name, root: kd_loss(torch.zeros(2, 3), torch.ones(2, 3), name, 2.0),
    "aggregation": _aggregation,
    "peer_policy": lambda name, root: assign_teachers(0, 0, 3, name, k=1, seed=0),
    "schedule": _schedule,
    "teacher_source": _teacher_source,
    "strategy": lambda name, root: stream_for(
        name, build_stream(0, [0, 1], 2, SYNTHETIC.train, SYNTHETIC.test)
    ),
    "replay_mixing": lambda name, root: epoch_batches(8, 4, 2, name, torch.Generator()),
    "exchange": lambda name, root: exchange_kind(name),
    "exchange_dtype": lambda name, root: published_logits(torch.zeros(2, 3), name),
    "precision": lambda name, root: autocast(torch.device("cpu"), name),
    "optimizer": lambda name, root: make_optimizer(
        [torch.zeros(1, requires_grad=True)], _unchecked(optimizer=name)
    ),
    "lr_schedule": lambda name, root: scheduled_lr(_unchecked(lr_schedule=name), 0),
}
CHOICES = {f.name: f.metadata["choices"] for f in config_fields() if f.metadata["choices"]}


def test_every_config_field_with_choices_has_a_builder_here() -> None:
    assert set(CHOICES) == set(BUILDERS)


@pytest.mark.parametrize(
    ("field", "choice"),
    [(field, choice) for field, choices in CHOICES.items() for choice in choices],
)
def test_the_builder_accepts_every_choice_the_config_offers(
    field: str, choice: str, tmp_path: Path
) -> None:
    BUILDERS[field](choice, tmp_path)


@pytest.mark.parametrize("field", sorted(BUILDERS))
def test_the_builder_rejects_an_unknown_choice_listing_the_configs_choices(
    field: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError) as info:
        BUILDERS[field]("no-such-thing", tmp_path)

    message = str(info.value)
    assert message.startswith("unknown ")
    assert message.endswith(f"'no-such-thing'; choose one of {', '.join(CHOICES[field])}")
