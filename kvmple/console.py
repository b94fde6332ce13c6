"""A guest's serial console log: its tail for error messages, and what it says went wrong.

Every guest kvmple boots writes its console to a file (libvirt guests, image checks, kernel
boot tests); errors show its last lines and, where the text says why a boot stopped, that
reason in one line. Patterns are the kernel's own messages (init/do_mounts.c "VFS: Unable to
mount root fs", kernel/panic.c "Kernel panic - not syncing", kernel/rcu/tree_stall.h
"detected stalls", kernel/watchdog.c "soft lockup") and systemd's ("Freezing execution",
"Welcome to").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

NO_OUTPUT = "the console stayed empty (no kernel output: wrong kernel, or no console=ttyS0?)"
_PANIC = re.compile(r"Kernel panic - not syncing: (.*)")
_STALL = re.compile(
    r"rcu: INFO: \S+ detected stalls|rcu_\w+ self-detected stall|"
    r"watchdog: BUG: soft lockup - CPU#\d+ stuck for \d+s"
)


def last_lines(text: str, lines: int) -> list[str]:
    """The last ``lines`` non-empty lines of ``text``, right-stripped (pure)."""
    return [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]


def diagnose(text: str, root: str | None = None) -> str | None:
    """Why a boot stopped, from its console ``text``, in one line; None when the text does not
    say (pure). ``root``: the ``root=`` the kernel was given, named when it cannot mount it.
    An empty console gives NO_OUTPUT."""
    if not text.strip():
        return NO_OUTPUT
    if "VFS: Unable to mount root fs" in text or "VFS: Cannot open root device" in text:
        return (
            f"the kernel cannot mount the image's root ({root or 'root='}): it needs "
            "virtio-blk and ext4 built in, or an --initrd that loads them"
        )
    if "No working init found" in text or re.search(r"Requested init \S+ failed", text):
        return "the kernel mounted the root but could not run the image's init (systemd)"
    if panic := _PANIC.search(text):
        return f"the kernel panicked: {panic.group(1).strip()}"
    if "Freezing execution" in text:
        failed = [line.strip() for line in text.splitlines() if "[!!!!!!]" in line]
        detail = f": {failed[-1]}" if failed else ""
        return f"systemd stopped at start-up{detail}"
    if stall := _STALL.search(text):
        return (
            f"the guest reported '{stall.group(0)}': its vCPUs were starved "
            "(an overloaded host, or overcommitted vCPUs)"
        )
    if "Welcome to" in text:
        return "systemd started, but no SSH login followed"
    return None


@dataclass(frozen=True)
class ConsoleLog:
    """The console log file of one guest (it may not exist yet)."""

    path: Path

    def text(self) -> str:
        """The whole log as text ('' when there is no log yet)."""
        try:
            return self.path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 15, sep: str = "\n") -> str:
        """The last ``lines`` non-empty lines joined with ``sep`` ('' when there are none)."""
        return sep.join(last_lines(self.text(), lines))

    def indented(self, lines: int = 15, empty: str = "(the console stayed empty)") -> str:
        """The tail for an error message: lines after the first indented by four spaces."""
        return "\n    ".join(last_lines(self.text(), lines)) or empty

    def diagnose(self, root: str | None = None) -> str | None:
        """``diagnose`` of this log's text."""
        return diagnose(self.text(), root)

    def panicked(self) -> bool:
        """True once the kernel has printed a panic."""
        return "Kernel panic" in self.text()
