"""`dkt simulate` as a user runs it: a real subprocess writing a real results folder."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib

import pytest

from dkt.cli import build_parser, main
from dkt.common.run.config import ExperimentConfig
from tests.support.processes import dkt_command

TINY = [
    "--dataset", "synthetic", "--agents", "2", "--experiences", "2", "--epochs", "1",
    "--probe-size", "24", "--replay-size", "12", "--batch-size", "16",
]  # fmt: skip


def dkt(*args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(dkt_command(*args), capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_simulate_writes_a_complete_results_folder(tmp_path):
    out = tmp_path / "run"
    proc = dkt("simulate", *TINY, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "DKT results" in proc.stdout and "transfer" in proc.stdout
    expected = {
        "config.toml",
        "metrics.json",
        "summary.md",
        "matrices/agent-0-cl.csv",
        "matrices/agent-0-st.csv",
        "matrices/agent-1-cl.csv",
        "matrices/agent-1-st.csv",
        "plots/accuracy-matrix-agent-0.png",
        "plots/accuracy-matrix-agent-1.png",
        "plots/accuracy.png",
        "plots/transfer.png",
        "checkpoints/agent-0/experience-000.pt",
        "checkpoints/agent-1/experience-001.pt",
    }
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert expected <= written
    for png in out.glob("plots/*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = ExperimentConfig.from_toml(out / "config.toml")
    assert (config.dataset, config.agents, config.experiences, config.epochs) == (
        "synthetic", 2, 2, 1,
    )  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["agents"]) == {"0", "1"}
    assert metrics["config"] == config.to_dict()
    rows = (out / "matrices/agent-0-cl.csv").read_text().splitlines()
    assert rows[0] == "after_experience,exp_0,exp_1"
    assert len(rows) == 3
    summary = (out / "summary.md").read_text()
    assert "| agent | transfer st |" in summary
    assert "| mean |" in summary


def test_threads_flag_sets_the_cpu_threads_and_records_them_outside_the_config(tmp_path):
    out = tmp_path / "run"
    proc = dkt("simulate", *TINY, "--out", str(out), "--quiet", "--threads", "1")

    assert proc.returncode == 0, proc.stderr
    assert re.search(r"\b1 CPU thread\b", proc.stderr), proc.stderr
    assert json.loads((out / "metrics.json").read_text())["threads"] == 1
    assert "threads" not in tomllib.loads((out / "config.toml").read_text())["experiment"]


def test_threads_flag_must_be_at_least_one(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["simulate", "--threads", "0"])

    assert exit_info.value.code == 2
    assert "--threads: must be a whole number >= 1, got '0'" in capsys.readouterr().err


def test_flags_override_the_config_file(tmp_path):
    config_file = tmp_path / "exp.toml"
    config_file.write_text('[experiment]\ndataset = "synthetic"\nagents = 4\nkd_weight = 3.0\n')
    args = build_parser().parse_args(
        ["simulate", "--config", str(config_file), "--agents", "2", "--no-download"]
    )
    from dkt.cli.flags import config_from_args

    config = config_from_args(args)
    assert (config.dataset, config.agents, config.kd_weight, config.download) == (
        "synthetic", 2, 3.0, False,
    )  # fmt: skip


@pytest.mark.slow
def test_resume_of_a_finished_run_keeps_its_numbers(tmp_path):
    out = tmp_path / "run"
    assert dkt("simulate", *TINY, "--out", str(out), "--quiet").returncode == 0
    before = json.loads((out / "metrics.json").read_text())["agents"]
    proc = dkt("simulate", "--resume", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    after = json.loads((out / "metrics.json").read_text())["agents"]
    assert after == before


@pytest.mark.slow
def test_resume_with_changed_flags_is_refused(tmp_path):
    out = tmp_path / "run"
    assert dkt("simulate", *TINY, "--out", str(out), "--quiet").returncode == 0
    proc = dkt("simulate", "--resume", "--out", str(out), "--kd-weight", "5", "--quiet")
    assert proc.returncode == 2
    assert "different config" in proc.stderr


def test_invalid_choice_is_a_usage_error():
    proc = dkt("simulate", "--assignment", "random")
    assert proc.returncode == 2
    assert "invalid choice: 'random'" in proc.stderr


def test_impossible_split_says_what_to_do(tmp_path):
    proc = dkt("simulate", *TINY[:4], "--experiences", "9", "--out", str(tmp_path / "r"))
    assert proc.returncode == 2
    assert "lower --experiences" in proc.stderr


def test_missing_data_files_say_how_to_get_them(tmp_path):
    proc = dkt("simulate", "--dataset", "mnist", "--data-root", str(tmp_path), "--quiet",
               "--out", str(tmp_path / "r"))  # fmt: skip
    assert proc.returncode == 2
    assert "--download" in proc.stderr


def test_config_file_written_by_a_run_is_valid_toml(tmp_path):
    out = tmp_path / "run"
    assert dkt("simulate", *TINY, "--out", str(out), "--quiet").returncode == 0
    doc = tomllib.loads((out / "config.toml").read_text())
    assert doc["experiment"]["dataset"] == "synthetic"


def test_the_command_line_starts_without_importing_torch() -> None:
    """`dkt --help`, `dkt status` and usage errors stay quick: the choice lists the
    parser offers live in the torch-free dkt.common.choices."""
    code = (
        "import sys, dkt.cli; dkt.cli.build_parser(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'torchvision'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# Per-agent specs ----------------------------------------------------------------------


@pytest.mark.slow
def test_per_agent_overrides_are_recorded_and_resume_refuses_a_changed_spec(tmp_path):
    out = tmp_path / "run"
    agents = ["--agent", "0:backbone=cnn,teachers=[]", "--agent", "1:kd_weight=0.5"]
    proc = dkt("simulate", *TINY, *agents, "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr

    doc = tomllib.loads((out / "config.toml").read_text())
    assert doc["agents"] == {"0": {"backbone": "cnn", "teachers": []}, "1": {"kd_weight": 0.5}}
    config = ExperimentConfig.from_toml(out / "config.toml")
    assert config.agent_spec(0).backbone == "cnn" and config.agent_spec(1).kd_weight == 0.5
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["agents"]["0"]["spec"]["backbone"] == "cnn"
    assert metrics["agents"]["0"]["spec"]["teachers"] == []
    assert ExperimentConfig.from_dict(metrics["config"]) == config

    same = dkt("simulate", "--resume", "--out", str(out), *agents, "--quiet")
    assert same.returncode == 0, same.stderr
    changed = dkt("simulate", "--resume", "--out", str(out), "--agent", "1:kd_weight=2", "--quiet")
    assert changed.returncode == 2
    assert "different config (changed: agent_overrides)" in changed.stderr


def test_a_results_folders_config_runs_again_through_config(tmp_path):
    config = ExperimentConfig(agents=3, agent_overrides={2: {"strategy": "lwf", "teachers": [0]}})
    (tmp_path / "config.toml").write_text(config.to_toml())
    from dkt.cli.flags import config_from_args

    args = build_parser().parse_args(["simulate", "--config", str(tmp_path / "config.toml")])

    assert config_from_args(args) == config


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--agent", "5:epochs=1"],
            "[agents.5]: there is no agent 5; this run's agents are 0 to 1",
        ),
        (["--agent", "1:colour=red"], "[agents.1]: unknown key 'colour'; an agent may override"),
        (["--agent", "1:epochs=lots"], "[agents.1] epochs must be int, got 'lots'"),
        (["--agent", "1:teachers=[1]"], "[agents.1]: agent 1 cannot be its own teacher"),
        (["--agent", "1:teachers=[7]"], "[agents.1]: teacher 7 does not exist"),
        (
            ["--strategy", "der"],
            "dkt simulate: error: strategy must be one of naive, replay, lwf, joint, ewc, a "
            "name given to register_strategy, or module:callable; got 'der'",
        ),
    ],
)
def test_bad_per_agent_input_is_one_line(tmp_path, capsys, flags, message):
    # In-process: the same `main` as the `dkt` script, without a second of start-up.
    try:
        code = main(["simulate", *TINY, *flags, "--out", str(tmp_path / "r"), "--quiet"])
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    stderr = capsys.readouterr().err

    assert code == 2
    assert message in stderr
    if flags[0] == "--agent":
        assert stderr.strip().count("\n") == 0
        assert not (tmp_path / "r").exists()


def test_dkt_run_refuses_fedavg_with_the_async_schedule_before_starting_anything(tmp_path):
    out = tmp_path / "r"
    proc = dkt("run", *TINY, "--exchange", "fedavg", "--schedule", "async", "--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "dkt run: error: exchange fedavg averages every agent after every experience, so its "
        "rounds are synchronous: use schedule sync (or sequential)"
    )
    assert not out.exists()  # no cluster, no results folder
