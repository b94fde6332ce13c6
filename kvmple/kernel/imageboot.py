"""The thorough boot test (``kvmple kernel boot-test --image``): boot a built kernel with a
full guest image as root; pass only when SSH with the installation key and the image's pinned
host key works and ``uname -r`` over SSH is the built release.

The initramfs gate (boottest.py) proves the kernel reaches user space. This option proves
more: the kernel mounts an ext4 root over virtio-blk, runs the image's systemd, brings up
virtio-net and serves sshd. It reuses the image code: ``kvmple.image.probe.booted`` boots a
throw-away qcow2 overlay on the cached image (the cached disk is never written) with SSH
forwarded on 127.0.0.1 only, ``wait_ssh`` waits for the login. This module chooses the
command line, judges the result and names the reason of a failure in one line.

The image's kernel modules are built for the image's own kernel, so a kernel tested this way
needs its root and network drivers built in (or an ``--initrd`` made for it): see
``IMAGE_KERNEL_NEEDS`` and the ``kvmple-image`` config fragment.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kvmple.console import NO_OUTPUT, ConsoleLog, diagnose
from kvmple.errors import CommandError, ConfigError, GuestError, HostError, UsageError
from kvmple.host.kvmprobe import usable_accelerator
from kvmple.image.artifact import Image
from kvmple.image.probe import Guest, booted, wait_ssh
from kvmple.qemu import DirectBoot
from kvmple.run import which

# Said in every failure's hint and in docs/kernel.md: what a kernel booted this way needs.
IMAGE_KERNEL_NEEDS = (
    "a kernel for --image needs built in (=y, the image's modules are for its own kernel) "
    "VIRTIO_PCI, VIRTIO_BLK, EXT4_FS and VIRTIO_NET, or an --initrd made for it that loads "
    "them; and what systemd needs: DEVTMPFS, CGROUPS, INOTIFY_USER, SIGNALFD, TIMERFD, "
    "EPOLL, UNIX, FHANDLE, TMPFS, MULTIUSER, FUTEX (fragment kvmple-image has all of it)"
)


@dataclass(frozen=True)
class ImageBootResult:
    passed: bool
    release: str
    expected: str
    image: str
    seconds_to_ssh: float
    seconds_total: float
    accel: str
    log: str
    cmdline: str
    initrd: str | None
    found_lines: tuple[str, ...] = ()


def root_parameter(cmdline: str) -> str:
    """The ``root=`` the kernel will use: the last one on the command line (pure)."""
    roots = [word for word in cmdline.split() if word.startswith("root=")]
    if not roots:
        raise ConfigError(
            f"the image's kernel command line has no root= ({cmdline!r})",
            hint="the image's image.json 'cmdline' must name its root device",
        )
    return roots[-1]


def boot_cmdline(image_cmdline: str, append: str = "") -> str:
    """The command line of an image boot test (pure).

    The image's own line (its ``root=``, console and the recipe's additions) without ``quiet``
    (the console log is the record of the kernel under test) and with ``panic=-1``: a panic
    reboots, which ends QEMU at once (-no-reboot), instead of waiting for the timeout.
    ``append`` comes last, so it can override any of it.
    """
    root_parameter(image_cmdline)
    words = [
        word for word in image_cmdline.split() if word != "quiet" and not word.startswith("panic=")
    ]
    return " ".join([*words, "panic=-1", *append.split()])


def failure_reason(message: str, console: str, qemu_output: str, root: str) -> str:
    """One line saying why a boot did not reach SSH (pure): what the console shows, else what
    QEMU said when it exited, else the SSH wait's own reason (without its console excerpt)."""
    reason = diagnose(console, root)
    if reason is not None and reason != NO_OUTPUT:  # an empty console: what QEMU said
        return reason
    if "QEMU exited" in message:
        said = [line.strip() for line in qemu_output.splitlines() if line.strip()]
        return "QEMU exited before SSH answered" + (f" (QEMU: {said[-1]})" if said else "")
    first = message.splitlines()[0] if message else "no SSH login"
    return first.split("; console:")[0].split(": ", 1)[-1]


def _failure(
    exc: GuestError, guest: Guest, workdir: Path, *, root: str, accel: str, log: Path
) -> GuestError:
    """One clear error for a boot that did not reach SSH (or whose uname failed)."""
    console = ConsoleLog(guest.console)
    qemu_said = ConsoleLog(workdir / "qemu.log").text()
    reason = failure_reason(exc.message, console.text(), qemu_said, root)
    return GuestError(
        f"image boot test ({guest.image.name}, {accel}): {reason}; console tail:\n    "
        + console.indented(),
        hint=f"full console log: {log}; {IMAGE_KERNEL_NEEDS}",
    )


def _uname(guest: Guest, log: Path) -> str:
    try:
        result = guest.ssh(["uname", "-r"], timeout=60)
    except (CommandError, GuestError) as exc:  # CommandTimeout, a dropped connection
        raise GuestError(
            f"image boot test ({guest.image.name}): SSH login worked but 'uname -r' failed: "
            f"{exc.message}",
            hint=f"full console log: {log}",
        ) from exc
    return result.stdout.strip()


def _check_inputs(kernel: Path, initrd: Path | None) -> None:
    if not kernel.is_file():
        raise GuestError(f"{kernel}: no kernel image", hint="run 'kvmple kernel build' first")
    if initrd is not None and not initrd.is_file():
        raise UsageError(f"--initrd {initrd}: no such file")
    missing = [p for p in ("qemu-system-x86_64", "qemu-img") if which(p) is None]
    if missing:
        raise HostError(
            f"programs the image boot test needs are missing: {', '.join(missing)}",
            hint="run scripts/setup-host.sh (qemu-system-x86, qemu-utils)",
        )


def _judge(image: str, release: str, expected: str, log: Path, expect_lines: Sequence[str]) -> None:
    """GuestError unless ``release`` is ``expected`` and the console has every expected line."""
    if release != expected:
        raise GuestError(
            f"image boot test ({image}): user space runs release {release!r}, "
            f"expected {expected!r}",
            hint="the booted kernel is not the one built from this tree",
        )
    console = ConsoleLog(log).text()
    absent = [line for line in expect_lines if line not in console]
    if absent:
        raise GuestError(
            f"image boot test ({image}): console lacks the expected line(s): " + "; ".join(absent),
            hint=f"full console log: {log}",
        )


def image_boot_test(
    kernel: Path,
    expected_release: str,
    image: Image,
    *,
    log: Path,
    initrd: Path | None = None,
    timeout: float = 300.0,
    accel: str = "auto",
    cpus: int = 2,
    memory_mib: int = 2048,
    append: str = "",
    expect_lines: Sequence[str] = (),
) -> ImageBootResult:
    """Boot ``kernel`` with ``image`` as root; GuestError unless SSH (pinned key) works and
    ``uname -r`` there is ``expected_release``. The console log is kept at ``log``; the
    overlay and everything else of the boot is removed on every exit, Ctrl-C included.
    UsageError for a missing --initrd, HostError when QEMU or qemu-img is missing."""
    _check_inputs(kernel, initrd)
    if accel == "auto":
        accel = usable_accelerator()
    cmdline = boot_cmdline(image.cmdline, append)
    root = root_parameter(cmdline)
    log = log.absolute()
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=".boot-test-image-", dir=log.parent))
    start = time.monotonic()
    try:
        with booted(
            image,
            workdir,
            cpus=cpus,
            memory_mib=memory_mib,
            accel=accel,
            boot=DirectBoot(kernel, initrd, cmdline),
        ) as (guest, alive):
            try:
                seconds_to_ssh = wait_ssh(guest, alive, timeout)
            except GuestError as exc:
                raise _failure(exc, guest, workdir, root=root, accel=accel, log=log) from exc
            release = _uname(guest, log)
    finally:
        # keep the console, drop the rest (the overlay is already gone: booted() removed it)
        if (workdir / "console.log").is_file():
            os.replace(workdir / "console.log", log)
        shutil.rmtree(workdir, ignore_errors=True)
    total = time.monotonic() - start
    _judge(image.name, release, expected_release, log, expect_lines)
    return ImageBootResult(
        passed=True,
        release=release,
        expected=expected_release,
        image=image.name,
        seconds_to_ssh=round(seconds_to_ssh, 2),
        seconds_total=round(total, 2),
        accel=accel,
        log=str(log),
        cmdline=cmdline,
        initrd=str(initrd) if initrd is not None else None,
        found_lines=tuple(expect_lines),
    )
