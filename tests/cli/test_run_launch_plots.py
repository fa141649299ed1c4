"""`dkt run --plots` and `dkt launch --plots`: the plot set reaches the run config that the
conductor writes the results folder from (its `plots` key: ConductorSettings.plots)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from dkt.cli import build_parser, main
from dkt.cli.flags import KEYS_ENV


class Submitted(Exception):
    """Raised by the fake submit_run with the run config it was given."""

    def __init__(self, values: dict) -> None:
        super().__init__("submitted")
        self.values = values


class FakeCluster:
    """LocalCluster's face to `dkt run`, starting nothing."""

    def __init__(self, workdir: Path, agents: int, *args, **kwargs) -> None:
        self.workdir, self.logs, self.threads = workdir, workdir / "logs", 1
        self.relay = SimpleNamespace(status_port=1)
        self.relay_address = self.superlink_address = "127.0.0.1:1"
        self.conductor_token = self.admin_token = "token"

    def start(self) -> None:
        pass

    def shutdown(self) -> list:
        return []


@pytest.fixture
def submitted(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """The run configs `dkt run`/`dkt launch` submit, with no cluster, no SuperLink and
    the test process's signal handlers left alone."""
    values: list[dict] = []

    def submit_run(superlink, app, run_values, *args):
        values.append(run_values)
        raise Submitted(run_values)

    monkeypatch.setattr("dkt.flower.runs.submit_run", submit_run)
    monkeypatch.setattr("dkt.cli.local_cluster.LocalCluster", FakeCluster)
    for module in ("dkt.cli.run", "dkt.cli.launch"):
        monkeypatch.setattr(f"{module}.interrupt_on_signals", lambda: None)
        monkeypatch.setattr(f"{module}.ignore_signals", lambda: None)
    return values


@pytest.mark.parametrize("flags, plots", [([], "auto"), (["--plots", "none"], "none")])
def test_dkt_run_sends_its_plots_to_the_conductor(submitted, tmp_path, flags, plots):
    with pytest.raises(Submitted):
        main(["run", "--dataset", "synthetic", "--out", str(tmp_path / "run"), *flags])

    assert submitted[0]["plots"] == plots


@pytest.mark.parametrize("flags, plots", [([], "auto"), (["--plots", "summary"], "summary")])
def test_dkt_launch_sends_its_plots_to_the_conductor(submitted, monkeypatch, flags, plots):
    monkeypatch.delenv(KEYS_ENV, raising=False)  # no operator kit: a plain submission
    with pytest.raises(Submitted):
        main(["launch", "--server", "127.0.0.1:1", "--no-wait", *flags])

    assert submitted[0]["plots"] == plots


def test_run_and_launch_refuse_an_unknown_plot_set_naming_the_choices(capsys):
    parser = build_parser()
    for command in ("run", "launch"):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([command, "--plots", "some"])
        assert exit_info.value.code == 2
        assert "'auto', 'all', 'summary', 'none'" in capsys.readouterr().err
