"""The one place that spawns local processes.

Rules (learned from mkosi's run.py): argv lists only, never a shell; every call has a timeout
or says why not; a failure raises ``CommandError`` whose message is the exact command as a
copy-pasteable ``shlex.join`` plus the tail of its stderr. Remote commands (kvmple.vm.remote)
return the same ``Result`` type.

``run`` (capture), ``run_streaming`` (answer lines) and ``run_logged`` (tee to a log) are one
loop, :func:`kvmple.pump.pump`, over a :class:`LocalProcess`, with different sinks.

It imports only ``kvmple.errors`` and ``kvmple.pump`` (leaves) so it can be used from anywhere.
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from kvmple.errors import CommandError, CommandTimeout
from kvmple.pump import Answer, Capture, Sink, Stream, Tail, Tee, pump

Argv = Sequence[str | os.PathLike[str]]


@dataclass(frozen=True)
class Result:
    """What a finished command left: same shape for local and remote commands."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration: float
    where: str = "local"

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


def _tail(text: str, lines: int = 5) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept)


def failure(result: Result, what: str | None = None, hint: str | None = None) -> CommandError:
    """Build the error for a failed command: what failed, the command, the end of stderr."""
    label = what or "command failed"
    detail = _tail(result.stderr) or _tail(result.stdout)
    message = f"{label} (exit {result.returncode}): {result.command}"
    if result.where != "local":
        message += f" [on {result.where}]"
    if detail:
        message += f" -- {detail}"
    return CommandError(message, hint=hint)


def _argv(argv: Argv) -> tuple[str, ...]:
    if isinstance(argv, str | bytes):
        raise TypeError("run() takes an argv list, never a string (no shell)")
    return tuple(os.fspath(a) for a in argv)


def _spawn(
    args: tuple[str, ...],
    *,
    stdin: int,
    stderr: int,
    cwd: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
    what: str | None,
    hint: str | None,
) -> subprocess.Popen[bytes]:
    """Start ``args`` in its own session (so a timeout can kill its whole tree); bytes, the
    pump decodes."""
    try:
        return subprocess.Popen(
            args,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=cwd,
            env=None if env is None else {**os.environ, **env},
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise CommandError(
            f"{what or 'command'} not found: {shlex.join(args)}",
            hint=hint or f"install the program {args[0]!r} (see README: setup)",
        ) from exc


class LocalProcess:
    """A local process as a :class:`kvmple.pump.Transport`: its stdout and stderr pipes
    (stderr None when merged into stdout), read with select so a silent process still
    times out."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self._open: dict[int, Stream] = {}
        pipes: tuple[tuple[Stream, IO[bytes] | None], ...] = (
            ("out", proc.stdout),
            ("err", proc.stderr),
        )
        for stream, pipe in pipes:
            if pipe is not None:
                os.set_blocking(pipe.fileno(), False)
                self._open[pipe.fileno()] = stream

    @property
    def done(self) -> bool:
        return not self._open

    def read(self, wait: float) -> list[tuple[Stream, bytes]]:
        ready, _, _ = select.select(list(self._open), [], [], wait)
        chunks: list[tuple[Stream, bytes]] = []
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if data:
                chunks.append((self._open[fd], data))
            else:
                del self._open[fd]
        return chunks

    def send(self, data: bytes) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError, ValueError):  # it stopped reading
                self.proc.stdin.write(data)
                self.proc.stdin.flush()

    def close_input(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()


@dataclass(frozen=True)
class _Io:
    """How one local command is wired: what goes to stdin, where stderr goes."""

    input: str | None = None  # written by a helper thread, then stdin closes
    answers: bool = False  # stdin stays open for the sinks' replies until the output ends
    merge_stderr: bool = False
    translate_newlines: bool = False  # as text-mode pipes read them ("\r\n" -> "\n")
    drain_on_timeout: bool = False  # keep what a timed-out command wrote before the kill


def _execute(
    args: tuple[str, ...],
    sinks: Sequence[Sink],
    io: _Io,
    *,
    timeout: float | None,
    cwd: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
    what: str | None,
    hint: str | None,
) -> int | None:
    """Run ``args`` in its own session, pumping its output into ``sinks``; its exit status,
    or None when ``timeout`` passed (its whole process group is killed then, and on any
    exception, which propagates)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    wants_stdin = io.input is not None or io.answers
    proc = _spawn(
        args,
        stdin=subprocess.PIPE if wants_stdin else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if io.merge_stderr else subprocess.PIPE,
        cwd=cwd,
        env=env,
        what=what,
        hint=hint,
    )
    transport = LocalProcess(proc)
    feeder: threading.Thread | None = None
    try:
        if io.input is not None:
            data = io.input.encode()
            feeder = threading.Thread(target=_feed, args=(transport, data), daemon=True)
            feeder.start()
        finished = pump(
            transport, sinks, deadline=deadline, translate_newlines=io.translate_newlines
        )
        if finished:
            if feeder is None:
                transport.close_input()
            try:
                proc.wait(
                    timeout=None if deadline is None else max(0.1, deadline - time.monotonic())
                )
            except subprocess.TimeoutExpired:
                finished = False
        if not finished:
            _kill_group(proc)
            proc.wait()
            if io.drain_on_timeout:
                pump(transport, sinks, deadline=time.monotonic() + 5)
            return None
        return proc.returncode
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    finally:
        if feeder is not None:
            feeder.join(1)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def _feed(transport: LocalProcess, data: bytes) -> None:
    """Write ``input`` while the pump reads (a large input must not wait for the output)."""
    if transport.proc.stdin is not None:
        with contextlib.suppress(BrokenPipeError, ValueError, OSError):
            transport.proc.stdin.write(data)
    transport.close_input()


def _timed_out(what: str | None, timeout: float | None, args: tuple[str, ...]) -> str:
    return f"{what or 'command'} timed out after {timeout:g}s: {shlex.join(args)}"


def run(
    argv: Argv,
    *,
    timeout: float | None,
    check: bool = True,
    input: str | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    what: str | None = None,
    hint: str | None = None,
) -> Result:
    """Run a command to completion, capturing output.

    ``timeout`` is mandatory (None must be written out, meaning "bounded elsewhere").
    The process runs in its own session so a timeout kills its whole tree.
    """
    args = _argv(argv)
    start = time.monotonic()
    capture = Capture()
    io = _Io(input=input, translate_newlines=True, drain_on_timeout=True)
    status = _execute(args, [capture], io, timeout=timeout, cwd=cwd, env=env, what=what, hint=hint)
    if status is None:
        stderr, stdout = capture.err, capture.out
        raise CommandTimeout(
            _timed_out(what, timeout, args)
            + (f" -- {_tail(stderr or stdout)}" if (stderr or stdout) else ""),
            hint=hint,
        )
    result = Result(args, status, capture.out, capture.err, time.monotonic() - start)
    if check and not result.ok:
        raise failure(result, what, hint)
    return result


def run_streaming(
    argv: Argv,
    on_line: Callable[[str], str | None],
    *,
    timeout: float | None,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    what: str | None = None,
    hint: str | None = None,
) -> Result:
    """Like ``run`` but hands every stdout line to ``on_line`` as it arrives (a program that
    announces a phase, and waits for the caller to act on it); text ``on_line`` returns is
    written to the command's stdin, which stays open until the command ends. Whatever
    ``on_line`` raises kills the command's process group and propagates."""
    args = _argv(argv)
    start = time.monotonic()
    capture = Capture()
    sinks = [capture, Answer(on_line)]
    status = _execute(
        args, sinks, _Io(answers=True), timeout=timeout, cwd=None, env=env, what=what, hint=hint
    )
    if status is None:
        stderr = capture.err
        raise CommandTimeout(
            _timed_out(what, timeout, args) + (f" -- {_tail(stderr)}" if stderr else ""),
            hint=hint,
        )
    result = Result(args, status, capture.out, capture.err, time.monotonic() - start)
    if check and not result.ok:
        raise failure(result, what, hint)
    return result


def run_logged(
    argv: Argv,
    *,
    log: Path,
    timeout: float | None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
    what: str | None = None,
    hint: str | None = None,
) -> Result:
    """Run a long command (debootstrap, make), appending all output to ``log``.

    ``on_line`` sees every output line (for progress displays). On failure the error names
    the log file so the user can read all of it.
    """
    args = _argv(argv)
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    tail = Tail(20)
    with log.open("a", encoding="utf-8", buffering=1) as sink:  # line-buffered: tail -f works
        sink.write(f"$ {shlex.join(args)}\n")
        sink.flush()
        sinks: list[Sink] = [Tee(sink), tail]
        if on_line is not None:
            sinks.append(Answer(on_line))
        io = _Io(merge_stderr=True)
        status = _execute(args, sinks, io, timeout=timeout, cwd=cwd, env=env, what=what, hint=hint)
        if status is None:
            sink.write(f"# killed after timeout {timeout}s\n")
            raise CommandTimeout(_timed_out(what, timeout, args), hint=f"full log: {log}")
        sink.write(f"# exit {status}\n")
    result = Result(args, status, "\n".join(tail.lines), "", time.monotonic() - start)
    if not result.ok:
        raise CommandError(
            f"{what or 'command failed'} (exit {result.returncode}): {shlex.join(args)}"
            f" -- {_tail(result.stdout, 3)}",
            hint=hint or f"full log: {log}",
        )
    return result


@contextmanager
def background(
    argv: Argv,
    *,
    log: Path | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    stop_timeout: float = 10.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a long-lived process; on exit (or error, or Ctrl-C) terminate its whole group."""
    args = _argv(argv)
    full_env = None if env is None else {**os.environ, **env}
    sink: IO[bytes] | int = subprocess.DEVNULL
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        sink = log.open("ab")
    proc = _start_in_session(args, sink, cwd, full_env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            _kill_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                proc.wait()
        if not isinstance(sink, int):
            sink.close()


def _kill_group(
    proc: subprocess.Popen[str] | subprocess.Popen[bytes], sig: int = signal.SIGKILL
) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def which(program: str) -> str | None:
    """Path of ``program`` on PATH (and the sbin directories root tools live in)."""
    path = os.environ.get("PATH", "")
    extra = ":/usr/local/sbin:/usr/sbin:/sbin"
    return shutil.which(program, path=path + extra)


def start_detached(argv: Argv, *, log: Path, cwd: str | os.PathLike[str] | None = None) -> int:
    """Start a process that outlives this call (its own session, output appended to ``log``)
    and return its pid; the caller records the pid and ends it (kvmple.lab.bochs_run)."""
    args = _argv(argv)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        return _start_in_session(args, sink, cwd, None).pid


def _start_in_session(
    args: tuple[str, ...],
    sink: IO[bytes] | int,
    cwd: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
) -> subprocess.Popen[bytes]:
    """A process in its own session (so its group can be ended), stdout+stderr to ``sink``."""
    try:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise CommandError(f"program not found: {shlex.join(args)}") from exc
