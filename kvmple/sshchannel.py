"""An SSH channel as the process pump's transport (kvmple.pump.Transport), for
kvmple.remote.SSHExecutor: the pump reads a remote command's output through it exactly as it
reads a local process's pipes."""

from __future__ import annotations

import time
from typing import Protocol

from kvmple.pump import Stream

_IDLE_POLL = 0.01


class SessionChannel(Protocol):
    """What this module uses of a paramiko.Channel (kvmple.remote alone imports paramiko)."""

    eof_received: int  # paramiko keeps 0/1
    closed: bool

    def recv_ready(self) -> bool: ...
    def recv(self, nbytes: int) -> bytes: ...
    def recv_stderr_ready(self) -> bool: ...
    def recv_stderr(self, nbytes: int) -> bytes: ...
    def exit_status_ready(self) -> bool: ...
    def sendall(self, s: bytes) -> None: ...


class ChannelTransport:
    """An SSH channel as a :class:`kvmple.pump.Transport`. The remote shell prints its pid
    first (``echo $$; exec ...``): that line is kept as ``pid``, not passed on as output."""

    def __init__(self, channel: SessionChannel) -> None:
        self.channel = channel
        self.pid: int | None = None
        self._head = b""

    @property
    def done(self) -> bool:
        # Done only at EOF: sshd may send the exit status before the last output (seen
        # here as an empty stdout from a busy guest), so the status alone is not enough.
        channel = self.channel
        return (
            channel.exit_status_ready()
            and bool(channel.eof_received or channel.closed)
            and not channel.recv_ready()
            and not channel.recv_stderr_ready()
        )

    def read(self, wait: float) -> list[tuple[Stream, bytes]]:
        """What arrived within ``wait`` seconds (paramiko offers no select on both streams:
        poll every _IDLE_POLL seconds)."""
        until = time.monotonic() + wait
        chunks: list[tuple[Stream, bytes]] = []
        while True:
            if self.channel.recv_ready():
                data = self._after_pid(self.channel.recv(65536))
                if data:
                    chunks.append(("out", data))
            if self.channel.recv_stderr_ready():
                chunks.append(("err", self.channel.recv_stderr(65536)))
            if chunks or self.done or time.monotonic() >= until:
                return chunks
            time.sleep(_IDLE_POLL)

    def _after_pid(self, data: bytes) -> bytes:
        if self.pid is not None:
            return data
        self._head += data
        head, newline, rest = self._head.partition(b"\n")
        if not newline:
            return b""
        self.pid = int(head) if head.strip().isdigit() else -1
        self._head = b""
        return rest

    def send(self, data: bytes) -> None:
        self.channel.sendall(data)
