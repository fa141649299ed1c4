"""The open extension points' names: the strategy registry and `module:callable` references.

Torch-free, so the config can check a strategy or backbone name without importing torch.
A strategy is named by a built-in name (choices.py), a name given to `register_strategy`
in this process, or `module:callable`; a backbone by a built-in name or `module:callable`.
What the callables must do is documented in docs/how-to/extend.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

# name -> factory(spec) -> Strategy; the built-ins register themselves in strategies.py.
_STRATEGIES: dict[str, Callable[..., Any]] = {}


def register_strategy(name: str) -> Callable[[F], F]:
    """Decorator: register `factory(spec: AgentSpec) -> Strategy` under `name`, so that
    `strategy = "name"` selects it in this process (for `dkt run` agents on other hosts,
    name it `module:callable` instead: their processes import it)."""
    if not name or ":" in name or name != name.strip():
        raise ValueError(f"a strategy name is a word without ':', got {name!r}")

    def decorate(factory: F) -> F:
        if not callable(factory):
            raise TypeError(f"register_strategy({name!r}) decorates a callable, got {factory!r}")
        _STRATEGIES[name] = factory
        return factory

    return decorate


def registered_strategies() -> tuple[str, ...]:
    """The names registered in this process so far (built-ins once strategies.py is loaded)."""
    return tuple(_STRATEGIES)


def is_reference(name: str) -> bool:
    """Whether `name` has the form `module:callable` (both parts dotted Python names)."""
    module, sep, attr = name.partition(":")
    parts = module.split(".") + attr.split(".")
    return bool(sep) and all(p.isidentifier() for p in parts)


def is_known_strategy(name: str, builtins: tuple[str, ...]) -> bool:
    """Whether the config may name this strategy (checked for form only when a reference)."""
    return name in builtins or name in _STRATEGIES or is_reference(name)


def strategy_factory(name: str) -> Callable[..., Any]:
    """The factory a strategy name stands for: registered, or imported from `module:callable`."""
    if is_reference(name):
        return load_reference(name, "strategy")
    # The built-ins are registered once common/training/strategies.py is imported, as it
    # is by its build_strategy, this function's caller.
    if name not in _STRATEGIES:
        raise ValueError(
            f"unknown strategy {name!r}; choose one of {', '.join(_STRATEGIES)}, "
            "or give module:callable"
        )
    return _STRATEGIES[name]


def load_reference(reference: str, what: str) -> Callable[..., Any]:
    """The callable `module:callable` names; one clear ValueError line when it cannot be had."""
    if not is_reference(reference):
        raise ValueError(f"{what} {reference!r} is not of the form module:callable")
    module_name, _, attr = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"{what} {reference}: cannot import module {module_name!r} ({err}); put it on "
            "PYTHONPATH or install it on every host that runs an agent"
        ) from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(
                f"{what} {reference}: module {module_name!r} has no attribute {attr!r}"
            )
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{what} {reference}: {attr!r} is not callable")
    return target  # type: ignore[no-any-return]
