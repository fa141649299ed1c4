"""Live progress for runs on a terminal: one bar per agent (rich)."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dkt.common.agent import ExperienceRecord


class AgentProgress:
    """A `Listener` that draws a bar per agent over all its epochs."""

    def __init__(self, agents: int, experiences: int, epochs: int, console: Console | None = None):
        self.console = console or Console(stderr=True)
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
            a: self.progress.add_task("", total=experiences * epochs, agent=a, exp="-", note="")
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
            note=f"acc cl {100 * record.acc_all_cl:.0f}% st {100 * record.acc_all_st:.0f}%"
            + transfer,
        )
