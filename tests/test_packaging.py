"""The package list in pyproject.toml names every package of the tree, so a plain
`pip install .` (the Docker image does one) installs all of them: the Compose demo once
failed with "No module named 'dkt.common.engine'" while the editable install worked."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package_of_the_tree() -> None:
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setup["packages"])
    found = set()
    for package, folder in setup["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            nested_root = parts and f"{package}.{parts[0]}" in setup["package-dir"]
            if "__pycache__" not in parts and not nested_root:
                found.add(".".join((package, *parts)))
    assert listed == found
