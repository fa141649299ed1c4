"""`dkt simulate --agent-data N=PATH`: sites with their own data in one process, as
`dkt run --agent-data` runs them on a cluster."""

from __future__ import annotations

import json

import pytest

from dkt.cli import main
from tests.support.sites import Sites, write_sites


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> Sites:
    return write_sites(tmp_path_factory.mktemp("sites"))


def test_simulate_learns_each_sites_own_data(sites, tmp_path):
    out = tmp_path / "run"

    code = main(["simulate", "--out", str(out), "--quiet", "--threads", "1", "--epochs", "1",
                 *sites.flags()])  # fmt: skip

    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["agent_data"] == {"0": "own", "1": "own"}
    # site 1's manifest gives its experiences; site 0 has classes 0-6 only
    assert metrics["agents"]["1"]["class_order"] == [[4, 5, 6], [7, 8, 9]]
    site0 = sorted(c for part in metrics["agents"]["0"]["class_order"] for c in part)
    assert site0 == [0, 1, 2, 3, 4, 5, 6]
    assert "agents 0, 1 learned their own data" in (out / "summary.md").read_text()


def test_agent_data_for_an_agent_the_run_lacks_is_one_line(sites, tmp_path, capsys):
    out = tmp_path / "run"

    code = main(["simulate", "--out", str(out), *sites.flags(), "--agent-data",
                 f"5={sites.site0}"])  # fmt: skip

    assert code == 2
    err = capsys.readouterr().err
    assert "there is no agent 5; agents are 0 to 1" in err
    assert not (out / "metrics.json").exists()


def test_agent_data_naming_a_missing_path_says_so(sites, tmp_path, capsys):
    missing = tmp_path / "nowhere.npz"

    code = main(["simulate", "--out", str(tmp_path / "run"), "--agents", "2",
                 "--agent-data", f"0={missing}"])  # fmt: skip

    assert code == 2
    assert f"{missing} does not exist" in capsys.readouterr().err
