"""Specification of the conductor's deployment settings (server/conductor/settings.py):
`ConductorSettings.from_run_config` reads the run config's deployment keys (run-id, relay,
results-dir, agent-timeout, retries, wait-agents, rejoin-wait, plots), falls back to the
environment `dkt server` sets for the relay address and the results folder, and names every
missing key in one line; `ConductorSettings` is a `FailurePolicy` with its defaults; and
`with_server_defaults` fills only the fields a run left empty from the server host's
defaults."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from dkt.common.run.config import ExperimentConfig, FailurePolicy
from dkt.server.conductor.settings import (
    RELAY_ADDRESS_ENV,
    RESULTS_ROOT_ENV,
    SERVER_DEFAULTS_ENV,
    ConductorSettings,
    with_server_defaults,
)

COMPLETE = {"run-id": "run-7", "relay": "10.0.0.2:50070", "results-dir": "/data/results/run-7"}
LACKS_ALL = (
    "the run config lacks run-id, relay, results-dir: submit runs with `dkt launch` to a "
    "SuperLink started by `dkt server`"
)
CLASSES_AB = json.dumps(["ant", "bee"])


def defaults_env(**defaults: object) -> dict[str, str]:
    return {SERVER_DEFAULTS_ENV: json.dumps(defaults)}


# --- from_run_config ------------------------------------------------------------------------


def test_run_config_keys_become_the_settings() -> None:
    values = {
        **COMPLETE,
        "agent-timeout": 30,
        "retries": 5,
        "wait-agents": 12.5,
        "rejoin-wait": 7,
        "epochs": 3,  # an experiment key: not a deployment setting
    }

    settings = ConductorSettings.from_run_config(values, environ={})

    assert settings == ConductorSettings(
        run_id="run-7",
        results_dir=Path("/data/results/run-7"),
        relay="10.0.0.2:50070",
        agent_timeout=30.0,
        retries=5,
        wait_agents=12.5,
        rejoin_wait=7.0,
    )
    assert type(settings.agent_timeout) is float
    assert type(settings.retries) is int


def test_tracking_keys_of_the_run_config_become_the_settings() -> None:
    values = {
        **COMPLETE,
        "log": "mlflow",
        "mlflow-uri": "http://mlflow:5000",
        "tensorboard-dir": "",
    }

    settings = ConductorSettings.from_run_config(values, environ={})

    assert (settings.log, settings.mlflow_uri) == ("mlflow", "http://mlflow:5000")


def test_the_plots_key_is_the_results_folders_plot_set_auto_when_left_out() -> None:
    given = ConductorSettings.from_run_config({**COMPLETE, "plots": "none"}, environ={})
    absent = ConductorSettings.from_run_config(COMPLETE, environ={})

    assert (given.plots, absent.plots) == ("none", "auto")


def test_an_unknown_plot_set_is_refused_before_the_run_naming_the_choices() -> None:
    with pytest.raises(ValueError) as caught:
        ConductorSettings.from_run_config({**COMPLETE, "plots": "some"}, environ={})

    assert str(caught.value) == (
        "the run config's plots is 'some'; use one of auto, all, summary, none (`--plots`)"
    )


def test_failure_keys_left_out_take_the_failure_policy_defaults() -> None:
    settings = ConductorSettings.from_run_config(COMPLETE, environ={})

    policy = FailurePolicy()
    assert [getattr(settings, f.name) for f in fields(FailurePolicy)] == [
        getattr(policy, f.name) for f in fields(FailurePolicy)
    ]


def test_relay_address_comes_from_the_environment_when_the_run_leaves_it_empty() -> None:
    environ = {RELAY_ADDRESS_ENV: "127.0.0.1:6000"}

    absent = ConductorSettings.from_run_config({**COMPLETE, "relay": ""}, environ=environ)
    given = ConductorSettings.from_run_config(COMPLETE, environ=environ)

    assert RELAY_ADDRESS_ENV == "DKT_RELAY_ADDRESS"
    assert absent.relay == "127.0.0.1:6000"
    assert given.relay == "10.0.0.2:50070"


def test_results_dir_defaults_to_the_run_id_under_the_results_root() -> None:
    environ = {RESULTS_ROOT_ENV: "/srv/dkt/results"}
    values = {"run-id": "run-7", "relay": "r:1"}

    absent = ConductorSettings.from_run_config(values, environ=environ)
    given = ConductorSettings.from_run_config(COMPLETE, environ=environ)

    assert RESULTS_ROOT_ENV == "DKT_RESULTS_ROOT"
    assert absent.results_dir == Path("/srv/dkt/results/run-7")
    assert given.results_dir == Path("/data/results/run-7")


def test_without_an_environ_argument_the_process_environment_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(RELAY_ADDRESS_ENV, "relay.example:443")
    monkeypatch.setenv(RESULTS_ROOT_ENV, "/srv/results")

    settings = ConductorSettings.from_run_config({"run-id": "r1"})

    assert (settings.relay, settings.results_dir) == ("relay.example:443", Path("/srv/results/r1"))


def test_missing_keys_are_one_line_naming_every_one() -> None:
    with pytest.raises(ValueError) as caught:
        ConductorSettings.from_run_config({}, environ={})

    assert str(caught.value) == LACKS_ALL


def test_empty_values_count_as_missing() -> None:
    with pytest.raises(ValueError) as caught:
        ConductorSettings.from_run_config({**COMPLETE, "relay": "", "run-id": ""}, environ={})

    assert str(caught.value).startswith("the run config lacks run-id, relay: submit runs")


def test_the_results_root_without_a_run_id_still_lacks_the_results_dir() -> None:
    environ = {RESULTS_ROOT_ENV: "/srv/results", RELAY_ADDRESS_ENV: "r:1"}

    with pytest.raises(ValueError) as caught:
        ConductorSettings.from_run_config({}, environ=environ)

    assert str(caught.value).startswith("the run config lacks run-id, results-dir: submit")


# --- a FailurePolicy ------------------------------------------------------------------------


def test_conductor_settings_is_a_failure_policy_with_its_defaults() -> None:
    settings = ConductorSettings(run_id="r", results_dir=Path("out"), relay="h:1")

    assert isinstance(settings, FailurePolicy)
    policy = FailurePolicy()
    assert {f.name: getattr(settings, f.name) for f in fields(FailurePolicy)} == {
        f.name: getattr(policy, f.name) for f in fields(FailurePolicy)
    }
    assert {f.name for f in fields(ConductorSettings)} == {
        *(f.name for f in fields(FailurePolicy)),
        "run_id",
        "results_dir",
        "relay",
        "log",  # tracking (--log, --mlflow-uri): no trackers unless asked for
        "mlflow_uri",
        "plots",  # the results folder's plots (--plots)
    }
    assert (settings.log, settings.mlflow_uri, settings.plots) == ("", "", "auto")


# --- with_server_defaults -------------------------------------------------------------------


def test_without_server_defaults_the_config_is_returned_as_is() -> None:
    config = ExperimentConfig()

    assert with_server_defaults(config, environ={}) is config
    assert with_server_defaults(config, environ={SERVER_DEFAULTS_ENV: ""}) is config


def test_server_defaults_fill_the_fields_a_run_left_empty() -> None:
    environ = defaults_env(
        class_names=CLASSES_AB,
        input_shape="1,8,8",
        input_mean="0.1",
        input_std="0.3",
        probe_from="/public/probe.npz",
        eval_from="/public/eval",
    )

    config = with_server_defaults(ExperimentConfig(), environ=environ)

    assert config == ExperimentConfig(
        class_names=CLASSES_AB,
        input_shape="1,8,8",
        input_mean="0.1",
        input_std="0.3",
        probe_from="/public/probe.npz",
        eval_from="/public/eval",
    )


def test_the_runs_own_values_win_over_server_defaults() -> None:
    run = ExperimentConfig(input_shape="3,16,16", probe_from="/mine/probe")
    environ = defaults_env(input_shape="1,8,8", probe_from="/public/probe.npz", input_std="0.3")

    config = with_server_defaults(run, environ=environ)

    assert config == run.replace(input_std="0.3")


def test_unknown_and_empty_server_defaults_are_ignored() -> None:
    config = ExperimentConfig()
    environ = defaults_env(epochs=99, dataset="cifar10", colour="blue", input_shape="")

    assert with_server_defaults(config, environ=environ) is config


def test_server_defaults_are_read_from_the_process_environment_without_environ(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SERVER_DEFAULTS_ENV, json.dumps({"eval_from": "/public/eval"}))

    assert with_server_defaults(ExperimentConfig()).eval_from == "/public/eval"
