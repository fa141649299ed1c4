"""Specification of the experiment configuration: defaults, TOML, coercion, validation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dkt.common.run.config import ExperimentConfig, config_fields

DEFAULTS = {
    "dataset": "digits",
    "data_root": "",
    "download": False,
    "agents": 3,
    "experiences": 5,
    "assignment": "shuffled",
    "probe_size": 200,
    "probe_source": "holdout",
    "class_names": "",
    "input_shape": "",
    "input_mean": "",
    "input_std": "",
    "probe_from": "",
    "eval_from": "",
    "local_test_fraction": 0.2,
    "backbone": "mlp",
    "epochs": 8,
    "batch_size": 64,
    "probe_batch_size": 64,
    "lr": 1e-3,
    "optimizer": "adam",
    "momentum": 0.9,
    "weight_decay": 0.0,
    "lr_schedule": "none",
    "lr_step_epochs": 4,
    "lr_gamma": 0.1,
    "clip_grad_norm": 5.0,
    "precision": "fp32",
    "compile": False,
    "replay_size": 200,
    "strategy": "replay",
    "replay_mixing": "concat",
    "lwf_alpha": 1.0,
    "lwf_temperature": 2.0,
    "ewc_lambda": 100.0,
    "exchange": "dkt",
    "exchange_dtype": "float32",
    "kd_weight": 1.0,
    "kd_loss": "mse",
    "temperature": 2.0,
    "aggregation": "coverage",
    "teacher_source": "agents",
    "peer_policy": "all",
    "peers_k": 1,
    "schedule": "sync",
    "seed": 0,
}


def test_defaults() -> None:
    assert ExperimentConfig().to_dict() == {**DEFAULTS, "agent_overrides": "{}"}


def test_every_flag_field_has_help_text_in_declaration_order() -> None:
    fields = config_fields()

    assert [f.name for f in fields] == list(DEFAULTS)
    assert all(f.metadata["help"] for f in fields)


def test_toml_round_trip_gives_an_equal_config(tmp_path: Path) -> None:
    config = ExperimentConfig(
        dataset="synthetic",
        data_root="/data/x",
        download=True,
        agents=4,
        assignment="disjoint",
        lr=0.01,
        kd_loss="kl",
        temperature=3.5,
        peer_policy="random-k",
        peers_k=2,
        schedule="sequential",
        seed=42,
    )
    path = tmp_path / "experiment.toml"
    path.write_text(config.to_toml())

    assert ExperimentConfig.from_toml(path) == config
    assert path.read_text().startswith("[experiment]\n")


def test_from_toml_accepts_top_level_keys_and_fills_in_defaults(tmp_path: Path) -> None:
    path = tmp_path / "partial.toml"
    path.write_text('agents = 2\nkd_loss = "kl"\n')

    config = ExperimentConfig.from_toml(path)

    assert config == ExperimentConfig(agents=2, kd_loss="kl")


def test_from_dict_rejects_unknown_keys_naming_them_all() -> None:
    with pytest.raises(ValueError) as info:
        ExperimentConfig.from_dict({"agents": 2, "zeta": 1, "learning_rate": 0.1})

    assert str(info.value) == "unknown config keys: learning_rate, zeta"


def test_an_invalid_choice_is_an_error_naming_the_field_and_choices() -> None:
    with pytest.raises(ValueError) as info:
        ExperimentConfig.from_dict({"kd_loss": "l2"})

    assert str(info.value) == "kd_loss must be one of mse, kl, mse-soft; got 'l2'"


def test_an_int_is_accepted_for_a_float_field_and_becomes_a_float() -> None:
    config = ExperimentConfig.from_dict({"lr": 1, "kd_weight": 0})

    assert config.lr == 1.0
    assert type(config.lr) is float
    assert config.kd_weight == 0.0
    assert type(config.kd_weight) is float


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("True", True), ("1", True), ("yes", True), ("false", False), ("no", False)],
)
def test_boolean_words_are_accepted_for_a_bool_field(text: str, expected: bool) -> None:
    assert ExperimentConfig.from_dict({"download": text}).download is expected


def test_numeric_strings_are_accepted_for_number_fields() -> None:
    config = ExperimentConfig.from_dict({"agents": "7", "seed": "-3", "kd_weight": "0.5"})

    assert (config.agents, config.seed, config.kd_weight) == (7, -3, 0.5)
    assert type(config.agents) is int
    assert type(config.kd_weight) is float


def test_an_unreadable_bool_is_an_error_naming_the_field() -> None:
    with pytest.raises(ValueError, match="download must be true or false, got 'maybe'"):
        ExperimentConfig.from_dict({"download": "maybe"})


def test_a_bool_is_not_accepted_for_an_int_field() -> None:
    with pytest.raises(ValueError, match="agents must be int, got True"):
        ExperimentConfig.from_dict({"agents": True})


def test_a_float_is_not_accepted_for_an_int_field() -> None:
    with pytest.raises(ValueError, match="epochs must be int, got 2.5"):
        ExperimentConfig.from_dict({"epochs": 2.5})


def test_a_non_number_string_for_a_float_field_is_an_error() -> None:
    with pytest.raises(ValueError, match="lr must be float, got 'fast'"):
        ExperimentConfig.from_dict({"lr": "fast"})


@pytest.mark.parametrize(
    "name", ["agents", "experiences", "probe_size", "epochs", "batch_size", "probe_batch_size"]
)
def test_counts_below_one_are_rejected(name: str) -> None:
    with pytest.raises(ValueError) as info:
        ExperimentConfig(**{name: 0})

    assert str(info.value) == f"{name} must be at least 1, got 0"


@pytest.mark.parametrize("peers_k", [0, 3])
def test_random_k_needs_peers_k_between_1_and_agents_minus_1(peers_k: int) -> None:
    with pytest.raises(ValueError) as info:
        ExperimentConfig(agents=3, peer_policy="random-k", peers_k=peers_k)

    assert str(info.value) == f"peers_k must be between 1 and agents-1, got {peers_k}"


def test_random_k_accepts_peers_k_up_to_agents_minus_1() -> None:
    assert ExperimentConfig(agents=3, peer_policy="random-k", peers_k=2).peers_k == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"replay_size": -1}, "replay_size must be >= 0, got -1"),
        ({"kd_weight": -0.1}, "kd_weight must be >= 0, got -0.1"),
        ({"lr": 0.0}, "lr must be > 0, got 0"),
        ({"temperature": 0.0}, "temperature must be > 0, got 0"),
    ],
    ids=["replay_size", "kd_weight", "lr", "temperature"],
)
def test_negative_sizes_and_non_positive_rates_are_rejected_naming_the_value(
    change: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ExperimentConfig(**change)


def test_replace_validates_the_new_values() -> None:
    config = ExperimentConfig()

    assert config.replace(agents=5).agents == 5
    with pytest.raises(ValueError, match="schedule must be one of sync, sequential"):
        config.replace(schedule="later")
