"""The one place that spawns local processes.

Rules (learned from mkosi's run.py): argv lists only, never a shell; every call has a timeout
or says why not; a failure raises ``CommandError`` whose message is the exact command as a
copy-pasteable ``shlex.join`` plus the tail of its stderr. Remote commands (kvmple.vm.remote)
return the same ``Result`` type.

It imports only ``kvmple.errors`` (a leaf) so it can be used from anywhere.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from kvmple.errors import CommandError, CommandTimeout

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
) -> subprocess.Popen[str]:
    """Start ``args`` in its own session (so a timeout can kill its whole tree), text mode."""
    try:
        return subprocess.Popen(
            args,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=cwd,
            env=None if env is None else {**os.environ, **env},
            text=True,
            errors="replace",
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise CommandError(
            f"{what or 'command'} not found: {shlex.join(args)}",
            hint=hint or f"install the program {args[0]!r} (see README: setup)",
        ) from exc


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
    stdin = subprocess.PIPE if input is not None else subprocess.DEVNULL
    proc = _spawn(args, stdin=stdin, stderr=subprocess.PIPE, cwd=cwd, env=env, what=what, hint=hint)
    try:
        stdout, stderr = proc.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        _kill_group(proc)
        stdout, stderr = proc.communicate()
        raise CommandTimeout(
            f"{what or 'command'} timed out after {timeout:g}s: {shlex.join(args)}"
            + (f" -- {_tail(stderr or stdout)}" if (stderr or stdout) else ""),
            hint=hint,
        ) from exc
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    result = Result(args, proc.returncode, stdout, stderr, time.monotonic() - start)
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
    import threading

    args = _argv(argv)
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    proc = _spawn(
        args,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=None,
        env=env,
        what=what,
        hint=hint,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    errors: list[str] = []
    drain = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    drain.start()
    out: list[str] = []
    try:
        for line in _lines_until(proc.stdout, deadline):
            out.append(line)
            reply = on_line(line.rstrip("\n"))
            if reply:
                with contextlib.suppress(BrokenPipeError):  # it ended without reading it
                    proc.stdin.write(reply)
                    proc.stdin.flush()
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        proc.wait(timeout=max(0.1, deadline - time.monotonic()) if deadline else None)
    except (subprocess.TimeoutExpired, _Deadline) as exc:
        _kill_group(proc)
        proc.wait()
        drain.join(5)
        stderr = "".join(errors)
        raise CommandTimeout(
            f"{what or 'command'} timed out after {timeout:g}s: {shlex.join(args)}"
            + (f" -- {_tail(stderr)}" if stderr else ""),
            hint=hint,
        ) from exc
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    drain.join()
    result = Result(args, proc.returncode, "".join(out), "".join(errors), time.monotonic() - start)
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
    deadline = None if timeout is None else start + timeout
    tail: list[str] = []
    with log.open("a", encoding="utf-8", buffering=1) as sink:  # line-buffered: tail -f works
        sink.write(f"$ {shlex.join(args)}\n")
        sink.flush()
        proc = _spawn(
            args,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            what=what,
            hint=hint,
        )
        try:
            assert proc.stdout is not None
            for line in _lines_until(proc.stdout, deadline):
                sink.write(line)
                tail.append(line.rstrip("\n"))
                del tail[:-20]
                if on_line is not None:
                    on_line(line.rstrip("\n"))
            proc.wait(timeout=max(0.1, deadline - time.monotonic()) if deadline else None)
        except (subprocess.TimeoutExpired, _Deadline) as exc:
            _kill_group(proc)
            proc.wait()
            sink.write(f"# killed after timeout {timeout}s\n")
            raise CommandTimeout(
                f"{what or 'command'} timed out after {timeout:g}s: {shlex.join(args)}",
                hint=f"full log: {log}",
            ) from exc
        except BaseException:
            _kill_group(proc)
            proc.wait()
            raise
        sink.write(f"# exit {proc.returncode}\n")
    result = Result(args, proc.returncode, "\n".join(tail), "", time.monotonic() - start)
    if not result.ok:
        raise CommandError(
            f"{what or 'command failed'} (exit {result.returncode}): {shlex.join(args)}"
            f" -- {_tail(result.stdout, 3)}",
            hint=hint or f"full log: {log}",
        )
    return result


class _Deadline(Exception):
    pass


def _lines_until(stream: IO[str], deadline: float | None) -> Iterator[str]:
    """Yield lines from ``stream``; raise _Deadline once ``deadline`` has passed.

    Uses select so a silent process still times out.
    """
    import select

    fd = stream.fileno()
    os.set_blocking(fd, False)
    buffer = ""
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise _Deadline()
        ready, _, _ = select.select([fd], [], [], min(remaining, 1.0) if remaining else 1.0)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            if buffer:
                yield buffer
            return
        buffer += chunk.decode("utf-8", errors="replace")
        *complete, buffer = buffer.split("\n")
        for line in complete:
            yield line + "\n"


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
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=full_env,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise CommandError(f"program not found: {shlex.join(args)}") from exc
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
    import shutil

    path = os.environ.get("PATH", "")
    extra = ":/usr/local/sbin:/usr/sbin:/sbin"
    return shutil.which(program, path=path + extra)


def start_detached(argv: Argv, *, log: Path, cwd: str | os.PathLike[str] | None = None) -> int:
    """Start a process that outlives this call (its own session, output appended to ``log``)
    and return its pid; the caller records the pid and ends it (kvmple.lab.bochs_run)."""
    args = _argv(argv)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        try:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise CommandError(f"command not found: {shlex.join(args)}") from exc
    return proc.pid
