"""The public Python API, `import dkt`: its exports load lazily, `dkt.simulate` returns
per-agent histories and tidy tables, `dkt.load_results` reads a results folder back,
`dkt.compare` returns a table."""

from __future__ import annotations

import subprocess
import sys

import pytest

import dkt
from tests.support.sites import NAMES, write_sites

TINY = dict(dataset="synthetic", agents=2, experiences=2, epochs=1, probe_size=24,
            replay_size=12, batch_size=16)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "run"
    return dkt.simulate(dkt.ExperimentConfig(**TINY), out=out, threads=1), out


def test_every_name_in_all_is_exported():
    expected = {"ExperimentConfig", "simulate", "compare", "load_results", "LocalSource",
                "Listener", "Listeners", "RunResult", "ExperienceRecord", "Comparison",
                "Strategy", "register_strategy", "__version__"}  # fmt: skip
    assert set(dkt.__all__) == expected
    for name in dkt.__all__:
        assert getattr(dkt, name) is not None
    assert dkt.ExperimentConfig.__module__ == "dkt.common.run.config"
    with pytest.raises(AttributeError, match="no attribute 'simulat'"):
        dkt.simulat  # noqa: B018


def test_import_dkt_and_its_config_do_not_load_torch():
    code = (
        "import dkt, sys; dkt.ExperimentConfig(agents=2); dkt.LocalSource; dkt.Listener; "
        "print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"


def test_simulate_returns_each_agents_history_of_experiences(tiny_run):
    result, _ = tiny_run

    assert isinstance(result, dkt.RunResult)
    assert sorted(result.histories) == [0, 1]
    for agent, history in result.histories.items():
        assert [r.experience for r in history] == [0, 1]
        assert all(isinstance(r, dkt.ExperienceRecord) for r in history)
        assert [r.classes for r in history] == result.class_orders[agent]
        assert [len(r.acc_cl) for r in history] == [2, 2]  # accuracy on every experience


def test_simulate_with_no_out_writes_nothing_and_matches_a_run_with_one(tiny_run, tmp_path):
    result, _ = tiny_run

    again = dkt.simulate(dkt.ExperimentConfig(**TINY), threads=1)

    assert [[r.acc_cl for r in h] for h in again.histories.values()] == [
        [r.acc_cl for r in h] for h in result.histories.values()
    ]


def test_simulate_refuses_a_non_empty_out(tiny_run):
    _, out = tiny_run
    with pytest.raises(FileExistsError, match="is not empty"):
        dkt.simulate(dkt.ExperimentConfig(**TINY), out=out)


def test_load_results_reads_back_what_simulate_wrote(tiny_run):
    result, out = tiny_run

    back = dkt.load_results(out)

    assert back.config == result.config
    assert back.histories == result.histories
    assert back.class_orders == result.class_orders
    assert (back.probe_fingerprint, back.driver) == (result.probe_fingerprint, "simulate")
    assert back.extra["agent_data"] == {"0": "shared", "1": "shared"}
    assert back.to_records() == result.to_records()


def test_load_results_of_a_folder_without_metrics_says_what_to_give(tmp_path):
    with pytest.raises(FileNotFoundError, match="give a results folder written by dkt"):
        dkt.load_results(tmp_path)


def test_records_by_experience_metric_and_matrix_have_the_tidy_shapes(tiny_run):
    result, _ = tiny_run

    rows = result.to_records()
    assert [(r["agent"], r["experience"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    first = result.histories[0][0]
    assert rows[0]["acc_cl"] == first.acc_cl[0] and rows[0]["loss_ce"] == first.loss_ce
    assert rows[1]["avg_acc_cl"] == pytest.approx(sum(result.histories[0][1].acc_cl) / 2)
    long = result.to_records("metric")
    assert len(long) == 4 * 16 and set(long[0]) == {"agent", "experience", "metric", "value"}
    matrix = result.to_records("matrix")
    assert len(matrix) == 2 * 2 * 2 * 2  # agents × heads × e × j
    assert matrix[1] == {"agent": 0, "head": "cl", "after_experience": 0, "test_experience": 1,
                         "accuracy": first.acc_cl[1]}  # fmt: skip
    assert [r["agent"] for r in result.to_records("agent")] == [0, 1]


def test_to_frame_has_one_row_per_agent_and_experience(tiny_run):
    pytest.importorskip("pandas", reason="the dev extra installs pandas")
    result, _ = tiny_run

    frame = result.to_frame()
    assert list(frame.columns[:4]) == ["agent", "experience", "classes", "teachers"]
    assert {"acc_all_cl", "transfer_st", "bytes_published"} <= set(frame.columns)
    assert frame.shape == (4, 20)
    long = result.to_frame("metric")
    assert list(long.columns) == ["agent", "experience", "metric", "value"]
    assert long.shape == (64, 4)


def test_to_frame_without_pandas_says_how_to_get_it(tiny_run, monkeypatch):
    result, _ = tiny_run
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
    with pytest.raises(ImportError, match="pip install pandas"):
        result.to_frame()


def test_class_names_may_be_a_python_list():
    config = dkt.ExperimentConfig(class_names=["cat", "dog"])

    assert config.class_space() == ("cat", "dog")
    assert config == dkt.ExperimentConfig(class_names='["cat", "dog"]')
    assert dkt.ExperimentConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="'cat' more than once"):
        dkt.ExperimentConfig(class_names=["cat", "cat"])


def test_simulate_takes_own_data_by_path(tmp_path):
    sites = write_sites(tmp_path / "sites")
    config = dkt.ExperimentConfig(
        class_names=NAMES, input_shape="1,8,8", probe_from=str(sites.probe),
        eval_from=str(sites.eval_set), agents=2, experiences=2, probe_size=60, epochs=1,
    )  # fmt: skip

    result = dkt.simulate(config, local={0: sites.site0, 1: dkt.LocalSource(str(sites.site1))})

    assert result.class_orders[1] == [[4, 5, 6], [7, 8, 9]]
    assert result.extra["agent_data"] == {"0": "own", "1": "own"}
    with pytest.raises(ValueError, match="local names agent 2; this run's agents are 0 to 1"):
        dkt.simulate(config, local={2: sites.site0})


def test_a_listener_hears_every_experience_of_every_agent():
    class Recorder:
        def __init__(self) -> None:
            self.done: list[tuple[int, int]] = []

        def experience_started(self, agent_id, experience, teachers):
            pass

        def epoch_done(self, agent_id, experience, epoch, epochs):
            pass

        def experience_done(self, agent_id, record):
            self.done.append((agent_id, record.experience))

    recorder = Recorder()
    dkt.simulate(dkt.ExperimentConfig(**TINY), listener=recorder)

    assert sorted(recorder.done) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_compare_returns_a_table_per_cell_and_keeps_done_runs(tmp_path):
    out = tmp_path / "grid"
    base = dkt.ExperimentConfig(**TINY)

    table = dkt.compare(base, vary={"kd_weight": [0, 1]}, seeds=[0], out=out)

    assert isinstance(table, dkt.Comparison)
    assert [r.cell.key for r in table.rows] == ["kd_weight=0.0", "kd_weight=1.0"]
    records = table.to_records()
    assert len(records) == 2 * 6  # cells × metrics
    assert records[0]["kd_weight"] == 0.0 and records[0]["baseline"] == "kd_weight=0.0"
    assert len(table.to_records("run")) == 2 * 6
    assert (out / "compare.md").is_file() and (out / "runs/kd_weight=1.0/seed-0").is_dir()
    assert "kd_weight" in str(table).splitlines()[0]
    loaded = dkt.load_results(out / "runs/kd_weight=1.0/seed-0")
    assert loaded.config.kd_weight == 1.0
    before = (out / "runs/kd_weight=1.0/seed-0/metrics.json").stat().st_mtime_ns
    again = dkt.compare(base, vary={"kd_weight": [0, 1, 2]}, seeds=[0], out=out)
    assert len(again.rows) == 3
    assert (out / "runs/kd_weight=1.0/seed-0/metrics.json").stat().st_mtime_ns == before


def test_the_issues_one_liner_runs_and_writes_nothing(tmp_path):
    code = "import dkt; dkt.simulate(dkt.ExperimentConfig(agents=2, experiences=2, epochs=1))"

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)  # fmt: skip

    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []
