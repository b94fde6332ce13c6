"""What the library reports while it works, as typed events; front ends decide how to show them.

The engine (campaign, kernel build, image build, nightly, guest lifecycle) never draws: it
calls a ``Sink`` with one of the events below. ``kvmple.ui.Renderer`` (used by commands/)
draws them with rich exactly as before; tests pass a ``Recorder`` and look at the list;
library callers that want silence keep the default ``discard``.

A progress display is a bracket: ``ProgressStarted``, any number of ``Progress`` updates and
``Note``/``Warn`` lines (shown above the live display), then ``ProgressEnded``; the
``progress`` context manager emits the two ends, the second whatever happens. Displays may
nest (an image built while another display runs); updates go to the innermost one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Note:
    """A line for the person watching (stderr in the CLI); rich markup allowed."""

    message: str


@dataclass(frozen=True)
class Warn:
    """Something went wrong but the work goes on (the CLI prefixes "warning:")."""

    message: str


@dataclass(frozen=True)
class ProgressStarted:
    """A long piece of work begins: ``total`` units (None: unknown), ``done`` of them already
    done (a resumed campaign); ``transient`` displays vanish when they end."""

    label: str
    total: int | None = None
    done: int = 0
    transient: bool = False


@dataclass(frozen=True)
class Progress:
    """An update of the innermost display: a new label, units done (absolute) or advanced
    by, and a short status text. None leaves that part as it was."""

    label: str | None = None
    done: int | None = None
    advance: int = 0
    status: str | None = None


@dataclass(frozen=True)
class ProgressEnded:
    """The innermost display's work is over (ended or failed)."""


Event = Note | Warn | ProgressStarted | Progress | ProgressEnded
Sink = Callable[[Event], None]


def discard(event: Event) -> None:
    """The sink of callers that show nothing (the default of every engine function)."""


class Recorder(list[Event]):
    """A sink that keeps every event, in order (tests; a front end that summarises later)."""

    def __call__(self, event: Event) -> None:
        self.append(event)

    def messages(self) -> list[str]:
        """The text of the Note and Warn events, warnings prefixed "warning: "."""
        return [
            e.message if isinstance(e, Note) else f"warning: {e.message}"
            for e in self
            if isinstance(e, Note | Warn)
        ]


@contextmanager
def progress(
    sink: Sink, label: str, *, total: int | None = None, done: int = 0, transient: bool = False
) -> Iterator[None]:
    """Emit ``ProgressStarted`` now and ``ProgressEnded`` when the block exits, however."""
    sink(ProgressStarted(label, total, done, transient))
    try:
        yield
    finally:
        sink(ProgressEnded())
