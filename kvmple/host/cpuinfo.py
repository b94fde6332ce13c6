"""CPU facts from /proc/cpuinfo: vendor, model, virtualization extension and PLE support."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kvmple.errors import HostError

INTEL = "GenuineIntel"
AMD = "AuthenticAMD"


@dataclass(frozen=True)
class CpuInfo:
    """What the first processor block of /proc/cpuinfo says (all CPUs of a host match)."""

    vendor: str
    model_name: str
    flags: frozenset[str]
    vmx_flags: frozenset[str]
    # Whether the block has a "vmx flags" line at all: Linux prints it only since 5.x
    # (arch/x86/kernel/cpu/proc.c, CONFIG_X86_VMX_FEATURE_NAMES), so its absence says nothing.
    has_vmx_flags_line: bool = False
    has_flags_line: bool = True

    @property
    def virt_extension(self) -> str | None:
        """``"vmx"`` (Intel VT-x), ``"svm"`` (AMD-V) or None when the CPU offers neither."""
        if "vmx" in self.flags:
            return "vmx"
        if "svm" in self.flags:
            return "svm"
        return None

    @property
    def under_hypervisor(self) -> bool:
        """True when this host is itself a guest (then VT-x/AMD-V needs nested support)."""
        return "hypervisor" in self.flags

    @property
    def ple_flag(self) -> bool:
        """Hardware pause-loop exiting as /proc/cpuinfo shows it (False also when unknown;
        use ``ple_from_cpuinfo`` to tell "no" from "this kernel does not say")."""
        return self.ple_from_cpuinfo is True

    @property
    def ple_from_cpuinfo(self) -> bool | None:
        """Intel ``ple`` in "vmx flags", AMD ``pausefilter`` in "flags"; None when this
        kernel's /proc/cpuinfo cannot say (no "vmx flags" line before Linux 5.x, or no
        "flags" line at all): a missing field is unknown, never "no"."""
        if not self.has_flags_line:
            return None
        if self.virt_extension == "vmx":
            return ("ple" in self.vmx_flags) if self.has_vmx_flags_line else None
        if self.virt_extension == "svm":
            return "pausefilter" in self.flags
        return False

    def to_json(self) -> dict[str, object]:
        return {
            "vendor": self.vendor,
            "model_name": self.model_name,
            "virt_extension": self.virt_extension,
            "under_hypervisor": self.under_hypervisor,
            "ple_flag": self.ple_flag,
            "ple_flag_known": self.ple_from_cpuinfo is not None,
            "ple_related_flags": sorted(
                (self.vmx_flags & {"ple"}) | (self.flags & {"pausefilter", "pfthreshold"})
            ),
        }


def parse_cpuinfo(text: str) -> CpuInfo:
    """Parse the first processor block of /proc/cpuinfo text."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # end of the first processor block
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return CpuInfo(
        vendor=fields.get("vendor_id", "unknown"),
        model_name=fields.get("model name", "unknown"),
        flags=frozenset(fields.get("flags", "").split()),
        vmx_flags=frozenset(fields.get("vmx flags", "").split()),
        has_vmx_flags_line="vmx flags" in fields,
        has_flags_line="flags" in fields,
    )


def read_cpuinfo(proc_root: Path = Path("/proc")) -> CpuInfo:
    """Read and parse ``proc_root``/cpuinfo."""
    path = proc_root / "cpuinfo"
    try:
        return parse_cpuinfo(path.read_text(errors="replace"))
    except OSError as exc:
        raise HostError(f"cannot read {path}: {exc.strerror}", hint="is /proc mounted?") from exc
