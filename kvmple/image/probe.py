"""Boot an image once with plain QEMU and check it answers: SSH with the pinned host key
(kvmple.remote.SSHExecutor, the one SSH client; the one readiness wait, vm/ready.py), and
(if installed) RabbitMQ accepting AMQP connections. Used by ``kvmple image check``, the real
tests and bench/image.py; the campaign's VMs go through the libvirt-based VM layer instead.

The guest boots from a throw-away qcow2 overlay (the cached image is never written), with
user-mode networking whose SSH port is forwarded to 127.0.0.1 only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kvmple.console import ConsoleLog
from kvmple.errors import CommandError, GuestError
from kvmple.image.artifact import Image
from kvmple.keys import installation_key
from kvmple.qemu import DirectBoot, Drive, QemuConfig, command_line, die_with_owner, find_qemu
from kvmple.remote import HostKeyMismatch, SSHExecutor, free_port
from kvmple.run import Result, background, run
from kvmple.vm import ready

# Polls inside the guest (one SSH round trip) until the broker completes an AMQP handshake.
AMQP_WAIT = """\
import socket, time
import amqp
while True:
    try:
        connection = amqp.Connection("127.0.0.1:5672", connect_timeout=5)
        connection.connect()
        connection.close()
        break
    except (OSError, amqp.exceptions.AMQPError):
        time.sleep(0.5)
"""


def qemu_argv(
    image: Image,
    overlay: Path,
    console: Path,
    port: int,
    *,
    cpus: int,
    memory_mib: int,
    accel: str,
    boot: DirectBoot | None = None,
) -> list[str]:
    """The QEMU command line for a direct-kernel-boot probe (pure): ``boot`` or the image's
    own kernel, the overlay as the only disk, SSH forwarded from 127.0.0.1:``port``."""
    config = QemuConfig(
        accel=accel,
        memory_mib=memory_mib,
        cpus=cpus,
        serial=console,
        boot=boot or DirectBoot(image.kernel, image.initrd, image.cmdline),
        drives=(Drive(overlay),),
        ssh_port=port,
    )
    return command_line(config)


@dataclass
class Guest:
    """A running probe guest: ``executor`` runs commands in it over SSH (installation key,
    the image's pinned host keys: kvmple.remote.SSHExecutor)."""

    image: Image
    port: int
    console: Path
    started: float
    executor: SSHExecutor

    def ssh(
        self,
        command: Sequence[str],
        *,
        timeout: float,
        check: bool = True,
        input: str | None = None,
    ) -> Result:
        """Run ``command`` (argv) in the guest; CommandError/GuestError as SSHExecutor.run."""
        return self.executor.run(
            command, timeout=timeout, check=check, input=input, what=f"ssh {self.image.name}"
        )

    def console_tail(self, lines: int = 8) -> str:
        """The last console lines on one line, for an error message."""
        return ConsoleLog(self.console).tail(lines, sep=" | ")


@contextmanager
def booted(
    image: Image,
    workdir: Path,
    *,
    cpus: int = 2,
    memory_mib: int = 2048,
    accel: str = "tcg,thread=multi",
    boot: DirectBoot | None = None,
) -> Iterator[tuple[Guest, Iterator[None]]]:
    """Boot ``image`` (or ``boot``'s kernel with the image as root) from an overlay in
    ``workdir``; stopped and removed on exit. HostError when QEMU is not installed."""
    find_qemu()
    workdir.mkdir(parents=True, exist_ok=True)
    overlay = workdir / "overlay.qcow2"
    run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", image.qcow2, overlay],
        timeout=60,
        what="creating the probe overlay",
    )
    port = free_port()
    console = workdir / "console.log"
    argv = qemu_argv(
        image, overlay, console, port, cpus=cpus, memory_mib=memory_mib, accel=accel, boot=boot
    )
    argv = die_with_owner(argv)  # SIGKILL of kvmple: no emulator left running
    executor = SSHExecutor(
        "127.0.0.1",
        port,
        image.ssh_user,
        installation_key().private,
        image.host_keys,
        name=f"image {image.name}",
    )
    started = time.monotonic()
    try:
        with executor, background(argv, log=workdir / "qemu.log") as process:
            guest = Guest(image, port, console, started, executor)

            def alive() -> Iterator[None]:
                while True:
                    if process.poll() is not None:
                        raise GuestError(
                            f"QEMU exited ({process.returncode}) while booting {image.name}: "
                            f"{guest.console_tail()}",
                            hint=f"see {workdir / 'qemu.log'} and {console}",
                        )
                    yield

            yield guest, alive()
    finally:
        overlay.unlink(missing_ok=True)


def wait_ssh(guest: Guest, alive: Iterator[None], timeout: float) -> float:
    """Seconds from QEMU start until SSH login (pinned host key) works (vm/ready.py)."""

    def check() -> None:
        next(alive)
        if ConsoleLog(guest.console).panicked():
            raise GuestError(
                f"{guest.image.name}: the guest kernel panicked: {guest.console_tail(3)}",
                hint=f"full console log: {guest.console}",
            )

    def timed_out(last: str) -> GuestError:
        return GuestError(
            f"{guest.image.name}: no SSH login within {timeout:g}s (last: {last}); "
            f"console: {guest.console_tail()}",
            hint=f"full console log: {guest.console}",
        )

    try:
        ready.wait_ssh(
            guest.executor, deadline=guest.started + timeout, alive=check, timed_out=timed_out
        )
    except HostKeyMismatch as exc:
        raise GuestError(
            f"{guest.image.name}: the guest presented a host key that is not the pinned one",
            hint="the image's host_keys do not match the guest; rebuild the image",
        ) from exc
    return time.monotonic() - guest.started


def wait_amqp(guest: Guest, timeout: float) -> float:
    """Seconds from QEMU start until RabbitMQ completes an AMQP handshake in the guest."""
    remaining = guest.started + timeout - time.monotonic()
    if remaining <= 0:
        raise GuestError(f"{guest.image.name}: no time left to wait for RabbitMQ")
    result = guest.ssh(
        ["timeout", str(int(remaining)), "python3", "-c", AMQP_WAIT],
        timeout=remaining + 10,
        check=False,
    )
    if not result.ok:
        raise GuestError(
            f"{guest.image.name}: RabbitMQ did not accept AMQP connections within {timeout:g}s"
            f" (exit {result.returncode}: {result.stderr.strip()[-200:]})",
            hint="look at /var/log/rabbitmq in the guest",
        )
    return time.monotonic() - guest.started


@dataclass(frozen=True)
class BootTimes:
    """What a probe boot measured (seconds from QEMU start)."""

    ssh_seconds: float
    amqp_seconds: float | None


def probe(
    image: Image,
    workdir: Path,
    *,
    amqp: bool,
    ssh_timeout: float = 180,
    amqp_timeout: float = 300,
    accel: str = "tcg,thread=multi",
) -> BootTimes:
    """Boot, log in over SSH with the pinned key, optionally wait for RabbitMQ; then stop."""
    with booted(image, workdir, accel=accel) as (guest, alive):
        ssh_seconds = wait_ssh(guest, alive, ssh_timeout)
        amqp_seconds = wait_amqp(guest, amqp_timeout) if amqp else None
        try:
            guest.ssh(["systemctl", "poweroff", "--no-block"], timeout=30, check=False)
        except (CommandError, GuestError):
            pass  # the connection may drop as the guest goes down; QEMU is stopped anyway
    return BootTimes(ssh_seconds, amqp_seconds)
