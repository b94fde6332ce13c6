"""kvmple.remote.SSHExecutor against a real OpenSSH server on loopback (started here).

The fixture runs /usr/sbin/sshd on 127.0.0.1 with a throw-away host key and the
installation key authorized; nothing is mocked.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvmple.errors import CommandError, CommandTimeout, GuestError
from kvmple.executor import Executor
from kvmple.keys import installation_key
from kvmple.remote import (
    CommandKilled,
    HostKeyMismatch,
    LoginRefused,
    SSHExecutor,
    Unreachable,
    free_port,
)
from kvmple.run import background, run
from tests.support import need_program, need_root


class Sshd:
    def __init__(self, port: int, host_key_line: str, key: Path) -> None:
        self.port = port
        self.host_key_line = host_key_line
        self.key = key

    def executor(self, pinned: list[str] | None = None) -> SSHExecutor:
        return SSHExecutor(
            "127.0.0.1",
            self.port,
            "root",
            self.key,
            pinned if pinned is not None else [self.host_key_line],
            name="loopback",
        )


def _keygen(path: Path, kind: str = "ed25519") -> str:
    run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], timeout=30)
    fields = Path(f"{path}.pub").read_text().split()
    return f"{fields[0]} {fields[1]}"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    need_root()
    sshd_bin = need_program("sshd")
    need_program("ssh-keygen")
    tmp = tmp_path_factory.mktemp("sshd")
    host_key_line = _keygen(tmp / "host_ed25519.key")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KVMPLE_STATE_DIR", str(tmp / "state"))
        key = installation_key()
    (tmp / "authorized_keys").write_text(key.public_line + "\n")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    port = free_port()
    config = tmp / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp / 'host_ed25519.key'}\n"
        f"PidFile {tmp / 'sshd.pid'}\nAuthorizedKeysFile {tmp / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        "Subsystem sftp internal-sftp\n"
    )
    with background([sshd_bin, "-D", "-e", "-f", str(config)], log=tmp / "sshd.log") as proc:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"sshd did not start: {(tmp / 'sshd.log').read_text()}")
                time.sleep(0.1)
        yield Sshd(port, host_key_line, key.private)


def _running(marker: str) -> bool:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    return True
            except OSError:
                continue
    return False


def test_implements_executor(sshd: Sshd) -> None:
    with sshd.executor() as ex:
        assert isinstance(ex, Executor)
        assert "127.0.0.1" in ex.name


def test_run_captures_output_and_status(sshd: Sshd) -> None:
    with sshd.executor() as ex:
        result = ex.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=30, check=False)
    assert result.returncode == 3
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"
    assert result.argv == ("sh", "-c", "echo out; echo err >&2; exit 3")
    assert result.where.startswith("loopback")


def test_failed_command_raises_with_command_and_place(sshd: Sshd) -> None:
    with sshd.executor() as ex, pytest.raises(CommandError) as info:
        ex.run(["ls", "/no/such/dir"], timeout=30, what="listing")
    assert "ls /no/such/dir" in info.value.message
    assert "on loopback" in info.value.message


def test_arguments_are_quoted_not_interpreted(sshd: Sshd, tmp_path: Path) -> None:
    target = tmp_path / "must-not-exist"
    tricky = ["a b", "'q'", '"d"', "$HOME", f"; touch {target}", "`id`", "*"]
    with sshd.executor() as ex:
        result = ex.run(["printf", "%s\\n", *tricky], timeout=30)
    assert result.stdout.splitlines() == tricky
    assert not target.exists()


def test_input_and_env(sshd: Sshd) -> None:
    with sshd.executor() as ex:
        assert ex.run(["cat"], timeout=30, input="hello\nworld\n").stdout == "hello\nworld\n"
        env = ex.run(
            ["sh", "-c", 'echo "$KV_A|$KV_B"'], timeout=30, env={"KV_A": "x y", "KV_B": "$z"}
        )
    assert env.stdout == "x y|$z\n"


def test_timeout_kills_remote_command_and_children(sshd: Sshd) -> None:
    marker = f"kvmple-timeout-{uuid.uuid4().hex}"
    with sshd.executor() as ex:
        start = time.monotonic()
        with pytest.raises(CommandTimeout) as info:
            ex.run(["sh", "-c", f"sleep 300 && echo {marker}; true {marker}"], timeout=1.5)
        assert time.monotonic() - start < 10
        assert "timed out after 1.5s" in info.value.message
        deadline = time.monotonic() + 5
        while _running(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(marker), "the remote command survived its timeout"
        assert ex.run(["true"], timeout=30).ok  # the connection is still usable


def test_stream_hands_over_lines_as_they_come(sshd: Sshd) -> None:
    seen: list[tuple[float, str]] = []
    with sshd.executor() as ex:
        start = time.monotonic()
        result = ex.stream(
            ["sh", "-c", "echo one; sleep 1; echo two; printf three"],
            lambda line: seen.append((time.monotonic() - start, line)),
            timeout=30,
        )
    assert [line for _, line in seen] == ["one", "two", "three"]
    assert seen[0][0] < seen[1][0] - 0.5  # "one" arrived before the sleep ended
    assert result.stdout == "one\ntwo\nthree"


def test_stream_replies_go_to_stdin_and_a_failing_callback_closes_it(sshd: Sshd) -> None:
    """The perftest's go: a reply to a line reaches the waiting command on stdin; if the
    callback fails instead, stdin ends, so a command waiting for the word stops by itself."""
    with sshd.executor() as ex:
        result = ex.stream(
            ["sh", "-c", "echo ready; read word; echo got $word"],
            lambda line: "go\n" if line == "ready" else None,
            timeout=30,
        )
        assert result.stdout == "ready\ngot go\n"

        marker = f"kvmple-stdin-{uuid.uuid4().hex}"

        def refuse(line: str) -> str | None:
            raise ValueError("the load did not start")

        with pytest.raises(ValueError, match="did not start"):
            ex.stream(["sh", "-c", f"echo ready; read word; true {marker}"], refuse, 30)
        deadline = time.monotonic() + 5
        while _running(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(marker), "the command still waits for a word on stdin"
        assert ex.run(["true"], timeout=30).ok


def test_a_command_killed_by_a_signal_is_reported_with_the_signal(sshd: Sshd) -> None:
    """OpenSSH sends "exit-signal" (no "exit-status") for a command a signal killed; paramiko
    drops that request, so without kvmple's handler this read as a lost connection."""
    with sshd.executor() as ex:
        calls: list[tuple[str, Callable[[], object]]] = [
            ("SIGTERM", lambda: ex.run(["sh", "-c", "kill -TERM $$"], timeout=30, check=False)),
            ("SIGHUP", lambda: ex.stream(["sh", "-c", "echo up; kill -HUP $$"], print, 30)),
        ]
        for signal, call in calls:
            with pytest.raises(CommandKilled) as killed:
                call()
            assert f"was killed by {signal} (sshd's exit-signal)" in str(killed.value)
            assert "connection lost" not in str(killed.value)
        # the same connection still reports ordinary exit statuses
        assert ex.run(["sh", "-c", "exit 3"], timeout=30, check=False).returncode == 3
        assert ex.run(["true"], timeout=30).ok


def test_put_and_get(sshd: Sshd, tmp_path: Path) -> None:
    local = tmp_path / "payload.bin"
    local.write_bytes(bytes(range(256)) * 100)
    remote = str(tmp_path / "remote" / "deep" / "copy.bin")
    with sshd.executor() as ex:
        ex.put(local, remote, mode=0o750)
        assert Path(remote).read_bytes() == local.read_bytes()
        assert Path(remote).stat().st_mode & 0o777 == 0o750
        back = tmp_path / "back" / "copy.bin"
        ex.get(remote, back)
        assert back.read_bytes() == local.read_bytes()
        with pytest.raises(CommandError):
            ex.get(str(tmp_path / "missing"), tmp_path / "x")
    assert not (tmp_path / ".x.part").exists()


def test_wrong_pinned_key_is_refused(sshd: Sshd, tmp_path: Path) -> None:
    other = _keygen(tmp_path / "other_ed25519")
    with pytest.raises(HostKeyMismatch) as info:
        sshd.executor([other]).run(["true"], timeout=30)
    assert "host key mismatch" in info.value.message
    assert info.value.exit_code == GuestError.exit_code


def test_unpinned_key_type_is_refused(sshd: Sshd, tmp_path: Path) -> None:
    rsa = _keygen(tmp_path / "other_rsa", "rsa")
    with pytest.raises(HostKeyMismatch):
        sshd.executor([rsa]).run(["true"], timeout=30)


def test_no_pinned_keys_no_connection(sshd: Sshd) -> None:
    with pytest.raises(GuestError, match="no pinned host keys"):
        sshd.executor([])


def test_garbage_pinned_key(sshd: Sshd) -> None:
    with pytest.raises(GuestError, match="not a valid public key"):
        sshd.executor(["ssh-ed25519 not-base64!!"])
    with pytest.raises(GuestError, match="not a valid public key"):
        sshd.executor(["just-one-field"])


def test_nobody_listening_is_unreachable(sshd: Sshd) -> None:
    ex = SSHExecutor("127.0.0.1", free_port(), "root", sshd.key, [sshd.host_key_line], "void")
    with pytest.raises(Unreachable):
        ex.connect(timeout=3)


class _DroppingForward:
    """A TCP forward on 127.0.0.1 to sshd that accepts and at once closes its first ``drop``
    connections, as QEMU's user-mode port forward does while the guest's sshd is not
    listening (the handshake then fails before any command starts). ``stall``: seconds each
    forwarded connection holds sshd's second chunk (past its banner: the key exchange), as a
    lab host busy with nested guests did in CI."""

    def __init__(self, target: int, drop: int, stall: float = 0.0) -> None:
        self.target, self.drop, self.stall, self.accepted = target, drop, stall, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.accepted += 1
            if self.accepted <= self.drop:
                conn.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for src, dst, stall in ((conn, upstream, 0.0), (upstream, conn, self.stall)):
                threading.Thread(target=_pipe, args=(src, dst, stall), daemon=True).start()


def _pipe(src: socket.socket, dst: socket.socket, stall: float = 0.0) -> None:
    try:
        chunks = 0
        while data := src.recv(65536):
            chunks += 1
            if chunks == 2:
                time.sleep(stall)
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


@pytest.mark.parametrize(("drop", "accepted"), [(1, 2), (2, 3), (99, 3)])
def test_a_dropped_handshake_before_the_command_is_tried_again(
    sshd: Sshd, monkeypatch: pytest.MonkeyPatch, drop: int, accepted: int
) -> None:
    """The command has not started when the connection fails, so run() tries 3 times; the
    third failure is raised as the connection's own error (Unreachable)."""
    from kvmple import remote

    monkeypatch.setattr(remote, "_SESSION_PAUSES", (0.1, 0.1))
    forward = _DroppingForward(sshd.port, drop)
    try:
        with _forwarded(sshd, forward) as ex:
            if drop < accepted:
                assert ex.run(["echo", "ran"], timeout=30).stdout == "ran\n"
            else:
                with pytest.raises(Unreachable, match="SSH not answering"):
                    ex.run(["echo", "ran"], timeout=30)
    finally:
        forward.listener.close()
    assert forward.accepted == accepted


def _forwarded(sshd: Sshd, forward: _DroppingForward) -> SSHExecutor:
    return SSHExecutor(
        "127.0.0.1", forward.port, "root", sshd.key, [sshd.host_key_line], "forwarded"
    )


@pytest.mark.parametrize(("handshakes", "accepted"), [((1.0, 15.0, 15.0), 2), ((1.0,) * 3, 3)])
def test_a_handshake_too_slow_for_one_try_gets_longer_on_the_next(
    sshd: Sshd, monkeypatch: pytest.MonkeyPatch, handshakes: tuple[float, ...], accepted: int
) -> None:
    """sshd's key exchange held 3 s: a try that gives the handshake 1 s fails (paramiko's "No
    existing session", reported as the handshake not finished), the next gets longer."""
    from kvmple import remote

    monkeypatch.setattr(remote, "_SESSION_PAUSES", (0.1, 0.1))
    monkeypatch.setattr(remote, "_HANDSHAKE_TIMEOUTS", handshakes)
    forward = _DroppingForward(sshd.port, 0, stall=3.0)
    try:
        with _forwarded(sshd, forward) as ex:
            if accepted == 2:
                assert ex.run(["echo", "ran"], timeout=60).stdout == "ran\n"
            else:
                with pytest.raises(Unreachable, match="handshake not finished within 1 s"):
                    ex.run(["echo", "ran"], timeout=60)
    finally:
        forward.listener.close()
    assert forward.accepted == accepted


@pytest.mark.parametrize("copy", ["put", "get"])
def test_a_file_copy_opens_its_channel_as_a_command_does(
    sshd: Sshd, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, copy: str
) -> None:
    """A copy before any command: the first connection dropped, the second's 3 s key
    exchange longer than its 1 s, the third's 15 s enough: the copy is made on the third."""
    from kvmple import remote

    monkeypatch.setattr(remote, "_SESSION_PAUSES", (0.1, 0.1))
    monkeypatch.setattr(remote, "_HANDSHAKE_TIMEOUTS", (1.0, 1.0, 15.0))
    source = tmp_path / "source.bin"
    source.write_bytes(b"payload" * 1000)
    target = tmp_path / "deep" / "copy.bin"
    forward = _DroppingForward(sshd.port, 1, stall=3.0)
    try:
        with _forwarded(sshd, forward) as ex:
            getattr(ex, copy)(*((source, str(target)) if copy == "put" else (str(source), target)))
    finally:
        forward.listener.close()
    assert target.read_bytes() == source.read_bytes()
    assert forward.accepted == 3


@pytest.mark.parametrize("handshakes", [(15.0,) * 3, (1.0, 15.0, 15.0)])
def test_close_during_a_handshake_ends_the_command_without_a_connection(
    sshd: Sshd, monkeypatch: pytest.MonkeyPatch, handshakes: tuple[float, ...]
) -> None:
    """close() while another thread's handshake is held 3 s: that thread's command fails
    ("closed while connecting") and no connection is left, whether the handshake then
    succeeds (15 s) or times out (1 s) and the command would try again (it does not: a try
    after close() is not made). The old lock over the handshake made close() wait, and the
    command ran; the first fix still let the second try connect."""
    from kvmple import remote

    monkeypatch.setattr(remote, "_SESSION_PAUSES", (0.1, 0.1))
    monkeypatch.setattr(remote, "_HANDSHAKE_TIMEOUTS", handshakes)
    forward = _DroppingForward(sshd.port, 0, stall=3.0)
    ex = _forwarded(sshd, forward)
    errors: list[Exception] = []

    def command() -> None:
        try:
            ex.run(["true"], timeout=60)
        except GuestError as exc:
            errors.append(exc)

    thread = threading.Thread(target=command)
    thread.start()
    while forward.accepted == 0:  # the handshake is under way
        time.sleep(0.05)
    ex.close()
    thread.join()
    forward.listener.close()
    assert [str(e) for e in errors] == [f"{ex.name}: closed while connecting"]
    assert forward.accepted == 1
    assert ex._client is None


def test_threads_sharing_an_executor_wait_for_one_handshake(sshd: Sshd) -> None:
    """Three threads' first commands while the key exchange is held 3 s: one connection is
    made and all three run on it (QEMU's forward of a stalled guest queues only 2)."""
    forward = _DroppingForward(sshd.port, 0, stall=3.0)
    results: list[str] = []
    with _forwarded(sshd, forward) as ex:

        def command() -> None:
            results.append(ex.run(["echo", "ran"], timeout=60).stdout)

        threads = [threading.Thread(target=command) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    forward.listener.close()
    assert results == ["ran\n"] * 3
    assert forward.accepted == 1


def test_a_tcp_connect_timeout_is_tried_again_a_refusal_is_not() -> None:
    from kvmple.remote import _transient

    def unreachable(cause: BaseException) -> Unreachable:
        error = Unreachable("x: SSH not answering")
        error.__cause__ = cause
        return error

    assert _transient(unreachable(TimeoutError("timed out")))
    assert not _transient(unreachable(ConnectionRefusedError(111, "refused")))


def test_no_second_try_past_the_deadline_or_for_a_refused_connection(
    sshd: Sshd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A try that cannot finish before the command's own deadline is not made (the pause
    before it is 5 s, the timeout 3 s), and a refused connection is not tried again."""
    from kvmple import remote

    monkeypatch.setattr(remote, "_SESSION_PAUSES", (5.0, 5.0))
    forward = _DroppingForward(sshd.port, 99)
    try:
        with _forwarded(sshd, forward) as ex, pytest.raises(Unreachable):
            ex.run(["echo", "ran"], timeout=3)
    finally:
        forward.listener.close()
    assert forward.accepted == 1
    attempts: list[int] = []
    transport = SSHExecutor._transport

    def counted(self: SSHExecutor, handshake: float = 15.0, since: int | None = None) -> object:
        attempts.append(1)
        return transport(self, handshake, since)

    monkeypatch.setattr(SSHExecutor, "_transport", counted)
    nobody = SSHExecutor("127.0.0.1", free_port(), "root", sshd.key, [sshd.host_key_line], "x")
    with nobody, pytest.raises(Unreachable, match="SSH not answering"):
        nobody.run(["true"], timeout=60)
    assert len(attempts) == 1


def test_argv_must_be_a_list(sshd: Sshd) -> None:
    with sshd.executor() as ex, pytest.raises(TypeError):
        ex.run("echo hi", timeout=5)  # type: ignore[arg-type]


def test_unauthorized_key_is_refused(sshd: Sshd, tmp_path: Path) -> None:
    _keygen(tmp_path / "stranger")
    ex = SSHExecutor(
        "127.0.0.1", sshd.port, "root", tmp_path / "stranger", [sshd.host_key_line], "loopback"
    )
    with pytest.raises(LoginRefused, match="was refused"):
        ex.connect(timeout=10)


def test_output_is_never_lost_on_quick_commands(sshd: Sshd) -> None:
    """Regression: the exit status can arrive before the last output; wait for EOF."""
    with sshd.executor() as ex:
        for i in range(15):
            assert ex.run(["echo", f"line-{i}"], timeout=30).stdout == f"line-{i}\n"


# ------------------------------------------------------------- the one readiness wait


def test_readiness_wait_against_a_real_sshd(sshd: Sshd, tmp_path: Path) -> None:
    """vm/ready.wait_ssh: ready at once against a live sshd; a wrong pin fails at once; a
    port nobody listens on runs into the deadline with the last reason; a dead guest and a
    stop request end the wait."""
    import threading

    from kvmple.vm.ready import wait_ssh

    def alive() -> None:
        return None

    def timed_out(last: str) -> GuestError:
        return GuestError(f"timed out ({last})")

    with sshd.executor() as ex:
        wait_ssh(ex, deadline=time.monotonic() + 30, alive=alive, timed_out=timed_out)
    other = _keygen(tmp_path / "other")
    with sshd.executor([other]) as ex, pytest.raises(HostKeyMismatch):
        wait_ssh(ex, deadline=time.monotonic() + 30, alive=alive, timed_out=timed_out)
    nobody = SSHExecutor("127.0.0.1", free_port(), "root", sshd.key, [sshd.host_key_line], "x")
    with pytest.raises(GuestError, match=r"timed out \(.*not answering"):
        wait_ssh(nobody, deadline=time.monotonic() + 2, alive=alive, timed_out=timed_out)

    def dead() -> None:
        raise GuestError("died")

    with pytest.raises(GuestError, match="died"):
        wait_ssh(nobody, deadline=time.monotonic() + 30, alive=dead, timed_out=timed_out)
    stop = threading.Event()
    stop.set()
    with pytest.raises(KeyboardInterrupt):
        wait_ssh(
            nobody, deadline=time.monotonic() + 30, alive=alive, timed_out=timed_out, stop=stop
        )


def test_interactive_ssh_pins_the_host_keys_and_the_installation_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kvmple.vm import guestssh

    calls: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(guestssh.os, "execvp", lambda f, argv: calls.append((f, list(argv))))
    known = tmp_path / "known_hosts"
    guestssh.exec_interactive_ssh(
        port=40022, user="root", key="/k/id", host_keys=("ssh-ed25519 AAA",), known_hosts=known
    )
    assert known.read_text() == "[127.0.0.1]:40022 ssh-ed25519 AAA\n"
    ((program, argv),) = calls
    assert program == "ssh" and argv[-1] == "root@127.0.0.1"
    assert "StrictHostKeyChecking=yes" in argv and f"UserKnownHostsFile={known}" in argv
    assert argv[argv.index("-i") + 1] == "/k/id" and argv[argv.index("-p") + 1] == "40022"
