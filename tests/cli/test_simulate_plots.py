"""`dkt simulate --plots`: which plots the results folder gets."""

from __future__ import annotations

import pytest

from dkt.cli import build_parser, main
from tests.cli.test_simulate import TINY


def test_plots_summary_writes_the_fleet_plots_and_every_data_file(tmp_path):
    out = tmp_path / "run"
    code = main(["simulate", *TINY, "--plots", "summary", "--out", str(out), "--quiet"])

    assert code == 0
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["accuracy.png", "transfer.png"]
    assert sorted(p.name for p in (out / "matrices").iterdir()) == [
        "agent-0-cl.csv", "agent-0-st.csv", "agent-1-cl.csv", "agent-1-st.csv",
    ]  # fmt: skip
    assert (out / "metrics.json").is_file() and (out / "summary.md").is_file()


def test_plots_defaults_to_auto_and_an_unknown_set_is_a_usage_error_naming_the_choices(capsys):
    parser = build_parser()
    assert parser.parse_args(["simulate"]).plots == "auto"
    assert parser.parse_args(["compare", "--plots", "none"]).plots == "none"
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["simulate", "--plots", "some"])
    assert exit_info.value.code == 2
    assert "'auto', 'all', 'summary', 'none'" in capsys.readouterr().err
