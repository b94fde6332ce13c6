"""The boot gate: boot a built kernel in QEMU and pass only when user space is reached and
``uname -r`` there matches the expected release.

The default path is fast: direct kernel boot (-kernel/-initrd) with kvmple's busybox
initramfs, no firmware devices (-nodefaults), the serial console on stdout, and -no-reboot
so the guest's ``reboot -f`` ends QEMU at once. KVM is used where the doctor's boot probe says
it works, TCG elsewhere. The console log is kept; on a hang QEMU is stopped at the
timeout and the error shows the console's last lines.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kvmple.console import ConsoleLog
from kvmple.errors import CommandError, CommandTimeout, GuestError
from kvmple.host.kvmprobe import usable_accelerator
from kvmple.kernel.initramfs import MARKER, boot_initramfs
from kvmple.paths import cache_dir
from kvmple.qemu import DirectBoot, QemuConfig, command_line, die_with_owner, find_qemu
from kvmple.run import run_logged

NO_LOG = "(no console log)"


@dataclass(frozen=True)
class BootResult:
    passed: bool
    release: str
    expected: str
    seconds_to_userspace: float
    seconds_total: float
    accel: str
    log: str
    found_lines: tuple[str, ...] = ()


def qemu_argv(
    image: Path,
    initrd: Path,
    *,
    accel: str,
    token: str,
    memory_mib: int,
    cpus: int,
    append: str = "",
) -> list[str]:
    """The QEMU command line of a boot test (pure): console on stdout, nothing else."""
    cmdline = f"console=ttyS0 panic=-1 rdinit=/init kvmple_token={token} {append}".strip()
    config = QemuConfig(
        accel=accel,
        memory_mib=memory_mib,
        cpus=cpus,
        serial="stdio",
        boot=DirectBoot(image, initrd, cmdline),
        isolated=True,
    )
    return command_line(config)


_LINE = re.compile(re.escape(MARKER) + r" release=(\S*) token=(\S*)")


def find_marker(console: str, token: str) -> str | None:
    """The release printed by this boot's init (matching token), or None (pure)."""
    for match in _LINE.finditer(console):
        if match.group(2) == token:
            return match.group(1)
    return None


def boot_test(
    image: Path,
    expected_release: str,
    *,
    initrd: Path | None = None,
    log: Path | None = None,
    timeout: float = 120.0,
    accel: str = "auto",
    memory_mib: int = 256,
    cpus: int = 1,
    expect_lines: Sequence[str] = (),
) -> BootResult:
    """Boot ``image``; GuestError unless user space prints ``expected_release``."""
    if not image.is_file():
        raise GuestError(f"{image}: no kernel image", hint="run 'kvmple kernel build' first")
    find_qemu()
    chosen = usable_accelerator() if accel == "auto" else accel
    initrd = initrd or boot_initramfs(cache_dir())
    log = log or image.parent / "boot-test.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    token = secrets.token_hex(8)
    argv = qemu_argv(image, initrd, accel=chosen, token=token, memory_mib=memory_mib, cpus=cpus)
    console_log = ConsoleLog(log)
    start = time.monotonic()
    reached: list[float] = []

    def on_line(line: str) -> None:
        if not reached and MARKER in line and token in line:
            reached.append(time.monotonic() - start)

    try:
        run_logged(
            die_with_owner(argv), log=log, timeout=timeout, on_line=on_line, what="QEMU boot test"
        )
    except CommandTimeout as exc:
        raise GuestError(
            f"boot test: no user space after {timeout:g}s ({chosen}); console tail:\n    "
            + console_log.indented(empty=NO_LOG),
            hint=f"full console log: {log}",
        ) from exc
    except CommandError as exc:
        raise GuestError(
            f"boot test: QEMU failed ({exc.message}); console tail:\n    "
            + console_log.indented(empty=NO_LOG),
            hint=f"full console log: {log}",
        ) from exc
    total = time.monotonic() - start
    console = console_log.text()
    release = find_marker(console, token)
    if release is None:
        raise GuestError(
            f"boot test: the guest stopped before user space ({chosen}); console tail:\n    "
            + console_log.indented(empty=NO_LOG),
            hint=f"full console log: {log} (a panic shows above; check the config fragment)",
        )
    if release != expected_release:
        raise GuestError(
            f"boot test: user space runs release {release!r}, expected {expected_release!r}",
            hint="the booted image is not the one built from this tree",
        )
    missing = [line for line in expect_lines if line not in console]
    if missing:
        raise GuestError(
            f"boot test: console lacks the expected line(s): {'; '.join(missing)}",
            hint=f"full console log: {log}",
        )
    return BootResult(
        True,
        release,
        expected_release,
        round(reached[0] if reached else total, 2),
        round(total, 2),
        chosen,
        str(log),
        tuple(expect_lines),
    )
