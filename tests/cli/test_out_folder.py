"""Safe results: `--out` of simulate, run and compare never mixes two runs' files, nothing
is written before validation passes, and every results folder says where it came from."""

from __future__ import annotations

import json
import socket
import tomllib
from pathlib import Path

import pytest

from dkt import __version__
from dkt.cli import main
from dkt.cli.out_folder import check_out, clear_out
from dkt.common.evaluation.provenance import git_commit, provenance
from dkt.common.run.config import ExperimentConfig

TINY = [
    "--dataset", "synthetic", "--experiences", "2", "--epochs", "1",
    "--probe-size", "24", "--replay-size", "12", "--batch-size", "16", "--quiet",
]  # fmt: skip


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# check_out and clear_out ---------------------------------------------------------------


def test_a_missing_or_empty_folder_is_accepted(tmp_path):
    (tmp_path / "empty").mkdir()

    check_out(tmp_path / "new")
    check_out(tmp_path / "empty")

    assert not (tmp_path / "new").exists()


def test_a_non_empty_folder_is_refused_saying_what_to_do(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")

    with pytest.raises(ValueError, match="is not empty") as info:
        check_out(tmp_path)

    assert "--resume" in str(info.value) and "--overwrite" in str(info.value)


def test_a_file_is_refused_as_a_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("x")

    with pytest.raises(ValueError, match=r"notes.txt is a file, not a folder"):
        check_out(tmp_path / "notes.txt")


def test_resume_needs_an_existing_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist, so there is nothing to resume"):
        check_out(tmp_path / "gone", resume=True)


def test_resume_and_overwrite_together_are_refused(tmp_path):
    with pytest.raises(ValueError, match="contradict"):
        check_out(tmp_path, resume=True, overwrite=True)


def test_overwrite_refuses_a_folder_with_foreign_files_and_deletes_nothing(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "thesis.tex").write_text("mine")

    with pytest.raises(ValueError, match=r"holds files DKT did not write \(thesis.tex\)"):
        check_out(tmp_path, overwrite=True)

    assert _tree(tmp_path) == {"metrics.json", "thesis.tex"}


def test_overwrite_deletes_only_what_dkt_writes(tmp_path):
    for name in ("config.toml", "metrics.json", "summary.md"):
        (tmp_path / name).write_text("old")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "accuracy.png").write_bytes(b"png")

    check_out(tmp_path, overwrite=True)
    removed = clear_out(tmp_path)

    assert removed == ["config.toml", "metrics.json", "plots", "summary.md"]
    assert list(tmp_path.iterdir()) == []


# The commands ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["simulate", "run", "compare"])
def test_out_naming_a_file_is_one_line_and_exit_2(tmp_path, capsys, command):
    target = tmp_path / "results.txt"
    target.write_text("x")

    code = main([command, *TINY, "--out", str(target)])

    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "is a file, not a folder" in err and "Errno" not in err
    assert len(err.splitlines()) == 1
    assert target.read_text() == "x"


@pytest.mark.parametrize("command", ["simulate", "run", "compare"])
def test_a_non_empty_out_is_refused_and_left_alone(tmp_path, capsys, command):
    out = tmp_path / "old"
    out.mkdir()
    (out / "metrics.json").write_text("{}")

    code = main([command, *TINY, "--out", str(out)])

    assert code == 2
    assert "is not empty" in capsys.readouterr().err
    assert _tree(out) == {"metrics.json"}


def test_simulate_resume_on_a_missing_folder_is_an_error(tmp_path, capsys):
    code = main(["simulate", *TINY, "--resume", "--out", str(tmp_path / "gone")])

    assert code == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert not (tmp_path / "gone").exists()


@pytest.mark.parametrize(
    "flags",
    [["--kd-weight", "-1"], ["--experiences", "9", "--agents", "2"]],
    ids=["invalid config", "impossible split"],
)
def test_a_run_that_fails_validation_writes_nothing(tmp_path, capsys, flags):
    out = tmp_path / "run"

    code = main(["simulate", "--dataset", "synthetic", *flags, "--out", str(out), "--quiet"])

    assert code == 2, capsys.readouterr().err
    assert not out.exists()


def test_compare_resume_needs_a_grid(tmp_path, capsys):
    code = main(["compare", *TINY, "--resume", "--out", str(tmp_path / "gone")])

    assert code == 2
    assert "nothing to resume" in capsys.readouterr().err


@pytest.mark.slow
def test_overwrite_leaves_nothing_of_the_bigger_run_before(tmp_path):
    out = tmp_path / "run"
    assert main(["simulate", *TINY, "--agents", "3", "--out", str(out)]) == 0
    assert (out / "matrices" / "agent-2-cl.csv").exists()

    assert main(["simulate", *TINY, "--agents", "2", "--out", str(out), "--overwrite"]) == 0

    files = _tree(out)
    assert not [f for f in files if "agent-2" in f]
    assert set(json.loads((out / "metrics.json").read_text())["agents"]) == {"0", "1"}


# Provenance --------------------------------------------------------------------------


def test_provenance_names_versions_command_host_and_device():
    record = provenance(command=["dkt", "simulate", "--out", "my run"], device="cpu")

    assert record["versions"]["dkt"] == __version__
    assert set(record["versions"]) == {"dkt", "torch", "flwr", "numpy"}
    assert record["versions"]["torch"] and record["versions"]["numpy"]
    assert record["command"] == "dkt simulate --out 'my run'"
    assert record["host"] == socket.gethostname()
    assert record["device"] == "cpu"


def test_git_commit_outside_a_checkout_is_none(tmp_path):
    assert git_commit(tmp_path) is None


def test_git_commit_inside_a_checkout_is_the_head(tmp_path):
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(
        ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit",
         "-q", "--allow-empty", "-m", "x"],
        check=True,
    )  # fmt: skip
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip

    assert git_commit(tmp_path) == head


def test_a_results_folder_records_its_provenance_and_stays_a_config(tmp_path):
    out = tmp_path / "run"

    assert main(["simulate", *TINY, "--agents", "2", "--out", str(out)]) == 0

    record = json.loads((out / "metrics.json").read_text())["provenance"]
    assert record["device"] == "cpu"
    assert record["command"] == f"dkt simulate {' '.join(TINY)} --agents 2 --out {out}"
    assert record["versions"]["dkt"] == __version__
    saved = tomllib.loads((out / "config.toml").read_text())["provenance"]
    assert saved["host"] == record["host"]
    assert saved["versions"]["torch"] == record["versions"]["torch"]
    assert ExperimentConfig.from_toml(out / "config.toml").agents == 2
