"""Agents that own their data: a site's .npz or image folder, read only on its host,
with its own classes and experiences; the public probe and evaluation sets; and the
check that no training row of a site reaches anything outside it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dkt.common.data.local_source import LocalSource
from dkt.common.engine.simulation import simulate
from dkt.common.evaluation.results import render_summary
from dkt.common.run.config import ExperimentConfig
from tests.support.sites import NAMES, Sites, write_sites


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> Sites:
    return write_sites(tmp_path_factory.mktemp("sites"))


def own_config(sites: Sites, **changes) -> ExperimentConfig:
    base = ExperimentConfig(
        class_names=json.dumps(NAMES),
        input_shape="1,8,8",
        probe_from=str(sites.probe),
        eval_from=str(sites.eval_set),
        agents=2,
        experiences=2,
        probe_size=60,
        epochs=2,
    )
    return base.replace(**changes)


def sources(sites: Sites) -> dict[int, LocalSource]:
    return {0: LocalSource(sites.site0), 1: LocalSource(sites.site1)}


def private_scan(paths: list[Path], rows: list[bytes]) -> list[tuple[str, int]]:
    """Every (file, row index) where a private training row occurs in a file under
    `paths`: as its uint8 pixels, or as the float32 or float16 inputs the agent's
    pipeline makes of them (what a leaking agent would most likely send)."""
    forms = []
    for i, row in enumerate(rows):
        pixels = np.frombuffer(row, dtype=np.uint8).astype(np.float32)
        normalised = (pixels / 255.0 - 0.5) / 0.5
        forms += [(i, row), (i, normalised.astype("<f4").tobytes()),
                  (i, normalised.astype("<f2").tobytes())]  # fmt: skip
    found = []
    for root in paths:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for path in files:
            blob = path.read_bytes()
            found += [(str(path), i) for i, form in forms if form in blob]
    return sorted(set(found))


def test_sites_learn_their_own_classes_in_their_own_experiences(sites):
    result = simulate(own_config(sites), local=sources(sites))

    # Site 1's manifest gives its experiences; site 0 (no manifest) a seeded split of
    # the classes it has data for, 0-6 (7 classes against site 1's 6).
    assert result.class_orders[1] == [[4, 5, 6], [7, 8, 9]]
    assert sorted(c for part in result.class_orders[0] for c in part) == [0, 1, 2, 3, 4, 5, 6]
    for agent, history in result.histories.items():
        assert [r.classes for r in history] == result.class_orders[agent]
        assert history[0].acc_cl[0] > 0.6  # it learned its first experience (chance: 1/4)
    # Transfer is measured on the public evaluation set: site 1 never trained on the
    # classes of site 0's first experience that it lacks.
    last = result.histories[1][1]
    expected = sorted(set(result.class_orders[0][0]) - {4, 5, 6, 7, 8, 9})
    assert last.transfer_classes == expected and last.transfer_st is not None


def test_without_a_public_evaluation_set_transfer_is_not_measured_and_the_summary_says_why(
    sites,
):
    from dkt.common.evaluation.results import build_metrics

    result = simulate(own_config(sites, eval_from="", epochs=1), local=sources(sites))

    assert all(r.transfer_st is None for h in result.histories.values() for r in h)
    assert result.histories[1][1].transfer_classes != []  # there was something to measure
    summary = " ".join(render_summary(build_metrics(result)).split())
    assert (
        "**transfer not measured** for agents 0, 1: their test data holds only their own "
        "classes and the run has no public evaluation set (give --eval-from)"
    ) in summary


def test_shared_and_own_data_agents_run_together(sites):
    # Agent 0 keeps the shared data set (digits, whose class names are "0".."9" in the
    # data set's own class space); agent 1 brings its own images named "4".."9".
    own = sites.site1.parent / "site1-numbers"
    for folder in sites.site1.iterdir():
        if folder.is_dir():
            target = own / folder.name.removeprefix("digit-")
            target.mkdir(parents=True, exist_ok=True)
            for image in folder.iterdir():
                (target / image.name).write_bytes(image.read_bytes())
    config = ExperimentConfig(agents=2, experiences=2, epochs=1, input_mean="0", input_std="1")
    result = simulate(config, local={1: LocalSource(own)})

    # no manifest in the copy: a seeded split of its six classes into two experiences
    assert [len(part) for part in result.class_orders[1]] == [3, 3]
    assert sorted(c for part in result.class_orders[1] for c in part) == [4, 5, 6, 7, 8, 9]
    assert sorted(c for part in result.class_orders[0] for c in part) == list(range(10))
    assert len(result.histories[0]) == len(result.histories[1]) == 2


def test_the_leak_scan_finds_a_row_that_was_published(sites, tmp_path):
    # The scan itself must be able to fail: a stand-in agent that publishes one of its
    # training rows (as float32 inputs) in place of logits is caught in the relay store.
    from dkt.common.data.probe import ProbeSet
    from dkt.common.training.predictions import Predictions
    from dkt.proto.relay_client import RelayClient
    from dkt.server.relay.server import RelayConfig, RelayServer

    row = np.frombuffer(sites.private_rows[7], dtype=np.uint8).astype(np.float32)
    leaked = torch.from_numpy(((row / 255.0 - 0.5) / 0.5).reshape(64)).repeat(2)[:100]
    probe = ProbeSet.from_inputs(torch.zeros(10, 1, 2, 2), "test")
    store = tmp_path / "relay"
    config = RelayConfig(store, port=0, status_port=None, insecure=True)
    with RelayServer(config) as relay, RelayClient(relay.address) as client:
        client.create_run("leak", probe, 10, 1, config={}, expected_agents=1)
        client.publish(
            Predictions(0, 0, (0,), probe.fingerprint, leaked.reshape(10, 10), run_id="leak")
        )
    assert [i for _, i in private_scan([store], sites.private_rows)] == [7]


@pytest.mark.slow
def test_dkt_run_with_two_sites_leaks_no_training_row(sites, tmp_path):
    out = tmp_path / "sites-run"
    proc = subprocess.run(
        [sys.executable, "-m", "dkt", "run", "--out", str(out), "--quiet", "--threads", "1",
         "--epochs", "2", *sites.flags(), "--agent", "1:backbone=cnn"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["driver"] == "flower" and metrics["missing_agents"] == []
    assert metrics["agent_data"] == {"0": "own", "1": "own"}
    assert metrics["agents"]["1"]["class_order"] == [[4, 5, 6], [7, 8, 9]]
    assert [metrics["agents"][a]["spec"]["backbone"] for a in ("0", "1")] == ["mlp", "cnn"]
    # The same run in one process gives the same numbers: one agent code path.
    config = ExperimentConfig.from_toml(out / "config.toml")
    expected = simulate(config, local=sources(sites))
    for a in (0, 1):
        got = metrics["agents"][str(a)]["experiences"]
        assert [r["classes"] for r in got] == [r.classes for r in expected.histories[a]]
        for g, w in zip(got, expected.histories[a], strict=True):
            assert g["acc_cl"] == pytest.approx(w.acc_cl, abs=1e-6)
            assert g["transfer_st"] == pytest.approx(w.transfer_st, abs=1e-6)
    log = (out / "cluster" / "logs" / "conductor.log").read_text()
    assert "agent 1 learns its own data: experience 0: classes [4, 5, 6]" in log
    assert "public evaluation set: " in log

    # What left the sites: the relay's store, the SuperLink's database (every Flower
    # message), the conductor's log and the results folder. The agents' own folders
    # (cluster/agents/agent-N: their checkpoints) are the sites' disks.
    cluster = out / "cluster"
    outside = [cluster / "relay", cluster / "logs", *cluster.glob("superlink.db*")]
    outside += [p for p in out.iterdir() if p.name != "cluster"]
    assert (cluster / "relay").is_dir() and list(cluster.glob("superlink.db*"))
    assert private_scan(outside, sites.private_rows) == []


# Bad input: one clear line, before anything runs ----------------------------------


def _bad_sites(root: Path) -> dict[str, tuple[Path, str]]:
    """Broken sites and the start of the one line each must give."""
    from PIL import Image

    cases: dict[str, tuple[Path, str]] = {}
    cases["missing folder"] = (root / "nowhere", "data ")

    empty = root / "empty-class"
    (empty / "digit-1").mkdir(parents=True)
    Image.new("L", (8, 8), 7).save(empty / "digit-1" / "a.png")
    (empty / "digit-2").mkdir()
    cases["empty class folder"] = (empty, "class folder ")

    unknown = root / "unknown-class"
    (unknown / "zebra").mkdir(parents=True)
    Image.new("L", (8, 8), 7).save(unknown / "zebra" / "a.png")
    cases["unknown class"] = (unknown, "class 'zebra' ")

    broken = root / "broken-image"
    (broken / "digit-1").mkdir(parents=True)
    Image.new("L", (8, 8), 7).save(broken / "digit-1" / "a.png")
    (broken / "digit-1" / "b.png").write_bytes(b"not a png")
    cases["undecodable image"] = (broken, "cannot decode image ")

    shape = root / "shape.npz"
    np.savez(shape, x=np.zeros((4, 8, 8, 4), np.uint8), y=np.array(["digit-1"] * 4))
    cases["mismatched shape"] = (shape, "x in ")

    twice = root / "twice"
    for name in ("digit-1", "digit-2"):
        (twice / name).mkdir(parents=True)
        Image.new("L", (8, 8), 7).save(twice / name / "a.png")
    (twice / "experiences.toml").write_text('experiences = [["digit-1"], ["digit-1", "digit-2"]]\n')
    named = "class 'digit-1' is named in experiences 0 and 1"
    cases["manifest names a class twice"] = (twice, named)
    return cases


def test_each_broken_site_is_one_clear_error(sites, tmp_path):
    from dkt.common.engine.setup import local_plan

    config = own_config(sites)
    for what, (path, start) in _bad_sites(tmp_path).items():
        with pytest.raises((ValueError, OSError)) as info:
            local_plan(config, 0, LocalSource(path))
        message = str(info.value)
        assert "\n" not in message, what
        assert start in message, (what, message)


def test_dkt_run_refuses_a_broken_site_before_starting_anything(sites, tmp_path):
    path, _ = _bad_sites(tmp_path)["unknown class"]
    out = tmp_path / "r"
    flags = [f"0={path}" if f == f"0={sites.site0}" else f for f in sites.flags()]
    proc = subprocess.run(
        [sys.executable, "-m", "dkt", "run", "--out", str(out), *flags],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    line = " ".join(proc.stderr.split())
    assert line.startswith("error: class 'zebra' (folder "), line
    assert "is not in the run's class space" in line
    assert not out.exists()  # no cluster, no results folder, nothing published


def test_without_classes_the_class_space_is_the_evaluation_sets(sites, tmp_path):
    from dkt.common.engine.setup import prepare

    folder = tmp_path / "eval"
    for name in ("digit-3", "digit-1", "digit-2"):
        (folder / name).mkdir(parents=True)
    from PIL import Image

    for name in ("digit-3", "digit-1", "digit-2"):
        Image.new("L", (8, 8), 9).save(folder / name / "a.png")
    config = own_config(sites, class_names="", eval_from=str(folder))
    setup = prepare(config, agents=())
    assert setup.class_names == ("digit-1", "digit-2", "digit-3")  # sorted, as ImageFolder
    assert setup.eval_set is not None and sorted(setup.eval_set.labels.tolist()) == [0, 1, 2]
    # the .npz evaluation set names its classes in its `classes` array
    npz = own_config(sites, class_names="")
    assert prepare(npz, agents=()).class_names == tuple(NAMES)


def test_the_server_hosts_public_data_fills_in_what_a_run_leaves_empty():
    from dkt.server.conductor.settings import SERVER_DEFAULTS_ENV, with_server_defaults

    env = {
        SERVER_DEFAULTS_ENV: json.dumps(
            {"class_names": json.dumps(["a", "b"]), "probe_from": "/srv/public/unlabeled",
             "input_shape": "3,32,32", "data_root": "/not/a/public/field"}
        )
    }  # fmt: skip
    run = ExperimentConfig(input_shape="1,8,8")
    got = with_server_defaults(run, env)
    assert got.class_space() == ("a", "b")
    assert got.probe_from == "/srv/public/unlabeled"
    assert got.input_shape == "1,8,8"  # the run's own value wins
    assert got.data_root == ""  # only the public-data fields are taken
    assert with_server_defaults(run, {}) == run
