"""The grid of `dkt compare`: expansion into cells and runs, cell keys, validation
against ExperimentConfig, the baseline, the grid file, and when an output folder may be
resumed. No training here."""

from __future__ import annotations

import json

import pytest

from dkt.cli import build_parser
from dkt.cli.compare import grid_from_args
from dkt.common.run import grid as grid_module
from dkt.common.run.config import ExperimentConfig
from dkt.common.run.grid import (
    Cell,
    GridError,
    build_grid,
    check_resumable,
    parse_seeds,
    parse_vary_flag,
    write_grid_file,
)

BASE = ExperimentConfig(dataset="synthetic", agents=2, experiences=2, epochs=1)
KD_VARY = [("kd_weight", ["0", "1"], "--vary")]


def parse(*argv: str):
    return grid_from_args(build_parser().parse_args(["compare", *argv]))


def test_cells_are_every_combination_in_the_order_the_options_were_given():
    grid = build_grid(
        BASE,
        [0],
        [("kd_weight", ["0", "1"], "--vary"), ("backbone", ["mlp", "cnn"], "--vary")],
    )
    assert [c.values for c in grid.cells()] == [
        (("kd_weight", 0.0), ("backbone", "mlp")),
        (("kd_weight", 0.0), ("backbone", "cnn")),
        (("kd_weight", 1.0), ("backbone", "mlp")),
        (("kd_weight", 1.0), ("backbone", "cnn")),
    ]


def test_runs_are_cells_times_seeds_seed_by_seed_with_each_runs_config():
    grid = build_grid(BASE, [3, 1], [("kd_weight", ["0", "0.5"], "--vary")])
    runs = grid.runs()
    assert [(r.cell.key, r.seed) for r in runs] == [
        ("kd_weight=0.0", 3),
        ("kd_weight=0.5", 3),
        ("kd_weight=0.0", 1),
        ("kd_weight=0.5", 1),
    ]
    assert runs[1].config == BASE.replace(kd_weight=0.5, seed=3)


def test_cell_keys_name_each_varied_value_and_are_safe_folder_names():
    assert Cell((("kd_weight", 0.1), ("kd_loss", "kl"))).key == "kd_weight=0.1__kd_loss=kl"
    assert Cell((("download", True),)).key == "download=true"
    assert Cell((("data_root", "/data/my set"),)).key == "data_root=_data_my_set"
    assert Cell(()).key == "base"
    assert Cell((("kd_weight", 0.1), ("kd_loss", "kl"))).label == "kd_weight=0.1, kd_loss=kl"


def test_run_folders_live_under_runs_cell_seed(tmp_path):
    run = build_grid(BASE, [2], [("kd_weight", ["1"], "--vary")]).runs()[0]
    assert run.folder(tmp_path) == tmp_path / "runs" / "kd_weight=1.0" / "seed-2"
    assert run.partial_folder(tmp_path).name == "seed-2.partial"


def test_values_are_typed_by_the_config_and_dashes_name_the_same_option():
    grid = build_grid(BASE, [0], [("kd-weight", ["0", "2"], "--vary"), ("epochs", [1, 3], "f")])
    assert grid.vary == (("kd_weight", (0.0, 2.0)), ("epochs", (1, 3)))


def test_nothing_varied_is_one_cell_called_base():
    grid = build_grid(BASE, [0, 1], [])
    assert [c.key for c in grid.cells()] == ["base"]
    assert len(grid.runs()) == 2


@pytest.mark.parametrize(
    ("vary", "message"),
    [
        (("kd_wieght", ["0"]), "unknown option 'kd_wieght'; valid options: dataset,"),
        (("kd_weight", ["abc"]), "kd_weight must be float, got 'abc'"),
        (("backbone", ["vgg"]), "backbone must be one of mlp,"),
        (("epochs", ["0"]), "epochs must be at least 1"),
        (("seed", ["1"]), "use --seeds"),
        (("kd_weight", ["1", "1.0"]), "value 1.0 is listed twice"),
    ],
)
def test_a_bad_option_or_value_is_one_line_naming_it(vary, message):
    with pytest.raises(GridError) as err:
        build_grid(BASE, [0], [(*vary, "--vary")])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_the_unknown_option_message_lists_every_field_but_the_seed():
    with pytest.raises(GridError) as err:
        build_grid(BASE, [0], [("nope", ["1"], "--vary")])
    listed = str(err.value).split("valid options: ")[1].split(", ")
    assert listed == [n for n in grid_module.field_names() if n != "seed"]


def test_a_combination_the_config_rejects_names_its_cell():
    with pytest.raises(GridError, match="cell peer_policy=random-k, peers_k=2: peers_k must"):
        build_grid(
            BASE,
            [0],
            [("peer_policy", ["random-k"], "--vary"), ("peers_k", ["2"], "--vary")],
        )


def test_the_default_baseline_is_kd_weight_zero_when_it_is_varied():
    grid = build_grid(BASE, [0], [("kd_weight", ["0", "1"], "--vary")])
    assert grid.baseline == (("kd_weight", 0.0),)
    cell = grid.cells()[1]
    assert grid.baseline_of(cell) == grid.cells()[0]


def test_without_a_varied_zero_kd_weight_there_is_no_default_baseline():
    assert build_grid(BASE, [0], [("kd_weight", ["0.5", "1"], "--vary")]).baseline == ()
    assert build_grid(BASE, [0], [("epochs", ["1", "2"], "--vary")]).baseline == ()


def test_the_default_baseline_prefers_exchange_none_once_the_field_exists(monkeypatch):
    fields = [*grid_module.field_names(), "exchange"]
    monkeypatch.setattr(grid_module, "field_names", lambda: fields)
    vary = {"kd_weight": (0.0, 1.0), "exchange": ("dkt", "none")}
    assert grid_module.default_baseline(vary) == [("exchange", "none")]
    assert grid_module.default_baseline(
        {"exchange": ("dkt", "fedavg"), **{"kd_weight": (0.0,)}}
    ) == [("kd_weight", 0.0)]


def test_an_explicit_baseline_compares_each_cell_with_its_twin_at_that_value():
    grid = build_grid(
        BASE,
        [0],
        [("kd_weight", ["0", "1"], "--vary"), ("kd_loss", ["mse", "kl"], "--vary")],
        [("kd_loss", "mse", "--baseline")],
    )
    kl = Cell((("kd_weight", 1.0), ("kd_loss", "kl")))
    assert grid.baseline_of(kl) == Cell((("kd_weight", 1.0), ("kd_loss", "mse")))
    assert grid.baseline_label == "kd_loss=mse"


@pytest.mark.parametrize(
    ("baseline", "message"),
    [
        (("kd_weight", "3"), "not one of the varied values (0.0, 1.0)"),
        (("epochs", "1"), "the baseline must name a varied option (kd_weight)"),
        (("kd_wieght", "0"), "unknown option 'kd_wieght'"),
    ],
)
def test_a_baseline_outside_the_grid_is_refused(baseline, message):
    with pytest.raises(GridError) as err:
        build_grid(BASE, [0], [("kd_weight", ["0", "1"], "--vary")], [(*baseline, "--baseline")])
    assert message in str(err.value)


def test_flags_parse_into_option_and_values():
    assert parse_vary_flag("kd_weight=0, 0.1,1") == ("kd_weight", ["0", "0.1", "1"])
    assert parse_seeds("0,1,2") == [0, 1, 2]
    for bad in ("kd_weight", "=1", "kd_weight=", "kd_weight=1,,2"):
        with pytest.raises(GridError, match="OPTION=VALUE"):
            parse_vary_flag(bad)
    with pytest.raises(GridError, match="whole numbers"):
        parse_seeds("0,x")


def test_seeds_default_to_three_and_must_be_distinct_whole_numbers():
    assert build_grid(BASE, None, []).seeds == (0, 1, 2)
    with pytest.raises(GridError, match="listed twice"):
        build_grid(BASE, [1, 1], [])
    with pytest.raises(GridError, match="whole numbers"):
        build_grid(BASE, [0.5], [])


GRID_TOML = """
seeds = [4, 5]
baseline = { kd_loss = "mse" }

[base]
dataset = "synthetic"
epochs = 2

[vary]
kd_weight = [0, 1]
kd_loss = ["mse", "kl"]
"""


def test_a_grid_file_gives_base_seeds_vary_and_baseline(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(GRID_TOML)
    grid = parse("--grid", str(path))
    assert grid.base == ExperimentConfig(dataset="synthetic", epochs=2)
    assert grid.seeds == (4, 5)
    assert grid.vary == (("kd_weight", (0.0, 1.0)), ("kd_loss", ("mse", "kl")))
    assert grid.baseline == (("kd_loss", "mse"),)


def test_flags_win_over_the_grid_file_and_the_file_over_config(tmp_path):
    config = tmp_path / "base.toml"
    config.write_text('[experiment]\ndataset = "digits"\nepochs = 5\nagents = 4\n')
    path = tmp_path / "grid.toml"
    path.write_text(GRID_TOML)
    grid = parse(
        "--grid", str(path), "--config", str(config), "--agents", "2",
        "--vary", "kd_weight=0.5,0", "--vary", "lr=0.01", "--seeds", "7", "--baseline", "none",
    )  # fmt: skip
    assert grid.base == ExperimentConfig(dataset="synthetic", epochs=2, agents=2)
    assert grid.vary == (
        ("kd_weight", (0.5, 0.0)),
        ("kd_loss", ("mse", "kl")),
        ("lr", (0.01,)),
    )
    assert grid.seeds == (7,)
    assert grid.baseline == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[base]\nepoch = 3\n", "[base]: unknown option 'epoch'; valid options: dataset,"),
        ("[vary]\nepoch = [3]\n", "[vary]: unknown option 'epoch'"),
        ("[vary]\nkd_weight = 1\n", "vary.kd_weight must be a non-empty list"),
        ("[base]\nkd_weight = 'x'\n", "[base]: kd_weight must be float, got 'x'"),
        ("kd_weight = [0, 1]\n", "unknown key 'kd_weight'; a grid file has base, seeds, vary"),
        ("seeds = 3\n", "seeds must be a list"),
        ("[vary\n", "is not valid TOML"),
    ],
)
def test_a_bad_grid_file_is_one_line_naming_the_problem(tmp_path, text, message):
    path = tmp_path / "grid.toml"
    path.write_text(text)
    with pytest.raises(GridError) as err:
        parse("--grid", str(path))
    assert message in str(err.value)


def test_the_written_grid_file_reads_back_as_the_same_grid(tmp_path):
    grid = build_grid(
        BASE.replace(download=True),
        [0, 2],
        [("kd_weight", ["0", "1"], "--vary"), ("kd_loss", ["kl"], "--vary")],
    )
    write_grid_file(grid, tmp_path)
    again = parse("--grid", str(tmp_path / "grid.toml"))
    assert again == grid


def test_an_output_folder_with_a_different_base_is_refused(tmp_path):
    first = build_grid(BASE, [0], [("kd_weight", ["0", "1"], "--vary")])
    write_grid_file(first, tmp_path)
    check_resumable(first, tmp_path)  # the same grid resumes
    more = build_grid(BASE, [0, 1], [("kd_weight", ["0", "1", "2"], "--vary")])
    check_resumable(more, tmp_path)  # more seeds and values extend it
    changed = build_grid(BASE.replace(epochs=3), [0], [("kd_weight", ["0", "1"], "--vary")])
    with pytest.raises(GridError, match=r"different base config \(epochs: 1 -> 3\)"):
        check_resumable(changed, tmp_path)


def test_a_base_value_of_an_option_the_grid_varies_does_not_matter(tmp_path):
    write_grid_file(build_grid(BASE, [0], KD_VARY), tmp_path)
    check_resumable(build_grid(BASE.replace(kd_weight=7.0), [0], KD_VARY), tmp_path)


def test_a_finished_run_of_another_config_in_its_folder_is_refused(tmp_path):
    grid = build_grid(BASE, [0], KD_VARY)
    run = grid.runs()[0]
    run.folder(tmp_path).mkdir(parents=True)
    other = run.config.replace(lr=0.5)
    (run.folder(tmp_path) / "metrics.json").write_text(json.dumps({"config": other.to_dict()}))
    with pytest.raises(GridError, match=r"holds a run of another config \(lr: 0.5 -> 0.001\)"):
        check_resumable(grid, tmp_path)


@pytest.mark.skipif(
    "agent_overrides" not in grid_module.all_field_names(), reason="no per-agent overrides"
)
def test_a_base_may_carry_per_agent_overrides_which_every_run_keeps(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(
        "seeds = [0]\n[base]\nagents = 2\n[base.agent_overrides.1]\nkd_weight = 0\n"
        "[vary]\nkd_weight = [0.5, 1]\n"
    )
    grid = parse("--grid", str(path))
    assert [r.config.agent_spec(1).kd_weight for r in grid.runs()] == [0.0, 0.0]
    assert [r.config.agent_spec(0).kd_weight for r in grid.runs()] == [0.5, 1.0]
    write_grid_file(grid, tmp_path / "out")
    assert parse("--grid", str(tmp_path / "out" / "grid.toml")) == grid
