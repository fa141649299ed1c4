"""Specification of each process's CPU thread count: explicit, then $DKT_THREADS, then
the host's usable cores shared among the agents on it."""

from __future__ import annotations

import pytest
import torch

from dkt.common import threads
from dkt.common.threads import THREADS_ENV, apply_threads, resolve_threads, thread_env


@pytest.fixture
def eight_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    monkeypatch.delenv(THREADS_ENV, raising=False)


def test_an_explicit_count_wins_over_the_environment(eight_cores, monkeypatch) -> None:
    monkeypatch.setenv(THREADS_ENV, "3")

    assert resolve_threads(2, agents_on_host=4) == 2


def test_the_environment_wins_over_the_hosts_share(eight_cores, monkeypatch) -> None:
    monkeypatch.setenv(THREADS_ENV, " 3 ")

    assert resolve_threads(None, agents_on_host=4) == 3


def test_by_default_each_agent_gets_its_share_of_the_usable_cores(eight_cores) -> None:
    assert resolve_threads(None, agents_on_host=3) == 2  # 8 // 3


def test_more_agents_than_cores_still_get_one_thread_each(eight_cores) -> None:
    assert resolve_threads(None, agents_on_host=20) == 1


def test_a_non_numeric_environment_value_is_an_error_saying_what_to_set(
    eight_cores, monkeypatch
) -> None:
    monkeypatch.setenv(THREADS_ENV, "many")

    with pytest.raises(ValueError) as info:
        resolve_threads(None, agents_on_host=2)

    assert str(info.value) == "DKT_THREADS='many' is not a number: set it to a thread count >= 1"


def test_child_processes_get_the_count_for_every_thread_pool() -> None:
    assert thread_env(2) == {"DKT_THREADS": "2", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}


def test_apply_threads_sets_torchs_intra_op_threads() -> None:
    before = torch.get_num_threads()
    try:
        assert apply_threads(1) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
