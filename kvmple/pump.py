"""The one loop that moves a command's output to whoever wants it (mkosi's ``spawn``,
invoke's ``Runner`` with its stream watchers).

A :class:`Transport` is where output comes from and input goes to: a local process
(:class:`kvmple.run.LocalProcess`) or an SSH channel (:mod:`kvmple.remote`); only that part
differs. :func:`pump` reads both streams until the command is done or a deadline passes,
decodes them (UTF-8, undecodable bytes replaced) and hands every chunk of text and every
complete line to the sinks: :class:`Capture` keeps the text, :class:`Tee` appends it to a log,
:class:`Tail` keeps the last lines, :class:`Answer` hands stdout lines to a callback whose
reply is written to the command's stdin.

Imports nothing of kvmple: every layer may use it.
"""

from __future__ import annotations

import codecs
import io
import time
from collections.abc import Callable, Sequence
from typing import IO, Literal, Protocol

Stream = Literal["out", "err"]
STREAMS: tuple[Stream, ...] = ("out", "err")


class Transport(Protocol):
    """A running command seen from the pump."""

    @property
    def done(self) -> bool:
        """True once every stream has reached its end (nothing more will be read)."""
        ...

    def read(self, wait: float) -> Sequence[tuple[Stream, bytes]]:
        """What arrived within ``wait`` seconds (possibly nothing)."""
        ...

    def send(self, data: bytes) -> None:
        """Write ``data`` to the command's stdin (ignored once the command stopped reading)."""
        ...


class Sink:
    """Receives a command's output; subclasses override what they need."""

    def text(self, stream: Stream, text: str) -> None:
        """A chunk of decoded output, as it arrived."""

    def line(self, stream: Stream, line: str) -> str | None:
        """A complete line without its newline (the last one also when unterminated);
        returned text is written to the command's stdin."""
        return None


class Capture(Sink):
    """Keeps all output, per stream."""

    def __init__(self) -> None:
        self._parts: dict[Stream, list[str]] = {"out": [], "err": []}

    def text(self, stream: Stream, text: str) -> None:
        self._parts[stream].append(text)

    @property
    def out(self) -> str:
        return "".join(self._parts["out"])

    @property
    def err(self) -> str:
        return "".join(self._parts["err"])


class Tee(Sink):
    """Appends all output to an open log file, as it arrives (``tail -f`` follows it)."""

    def __init__(self, log: IO[str]) -> None:
        self._log = log

    def text(self, stream: Stream, text: str) -> None:
        self._log.write(text)


class Tail(Sink):
    """The last ``keep`` lines of one stream."""

    def __init__(self, keep: int, stream: Stream = "out") -> None:
        self.keep = keep
        self.stream = stream
        self.lines: list[str] = []

    def line(self, stream: Stream, line: str) -> str | None:
        if stream == self.stream:
            self.lines.append(line)
            del self.lines[: -self.keep]
        return None


class Answer(Sink):
    """Hands each stdout line to ``callback``; what it returns goes to the command's stdin
    (invoke's Responder, generalised). Whatever ``callback`` raises stops the pump."""

    def __init__(self, callback: Callable[[str], str | None]) -> None:
        self._callback = callback

    def line(self, stream: Stream, line: str) -> str | None:
        return self._callback(line) if stream == "out" else None


class _Decoder:
    """Bytes of one stream to text and complete lines (``translate``: universal newlines,
    as Python's text-mode pipes read them)."""

    def __init__(self, translate: bool) -> None:
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._decode = (
            io.IncrementalNewlineDecoder(utf8, translate=True).decode if translate else utf8.decode
        )
        self._partial = ""

    def feed(self, data: bytes, final: bool = False) -> tuple[str, list[str]]:
        text = self._decode(data, final)
        *lines, self._partial = (self._partial + text).split("\n")
        if final and self._partial:
            lines.append(self._partial)
            self._partial = ""
        return text, lines


def pump(
    transport: Transport,
    sinks: Sequence[Sink],
    *,
    deadline: float | None,
    translate_newlines: bool = False,
    poll: float = 1.0,
) -> bool:
    """Move output from ``transport`` to ``sinks`` until it is done; False when ``deadline``
    (a ``time.monotonic()`` value) passed first. Exceptions of a sink propagate (the caller
    stops the command)."""
    decoders = {stream: _Decoder(translate_newlines) for stream in STREAMS}

    def deliver(stream: Stream, text: str, lines: list[str], answer: bool) -> None:
        for sink in sinks:
            if text:
                sink.text(stream, text)
        for line in lines:
            for sink in sinks:
                reply = sink.line(stream, line)
                if reply and answer:
                    transport.send(reply.encode())

    while not transport.done:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False
        wait = poll if remaining is None else min(remaining, poll)
        for stream, data in transport.read(wait):
            deliver(stream, *decoders[stream].feed(data), answer=True)
    for stream in STREAMS:  # the unterminated last line: the command has ended its output
        deliver(stream, *decoders[stream].feed(b"", final=True), answer=False)
    return True
