"""DKT — Distributed Knowledge Transfer for Distributed Continual Learning.

The Python API (docs/how-to/python-api.md)::

    import dkt

    result = dkt.simulate(dkt.ExperimentConfig(agents=2, experiences=2, epochs=1))
    result.to_frame()                      # one row per agent × experience (pandas)
    dkt.load_results("runs/simulate-...")  # a results folder, back as a RunResult

Every name below is imported on first use (PEP 562), so `import dkt` and the command
line stay fast and do not load torch until a run needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from dkt.common.data.local_source import LocalSource
    from dkt.common.evaluation.results import ExperienceRecord, RunResult
    from dkt.common.evaluation.tables import Comparison
    from dkt.common.extensions import register_strategy
    from dkt.common.run.config import ExperimentConfig
    from dkt.common.training.listeners import Listener, Listeners
    from dkt.common.training.strategies import Strategy
    from dkt.workbench import compare, load_results, simulate

# name -> the module that defines it
_EXPORTS = {
    "ExperimentConfig": "dkt.common.run.config",
    "simulate": "dkt.workbench",
    "compare": "dkt.workbench",
    "load_results": "dkt.workbench",
    "LocalSource": "dkt.common.data.local_source",
    "Listener": "dkt.common.training.listeners",
    "Listeners": "dkt.common.training.listeners",
    "RunResult": "dkt.common.evaluation.results",
    "ExperienceRecord": "dkt.common.evaluation.results",
    "Comparison": "dkt.common.evaluation.tables",
    # The extension points (docs/how-to/extend.md)
    "Strategy": "dkt.common.training.strategies",
    "register_strategy": "dkt.common.extensions",
}

__all__ = [
    "Comparison",
    "ExperienceRecord",
    "ExperimentConfig",
    "Listener",
    "Listeners",
    "LocalSource",
    "RunResult",
    "Strategy",
    "__version__",
    "compare",
    "load_results",
    "register_strategy",
    "simulate",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dkt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
