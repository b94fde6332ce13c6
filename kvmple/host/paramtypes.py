"""The types of KVM module parameters, so a playbook's value is checked when it loads.

A parameter's type is its ``module_param(name, type, perm)`` in the kernel source; the
kernel's setter (kernel/params.c: ``param_set_uint`` -> ``kstrtouint``, ``param_set_bool`` ->
``kstrtobool``, ...) refuses anything else at run time, hours into a campaign. kvmple knows
the parameters below (the file each is declared in; every type but the RFC's checked against
Debian's linux-source-6.1 module_param/module_param_named/_cb declarations); any other
parameter declares its type (``type: uint``), and its values are checked against that.
"""

from __future__ import annotations

from typing import Literal, get_args

ParamType = Literal["bool", "int", "uint", "ushort", "ulong", "string"]
PARAM_TYPES: tuple[ParamType, ...] = get_args(ParamType)

_RANGES: dict[str, tuple[int, int]] = {
    "int": (-(2**31), 2**31 - 1),
    "uint": (0, 2**32 - 1),
    "ushort": (0, 2**16 - 1),
    "ulong": (0, 2**64 - 1),
}
# What kvmple writes and compares a bool as (sysfs prints Y/N; modprobe takes 1/0). The
# kernel's kstrtobool also takes on/off, but those would read back as Y/N: refused here.
_BOOL_SETTINGS = ("Y", "N", "y", "n", "1", "0")

_KVM = "virt/kvm/kvm_main.c"
_X86 = "arch/x86/kvm/x86.c"
_MMU = "arch/x86/kvm/mmu/mmu.c"
_VMX = "arch/x86/kvm/vmx/vmx.c"
_SVM = "arch/x86/kvm/svm/svm.c"
_RFC = "vCPU-debooster RFC v2 (patches/vcpu-debooster-v2)"

# name -> (type, where it is declared; a string parameter lists the words it takes)
KNOWN: dict[str, tuple[ParamType, str]] = {
    "kvm.halt_poll_ns": ("uint", _KVM),
    "kvm.halt_poll_ns_grow": ("uint", _KVM),
    "kvm.halt_poll_ns_grow_start": ("uint", _KVM),
    "kvm.halt_poll_ns_shrink": ("uint", _KVM),
    "kvm.ignore_msrs": ("bool", _X86),
    "kvm.report_ignored_msrs": ("bool", _X86),
    "kvm.min_timer_period_us": ("uint", _X86),
    "kvm.kvmclock_periodic_sync": ("bool", _X86),
    "kvm.tsc_tolerance_ppm": ("uint", _X86),
    "kvm.vector_hashing": ("bool", _X86),
    "kvm.enable_vmware_backdoor": ("bool", _X86),
    "kvm.force_emulation_prefix": ("int", _X86),
    "kvm.enable_pmu": ("bool", _X86),
    "kvm.eager_page_split": ("bool", _X86),
    "kvm.mitigate_smt_rsb": ("bool", _X86),
    "kvm.flush_on_reuse": ("bool", _MMU),
    "kvm.tdp_mmu": ("bool", "arch/x86/kvm/mmu/tdp_mmu.c"),
    "kvm.mmio_caching": ("bool", "arch/x86/kvm/mmu/spte.c"),
    "kvm.nx_huge_pages_recovery_ratio": ("uint", _MMU),
    "kvm.nx_huge_pages_recovery_period_ms": ("uint", _MMU),
    "kvm.ipi_tracking_enabled": ("bool", _RFC),
    "kvm.ipi_window_ns": ("ulong", _RFC),
    "kvm.enable_relaxed_boost": ("bool", _RFC),
    "kvm_intel.ple_gap": ("uint", _VMX),
    "kvm_intel.ple_window": ("uint", _VMX),
    "kvm_intel.ple_window_grow": ("uint", _VMX),
    "kvm_intel.ple_window_shrink": ("uint", _VMX),
    "kvm_intel.ple_window_max": ("uint", _VMX),
    "kvm_intel.nested": ("bool", _VMX),
    "kvm_intel.ept": ("bool", _VMX),
    "kvm_intel.vpid": ("bool", _VMX),
    "kvm_intel.enable_apicv": ("bool", _VMX),
    "kvm_intel.enable_ipiv": ("bool", _VMX),
    "kvm_intel.preemption_timer": ("bool", _VMX),
    "kvm_intel.pml": ("bool", _VMX),
    "kvm_intel.unrestricted_guest": ("bool", _VMX),
    "kvm_intel.pt_mode": ("int", _VMX),
    "kvm_amd.pause_filter_thresh": ("ushort", _SVM),
    "kvm_amd.pause_filter_count": ("ushort", _SVM),
    "kvm_amd.pause_filter_count_grow": ("ushort", _SVM),
    "kvm_amd.pause_filter_count_shrink": ("ushort", _SVM),
    "kvm_amd.pause_filter_count_max": ("ushort", _SVM),
    "kvm_amd.npt": ("bool", _SVM),
    "kvm_amd.nested": ("int", _SVM),
    "kvm_amd.avic": ("bool", _SVM),
    "kvm_amd.vls": ("int", _SVM),
    "kvm_amd.vgif": ("int", _SVM),
    "kvm_amd.lbrv": ("int", _SVM),
    "kvm_amd.nrips": ("int", _SVM),
}


def param_type(name: str, declared: str | None) -> ParamType:
    """The type ``name``'s values are checked against: what kvmple knows, else ``declared``.

    ValueError when a declared type is not one of PARAM_TYPES, contradicts what kvmple
    knows, or is missing for a parameter kvmple does not know."""
    typed = next((kind for kind in PARAM_TYPES if kind == declared), None)
    if declared is not None and typed is None:
        raise ValueError(f"type {declared!r} is not one of {', '.join(PARAM_TYPES)}")
    known = KNOWN.get(name)
    if known is not None:
        if declared is not None and declared != known[0]:
            raise ValueError(
                f"{name} is a {known[0]} parameter ({known[1]}), not {declared}: "
                "leave 'type' out or correct it"
            )
        return known[0]
    if typed is None:
        raise ValueError(
            f"kvmple does not know the type of {name}: declare it in the factor, e.g. "
            f"'type: uint' (one of {', '.join(PARAM_TYPES)}; see the parameter's "
            "module_param() in the kernel source or 'modinfo -p'"
            ")"
        )
    return typed


def check_typed(name: str, kind: ParamType, value: str) -> str:
    """``value`` if a parameter of type ``kind`` takes it (ValueError saying what it takes)."""
    if kind == "bool":
        if value not in _BOOL_SETTINGS:
            raise ValueError(f"{name} is a bool parameter: {value!r} is not Y, N, 1 or 0")
        return value
    if kind == "string":
        return value
    low, high = _RANGES[kind]
    digits = value[1:] if value.startswith("-") else value
    if not digits.isdigit() or not low <= int(value) <= high:
        raise ValueError(
            f"{name} is a {kind} parameter: {value!r} is not a whole number from {low} to {high}"
        )
    return value
