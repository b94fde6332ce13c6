"""The pure parts of `kvmple lab install-kernel`: what the fallback report shows of the
failed boot's console, and the lab host's domain resetting in place (the fallback path)."""

from __future__ import annotations

from kvmple.lab.kernel import describe_failed_boot

PANIC_CONSOLE = """\
[  OK  ] Reached target reboot.target - System Reboot.
[  101.2] kexec_core: Starting new kernel
\x1b[0m[    1.9] Run /kvmple-missing as init process
[    2.0] Kernel panic - not syncing: Requested init /kvmple-missing failed (error -2).
[    2.0] CPU: 0 PID: 1 Comm: swapper/0 Not tainted 6.1.158-kvmple-lab #1
[    2.1] Rebooting in 10 seconds..
"""


def test_the_panic_line_ends_the_report() -> None:
    line = describe_failed_boot(PANIC_CONSOLE)
    assert line.endswith("Requested init /kvmple-missing failed (error -2).")
    assert "kexec_core: Starting new kernel" in line and "\x1b" not in line
    assert "\n" not in line


def test_without_a_panic_the_last_lines() -> None:
    assert describe_failed_boot("a\n\nb\nc\n") == "a | b | c"
    assert describe_failed_boot("") == "(nothing on the console)"
