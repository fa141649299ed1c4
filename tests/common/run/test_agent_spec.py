"""Specification of per-agent specs: [agents.N] tables and --agent flags resolved, over the
run's config, into one AgentSpec per agent; bad input refused with one line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dkt.cli import build_parser
from dkt.cli.flags import config_from_args
from dkt.common.run.agent_spec import (
    AGENT_ONLY_KEYS,
    OVERRIDABLE_KEYS,
    RUN_OPTION_KEYS,
    AgentSpec,
    parse_agent_flag,
)
from dkt.common.run.config import ExperimentConfig

TWO = ExperimentConfig(agents=2)


def test_every_run_option_an_agent_overrides_is_a_config_field_of_the_same_type() -> None:
    config_types = {f.name: f.type for f in dataclasses.fields(ExperimentConfig)}
    spec_types = {f.name: f.type for f in dataclasses.fields(AgentSpec)}

    for key in RUN_OPTION_KEYS:
        assert spec_types[key] == config_types[key], key
    assert set(OVERRIDABLE_KEYS) == set(RUN_OPTION_KEYS) | set(AGENT_ONLY_KEYS)
    assert not set(AGENT_ONLY_KEYS) & set(config_types)


def test_an_agent_without_overrides_gets_the_runs_options() -> None:
    spec = TWO.agent_spec(0)

    assert spec.agent_id == 0
    assert {k: getattr(spec, k) for k in RUN_OPTION_KEYS} == {
        k: getattr(TWO, k) for k in RUN_OPTION_KEYS
    }
    assert (spec.device, spec.teachers) == ("", None)


def test_overrides_apply_to_their_agent_only_with_typed_values() -> None:
    config = ExperimentConfig(
        agents=3,
        agent_overrides={
            1: {"backbone": "cnn", "kd_weight": "0", "epochs": "3", "teachers": [2, 0]},
            "2": {"strategy": "lwf", "device": "cuda:1", "teachers": []},
        },
    )

    one, two = config.agent_spec(1), config.agent_spec(2)
    assert (one.backbone, one.kd_weight, one.epochs, one.teachers) == ("cnn", 0.0, 3, (0, 2))
    assert (two.strategy, two.device, two.teachers) == ("lwf", "cuda:1", ())
    assert config.agent_spec(0) == ExperimentConfig(agents=3).agent_spec(0)


def test_a_joint_agent_has_one_experience_the_others_the_runs() -> None:
    config = ExperimentConfig(agents=2, agent_overrides={1: {"strategy": "joint"}})

    assert [config.agent_experiences(a) for a in (0, 1)] == [5, 1]


def test_overrides_round_trip_through_toml_as_agents_tables(tmp_path: Path) -> None:
    config = ExperimentConfig(
        agents=3, agent_overrides={2: {"backbone": "cnn", "teachers": [0]}, 0: {"lr": 0.01}}
    )
    path = tmp_path / "experiment.toml"
    path.write_text(config.to_toml())

    assert ExperimentConfig.from_toml(path) == config
    text = path.read_text()
    assert "[agents.0]" in text and "[agents.2]" in text
    assert "agent_overrides" not in text


def test_agents_tables_are_read_beside_top_level_keys(tmp_path: Path) -> None:
    path = tmp_path / "experiment.toml"
    path.write_text('experiences = 2\n\n[agents.1]\nbackbone = "cnn"\nkd_weight = 0\n')

    config = ExperimentConfig.from_toml(path)

    assert config.experiences == 2
    assert config.agent_overrides == {1: {"backbone": "cnn", "kd_weight": 0.0}}


def test_overrides_travel_as_one_json_text_in_the_flat_dict() -> None:
    config = ExperimentConfig(agents=2, agent_overrides={1: {"teachers": [0], "lr": 0.5}})

    flat = config.to_dict()

    assert flat["agent_overrides"] == '{"1": {"lr": 0.5, "teachers": [0]}}'
    assert all(isinstance(v, str | int | float | bool) for v in flat.values())
    assert ExperimentConfig.from_run_config({**flat, "run-id": "x"}) == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({2: {"epochs": 1}}, "[agents.2]: there is no agent 2; this run's agents are 0 to 1"),
        ({1: {"colour": "red"}}, "[agents.1]: unknown key 'colour'; an agent may override "),
        ({1: {"epochs": "many"}}, "[agents.1] epochs must be int, got 'many'"),
        ({1: {"strategy": "der"}}, "[agents.1]: strategy must be one of naive, replay, lwf"),
        ({1: {"batch_size": 0}}, "[agents.1]: batch_size must be at least 1, got 0"),
        ({1: {"teachers": [1]}}, "[agents.1]: agent 1 cannot be its own teacher"),
        ({1: {"teachers": [0, 4]}}, "[agents.1]: teacher 4 does not exist; this run's agents"),
        ({1: {"teachers": "zero"}}, "[agents.1]: teachers must be a list of agent ids"),
    ],
)
def test_bad_overrides_are_one_line_errors_naming_the_agent(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        ExperimentConfig(agents=2, agent_overrides=overrides)

    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_lowering_the_agent_count_below_an_override_is_refused() -> None:
    config = ExperimentConfig(agents=3, agent_overrides={2: {"epochs": 1}})

    with pytest.raises(ValueError, match=r"\[agents.2\]: there is no agent 2"):
        config.replace(agents=2)


# --agent N:key=value ------------------------------------------------------------------


def test_the_agent_flag_parses_keys_values_and_a_teacher_list() -> None:
    assert parse_agent_flag("1:backbone=cnn,kd_weight=0") == (
        1,
        {"backbone": "cnn", "kd_weight": "0"},
    )
    assert parse_agent_flag("2:teachers=[0,1],lr=0.1") == (2, {"teachers": [0, 1], "lr": "0.1"})
    assert parse_agent_flag("0:teachers=[]") == (0, {"teachers": []})
    assert parse_agent_flag("0:teachers=1,kd-loss=kl") == (0, {"teachers": [1], "kd_loss": "kl"})


@pytest.mark.parametrize("text", ["backbone=cnn", "x:epochs=1", "1:", "1:epochs", "1:teachers=[a]"])
def test_a_malformed_agent_flag_is_an_error_showing_the_form(text: str) -> None:
    with pytest.raises(ValueError, match="--agent takes N:key=value|teachers must be agent ids"):
        parse_agent_flag(text)


def test_agent_flags_merge_key_by_key_over_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "experiment.toml"
    path.write_text('[experiment]\nagents = 3\n\n[agents.1]\nbackbone = "cnn"\nepochs = 2\n')
    args = build_parser().parse_args(
        ["simulate", "--config", str(path), "--agent", "1:epochs=4", "--agent", "2:teachers=[0]"]
    )

    config = config_from_args(args)

    assert config.agent_overrides == {
        1: {"backbone": "cnn", "epochs": 4},
        2: {"teachers": (0,)},
    }


def test_an_agent_flag_for_a_missing_agent_is_an_error() -> None:
    args = build_parser().parse_args(["simulate", "--agents", "2", "--agent", "5:epochs=1"])

    with pytest.raises(ValueError, match=r"^\[agents.5\]: there is no agent 5"):
        config_from_args(args)
