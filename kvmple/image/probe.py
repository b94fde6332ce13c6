"""Boot an image once with plain QEMU and check it answers: SSH with the pinned host key, and
(if installed) RabbitMQ accepting AMQP connections. Used by ``kvmple image check``, the real
tests and bench/image.py; the campaign's VMs go through the libvirt-based VM layer instead.

The guest boots from a throw-away qcow2 overlay (the cached image is never written), with
user-mode networking whose SSH port is forwarded to 127.0.0.1 only.
"""

from __future__ import annotations

import shlex
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kvmple.errors import CommandTimeout, GuestError
from kvmple.image.artifact import Image
from kvmple.keys import installation_key
from kvmple.qemuopts import escape_qemu_value
from kvmple.run import Result, background, run

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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class DirectBoot:
    """What QEMU boots directly: by default the image's own kernel, initrd and command line;
    the kernel boot test (``kvmple kernel boot-test --image``) puts a built kernel here,
    possibly without an initrd."""

    kernel: Path
    initrd: Path | None
    cmdline: str

    @classmethod
    def of(cls, image: Image) -> DirectBoot:
        return cls(image.kernel, image.initrd, image.cmdline)


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
    """The QEMU command line for a direct-kernel-boot probe (pure)."""
    boot = boot or DirectBoot.of(image)
    initrd = ["-initrd", str(boot.initrd)] if boot.initrd is not None else []
    return [
        "qemu-system-x86_64",
        "-accel",
        accel,
        "-smp",
        str(cpus),
        "-m",
        str(memory_mib),
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        f"file:{console}",
        "-kernel",
        str(boot.kernel),
        *initrd,
        "-append",
        boot.cmdline,
        "-drive",
        f"file={escape_qemu_value(str(overlay))},if=virtio,format=qcow2,cache=unsafe",
        "-netdev",
        f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device",
        "virtio-net-pci,netdev=net0",
    ]


@dataclass
class Guest:
    """A running probe guest: run commands in it over SSH with the pinned host key."""

    image: Image
    port: int
    known_hosts: Path
    console: Path
    started: float

    def ssh_argv(self, command: Sequence[str], connect_timeout: int = 5) -> list[str]:
        key = installation_key()
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(key.private),
            "-p",
            str(self.port),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            f"ConnectTimeout={connect_timeout}",
            "-o",
            "LogLevel=ERROR",
            f"{self.image.ssh_user}@127.0.0.1",
            "--",
            shlex.join(command),
        ]

    def ssh(
        self,
        command: Sequence[str],
        *,
        timeout: float,
        check: bool = True,
        input: str | None = None,
    ) -> Result:
        return run(
            self.ssh_argv(command),
            timeout=timeout,
            check=check,
            input=input,
            what=f"ssh {self.image.name}",
        )

    def console_tail(self, lines: int = 8) -> str:
        try:
            text = self.console.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())


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
    ``workdir``; stopped and removed on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    overlay = workdir / "overlay.qcow2"
    run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", image.qcow2, overlay],
        timeout=60,
        what="creating the probe overlay",
    )
    port = free_port()
    known_hosts = workdir / "known_hosts"
    known_hosts.write_text(image.known_hosts("127.0.0.1", port), encoding="utf-8")
    console = workdir / "console.log"
    argv = qemu_argv(
        image, overlay, console, port, cpus=cpus, memory_mib=memory_mib, accel=accel, boot=boot
    )
    started = time.monotonic()
    try:
        with background(argv, log=workdir / "qemu.log") as process:
            guest = Guest(image, port, known_hosts, console, started)

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
    """Seconds from QEMU start until SSH login (pinned host key) works."""
    deadline = guest.started + timeout
    last = ""
    while time.monotonic() < deadline:
        next(alive)
        try:
            result = run(
                guest.ssh_argv(["true"], connect_timeout=10),
                timeout=60,
                check=False,
                what="ssh probe",
            )
        except CommandTimeout:  # the port answered, the guest is still too busy to log in
            last = "login did not finish within 60s"
            continue
        if result.ok:
            return time.monotonic() - guest.started
        if "Kernel panic" in guest.console_tail(40):
            raise GuestError(
                f"{guest.image.name}: the guest kernel panicked: {guest.console_tail(3)}",
                hint=f"full console log: {guest.console}",
            )
        output = (result.stderr or result.stdout).strip().splitlines()
        last = output[-1] if output else last
        if "REMOTE HOST IDENTIFICATION HAS CHANGED" in result.stderr or (
            "Host key verification failed" in result.stderr
        ):
            raise GuestError(
                f"{guest.image.name}: the guest presented a host key that is not the pinned one",
                hint="the image's host_keys do not match the guest; rebuild the image",
            )
        time.sleep(1)
    raise GuestError(
        f"{guest.image.name}: no SSH login within {timeout:g}s (last: {last or 'no answer'}); "
        f"console: {guest.console_tail()}",
        hint=f"full console log: {guest.console}",
    )


def wait_amqp(guest: Guest, timeout: float) -> float:
    """Seconds from QEMU start until RabbitMQ completes an AMQP handshake in the guest."""
    remaining = guest.started + timeout - time.monotonic()
    if remaining <= 0:
        raise GuestError(f"{guest.image.name}: no time left to wait for RabbitMQ")
    result = run(
        guest.ssh_argv(["timeout", str(int(remaining)), "python3", "-c", AMQP_WAIT]),
        timeout=remaining + 10,
        check=False,
        what="waiting for RabbitMQ in the guest",
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
        guest.ssh(["systemctl", "poweroff", "--no-block"], timeout=30, check=False)
    return BootTimes(ssh_seconds, amqp_seconds)
