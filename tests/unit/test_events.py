"""kvmple.events and the CLI's renderer of them (kvmple.ui.Renderer)."""

from __future__ import annotations

import pytest

from kvmple import events, ui
from kvmple.events import Note, Progress, ProgressEnded, ProgressStarted, Recorder, Warn


def test_progress_brackets_even_when_the_work_fails() -> None:
    seen = Recorder()
    with pytest.raises(RuntimeError), events.progress(seen, "make", total=3, done=1):
        seen(Progress(advance=1))
        raise RuntimeError("boom")
    assert seen == [ProgressStarted("make", 3, 1), Progress(advance=1), ProgressEnded()]


def test_recorder_messages_mark_warnings() -> None:
    seen = Recorder()
    seen(Note("a"))
    seen(Progress(status="x"))
    seen(Warn("b"))
    assert seen.messages() == ["a", "warning: b"]


def test_discard_takes_every_event() -> None:
    for event in (Note("a"), Warn("b"), ProgressStarted("c"), Progress(), ProgressEnded()):
        events.discard(event)


def test_renderer_draws_as_the_ui_helpers_do(capsys: pytest.CaptureFixture[str]) -> None:
    renderer = ui.Renderer()
    renderer(Note("plain note"))
    renderer(Warn("something odd"))
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "plain note\nwarning: something odd\n"


def test_renderer_keeps_one_display_per_bracket_and_updates_the_innermost() -> None:
    renderer = ui.Renderer()
    renderer(Progress(status="ignored: no display"))
    renderer(ProgressStarted("campaign", total=4, done=1))
    renderer(Progress(label="block 1", advance=1, status="last: 5"))
    outer = renderer._displays[-1]
    renderer(ProgressStarted("image: debootstrap", transient=True))
    renderer(Progress(status="Unpacking libc6 (1)"))
    inner = renderer._displays[-1]
    assert inner[0].tasks[0].fields["status"] == "Unpacking libc6 (1)"
    renderer(ProgressEnded())
    assert renderer._displays == [outer]
    renderer(Progress(done=4))
    (task,) = outer[0].tasks
    assert (task.description, task.completed, task.total) == ("block 1", 4, 4)
    assert task.fields["status"] == "last: 5"  # a None status leaves it as it was
    renderer(ProgressEnded())
    renderer(ProgressEnded())  # one too many is harmless
    assert renderer._displays == []
