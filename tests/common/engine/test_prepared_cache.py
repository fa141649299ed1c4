"""Specification of an agent's prepared-data cache (`run_setup.prepare_agent`): a later
message loads what the first one prepared, identical to preparing it again; a changed
config or a changed data file is never served from the cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dkt.common.data.local_source import LocalSource
from dkt.common.data.streams import AgentStream
from dkt.common.engine import setup as run_setup
from dkt.common.engine.setup import prepare, prepare_agent
from dkt.common.run.config import ExperimentConfig

CONFIG = ExperimentConfig(dataset="digits", agents=3, experiences=2, probe_size=64)
CLASSES = ("cat", "dog", "frog")


def same_stream(a: AgentStream, b: AgentStream) -> bool:
    return len(a) == len(b) and all(
        x.classes == y.classes
        and torch.equal(x.train.x, y.train.x)
        and torch.equal(x.train.y, y.train.y)
        and torch.equal(x.test.x, y.test.x)
        and torch.equal(x.test.y, y.test.y)
        for x, y in zip(a.experiences, b.experiences, strict=True)
    )


def no_prepare(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("prepared again instead of loading the cache")

    monkeypatch.setattr(run_setup, "prepare", fail)


def test_a_later_message_loads_the_agents_data_identical_to_preparing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = prepare(CONFIG, agents=()).probe
    fresh = prepare(CONFIG, agents=[2])
    first = prepare_agent(CONFIG, 2, probe, cache_dir=tmp_path)
    no_prepare(monkeypatch)
    cached = prepare_agent(CONFIG, 2, probe, cache_dir=tmp_path)
    assert cached.class_names == fresh.class_names
    assert cached.probe is probe
    assert same_stream(cached.stream_of(2), fresh.stream_of(2))
    assert same_stream(first.stream_of(2), fresh.stream_of(2))
    assert fresh.data is not None and cached.data is not None
    assert torch.equal(cached.data.test.x, fresh.data.test.x)
    assert torch.equal(cached.data.test.y, fresh.data.test.y)


def test_a_changed_config_is_not_served_from_the_cache(tmp_path: Path) -> None:
    probe = prepare(CONFIG, agents=()).probe
    prepare_agent(CONFIG, 1, probe, cache_dir=tmp_path)
    other = CONFIG.replace(seed=CONFIG.seed + 1, probe_source="digits")
    probe = prepare(other, agents=()).probe
    got = prepare_agent(other, 1, probe, cache_dir=tmp_path)
    assert same_stream(got.stream_of(1), prepare(other, agents=[1]).stream_of(1))
    assert not same_stream(got.stream_of(1), prepare(CONFIG, agents=[1]).stream_of(1))


def write_site(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(30, 4, 4), dtype=np.uint8)
    y = np.array([CLASSES[i % 3] for i in range(30)])
    with open(path, "wb") as fh:
        np.savez(fh, x=x, y=y)
    return path


def test_a_changed_data_file_is_not_served_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ExperimentConfig(
        agents=1, experiences=1, probe_size=8, class_names='["cat", "dog", "frog"]',
        input_shape="1,4,4", probe_source="synthetic",
    )  # fmt: skip
    site = LocalSource(write_site(tmp_path / "site.npz", seed=0))
    probe = prepare(config, agents=()).probe
    cache = tmp_path / "cache"
    prepare_agent(config, 0, probe, site, cache_dir=cache)
    before = os.stat(site.path)
    write_site(site.path, seed=1)  # new pixels, same size
    os.utime(site.path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    got = prepare_agent(config, 0, probe, site, cache_dir=cache)
    fresh = prepare(config, {0: site}, agents=[0], probe=probe)
    assert same_stream(got.stream_of(0), fresh.stream_of(0))
    no_prepare(monkeypatch)
    again = prepare_agent(config, 0, probe, site, cache_dir=cache)
    assert same_stream(again.stream_of(0), fresh.stream_of(0))


SITE_CONFIG = ExperimentConfig(
    agents=1, experiences=1, probe_size=8, class_names='["cat", "dog", "frog"]',
    input_shape="1,4,4", probe_source="synthetic",
)  # fmt: skip


def count_site_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    reads: list[int] = []
    real = run_setup.load_local_agent

    def counted(*args: object, **kwargs: object) -> object:
        reads.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(run_setup, "load_local_agent", counted)
    return reads


def test_a_site_read_for_its_plan_is_not_read_again_by_the_first_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = LocalSource(write_site(tmp_path / "site.npz", seed=0))
    probe = prepare(SITE_CONFIG, agents=()).probe
    fresh = prepare(SITE_CONFIG, {0: site}, agents=[0], probe=probe)
    reads = count_site_reads(monkeypatch)
    plan = run_setup.local_plan(SITE_CONFIG, 0, site, keep=True)  # the query
    got = prepare_agent(SITE_CONFIG, 0, probe, site, cache_dir=tmp_path / "cache")
    assert len(reads) == 1
    assert same_stream(got.stream_of(0), fresh.stream_of(0))
    assert plan == fresh.plan_of(0)
    assert run_setup._KEPT_SITE == {}  # handed over, not kept


def test_a_kept_site_is_read_again_when_its_file_changed_or_nothing_was_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = LocalSource(write_site(tmp_path / "site.npz", seed=0))
    probe = prepare(SITE_CONFIG, agents=()).probe
    reads = count_site_reads(monkeypatch)
    run_setup.local_plan(SITE_CONFIG, 0, site, keep=True)
    before = os.stat(site.path)
    write_site(site.path, seed=1)  # new pixels, same size
    os.utime(site.path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    got = prepare(SITE_CONFIG, {0: site}, agents=[0], probe=probe)
    assert len(reads) == 2
    monkeypatch.undo()
    assert same_stream(
        got.stream_of(0), prepare(SITE_CONFIG, {0: site}, agents=[0], probe=probe).stream_of(0)
    )
    reads = count_site_reads(monkeypatch)
    run_setup.local_plan(SITE_CONFIG, 0, site)  # `dkt run`'s check of a site keeps nothing
    assert run_setup._KEPT_SITE == {}
    prepare(SITE_CONFIG, {0: site}, agents=[0], probe=probe)
    assert len(reads) == 2
