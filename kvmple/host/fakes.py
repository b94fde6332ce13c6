"""Fake host trees for tests: Intel, AMD, no-PLE Intel/AMD, kvm_pvm (this development host),
and a busy module. They exercise the full PLE/doctor logic at the one seam that cannot run
here (module reload needs VT-x/AMD-V hardware).

The fake loader simulates ``modprobe -r`` + ``modprobe MODULE k=v...`` by rewriting the fake
sysfs parameters with the module defaults overridden by the options, and can simulate a
clamped read-back and a "module in use" failure. Kernel semantics follow
../shared/reference/yield-to-ple-series.md (without hardware PLE the module forces 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kvmple.errors import HostError
from kvmple.host.kvmmodule import KVM_AMD, KVM_INTEL, PLE_MODULES
from kvmple.host.seam import HostSeam
from kvmple.host.vms import RunningVm

Kind = Literal["intel", "amd", "intel-nople", "amd-nople", "pvm"]

_BASE_FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge cmov lm nx hypervisor"
_CPUS: dict[str, tuple[str, str, str, str]] = {
    # kind: (vendor, model name, extra flags, vmx flags)
    "intel": ("GenuineIntel", "Intel(R) Xeon(R) CPU E5-2680 v4", "vmx ept", "vnmi ple ept"),
    "intel-nople": ("GenuineIntel", "Intel(R) Core(TM) 2 Duo", "vmx", "vnmi"),
    "amd": ("AuthenticAMD", "AMD EPYC 7302", "svm npt pausefilter pfthreshold", ""),
    "amd-nople": ("AuthenticAMD", "AMD Phenom(tm) II", "svm npt", ""),
    "pvm": ("AuthenticAMD", "AMD EPYC", "", ""),
}


def cpuinfo_text(kind: Kind, cpus: int = 2) -> str:
    vendor, model, extra, vmx = _CPUS[kind]
    blocks = []
    for n in range(cpus):
        lines = [
            f"processor\t: {n}",
            f"vendor_id\t: {vendor}",
            f"model name\t: {model}",
            f"flags\t\t: {_BASE_FLAGS} {extra}".rstrip(),
        ]
        if vmx:
            lines.append(f"vmx flags\t: {vmx}")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


@dataclass
class FakeModuleLoader:
    """Reloads modules of a fake sysfs tree; records every call."""

    sys_root: Path
    hardware_ple: bool = True
    in_use: bool = False
    clamp: dict[str, int] = field(default_factory=dict)  # param -> value read back instead
    calls: list[tuple[str, dict[str, int]]] = field(default_factory=list)

    def reload(self, module: str, options: Mapping[str, int]) -> None:
        if self.in_use:
            raise HostError(
                f"module {module} is in use, nothing changed: "
                f"modprobe: FATAL: Module {module} is in use.",
                hint="stop every VM and process using KVM, then try again",
            )
        self.calls.append((module, dict(options)))
        spec = PLE_MODULES[module]
        values = {**spec.defaults(), **options}
        if not self.hardware_ple:
            values = dict.fromkeys(values, 0)
        values.update(self.clamp)
        params = self.sys_root / "module" / module / "parameters"
        for name, value in values.items():
            (params / name).write_text(f"{value}\n")


@dataclass
class FakeVmLister:
    vms: list[RunningVm] = field(default_factory=list)

    def running(self) -> tuple[RunningVm, ...]:
        return tuple(self.vms)


@dataclass
class FakeHost:
    root: Path
    kind: Kind
    loader: FakeModuleLoader
    vms: FakeVmLister
    root_user: bool = True

    @property
    def sys_root(self) -> Path:
        return self.root / "sys"

    @property
    def proc_root(self) -> Path:
        return self.root / "proc"

    def seam(self) -> HostSeam:
        return HostSeam(
            sys_root=self.sys_root,
            proc_root=self.proc_root,
            loader=self.loader,
            vms=self.vms,
            is_root=lambda: self.root_user,
        )

    def param(self, module: str, name: str) -> str:
        return (self.sys_root / "module" / module / "parameters" / name).read_text().strip()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def make_fake_host(
    root: Path,
    kind: Kind,
    *,
    refcnt: int = 0,
    builtin: bool = False,
    values: Mapping[str, int] | None = None,
    cpus: int = 4,
    smt: bool = True,
) -> FakeHost:
    """Build a fake /sys + /proc tree under ``root`` for ``kind``.

    ``values`` override the module's default PLE values; without hardware PLE they are 0.
    """
    sys_root = root / "sys"
    proc = root / "proc"
    _write(proc / "cpuinfo", cpuinfo_text(kind, cpus))
    _write(proc / "cmdline", "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro isolcpus=domain,2-3\n")
    proc.joinpath("1").mkdir(exist_ok=True)
    cpu_dir = sys_root / "devices/system/cpu"
    _write(cpu_dir / "online", f"0-{cpus - 1}\n")
    half = cpus // 2 if smt and cpus > 1 else cpus
    for cpu in range(cpus):
        sibling = (cpu + half) % cpus if smt and cpus > 1 else cpu
        group = sorted({cpu, sibling})
        _write(
            cpu_dir / f"cpu{cpu}/topology/thread_siblings_list",
            ",".join(str(c) for c in group) + "\n",
        )
        _write(cpu_dir / f"cpu{cpu}/cpufreq/scaling_governor", "performance\n")
    _write(sys_root / "devices/system/node/node0/cpulist", f"0-{cpus - 1}\n")
    module = {
        "intel": KVM_INTEL,
        "intel-nople": KVM_INTEL,
        "amd": KVM_AMD,
        "amd-nople": KVM_AMD,
    }.get(kind)
    hardware_ple = kind in ("intel", "amd")
    if module is None:
        mdir = sys_root / "module/kvm_pvm"
        for name, text in {"force": "N", "hb_mask": "8388607", "no_x2apic": "N"}.items():
            _write(mdir / "parameters" / name, text + "\n")
        builtin = True  # as on the development host: compiled in
    else:
        mdir = sys_root / "module" / module.module
        current = {**module.defaults(), **(values or {})}
        if not hardware_ple:
            current = dict.fromkeys(current, 0)
        for name, value in current.items():
            _write(mdir / "parameters" / name, f"{value}\n")
    _write(sys_root / "module/kvm/parameters/halt_poll_ns", "200000\n")
    if not builtin:
        _write(mdir / "initstate", "live\n")
        _write(mdir / "refcnt", f"{refcnt}\n")
    loader = FakeModuleLoader(sys_root, hardware_ple=hardware_ple)
    return FakeHost(root=root, kind=kind, loader=loader, vms=FakeVmLister())
