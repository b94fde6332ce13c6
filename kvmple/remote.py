"""Commands and files in a guest over SSH: the only module that imports paramiko.

``SSHExecutor`` implements ``kvmple.executor.Executor`` (run with a timeout, put, get) and
adds ``stream``. It logs in with the installation key only (no agent, no other keys, no
passwords) and accepts only the image's pinned host keys: a different key is refused with a
GuestError, never learnt. Commands are argv lists joined with ``shlex.join`` for the remote
shell; the result is the same ``kvmple.run.Result`` local commands return, and the output
moves through the same loop (:func:`kvmple.pump.pump`) over an SSH channel.

A timed-out command is killed in the guest: sshd makes each command's shell a session (and
process group) leader, the shell prints its pid and ``exec``s the command, so killing that
process group ends the command and its children.
"""

from __future__ import annotations

import logging
import shlex
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import paramiko
from paramiko.common import MSG_CHANNEL_REQUEST

from kvmple.errors import CommandError, CommandTimeout, GuestError
from kvmple.pump import Answer, Capture, Sink, pump
from kvmple.run import Result, failure
from kvmple.sshchannel import ChannelTransport

_SESSION_PAUSES = (2.0, 5.0)  # seconds before the 2nd and 3rd try to open a session
# Seconds each of those tries gives the SSH handshake (banner, key exchange, login) when it
# needs a new connection. Growing: a lab host whose vCPU 0 runs nested guests answered SSH
# in CI only after an RCU stall (21 s+), and paramiko then reports "No existing session".
_HANDSHAKE_TIMEOUTS = (15.0, 45.0, 120.0)
_SFTP_OPEN_S = 300.0  # room for all three tries before a file transfer starts
_UNREACHABLE_HINT = "the guest may be booting, stalled or gone: see its console log"

# paramiko's transport thread logs every refused handshake (a booting guest refuses many) as
# an ERROR with a traceback; kvmple reports failures itself, as one line with a hint.
_paramiko_log = logging.getLogger("paramiko")
_paramiko_log.addHandler(logging.NullHandler())
_paramiko_log.propagate = False


# what paramiko raises when the connection drops mid-transfer (OSError: the file's own errors)
_DROPPED = (EOFError, paramiko.SSHException, paramiko.SFTPError)


class HostKeyMismatch(GuestError):
    """The guest presented a host key that is not one of the image's pinned keys."""


class LoginRefused(GuestError):
    """sshd answered but refused the installation key."""


class Unreachable(GuestError):
    """SSH did not answer (yet): connection refused, reset, or no SSH banner."""


class _ClosedMeanwhile(GuestError):
    """close() ran while this thread's handshake was under way: not tried again."""


class CommandKilled(GuestError):
    """The remote command died of a signal: sshd sent "exit-signal", no exit status."""


_EXIT_SIGNAL = "_kvmple_exit_signal"  # the channel attribute holding what sshd reported


def _channel_request(channel: paramiko.Channel, message: paramiko.Message) -> None:
    """paramiko's channel-request handler plus "exit-signal" (RFC 4254 section 6.10), which
    paramiko 3-5 refuses silently: sshd sends it instead of "exit-status" when the command was
    killed by a signal (OpenSSH session.c, session_exit_message). Kept on the channel."""
    mark = message.packet.tell()
    if message.get_text() == "exit-signal":
        message.get_boolean()  # want-reply: FALSE for exit-signal
        name, core = message.get_text(), message.get_boolean()  # OpenSSH's message is ""
        setattr(channel, _EXIT_SIGNAL, f"SIG{name}" + (" (core dumped)" if core else ""))
        return
    message.packet.seek(mark)
    paramiko.Channel._handle_request(channel, message)  # type: ignore[attr-defined]


def _host_label(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def pinned_known_hosts(host: str, port: int, lines: Sequence[str]) -> paramiko.HostKeys:
    """A paramiko HostKeys holding ``lines`` ("type base64 [comment]") for host:port."""
    keys = paramiko.HostKeys()
    label = _host_label(host, port)
    for line in lines:
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(f"{label} {line.strip()}")
        except (paramiko.hostkeys.InvalidHostKey, paramiko.SSHException, ValueError):
            entry = None
        if entry is None or entry.key is None:
            raise GuestError(
                f"pinned host key {line[:40]!r}... is not a valid public key line",
                hint="the image manifest's host_keys must be 'type base64' lines",
            )
        keys.add(label, entry.key.get_name(), entry.key)
    return keys


class SSHExecutor:
    """One guest reached over SSH. Connects lazily; ``close()`` (or ``with``) disconnects."""

    def __init__(  # noqa: PLR0917 (the signature the campaign runner calls)
        self,
        host: str,
        port: int,
        user: str,
        key: Path,
        pinned_host_keys: Sequence[str],
        name: str,
    ) -> None:
        if not pinned_host_keys:
            raise GuestError(
                f"{name}: no pinned host keys: refusing to connect blindly",
                hint="the image must record its SSH host keys (rebuild it)",
            )
        self.host = host
        self.port = port
        self.user = user
        self.key = key
        self.pinned_host_keys = tuple(pinned_host_keys)
        self._name = name
        self._pinned = pinned_known_hosts(host, port, self.pinned_host_keys)  # fail early
        self._client: paramiko.SSHClient | None = None
        self._retired: list[paramiko.SSHClient] = []  # see _retire
        self._closes = 0  # close() calls: a command that outlived one connects no more
        self._lock = threading.Lock()  # guards the three above, never held over the network
        # one handshake at a time: QEMU's port forward queues only 2 connections while the
        # guest is stalled, and the threads sharing this executor want one connection anyway
        self._connecting = threading.Lock()

    @property
    def name(self) -> str:
        return f"{self._name} ({self.host}:{self.port})"

    # -- connection -------------------------------------------------------------------------

    def connect(self, timeout: float = 15.0) -> None:
        """Connect now (idempotent). HostKeyMismatch on a wrong key, Unreachable otherwise."""
        self._transport(timeout)

    def _live(self) -> paramiko.Transport | None:
        """The current connection's transport if it is up (call with the lock held)."""
        transport = self._client.get_transport() if self._client is not None else None
        return transport if transport is not None and transport.is_active() else None

    def _open(self, timeout: float) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        label = _host_label(self.host, self.port)
        for key_type, key in (self._pinned.lookup(label) or {}).items():
            client.get_host_keys().add(label, key_type, key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                self.host,
                port=self.port,
                username=self.user,
                key_filename=str(self.key),
                look_for_keys=False,
                allow_agent=False,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
            )
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyMismatch(
                f"{self.name}: host key mismatch: got {exc.key.get_name()} "
                f"{exc.key.get_fingerprint().hex()}, not the image's pinned key",
                hint="the guest is not the image kvmple built, or the image was rebuilt: "
                "rebuild/resolve the image again; never disable the check",
            ) from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            if "timeout" in str(exc).lower():  # a guest too busy to finish auth: not a refusal
                raise Unreachable(
                    f"{self.name}: SSH authentication timed out: {exc}", hint=_UNREACHABLE_HINT
                ) from exc
            raise LoginRefused(
                f"{self.name}: SSH login as {self.user} with {self.key} was refused",
                hint="the image must authorize the installation key (rebuild the image)",
            ) from exc
        except paramiko.SSHException as exc:
            transport = client.get_transport()
            kex_done = transport is not None and bool(getattr(transport, "initial_kex_done", 0))
            client.close()
            if "not found in known_hosts" in str(exc):
                raise HostKeyMismatch(
                    f"{self.name}: the guest offered a host key of a type that is not pinned",
                    hint="the image's host_keys must list the guest's keys",
                ) from exc
            reason = str(exc)
            if not kex_done and reason == "No existing session":  # start_client timed out
                reason = f"handshake not finished within {timeout:g} s ({reason})"
            raise Unreachable(
                f"{self.name}: SSH not answering: {reason}", hint=_UNREACHABLE_HINT
            ) from exc
        except (OSError, EOFError) as exc:
            client.close()
            raise Unreachable(
                f"{self.name}: SSH not answering: {exc}", hint=_UNREACHABLE_HINT
            ) from exc
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(15)
            # paramiko's own override point: the class's handler table, per instance
            table = dict(transport._channel_handler_table)  # type: ignore[attr-defined]
            table[MSG_CHANNEL_REQUEST] = _channel_request
            transport._channel_handler_table = table  # type: ignore[attr-defined]
        return client

    def _transport(self, handshake: float = 15.0, since: int | None = None) -> paramiko.Transport:
        """The open connection, or a new one whose handshake may take ``handshake`` s per
        phase (banner, key exchange, login: paramiko times each). One thread makes it, the
        others wait for it; the state lock is never held over the network, so close() does
        not wait for a slow guest. ``since``: close()'s count when the caller's command
        began; _ClosedMeanwhile once close() has run since (no connection is made for it)."""
        with self._lock:
            closes = self._closes if since is None else since
            if (live := self._usable(closes)) is not None:
                return live
        if not self._connecting.acquire(timeout=3 * handshake):
            raise Unreachable(
                f"{self.name}: SSH not answering: another thread's handshake still under way "
                f"after {3 * handshake:g} s",
                hint=_UNREACHABLE_HINT,
            )
        try:
            with self._lock:
                if (live := self._usable(closes)) is not None:
                    return live  # made by the thread this one waited for
            client = self._open(handshake)
            with self._lock:
                if closes != self._closes:  # closed meanwhile: this connection is nobody's
                    client.close()
                    raise _ClosedMeanwhile(f"{self.name}: closed while connecting")
                if self._client is not None:
                    self._client.close()
                self._client = client
                transport = client.get_transport()
                assert transport is not None  # _open returned a connected client
                return transport
        finally:
            self._connecting.release()

    def _usable(self, closes: int) -> paramiko.Transport | None:
        """(lock held) The live connection, None if there is none; _ClosedMeanwhile if
        close() has run since its count was ``closes``."""
        if closes != self._closes:
            raise _ClosedMeanwhile(f"{self.name}: closed while connecting")
        return self._live()

    def close(self) -> None:
        with self._lock:
            for client in [*self._retired, *([self._client] if self._client else [])]:
                client.close()
            self._client, self._retired = None, []
            self._closes += 1

    def __enter__(self) -> SSHExecutor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- commands ---------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        what: str | None = None,
    ) -> Result:
        """Run ``argv`` in the guest and wait (at most ``timeout`` seconds)."""
        return self._execute(
            argv, timeout=timeout, check=check, input=input, env=env, what=what, on_line=None
        )

    def stream(
        self,
        argv: Sequence[str],
        on_line: Callable[[str], str | None],
        timeout: float | None,
        *,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        what: str | None = None,
    ) -> Result:
        """Like ``run`` but hands every stdout line to ``on_line`` as it arrives; text it
        returns goes to the command's stdin (kept open until the command ends, like invoke's
        stream watchers). If ``on_line`` raises, stdin closes and the error propagates."""
        return self._execute(
            argv, timeout=timeout, check=check, input=None, env=env, what=what, on_line=on_line
        )

    def _execute(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None,
        check: bool,
        input: str | None,
        env: Mapping[str, str] | None,
        what: str | None,
        on_line: Callable[[str], str | None] | None,
    ) -> Result:
        if isinstance(argv, str | bytes):
            raise TypeError("run() takes an argv list, never a string")
        args = tuple(str(a) for a in argv)
        if not args:
            raise ValueError("empty argv")
        full = args
        if env:
            full = ("env", *(f"{k}={v}" for k, v in env.items()), *args)
        command = f"echo $$; exec {shlex.join(full)}"
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        channel = self._session(args, deadline)
        try:
            channel.exec_command(command)
            if input is not None:
                channel.sendall(input.encode())
            if on_line is None:
                channel.shutdown_write()
            transport = ChannelTransport(channel)
            capture = Capture()
            sinks: list[Sink] = [capture] if on_line is None else [capture, Answer(on_line)]
            if not pump(transport, sinks, deadline=deadline):
                self._kill(transport.pid)
                label = what or "remote command"
                raise CommandTimeout(
                    f"{label} timed out after {timeout:g}s: {shlex.join(args)} [on {self.name}]",
                )
            out, err = capture.out, capture.err
            status = channel.recv_exit_status()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise GuestError(
                f"{self.name}: SSH connection lost while running {shlex.join(args)}: {exc}",
                hint="the guest may have crashed: see its console log",
            ) from exc
        finally:
            channel.close()
        if status == -1 and (signal := getattr(channel, _EXIT_SIGNAL, None)) is not None:
            raise CommandKilled(
                f"{self.name}: {shlex.join(args)} was killed by {signal} (sshd's exit-signal)",
                hint="something in the guest signalled it: see the guest's journal",
            )
        if status == -1:
            raise GuestError(
                f"{self.name}: {shlex.join(args)} ended without an exit status (connection lost)",
                hint="the guest may have crashed: see its console log",
            )
        result = Result(args, status, out, err, time.monotonic() - start, where=self.name)
        if check and not result.ok:
            raise failure(result, what)
        return result

    def _session(self, args: tuple[str, ...], deadline: float | None) -> paramiko.Channel:
        """A channel for one command. The command has not started when this fails, so a
        dropped or unfinished handshake ("No existing session") or a channel sshd does not
        open within 30 s ("Timeout opening channel"), seen on a lab host right after a kexec
        and while it runs nested guests, is tried again (_SESSION_PAUSES), each try giving a
        new connection's handshake longer (_HANDSHAKE_TIMEOUTS), while ``deadline`` allows.
        Not tried again: a refused connection (nothing listens), a wrong host key, a refused
        login."""
        with self._lock:
            since = self._closes
        for pause, handshake in zip((*_SESSION_PAUSES, None), _HANDSHAKE_TIMEOUTS, strict=True):
            try:
                transport = self._transport(max(1.0, _left(deadline, handshake)), since)
                return transport.open_session(timeout=_left(deadline, 30.0))
            except (OSError, EOFError, paramiko.SSHException, GuestError) as exc:
                error = exc
            if isinstance(error, paramiko.SSHException) and _left(deadline, 1.0) > 0:
                self._retire()  # sshd may still confirm the open there: a stray session
            if not _transient(error) or pause is None or _left(deadline, pause + 1) < pause + 1:
                break
            time.sleep(pause)
        if isinstance(error, GuestError):  # Unreachable: it says why, as it always has
            raise error
        raise GuestError(
            f"{self.name}: SSH connection lost before running {shlex.join(args)}: {error}",
            hint="the guest may have crashed: see its console log",
        ) from error

    def _retire(self) -> None:
        """Open later sessions on a new connection; this one keeps serving the channels it
        has (another thread's command) and is closed by close()."""
        with self._lock:
            if self._client is not None:
                self._retired.append(self._client)
                self._client = None

    def _kill(self, pid: int | None) -> None:
        """Kill a timed-out command's process group in the guest (best effort)."""
        if pid is None or pid <= 1:
            return
        try:
            channel = self._transport().open_session(timeout=10)
            channel.exec_command(f"kill -KILL -- -{pid} 2>/dev/null || kill -KILL {pid}")
            channel.recv_exit_status()
            channel.close()
        except (OSError, EOFError, paramiko.SSHException, GuestError):
            pass

    # -- files ------------------------------------------------------------------------------

    def put(self, local: Path, remote: str, mode: int = 0o644) -> None:
        """Copy ``local`` to the absolute guest path ``remote`` (parents created).
        CommandError when the copy fails, GuestError (Unreachable, ...) when SSH does."""
        parent = str(Path(remote).parent)
        with self._sftp() as sftp:  # first: it is what waits for a slow guest's handshake
            self.run(["mkdir", "-p", parent], timeout=30, what=f"creating {parent}")
            try:
                sftp.put(str(local), remote)
                sftp.chmod(remote, mode)
            except OSError as exc:
                raise CommandError(
                    f"copying {local} to {self.name}:{remote} failed: {exc}"
                ) from exc
            except _DROPPED as exc:
                raise self._dropped(f"copying {local} to {remote}", exc) from exc

    def get(self, remote: str, local: Path) -> None:
        """Copy the guest file ``remote`` to ``local`` (parents created; nothing left at
        ``local`` on failure). Errors as put()."""
        local.parent.mkdir(parents=True, exist_ok=True)
        temp = local.with_name(f".{local.name}.part")
        try:
            with self._sftp() as sftp:
                sftp.get(remote, str(temp))
            temp.replace(local)
        except OSError as exc:
            raise CommandError(f"copying {self.name}:{remote} to {local} failed: {exc}") from exc
        except _DROPPED as exc:
            raise self._dropped(f"copying {remote} to {local}", exc) from exc
        finally:
            temp.unlink(missing_ok=True)

    def _dropped(self, what: str, exc: BaseException) -> GuestError:
        return GuestError(
            f"{self.name}: SSH connection lost while {what}: {str(exc).rstrip(': ') or exc!r}",
            hint="the guest may have crashed: see its console log",
        )

    def _sftp(self) -> paramiko.SFTPClient:
        """An SFTP client on its own channel, opened as a command's session is (tried again,
        handshakes growing) within _SFTP_OPEN_S; paramiko's from_transport would wait up to
        an hour for the channel and never try again."""
        channel = self._session(("sftp",), time.monotonic() + _SFTP_OPEN_S)
        try:
            channel.invoke_subsystem("sftp")
            return paramiko.SFTPClient(channel)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            channel.close()
            raise GuestError(f"{self.name}: SFTP subsystem unavailable: {exc}") from exc


def _left(deadline: float | None, most: float) -> float:
    """Seconds until ``deadline`` (None: no deadline), at most ``most``."""
    return most if deadline is None else max(0.0, min(most, deadline - time.monotonic()))


def _transient(error: Exception) -> bool:
    """Whether another try may get past a failure before the command started: yes when the
    handshake or the channel open dropped (paramiko's SSHException, EOF); no for a refused
    connection, a wrong host key or a refused login."""
    if isinstance(error, HostKeyMismatch | LoginRefused | _ClosedMeanwhile):
        return False
    if isinstance(error, Unreachable):
        # a TCP connect timing out is a stalled guest's full forward queue, not a refusal
        return isinstance(error.__cause__, paramiko.SSHException | EOFError | TimeoutError)
    return not isinstance(error, OSError)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the caller retries if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
