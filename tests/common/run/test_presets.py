"""The original's three experiments as presets: what each resolves to, how it layers with
the --config file and flags, the teacher cache, and short real runs that check who
distils whom at which experience."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dkt.cli import build_parser, main
from dkt.cli.compare import grid_from_args
from dkt.cli.flags import config_from_args
from dkt.common.engine.setup import prepare
from dkt.common.engine.teacher_cache import entry_dir
from dkt.common.run.config import ExperimentConfig
from dkt.common.run.presets import PRESETS, preset, preset_config
from dkt.common.training.agent import Agent

# Synthetic data (6 classes), 3 experiences of 2 classes, a few steps each: seconds.
TINY = [
    "--dataset", "synthetic", "--experiences", "3", "--epochs", "2", "--batch-size", "16",
    "--probe-batch-size", "16", "--probe-size", "36", "--replay-size", "24", "--quiet",
]  # fmt: skip
SMALL_RUN = {
    "agents": 2,
    "dataset": "digits",
    "experiences": 5,
    "assignment": "shuffled",
    "backbone": "mlp",
    "epochs": 8,
    "batch_size": 64,
    "probe_batch_size": 64,
    "probe_size": 200,
    "probe_source": "holdout",
    "strategy": "replay",
    "replay_size": 200,
    "replay_mixing": "batch",
    "lr": 1e-3,
    "clip_grad_norm": 5.0,
    "kd_weight": 1.0,
    "kd_loss": "mse",
    "peer_policy": "all",
    "schedule": "sequential",
}
FULL_RUN = {
    **SMALL_RUN,
    "dataset": "cifar100",
    "experiences": 10,
    "backbone": "slim_resnet18",
    "epochs": 30,
    "batch_size": 256,
    "probe_batch_size": 256,
    "probe_size": 5000,
    "replay_size": 2000,
}
OVERRIDES = {
    ("seed-exp1", "small"): {
        0: {"strategy": "joint", "backbone": "mlp", "kd_weight": 0.0, "teachers": ()},
        1: {"teachers": (0,)},
    },
    ("seed-exp1", "full"): {
        0: {"strategy": "joint", "backbone": "resnet18", "kd_weight": 0.0, "teachers": ()},
        1: {"teachers": (0,)},
    },
    ("seed-exp2", "small"): {
        0: {"strategy": "lwf", "kd_weight": 0.0, "teachers": ()},
        1: {"teachers": (0,)},
    },
    ("seed-exp3", "small"): {0: {"teachers": (1,)}, 1: {"teachers": (0,)}},
}


def parse(*argv: str) -> ExperimentConfig:
    return config_from_args(build_parser().parse_args(["simulate", *argv]))


@pytest.mark.parametrize(("name", "scale"), sorted(OVERRIDES))
def test_each_preset_resolves_to_its_run_options_and_per_agent_overrides(name, scale):
    config = preset_config(name, scale)
    run = SMALL_RUN if scale == "small" else FULL_RUN
    assert {k: getattr(config, k) for k in run} == run
    assert config.agent_overrides == OVERRIDES[name, scale]


def test_the_full_scale_of_every_preset_is_the_originals_and_keeps_its_agents():
    for name in PRESETS:
        small, full = preset_config(name, "small"), preset_config(name, "full")
        assert {k: getattr(full, k) for k in FULL_RUN} == FULL_RUN
        same_agents = {a: {k: v for k, v in t.items() if k != "backbone"} for a, t in
                       full.agent_overrides.items()}  # fmt: skip
        assert same_agents == {
            a: {k: v for k, v in t.items() if k != "backbone"}
            for a, t in small.agent_overrides.items()
        }


def test_the_presets_specs_say_who_teaches_whom_with_which_strategy():
    exp1, exp2, exp3 = (preset_config(n) for n in ("seed-exp1", "seed-exp2", "seed-exp3"))
    teacher, student = exp1.agent_spec(0), exp1.agent_spec(1)
    assert (teacher.strategy, teacher.kd_weight, teacher.teachers) == ("joint", 0.0, ())
    assert (student.strategy, student.kd_weight, student.teachers) == ("replay", 1.0, (0,))
    assert exp1.agent_experiences(0) == 1 and exp1.agent_experiences(1) == 5
    teacher, student = exp2.agent_spec(0), exp2.agent_spec(1)
    assert (teacher.strategy, teacher.kd_weight, teacher.teachers) == ("lwf", 0.0, ())
    assert (student.strategy, student.kd_weight, student.teachers) == ("replay", 1.0, (0,))
    assert [exp3.agent_spec(a).teachers for a in (0, 1)] == [(1,), (0,)]
    assert preset("seed-exp1").cached_teachers == (0,)
    assert preset("seed-exp3").cached_teachers == ()


def test_the_preset_replaces_the_defaults_and_scale_small_is_the_default():
    assert parse("--preset", "seed-exp2") == preset_config("seed-exp2", "small")
    assert parse("--preset", "seed-exp2", "--scale", "full") == preset_config("seed-exp2", "full")
    assert parse() == ExperimentConfig()


def test_flags_beat_the_preset_and_per_agent_overrides_beat_run_wide_flags():
    config = parse("--preset", "seed-exp2", "--kd-weight", "5", "--strategy", "naive",
                   "--dataset", "fashion-mnist", "--scale", "full")  # fmt: skip
    assert (config.kd_weight, config.strategy, config.dataset) == (5.0, "naive", "fashion-mnist")
    assert config.backbone == "slim_resnet18"  # the rest of the full scale stays
    # The teacher's own overrides still win for it; the student follows the run.
    assert (config.agent_spec(0).kd_weight, config.agent_spec(0).strategy) == (0.0, "lwf")
    assert (config.agent_spec(1).kd_weight, config.agent_spec(1).strategy) == (5.0, "naive")
    merged = parse("--preset", "seed-exp1", "--agent", "0:backbone=cnn,epochs=3")
    assert merged.agent_overrides[0] == {
        "strategy": "joint", "backbone": "cnn", "kd_weight": 0.0, "teachers": (), "epochs": 3,
    }  # fmt: skip


def test_the_config_file_beats_the_preset_key_by_key_and_flags_beat_the_file(tmp_path):
    path = tmp_path / "experiment.toml"
    path.write_text("[experiment]\nepochs = 3\nlr = 0.01\n\n[agents.1]\nkd_weight = 2\n")
    config = parse("--preset", "seed-exp1", "--config", str(path), "--lr", "0.5")
    expected = preset_config("seed-exp1").replace(
        epochs=3,
        lr=0.5,
        agent_overrides={**OVERRIDES["seed-exp1", "small"], 1: {"teachers": [0], "kd_weight": 2}},
    )
    assert config == expected
    assert config.agent_spec(1).kd_weight == 2.0 and config.agent_spec(1).teachers == (0,)


def test_a_results_folders_config_of_a_preset_run_is_the_preset(tmp_path):
    config = parse("--preset", "seed-exp3", "--scale", "full")
    path = tmp_path / "config.toml"
    path.write_text(config.to_toml())
    assert ExperimentConfig.from_toml(path) == config
    assert parse("--preset", "seed-exp3", "--config", str(path)) == config


@pytest.mark.parametrize("command", ["simulate", "run", "compare"])
def test_an_unknown_preset_is_one_line_listing_the_presets(command, tmp_path, capsys):
    code = main([command, "--preset", "seed-exp9", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == (
        f"dkt {command}: error: unknown preset 'seed-exp9'; the presets are seed-exp1, "
        "seed-exp2, seed-exp3"
    )
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_scale_without_a_preset_is_one_line(capsys):
    assert main(["simulate", "--scale", "full"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "dkt simulate: error: --scale picks the scale of a preset: add --preset NAME "
        "(seed-exp1, seed-exp2, seed-exp3)"
    )


@pytest.mark.parametrize("command", ["simulate", "run"])
def test_help_names_the_presets_and_the_precedence(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # argparse wraps at hyphens: seed-/exp1
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--preset NAME" in text and "--scale {small,full}" in text
    assert "the defaults < --preset < the --config file < these flags" in text
    assert all(name in text for name in PRESETS)


def test_compare_starts_its_grid_from_the_preset():
    args = build_parser().parse_args(
        ["compare", "--preset", "seed-exp2", "--vary", "kd_weight=0,1", "--seeds", "0"]
    )
    grid = grid_from_args(args)
    assert grid.base == preset_config("seed-exp2")
    # The varied λ is the run's: the teacher keeps its own λ = 0, the student follows.
    specs = [(r.config.agent_spec(0), r.config.agent_spec(1)) for r in grid.runs()]
    assert [(t.kd_weight, s.kd_weight) for t, s in specs] == [(0.0, 0.0), (0.0, 1.0)]


def test_the_teacher_cache_key_follows_the_teacher_not_the_student():
    base = preset_config("seed-exp1").replace(dataset="synthetic", experiences=3, probe_size=36)
    key = entry_dir("cache", prepare(base), 0)
    other_student = base.replace(kd_weight=3.0, kd_loss="kl", strategy="naive", epochs=8)
    assert entry_dir("cache", prepare(other_student), 0) == key
    changed = [
        base.replace(seed=1),
        base.replace(probe_size=30),
        base.replace(
            agent_overrides={
                **base.agent_overrides,
                0: {**base.agent_overrides[0], "backbone": "cnn"},
            }
        ),  # fmt: skip
        base.replace(epochs=3),  # the teacher's epochs are the run's
    ]
    assert all(entry_dir("cache", prepare(c), 0) != key for c in changed)


# Short real runs ---------------------------------------------------------------------


def metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def teachers_per_experience(folder: Path, agent: int) -> list[list[list[int]]]:
    """Per experience, the [teacher agent, teacher experience] pairs the agent distilled."""
    return [r["teachers"] for r in metrics(folder)["agents"][str(agent)]["experiences"]]


def without_timings(value):
    """The metrics without what differs between identical runs: timings, and the
    provenance (its command line names the run's own --out)."""
    if isinstance(value, dict):
        return {
            k: without_timings(v)
            for k, v in value.items()
            if "seconds" not in k and k != "provenance"
        }
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


@pytest.fixture
def trained(monkeypatch) -> list[tuple[int, int]]:
    """Every (agent, experience) trained in this process, in order."""
    calls: list[tuple[int, int]] = []
    original = Agent.train_experience

    def counting(self, experience, *args, **kwargs):
        calls.append((self.agent_id, experience))
        return original(self, experience, *args, **kwargs)

    monkeypatch.setattr(Agent, "train_experience", counting)
    return calls


def test_seed_exp1_student_distils_the_joint_teacher_from_its_first_experience(
    tmp_path, trained, capsys
):
    cache = tmp_path / "cache"
    first = tmp_path / "first"
    flags = ["--preset", "seed-exp1", *TINY, "--teacher-cache", str(cache)]
    assert main(["simulate", *flags, "--out", str(first)]) == 0
    assert trained == [(0, 0), (1, 0), (1, 1), (1, 2)]
    assert teachers_per_experience(first, 0) == [[]]
    assert teachers_per_experience(first, 1) == [[[0, 0]]] * 3
    student = metrics(first)["agents"]["1"]["experiences"]
    assert student[0]["transfer_classes"] == [c for c in range(6) if c not in student[0]["classes"]]
    entries = list(cache.iterdir())
    assert [p.name[: len("agent-0-")] for p in entries] == ["agent-0-"]
    assert "agent 0: teacher kept in" in capsys.readouterr().err

    # Same teacher, data and probe: restored, not retrained, and the same numbers.
    trained.clear()
    second = tmp_path / "second"
    assert main(["simulate", *flags, "--out", str(second)]) == 0
    assert trained == [(1, 0), (1, 1), (1, 2)]
    assert f"agent 0: teacher restored from {entries[0]}, not retrained" in capsys.readouterr().err
    assert without_timings(metrics(second)) == without_timings(metrics(first))
    # The restored teacher's record is the stored one, its training time included.
    assert metrics(second)["agents"]["0"] == metrics(first)["agents"]["0"]

    # Another teacher (its own epochs) is a different entry: trained again.
    trained.clear()
    third = tmp_path / "third"
    assert main(["simulate", *flags, "--agent", "0:epochs=1", "--out", str(third)]) == 0
    assert trained[0] == (0, 0)
    assert len(list(cache.iterdir())) == 2


def test_seed_exp1_resumes_with_a_restored_teacher(tmp_path, trained):
    cache = tmp_path / "cache"
    flags = ["--preset", "seed-exp1", *TINY, "--teacher-cache", str(cache)]
    assert main(["simulate", *flags, "--out", str(tmp_path / "first")]) == 0
    out = tmp_path / "again"
    assert main(["simulate", *flags, "--out", str(out)]) == 0
    trained.clear()
    assert main(["simulate", *flags, "--out", str(out), "--resume"]) == 0
    assert trained == []
    assert without_timings(metrics(out)) == without_timings(metrics(tmp_path / "first"))


def test_seed_exp2_student_at_experience_e_distils_the_teacher_after_e(tmp_path, trained):
    cache = tmp_path / "cache"
    flags = ["--preset", "seed-exp2", *TINY, "--teacher-cache", str(cache)]
    first = tmp_path / "first"
    assert main(["simulate", *flags, "--out", str(first)]) == 0
    # Sequential: the teacher finishes experience e before the student trains it.
    assert trained == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    assert teachers_per_experience(first, 0) == [[], [], []]
    assert teachers_per_experience(first, 1) == [[[0, 0]], [[0, 1]], [[0, 2]]]
    teacher = metrics(first)["agents"]["0"]
    assert teacher["spec"]["strategy"] == "lwf"
    assert [r["loss_kd"] for r in teacher["experiences"]] == [0.0, 0.0, 0.0]
    assert teacher["experiences"][1]["loss_lwf"] > 0

    # A different student (λ = 2) reuses the continual teacher's whole stream.
    trained.clear()
    second = tmp_path / "second"
    assert main(["simulate", *flags, "--kd-weight", "2", "--out", str(second)]) == 0
    assert trained == [(1, 0), (1, 1), (1, 2)]
    assert teachers_per_experience(second, 1) == [[[0, 0]], [[0, 1]], [[0, 2]]]
    assert metrics(second)["agents"]["0"] == metrics(first)["agents"]["0"]


def test_seed_exp3_peers_distil_each_other_a_after_e_minus_1_b_after_e(
    tmp_path, trained, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main(["simulate", "--preset", "seed-exp3", *TINY, "--out", str(out)]) == 0
    assert trained == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    assert teachers_per_experience(out, 0) == [[], [[1, 0]], [[1, 1]]]
    assert teachers_per_experience(out, 1) == [[[0, 0]], [[0, 1]], [[0, 2]]]
    orders = [metrics(out)["agents"][a]["class_order"] for a in ("0", "1")]
    assert orders[0] != orders[1]  # differently ordered streams
    assert not (tmp_path / "runs" / "teacher-cache").exists()  # no teacher to keep
