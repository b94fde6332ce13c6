"""Things that make a "PLE on/off" label false, or shift PLE results, found on the host.

- A QEMU started with ``-overcommit cpu-pm=on`` asks KVM (KVM_CAP_X86_DISABLE_EXITS) not to
  exit on PAUSE/HLT/MWAIT: that VM runs with PLE off whatever ple_gap says (QEMU
  target/i386/kvm/kvm.c, kvm_arch_init; docs: qemu-system-x86_64(1), -overcommit).
- ``options kvm_intel ple_gap=...`` (or kvm_amd pause_filter_*) in a modprobe.d file
  changes what a plain module load gives (tuned's realtime-virtual-host profile writes
  ple_gap=0); modprobe.d(5) lists the directories.
- ``halt_poll_ns`` of the kvm module shifts how long an idle vCPU spins (recorded).
- An AMD CPU with ``pausefilter`` but without ``pfthreshold`` under a 5.8+ kernel: kvm_amd
  zeroes pause_filter_thresh (arch/x86/kvm/svm/svm.c, svm_hardware_setup) and svm_vm_init
  then sets pause_in_guest: no PAUSE interception at all, whatever pause_filter_count says.

:func:`detect` reads the given roots only (fake trees in tests).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from kvmple.host.cpuinfo import CpuInfo

MODPROBE_DIRS = ("etc/modprobe.d", "run/modprobe.d", "usr/local/lib/modprobe.d", "lib/modprobe.d")
PLE_OPTIONS = {
    "kvm_intel": (
        "ple_gap",
        "ple_window",
        "ple_window_grow",
        "ple_window_shrink",
        "ple_window_max",
    ),
    "kvm_amd": (
        "pause_filter_count",
        "pause_filter_thresh",
        "pause_filter_count_grow",
        "pause_filter_count_shrink",
        "pause_filter_count_max",
    ),
}
_OPTIONS = re.compile(r"^\s*options\s+(\S+)\s+(.*)$")


@dataclass(frozen=True)
class Confounder:
    """One finding: ``kind`` (overcommit-cpu-pm, modprobe-options, halt-poll-ns,
    amd-no-pfthreshold), where it was found, and what it does to PLE results."""

    kind: str
    where: str
    detail: str
    effect: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    def describe(self) -> str:
        return f"{self.kind}: {self.detail} ({self.where}): {self.effect}"


def qemu_cpu_pm(proc_root: Path) -> list[Confounder]:
    """Running QEMUs whose ``-overcommit`` says ``cpu-pm=on``."""
    found: list[Confounder] = []
    for pid_dir in sorted(proc_root.glob("[0-9]*")):
        try:
            argv = (pid_dir / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not argv or "qemu-system" not in Path(argv[0]).name:
            continue
        for flag, value in itertools.pairwise(argv):
            if flag in ("-overcommit", "--overcommit") and "cpu-pm=on" in value.split(","):
                found.append(
                    Confounder(
                        "overcommit-cpu-pm",
                        f"pid {pid_dir.name}",
                        f"{Path(argv[0]).name} -overcommit {value}",
                        "this VM does not exit on PAUSE (KVM_CAP_X86_DISABLE_EXITS): "
                        "PLE is off for it whatever the module parameters say",
                    )
                )
    return found


def modprobe_options(root: Path) -> list[Confounder]:
    """``options kvm_intel|kvm_amd <PLE parameter>=...`` lines in modprobe.d files."""
    found: list[Confounder] = []
    for directory in MODPROBE_DIRS:
        for path in sorted((root / directory).glob("*.conf")):
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            for number, line in enumerate(lines, 1):
                match = _OPTIONS.match(line.split("#", 1)[0])
                if match is None:
                    continue
                module = match.group(1).replace("-", "_")
                params = [
                    word
                    for word in match.group(2).split()
                    if word.split("=", 1)[0] in PLE_OPTIONS.get(module, ())
                ]
                if params:
                    found.append(
                        Confounder(
                            "modprobe-options",
                            f"/{path.relative_to(root)}:{number}",
                            f"options {module} {' '.join(params)}",
                            "a plain load of the module (boot, 'modprobe') takes these "
                            "values, not the defaults",
                        )
                    )
    return found


def halt_poll_ns(sys_root: Path) -> list[Confounder]:
    """The kvm module's halt_poll_ns (recorded: it shifts idle-vCPU spinning)."""
    path = sys_root / "module" / "kvm" / "parameters" / "halt_poll_ns"
    try:
        value = path.read_text().strip()
    except OSError:
        return []
    return [
        Confounder(
            "halt-poll-ns",
            str(path),
            f"halt_poll_ns={value}",
            "halted vCPUs poll this long before sleeping: it changes CPU time and latency "
            "next to PLE; record it with every run",
        )
    ]


def _release_at_least(release: str, major: int, minor: int) -> bool:
    match = re.match(r"(\d+)\.(\d+)", release)
    return match is not None and (int(match.group(1)), int(match.group(2))) >= (major, minor)


def amd_without_pfthreshold(cpu: CpuInfo, release: str) -> list[Confounder]:
    """AMD ``pausefilter`` without ``pfthreshold`` under Linux 5.8+: no PAUSE interception."""
    if "svm" not in cpu.flags or "pausefilter" not in cpu.flags or "pfthreshold" in cpu.flags:
        return []
    if not _release_at_least(release, 5, 8):
        return []
    return [
        Confounder(
            "amd-no-pfthreshold",
            "/proc/cpuinfo",
            f"pausefilter without pfthreshold, kernel {release}",
            "kvm_amd zeroes pause_filter_thresh and disables PAUSE interception "
            "(svm.c svm_vm_init): no PLE whatever pause_filter_count says",
        )
    ]


def detect(
    cpu: CpuInfo, release: str, proc_root: Path, sys_root: Path, etc_root: Path = Path("/")
) -> list[Confounder]:
    """Every confounder on this host (``etc_root``: the root modprobe.d paths hang off)."""
    return [
        *amd_without_pfthreshold(cpu, release),
        *modprobe_options(etc_root),
        *qemu_cpu_pm(proc_root),
        *halt_poll_ns(sys_root),
    ]
