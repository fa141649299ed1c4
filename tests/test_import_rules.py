"""The layout's import rules (docs/explanation/architecture.md), read from the source:
`server/` never imports `client/`; `common/` imports neither Flower nor grpc; only
`dkt/flower/` uses Flower beyond its public app API; and no two packages import each
other, directly or around a circle. Imports inside functions count too."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The import package's folders (pyproject.toml, [tool.setuptools] package-dir).
FOLDERS = {"dkt.common": "common", "dkt.server": "server", "dkt.client": "client",
           "dkt.proto": "proto", "dkt": "dkt"}  # fmt: skip
FLOWER_PUBLIC = ("flwr.app", "flwr.clientapp", "flwr.serverapp")
# The packages between which no cycle may run: each top-level part of the design and
# their subpackages. Inside common/ they form layers: run (the run's spec) < data <
# evaluation < training < engine (set-up, the step, the in-process driver).
PACKAGES = (
    "dkt.common.run", "dkt.common.data", "dkt.common.evaluation", "dkt.common.training",
    "dkt.common.engine", "dkt.common", "dkt.proto.relay_client", "dkt.proto",
    "dkt.server.relay.store", "dkt.server.relay", "dkt.server.conductor", "dkt.client",
    "dkt.cli", "dkt.flower",
)  # fmt: skip


def modules() -> Iterator[tuple[str, Path]]:
    for package, folder in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "_pb2" in path.name:
                continue
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if package == "dkt" and parts[0] in ("common", "server", "client", "proto"):
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join((package, *parts)), path


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = dict(modules())
IMPORTS = {name: imports_of(path) for name, path in MODULES.items()}


def inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def package_of(module: str) -> str | None:
    return next((p for p in PACKAGES if inside(module, p)), None)


def test_the_rules_see_every_package_of_the_layout() -> None:
    for package in PACKAGES:
        assert any(inside(m, package) for m in MODULES), package
    assert "dkt.server.relay.store.sqlite" in MODULES
    assert "dkt.flower.runtime" in MODULES


def test_server_never_imports_client() -> None:
    wrong = {m: sorted(i for i in IMPORTS[m] if inside(i, "dkt.client"))
             for m in MODULES if inside(m, "dkt.server")}  # fmt: skip
    assert {m: i for m, i in wrong.items() if i} == {}


@pytest.mark.parametrize("library", ["flwr", "grpc"])
def test_common_imports_neither_flower_nor_grpc(library: str) -> None:
    wrong = {m: sorted(i for i in IMPORTS[m] if inside(i, library) or i.startswith(library))
             for m in MODULES if inside(m, "dkt.common")}  # fmt: skip
    assert {m: i for m, i in wrong.items() if i} == {}


def test_only_dkt_flower_uses_flower_beyond_its_public_app_api() -> None:
    wrong = {
        m: sorted(i for i in IMPORTS[m]
                  if inside(i, "flwr") and not any(inside(i, p) for p in FLOWER_PUBLIC))
        for m in MODULES
        if not inside(m, "dkt.flower")
    }  # fmt: skip
    assert {m: i for m, i in wrong.items() if i} == {}


def test_stopping_a_process_imports_neither_the_relay_nor_torch() -> None:
    code = (
        "import sys, dkt.flower.processes as p; assert callable(p.stop_process); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'grpc', 'flwr') "
        "or m.startswith('dkt.server')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_package_imports_another_that_imports_it_back() -> None:
    edges: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for module, imported in IMPORTS.items():
        source = package_of(module)
        for name in imported:
            target = package_of(name)
            # A package's own modules and each of its subpackages are nodes of their own:
            # dkt.common.data may use dkt.common.choices only if no module of dkt.common
            # itself uses dkt.common.data.
            if source and target and target != source:
                edges[source].add(target)
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(edges[node]):
            if nxt in path:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif len(path) < len(PACKAGES):
                visit(nxt, [*path, nxt])

    for package in PACKAGES:
        visit(package, [package])
    assert cycles == []
