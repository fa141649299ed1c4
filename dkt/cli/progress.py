"""Live progress for runs on a terminal: one bar per agent (rich), for every driver."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dkt.common.evaluation.results import ExperienceRecord

# How an agent's state (from the relay's status) is coloured in its bar's note.
STATE_STYLE = {"failed": "red", "missing": "red", "retrying": "yellow", "rejoined": "green"}


class AgentProgress:
    """One bar per agent over its experiences. `dkt simulate` feeds it as a `Listener`
    (the bar moves per epoch); `dkt run` feeds it the relay's status of the run with
    `update_from_status` (per experience, with each agent's state and why)."""

    def __init__(
        self,
        agents: int,
        experiences: int,
        epochs: int = 1,
        console: Console | None = None,
        show_st: bool = True,
    ) -> None:
        """`show_st`: show the st head's accuracy (not under exchanges where it learns
        nothing: none, fedavg, fedmd)."""
        self.console = console or Console(stderr=True)
        self.show_st = show_st
        self.experiences = experiences
        self.epochs = epochs
        self.progress = Progress(
            TextColumn("[bold]agent {task.fields[agent]}[/] exp {task.fields[exp]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.tasks = {
            a: self.progress.add_task(
                "", total=experiences * epochs, agent=a, exp="-", note="waiting"
            )
            for a in range(agents)
        }

    def __enter__(self) -> AgentProgress:
        self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()

    # As a Listener of the in-process driver -------------------------------------------

    def experience_started(self, agent_id: int, experience: int, teachers: list[int]) -> None:
        who = ",".join(map(str, teachers)) if teachers else "none"
        self.progress.update(
            self.tasks[agent_id],
            completed=experience * self.epochs,
            exp=f"{experience + 1}/{self.experiences}",
            note=f"teachers: {who}",
        )

    def epoch_done(self, agent_id: int, experience: int, epoch: int, epochs: int) -> None:
        self.progress.update(self.tasks[agent_id], completed=experience * self.epochs + epoch)

    def experience_done(self, agent_id: int, record: ExperienceRecord) -> None:
        transfer = (
            f" transfer st {100 * record.transfer_st:.0f}%"
            if record.transfer_st is not None
            else ""
        )
        self.progress.update(
            self.tasks[agent_id],
            completed=(record.experience + 1) * self.epochs,
            note=f"acc cl {100 * record.acc_all_cl:.0f}%"
            + (f" st {100 * record.acc_all_st:.0f}%" if self.show_st else "")
            + transfer,
        )

    # From the relay's status ----------------------------------------------------------

    def update_from_status(self, run: dict[str, Any]) -> None:
        """Draw one run of the relay's status (`RelayClient.status()["runs"][i]`)."""
        for agent in run.get("agents", []):
            task = self.tasks.get(int(agent["agent_id"]))
            if task is None:
                continue
            state, e = agent.get("state", ""), int(agent.get("experience", 0))
            metrics, reason = agent.get("metrics", {}), agent.get("reason", "")
            done = e + 1 if state in ("trained", "done") else e if state else 0
            self.progress.update(
                task,
                completed=min(done, self.experiences) * self.epochs,
                exp=f"{min(e + 1, self.experiences)}/{self.experiences}",
                note=status_note(state, reason, metrics),
            )


def status_note(state: str, reason: str, metrics: dict[str, float]) -> str:
    """An agent's state as a bar's note: the state, why (if said), headline numbers."""
    style = STATE_STYLE.get(state)
    note = f"[{style}]{state}[/]" if style else (state or "connected")
    if reason and state in STATE_STYLE:
        note += f" [dim]({escape(reason[:80])})[/]"
    if "transfer_st" in metrics:
        note += f" transfer st {100 * metrics['transfer_st']:.0f}%"
    if "acc_all_cl" in metrics:
        note += f" acc cl {100 * metrics['acc_all_cl']:.0f}%"
    return note
