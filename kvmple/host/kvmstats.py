"""KVM's per-VM statistics from debugfs: ``/sys/kernel/debug/kvm/<pid>-<vm fd>/`` holds one
file per statistic, the vCPU ones summed over the VM's vCPUs (virt/kvm/kvm_main.c,
kvm_create_vm_debugfs and kvm_stat_data_get). ``directed_yield_attempted`` and
``directed_yield_successful`` exist since Linux 5.13; in 6.1 they count the paravirtual
sched_yield hypercall (arch/x86/kvm/x86.c kvm_sched_yield), not PLE's yield_to.

Reading needs root and a mounted debugfs; every read here returns the reason instead of a
number when it cannot read, so callers record "unavailable, because ...".
"""

from __future__ import annotations

import contextlib
from pathlib import Path

DEBUGFS = Path("/sys/kernel/debug")
YIELD_STATS = ("directed_yield_attempted", "directed_yield_successful")


def read_stat_dir(directory: Path) -> dict[str, int]:
    """Every integer statistic in one VM's debugfs directory (file name -> value)."""
    stats: dict[str, int] = {}
    if not directory.is_dir():
        return stats
    for entry in sorted(directory.iterdir()):
        if not entry.is_file():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):  # empty or not a number
            stats[entry.name] = int(entry.read_text().split()[0])
    return stats


def vm_dirs(pid: int, debugfs: Path = DEBUGFS) -> list[Path]:
    """The debugfs directories of the VMs process ``pid`` created (a QEMU has one)."""
    root = debugfs / "kvm"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob(f"{pid}-*") if p.is_dir())


def read_yield(pid: int, debugfs: Path = DEBUGFS) -> tuple[Path, dict[str, int]] | str:
    """(VM directory, {directed_yield_attempted, directed_yield_successful}) of the VM of
    process ``pid``, or the reason they cannot be read."""
    if not (debugfs / "kvm").is_dir():
        return f"no KVM directory in debugfs at {debugfs} (debugfs not mounted, or not root)"
    dirs = vm_dirs(pid, debugfs)
    if not dirs:
        return f"process {pid} has no KVM VM in {debugfs / 'kvm'}"
    if len(dirs) > 1:
        return f"process {pid} has {len(dirs)} KVM VMs in debugfs: which one is the guest?"
    stats = read_stat_dir(dirs[0])
    missing = [name for name in YIELD_STATS if name not in stats]
    if missing:
        return f"this kernel has no {', '.join(missing)} statistic (Linux 5.13+) in {dirs[0]}"
    return dirs[0], {name: stats[name] for name in YIELD_STATS}
