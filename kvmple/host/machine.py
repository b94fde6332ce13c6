"""Is this host an emulated or virtual machine? From DMI and the CPUID hypervisor bit.

Sources: /sys/class/dmi/id/{sys_vendor,product_name} (the firmware's SMBIOS tables; QEMU's
SeaBIOS says sys_vendor "QEMU"), and the "hypervisor" flag in /proc/cpuinfo (CPUID.1:ECX
bit 31, which hypervisors set for their guests). The same evidence systemd-detect-virt
uses for VMs (src/basic/virt.c: detect_vm_dmi, detect_vm_cpuid). A lab host booted under
QEMU TCG is such a machine: its timings are emulated, not hardware timings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kvmple.host.cpuinfo import CpuInfo

# DMI sys_vendor values of virtual machines (systemd's dmi_vendor_table, the common ones).
VM_VENDORS = ("QEMU", "KVM", "Bochs", "VMware", "innotek GmbH", "Xen", "Parallels", "BHYVE")


@dataclass(frozen=True)
class Machine:
    """``emulated``: True when DMI or CPUID say this is a virtual/emulated machine;
    ``evidence``: which source said so ("DMI sys_vendor 'QEMU'", "CPUID hypervisor bit")."""

    emulated: bool
    evidence: tuple[str, ...]
    sys_vendor: str | None
    product_name: str | None

    def to_json(self) -> dict[str, object]:
        return {
            "emulated": self.emulated,
            "evidence": list(self.evidence),
            "sys_vendor": self.sys_vendor,
            "product_name": self.product_name,
        }


def _dmi(sys_root: Path, name: str) -> str | None:
    try:
        return (sys_root / "class" / "dmi" / "id" / name).read_text().strip() or None
    except OSError:
        return None


def read_machine(sys_root: Path, cpu: CpuInfo) -> Machine:
    """Read the machine's identity from ``sys_root`` (normally /sys) and ``cpu``."""
    vendor = _dmi(sys_root, "sys_vendor")
    product = _dmi(sys_root, "product_name")
    evidence: list[str] = []
    if vendor is not None and any(vendor.startswith(v) for v in VM_VENDORS):
        evidence.append(f"DMI sys_vendor {vendor!r}")
    elif vendor == "Microsoft Corporation" and product == "Virtual Machine":
        evidence.append("DMI Microsoft 'Virtual Machine' (Hyper-V)")
    if cpu.under_hypervisor:
        evidence.append("CPUID hypervisor bit")
    return Machine(bool(evidence), tuple(evidence), vendor, product)
