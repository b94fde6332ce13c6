"""The one process pump: sinks over a scripted transport (pure), and the local transport
through kvmple.run with real processes (the SSH transport runs in test_remote.py against a
loopback sshd)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from kvmple.errors import CommandTimeout
from kvmple.pump import Answer, Capture, Stream, Tail, Tee, pump
from kvmple.run import run, run_logged, run_streaming


class Scripted:
    """A transport that yields prepared chunks, one batch per read, and records input."""

    def __init__(self, batches: Sequence[Sequence[tuple[Stream, bytes]]]) -> None:
        self._batches = list(batches)
        self.sent: list[bytes] = []

    @property
    def done(self) -> bool:
        return not self._batches

    def read(self, wait: float) -> Sequence[tuple[Stream, bytes]]:
        return self._batches.pop(0)

    def send(self, data: bytes) -> None:
        self.sent.append(data)


def test_lines_are_split_across_chunks_and_the_last_one_is_kept() -> None:
    euro = "€".encode()
    transport = Scripted(
        [
            [("out", b"one\ntw")],
            [("out", b"o\n" + euro[:1]), ("err", b"warn")],
            [("out", euro[1:] + b"\nlast")],
            [("err", b"ing\n")],
        ]
    )
    capture, tail = Capture(), Tail(2)
    seen: list[str] = []
    answer = Answer(lambda line: seen.append(line) or None)
    assert pump(transport, [capture, tail, answer], deadline=None)
    assert capture.out == "one\ntwo\n€\nlast"
    assert capture.err == "warning\n"
    assert seen == ["one", "two", "€", "last"]
    assert tail.lines == ["€", "last"]


def test_replies_go_to_stdin_but_not_after_the_output_ended() -> None:
    transport = Scripted([[("out", b"ready?\n")], [("out", b"bye")]])
    assert pump(transport, [Answer(lambda line: f"answer to {line}\n")], deadline=None)
    assert transport.sent == [b"answer to ready?\n"]


def test_a_passed_deadline_stops_the_pump() -> None:
    transport = Scripted([[("out", b"x\n")]] * 3)
    assert not pump(transport, [Capture()], deadline=time.monotonic() - 1)


def test_a_failing_sink_stops_the_pump() -> None:
    def fail(line: str) -> str | None:
        raise RuntimeError(line)

    with pytest.raises(RuntimeError, match="boom"):
        pump(Scripted([[("out", b"boom\n")], [("out", b"never")]]), [Answer(fail)], deadline=None)


def test_tee_writes_what_arrives(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with log.open("w") as handle:
        pump(Scripted([[("out", b"a\nb")], [("err", b"c\n")]]), [Tee(handle)], deadline=None)
    assert log.read_text() == "a\nbc\n"


def test_newlines_translated_as_text_pipes_did() -> None:
    transport = Scripted([[("out", b"a\r\nb\r")], [("out", b"\nc\rd")]])
    capture = Capture()
    pump(transport, [capture], deadline=None, translate_newlines=True)
    assert capture.out == "a\nb\nc\nd"
    result = run([sys.executable, "-c", "print('x\\r\\ny', end='\\r\\n')"], timeout=30)
    assert result.stdout == "x\ny\n"


PRODUCER = (
    "import sys\n"
    "data = sys.stdin.read()\n"
    "sys.stdout.write(data)\n"
    "sys.stderr.write('e' * 300000)\n"
    "sys.stdout.write('o' * 300000)\n"
)


def test_large_input_and_both_streams_never_deadlock() -> None:
    big = "i" * 1_000_000
    result = run([sys.executable, "-c", PRODUCER], timeout=60, input=big)
    assert result.stdout == big + "o" * 300000
    assert result.stderr == "e" * 300000


def test_a_timeout_keeps_what_was_written_before_the_kill() -> None:
    script = "import sys, time\nsys.stderr.write('started\\n'); sys.stderr.flush()\ntime.sleep(30)"
    with pytest.raises(CommandTimeout, match="started"):
        run([sys.executable, "-c", script], timeout=1)


def test_run_logged_tees_both_streams_and_keeps_the_tail(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    script = (
        "import sys; "
        "[print(i, file=sys.stderr if i % 2 else sys.stdout, flush=True) for i in range(30)]"
    )
    result = run_logged([sys.executable, "-c", script], log=log, timeout=30)
    text = log.read_text()
    assert text.startswith("$ ") and text.endswith("# exit 0\n")
    assert [int(x) for x in text.splitlines()[1:-1]] == list(range(30))
    assert result.stdout.splitlines() == [str(i) for i in range(10, 30)]


def test_run_streaming_answers_while_stderr_is_read_too() -> None:
    script = (
        "import sys\n"
        "sys.stderr.write('x' * 200000); sys.stderr.flush()\n"
        "print('name?', flush=True)\n"
        "print('hello', sys.stdin.readline().strip())\n"
    )
    result = run_streaming(
        [sys.executable, "-c", script],
        lambda line: "kvmple\n" if line == "name?" else None,
        timeout=30,
    )
    assert result.stdout == "name?\nhello kvmple\n"
    assert len(result.stderr) == 200000
