"""CPU thread counts for torch, chosen deliberately.

torch starts one OpenMP thread per core in every process. Several agents on one host,
each with that default, oversubscribe the cores; OpenMP's spin-waiting then makes
every step several times slower (measured on a 2-core host: 92-98 s against
13.5-14 s for the same default `dkt simulate`, same numbers). So each process takes
its share: the host's usable cores divided by the agents running on it, at least one.
"""

from __future__ import annotations

import contextlib
import os

THREADS_ENV = "DKT_THREADS"  # set by `dkt run` / `dkt agent` for the processes they start


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def default_threads(agents_on_host: int, cores: int | None = None) -> int:
    """A process's share of the host: cores // agents on the host, at least 1."""
    cores = usable_cores() if cores is None else cores
    return max(1, cores // max(1, agents_on_host))


def resolve_threads(requested: int | None, agents_on_host: int) -> int:
    """`requested` if given (> 0), else `DKT_THREADS` if set, else the default share."""
    if requested is not None and requested > 0:
        return requested
    from_env = os.environ.get(THREADS_ENV, "").strip()
    if from_env:
        try:
            value = int(from_env)
        except ValueError:
            raise ValueError(
                f"{THREADS_ENV}={from_env!r} is not a number: set it to a thread count >= 1"
            ) from None
        if value > 0:
            return value
    return default_threads(agents_on_host)


def apply_threads(threads: int) -> int:
    """Make torch (intra-op and, where still possible, inter-op) use `threads`."""
    import torch

    torch.set_num_threads(threads)
    # Inter-op threads can only be set before the first parallel work in a process.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(threads)
    return torch.get_num_threads()


def thread_env(threads: int) -> dict[str, str]:
    """Environment for a child process so its OpenMP/MKL pools start at `threads`."""
    n = str(threads)
    return {THREADS_ENV: n, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}
