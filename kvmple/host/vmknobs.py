"""Per-VM knobs: settings a guest gets when it starts, not host state. The first is QEMU's
``-overcommit cpu-pm=on|off`` (qemu-options.hx): with ``on`` QEMU asks KVM to stop
intercepting PAUSE, HLT and MWAIT for that VM (KVM_CAP_X86_DISABLE_EXITS, kernel
Documentation/virt/kvm/api.rst), so such a VM has PLE off whatever ple_gap says.

The guest's KVM PV features (``pv.sched_yield``, ``pv.unhalt``) are per-VM knobs too
(:mod:`kvmple.host.pvknobs`, also read back inside each guest).

A per-VM knob changes nothing on the host; the campaign passes :meth:`VmKnob.qemu_args`
to every guest of the block and, once they run, :func:`check_guests` reads each guest's QEMU
command line back from /proc: a guest started without the setting fails the block instead of
being stored under a false label.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from kvmple.errors import HostError
from kvmple.host import pvknobs
from kvmple.host.knob import VmKnob, VmSetting
from kvmple.host.seam import HostSeam
from kvmple.host.vms import process_argv, qemu_guest_name


class CpuPmKnob(VmKnob):
    """QEMU ``-overcommit cpu-pm=on|off`` for every guest of a block."""

    name = "cpu-pm"
    title = "cpu-pm"
    settings = ("on", "off")
    change_note = "per VM: QEMU -overcommit cpu-pm, read back from each guest's QEMU"
    provider_hint = "use a host where 'kvmple doctor' says kvm"

    def without_kvm(self, seam: HostSeam, host_reason: str) -> str:
        return (
            "cpu-pm only changes which exits KVM takes (KVM_CAP_X86_DISABLE_EXITS); guests "
            f"under TCG have no such exits ({host_reason})"
        )

    def qemu_args(self, setting: str) -> tuple[str, ...]:
        return ("-overcommit", f"cpu-pm={self.check_setting(setting)}")


VM_KNOBS: dict[str, VmKnob] = {
    knob.name: knob for knob in (CpuPmKnob(), *pvknobs.PV_KNOBS.values())
}
"""Every per-VM knob by name (QEMU -overcommit cpu-pm, the guest's KVM PV features)."""


def qemu_args(settings: Iterable[tuple[str, str]]) -> tuple[str, ...]:
    """The QEMU arguments every guest of a block gets for its per-VM knob settings."""
    args: list[str] = []
    for name, setting in settings:
        if name in VM_KNOBS:
            args.extend(VM_KNOBS[name].qemu_args(setting))
    return tuple(args)


def qemu_argv_of(proc_root: Path, guest: str) -> list[str] | None:
    """The full argv of the QEMU process running the guest named ``guest`` (-name), if any."""
    for pid_dir in proc_root.iterdir():
        if not pid_dir.name.isdigit():
            continue
        argv = process_argv(pid_dir)
        if argv and Path(argv[0]).name.startswith("qemu") and qemu_guest_name(argv) == guest:
            return argv
    return None


def check_guests(
    settings: Iterable[tuple[str, str]], guests: Iterable[str], proc_root: Path = Path("/proc")
) -> dict[str, VmSetting]:
    """Each per-VM knob's setting read back from the running guests' QEMU command lines.

    Raises HostError naming the guest when one was started without the asked setting (its
    runs would be labelled falsely)."""
    found: dict[str, VmSetting] = {}
    names = list(guests)
    argvs: Mapping[str, list[str] | None] = {g: qemu_argv_of(proc_root, g) for g in names}
    for knob, setting in settings:
        if knob not in VM_KNOBS:
            continue
        wanted = VM_KNOBS[knob].qemu_args(setting)
        seen: list[tuple[str, str]] = []
        for guest, argv in argvs.items():
            if argv is None or not _has_sequence(argv, wanted):
                raise HostError(
                    f"{knob}={setting}: guest {guest}'s QEMU was not started with "
                    f"{' '.join(wanted)}; its runs would be labelled falsely",
                    hint="the guest may have been started by another tool or a snapshot",
                )
            seen.append((guest, " ".join(wanted)))
        found[knob] = VmSetting(knob, setting, tuple(seen))
    return found


def _has_sequence(argv: list[str], wanted: tuple[str, ...]) -> bool:
    n = len(wanted)
    return any(tuple(argv[i : i + n]) == wanted for i in range(len(argv) - n + 1))
