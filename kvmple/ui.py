"""Everything people read: one rich Console on stderr for progress and messages; results
that scripts parse (``--json``) go to stdout untouched."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

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
