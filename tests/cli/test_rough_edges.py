"""The small things a first-time user trips over: mistyped options, values the errors
must name, colour codes in piped logs, an own-data run's summary, plot labels."""

from __future__ import annotations

import json

import pytest

from dkt.cli import main
from dkt.cli.launch import _print_logs
from dkt.common.evaluation.results import (
    RunResult,
    data_description,
    experience_labels,
    render_summary,
)
from dkt.common.run.config import ExperimentConfig
from dkt.flower.runs import strip_ansi


def _usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_a_mistyped_option_suggests_the_right_one(capsys):
    line = _usage_error(capsys, ["simulate", "--kd-weigth", "1"])

    assert line == (
        "dkt simulate: error: unrecognized arguments: --kd-weigth 1; did you mean --kd-weight?"
    )


def test_several_mistyped_options_get_one_suggestion_each(capsys):
    line = _usage_error(capsys, ["compare", "--sedes", "1", "--kd-weigth=2"])

    assert line.endswith("did you mean --seeds for --sedes, --kd-weight for --kd-weigth?")


def test_an_option_nothing_resembles_gets_no_guess(capsys):
    line = _usage_error(capsys, ["run", "--zzzzzz"])

    assert line == "dkt run: error: unrecognized arguments: --zzzzzz"


def test_a_mistyped_option_of_a_nested_command_is_answered_by_that_command(capsys, tmp_path):
    argv = ["keys", "init", str(tmp_path / "k"), "--agents", "2", "--server-name", "x"]

    line = _usage_error(capsys, [*argv, "--server-nme"])

    assert line == (
        "dkt keys init: error: unrecognized arguments: --server-nme; did you mean --server-name?"
    )
    assert not (tmp_path / "k").exists()


def test_a_mistyped_command_suggests_the_right_one(capsys):
    line = _usage_error(capsys, ["simulat"])

    assert line.startswith("dkt: error: argument COMMAND: invalid choice: 'simulat'")
    assert line.endswith("did you mean 'simulate'?")


def test_a_mistyped_choice_suggests_the_right_one(capsys):
    line = _usage_error(capsys, ["simulate", "--dataset", "fashion_mnist"])

    assert line.endswith("did you mean 'fashion-mnist'?")


def test_a_negative_kd_weight_names_the_value(capsys, tmp_path):
    code = main(["simulate", "--kd-weight", "-1", "--out", str(tmp_path / "r"), "--quiet"])

    assert code == 2
    assert capsys.readouterr().err.strip() == "dkt simulate: error: kd_weight must be >= 0, got -1"


# Flower's colours in piped logs ---------------------------------------------------------

COLOURED = "\x1b[92mINFO \x1b[0m:      Starting DKT conductor"


class _Run:
    def logs(self):
        yield COLOURED


def test_ansi_codes_are_stripped():
    assert strip_ansi(COLOURED) == "INFO :      Starting DKT conductor"


def test_launch_logs_lose_their_colours_when_piped(capsys):
    _print_logs(_Run(), plain=True)

    assert capsys.readouterr().out == "INFO :      Starting DKT conductor\n"


def test_launch_logs_keep_their_colours_on_a_terminal(capsys):
    _print_logs(_Run(), plain=False)

    assert capsys.readouterr().out == COLOURED + "\n"


def test_launch_logs_to_a_pipe_are_plain_by_default(capsys):
    _print_logs(_Run())  # pytest's captured stdout is not a terminal

    assert "\x1b[" not in capsys.readouterr().out


# An own-data run's summary ------------------------------------------------------------


def _metrics(agent_data: dict[str, str]) -> dict:
    config = ExperimentConfig(agents=len(agent_data), eval_from="/data/eval.npz")
    return {
        "config": config.to_dict(),
        "probe": {"size": 10, "source": "x", "fingerprint": "f" * 64},
        "driver": "flower",
        "seconds": 1.0,
        "missing_agents": [],
        "agent_data": agent_data,
        "agents": {},
        "mean_over_agents": {},
    }


def test_an_own_data_run_summary_names_the_sites_not_digits():
    summary = render_summary(_metrics({"0": "own", "1": "own"}))

    assert "digits" not in summary
    assert "- data: **own data** at every site (agents 0, 1), 2 agents" in summary


def test_a_mixed_run_summary_names_the_data_set_and_the_own_data_sites():
    assert data_description("digits", ["1"], 3) == "data set: **digits**, own data at agents 1"
    summary = render_summary(_metrics({"0": "shared", "1": "own", "2": "shared"}))
    assert "- data set: **digits**, own data at agents 1, 3 agents" in summary


def test_a_shared_data_run_summary_names_the_data_set():
    assert "- data set: **digits**, 2 agents" in render_summary(
        _metrics({"0": "shared", "1": "shared"})
    )


# Accuracy-matrix labels -----------------------------------------------------------------


def _result(config: ExperimentConfig, class_orders) -> RunResult:
    return RunResult(
        config=config,
        probe_fingerprint="f" * 64,
        probe_source="holdout",
        class_orders=class_orders,
        histories={a: [] for a in range(config.agents)},
        seconds=0.0,
    )


def test_matrix_columns_are_labelled_with_each_agents_own_class_order():
    config = ExperimentConfig(dataset="cifar10", agents=2, experiences=2)
    result = _result(config, [[[3, 5], [0, 1]], [[9, 2], [4, 8]]])

    assert experience_labels(result, 0) == ["0: cat, dog", "1: airplane, automobile"]
    assert experience_labels(result, 1) == ["0: truck, bird", "1: deer, ship"]


def test_matrix_labels_use_the_run_class_space_and_shorten_long_experiences():
    config = ExperimentConfig(
        agents=1, experiences=1, class_names=json.dumps(["a", "b", "c", "d", "e"])
    )
    result = _result(config, [[[4, 3, 2, 1, 0]]])

    assert experience_labels(result, 0) == ["0: e, d, c +2"]


def test_matrix_labels_of_an_unnamed_data_set_are_class_numbers():
    result = _result(ExperimentConfig(agents=1, experiences=1), [[[7, 2]]])

    assert experience_labels(result, 0) == ["0: 7, 2"]


def test_the_start_line_of_an_own_data_run_names_the_sites():
    from dkt.cli.run import data_words

    config = ExperimentConfig(agents=2)
    sites = {0: object(), 1: object()}

    assert data_words(config, {}) == "digits"
    assert data_words(config, sites) == "their own data (agents 0, 1)"
    assert data_words(config, {1: object()}) == "digits (own data at agents 1)"
