"""The one progress-bar class: fed by the in-process driver or by the relay's status."""

from __future__ import annotations

import io

from rich.console import Console

from dkt.cli.progress import AgentProgress, status_note


def test_a_failed_agent_shows_its_state_and_why():
    note = status_note("failed", "Flower error 5 (SuperNode unavailable): gone", {})
    assert note == "[red]failed[/] [dim](Flower error 5 (SuperNode unavailable): gone)[/]"


def test_a_trained_agent_shows_its_numbers_not_a_reason():
    note = status_note("trained", "", {"acc_all_cl": 0.5, "transfer_st": 0.25})
    assert note == "trained transfer st 25% acc cl 50%"


def test_the_relays_status_moves_each_agents_bar():
    console = Console(file=io.StringIO(), width=120)
    progress = AgentProgress(agents=2, experiences=3, console=console)
    progress.update_from_status(
        {
            "agents": [
                {"agent_id": 0, "state": "trained", "experience": 1, "metrics": {}},
                {"agent_id": 1, "state": "retrying", "experience": 1, "metrics": {},
                 "reason": "try 2 of 3 after: no reply within 60 s"},
            ]
        }
    )  # fmt: skip
    tasks = {t.fields["agent"]: t for t in progress.progress.tasks}
    assert (tasks[0].completed, tasks[0].fields["exp"]) == (2, "2/3")
    assert (tasks[1].completed, tasks[1].fields["exp"]) == (1, "2/3")
    assert (
        "retrying" in tasks[1].fields["note"] and "no reply within 60 s" in tasks[1].fields["note"]
    )


def test_the_st_heads_accuracy_is_shown_only_where_it_learns():
    from dkt.common.evaluation.results import ExperienceRecord

    record = ExperienceRecord(
        experience=0, classes=[0], teachers=[], acc_cl=[0.9], acc_st=[0.3], acc_all_cl=0.9,
        acc_all_st=0.3, transfer_classes=[], transfer_st=None, transfer_cl=None, loss_ce=1.0,
        loss_kd=0.0, steps=1, train_seconds=1.0,
    )  # fmt: skip
    notes = {}
    for show in (True, False):
        progress = AgentProgress(1, 2, console=Console(file=io.StringIO()), show_st=show)
        progress.experience_done(0, record)
        notes[show] = progress.progress.tasks[0].fields["note"]
    assert notes == {True: "acc cl 90% st 30%", False: "acc cl 90%"}
