"""After the install reboot the same night must continue (pure): a one-shot systemd unit, or
an @reboot cron entry without systemd, that runs ``kvmple nightly CONFIG --night ID`` once
and removes itself. It runs whatever kernel came up: if the one-shot boot entry fell back to
the old kernel, the night goes on to say so ("install failed") instead of waiting forever.
NOT VERIFIED ON HARDWARE (the install path only runs on VT-x/AMD-V hosts)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from kvmple.kernel.install import Step

UNIT = "kvmple-nightly-resume.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT}"
CRON_PATH = "/etc/cron.d/kvmple-nightly-resume"


def resume_unit(argv: Sequence[str], night: str) -> str:
    return (
        "[Unit]\n"
        f"Description=kvmple: continue nightly night {night} after the install reboot\n"
        "After=network-online.target libvirtd.service\n"
        "Wants=network-online.target\n\n"
        "[Service]\nType=oneshot\n"
        f"ExecStartPre=/bin/systemctl disable {UNIT}\n"
        f"ExecStart={shlex.join(argv)}\n"
        "SuccessExitStatus=20 21\n"
        "TimeoutStartSec=12h\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )


def resume_steps(argv: Sequence[str], night: str, *, has_systemd: bool) -> list[Step]:
    """The steps that make the next boot continue the night (before the reboot step)."""
    if has_systemd:
        return [
            Step(
                "continue the night after the reboot",
                write_path=UNIT_PATH,
                content=resume_unit(argv, night),
            ),
            Step("enable the resume unit", ("systemctl", "enable", UNIT)),
        ]
    line = f"@reboot root rm -f {CRON_PATH}; {shlex.join(argv)}\n"
    return [Step("continue the night after the reboot", write_path=CRON_PATH, content=line)]


def with_resume(steps: Sequence[Step], resume: Sequence[Step]) -> list[Step]:
    """Insert ``resume`` before the plan's final reboot/kexec step (or at the end)."""
    steps = list(steps)
    if (
        steps
        and steps[-1].argv[:1] == ("systemctl",)
        and steps[-1].argv[1:2]
        in (
            ("reboot",),
            ("kexec",),
        )
    ):
        return [*steps[:-1], *resume, steps[-1]]
    return [*steps, *resume]
