"""Everything people read: one rich Console on stderr for progress and messages; results
that scripts parse (``--json``) go to stdout untouched. Only commands/ (and this module)
draw: the library emits kvmple.events, which ``Renderer`` draws here."""

from __future__ import annotations

import os
import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from kvmple import events

err = Console(stderr=True, highlight=False, soft_wrap=True)  # no hard wraps: logs stay greppable
out = Console(highlight=False, soft_wrap=True)


def progress(transient: bool = False) -> Progress:
    """A progress display with ETA for long work (campaigns, builds)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=err,
        transient=transient,
        disable=os.environ.get("KVMPLE_NO_PROGRESS") == "1",
    )


def note(message: str) -> None:
    err.print(message)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {message}")


def is_tty() -> bool:
    return sys.stderr.isatty()


class Renderer:
    """The CLI's events sink: notes and warnings on stderr as ``note``/``warn`` print them,
    each ``ProgressStarted`` .. ``ProgressEnded`` bracket as a ``progress()`` display (bar,
    counts, elapsed time, ETA, status), innermost display updated. One per command run."""

    def __init__(self) -> None:
        self._displays: list[tuple[Progress, TaskID]] = []

    def __call__(self, event: events.Event) -> None:
        if isinstance(event, events.Note):
            note(event.message)
        elif isinstance(event, events.Warn):
            warn(event.message)
        elif isinstance(event, events.ProgressStarted):
            bar = progress(transient=event.transient)
            bar.start()
            task = bar.add_task(event.label, total=event.total, status="", completed=event.done)
            self._displays.append((bar, task))
        elif isinstance(event, events.Progress):
            if self._displays:
                self._update(*self._displays[-1], event)
        elif self._displays:  # ProgressEnded
            bar, _ = self._displays.pop()
            bar.stop()

    @staticmethod
    def _update(bar: Progress, task: TaskID, event: events.Progress) -> None:
        fields: dict[str, Any] = {} if event.status is None else {"status": event.status}
        bar.update(
            task,
            description=event.label,
            completed=event.done,
            advance=event.advance or None,
            **fields,
        )
