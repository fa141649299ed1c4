"""benchmarks/memory.py's RSS reader, on the process running the tests."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _memory_benchmark():
    spec = importlib.util.spec_from_file_location("memory_bench", ROOT / "benchmarks/memory.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_rss_of_this_process_is_what_its_status_file_says_and_over_10_mib():
    memory = _memory_benchmark()
    with open(f"/proc/{os.getpid()}/status") as fh:
        vm_rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))

    rss = memory.proc_rss(os.getpid())

    assert rss > 10 * 2**20  # a Python process running pytest holds well over 10 MiB
    assert abs(rss - vm_rss * 1024) < 64 * 2**20  # the same reading, give or take growth


def test_a_process_trees_rss_is_its_own_plus_its_childs():
    memory = _memory_benchmark()
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"up\n"  # running
        assert child.pid in memory.process_tree(os.getpid())
        own, tree = memory.proc_rss(os.getpid()), memory.tree_rss(os.getpid())

        assert tree >= own + memory.proc_rss(child.pid) - 64 * 2**20
        assert tree > own
        assert memory.proc_rss(child.pid) > 2**20
    finally:
        child.kill()
        child.wait()


def test_a_process_that_is_gone_reads_zero():
    memory = _memory_benchmark()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert memory.proc_rss(child.pid) == 0
    assert memory.tree_rss(child.pid) == 0
