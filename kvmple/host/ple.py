"""Read and change the PLE parameters of kvm_intel / kvm_amd.

The parameters are read-only at run time, so a change is a module reload with options. Every
change goes through :func:`apply`, which checks first and changes nothing when anything is
wrong (no PLE, bad names or values, not root, VMs running, module in use), saves the
original values before the first change, reloads, and reads the values back.

The reload with read-back is **verified on an emulated VT-x CPU with PLE (Bochs)**
(``kvmple lab verify-ple``), not on hardware.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from kvmple.errors import HostError, KvmpleError, UsageError
from kvmple.host import ple_state
from kvmple.host.confounders import amd_without_pfthreshold
from kvmple.host.cpuinfo import read_cpuinfo
from kvmple.host.kvmmodule import KvmModule, PleModuleSpec, find_kvm_module
from kvmple.host.machine import read_machine
from kvmple.host.seam import HostSeam

if TYPE_CHECKING:  # the lab host runs the host layer without pydantic (lab/bochs_media.py)
    from pydantic import JsonValue

Mode = Literal["on", "off"]


@dataclass(frozen=True)
class PleKnobs:
    """The current PLE parameters of the loaded module."""

    spec: PleModuleSpec
    values: dict[str, int]

    @property
    def module(self) -> str:
        return self.spec.module

    @property
    def enabled(self) -> bool:
        return self.values.get(self.spec.switch, 0) != 0

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "module": self.module,
            "enabled": self.enabled,
            "switch": self.spec.switch,
            "values": dict(self.values),
            "defaults": {**self.spec.defaults()},
        }


@dataclass(frozen=True)
class PleDecision:
    """Whether this host has PLE and how that was decided.

    ``available`` is None when nothing on the host can tell (then ``reason`` says so);
    ``basis`` names the evidence: cpuinfo's "vmx flags"/"flags", or kvm_intel's ple_gap
    (vmx.c's hardware_setup zeroes ple_gap when !cpu_has_vmx_ple(), so a loaded kvm_intel
    with ple_gap > 0 proves hardware PLE on kernels whose /proc/cpuinfo lacks "vmx flags").
    """

    module: KvmModule | None
    available: bool | None
    basis: str
    reason: str | None


def decide_ple(seam: HostSeam) -> PleDecision:
    """Decide PLE for this host (the one answer doctor, ``ple status`` and campaigns use)."""
    module = find_kvm_module(seam.sys_root)
    if module is None:
        reason = "no KVM module is loaded (no /sys/module/kvm_intel or kvm_amd)"
        return PleDecision(None, False, "sysfs: /sys/module", reason)
    spec = module.ple_spec
    if spec is None:
        reason = f"the KVM module is {module.name}, which has no pause-loop-exiting parameters" + (
            " (a paravirtual KVM that cannot run ordinary guests)"
            if module.name == "kvm_pvm"
            else ""
        )
        return PleDecision(module, False, f"sysfs: /sys/module/{module.name}", reason)
    if module.parameter(spec.switch) is None:
        reason = (
            f"{spec.module} exposes no {spec.switch} parameter in sysfs (an older kernel "
            "hard-codes it: kvmple cannot switch PLE there)"
        )
        return PleDecision(module, False, f"sysfs: {spec.module} parameters", reason)
    cpu = read_cpuinfo(seam.proc_root)
    from_cpu = cpu.ple_from_cpuinfo
    line = "'vmx flags'" if spec.module == "kvm_intel" else "'flags'"
    if from_cpu is True:
        release = _release(seam)
        if spec.module == "kvm_amd" and amd_without_pfthreshold(cpu, release):
            reason = (
                f"the CPU has pausefilter but not pfthreshold: kvm_amd on Linux {release} then "
                "disables PAUSE interception entirely (svm.c svm_vm_init)"
            )
            return PleDecision(module, False, f"/proc/cpuinfo {line} + kernel {release}", reason)
        return PleDecision(module, True, f"/proc/cpuinfo {line} lists {spec.cpu_flag}", None)
    if from_cpu is False:
        # "(emulated)": a lab host under QEMU TCG, whose SVM has no pause filter at all
        which = "(emulated) CPU" if read_machine(seam.sys_root, cpu).emulated else "CPU"
        feature = "pause filter" if spec.vendor == "amd" else "PAUSE-loop exiting"
        reason = (
            f"the {which} has no {feature} (it lacks {spec.cpu_flag}): "
            f"{spec.module} forces PLE off without it"
        )
        return PleDecision(module, False, f"/proc/cpuinfo {line}", reason)
    return _decide_from_switch(module, spec)


def _decide_from_switch(module: KvmModule, spec: PleModuleSpec) -> PleDecision:
    """/proc/cpuinfo cannot say: judge from the switch parameter (and kvmple's saved one)."""
    line = "vmx flags" if spec.vendor == "intel" else "flags"
    silent = f"this kernel's /proc/cpuinfo has no {line!r} line"
    try:
        value = int(module.parameter(spec.switch) or "0")
    except ValueError:
        value = 0
    if value > 0:
        basis = (
            f"{spec.module} {spec.switch}={value} > 0 ({spec.module} zeroes it on CPUs "
            f"without PLE; {silent})"
        )
        return PleDecision(module, True, basis, None)
    try:
        saved = ple_state.load()
    except KvmpleError:
        saved = None
    if saved is not None and saved.module == spec.module and saved.values.get(spec.switch, 0) > 0:
        basis = (
            f"{spec.switch}={saved.values[spec.switch]} before kvmple changed it "
            f"({ple_state.originals_path()}; {silent})"
        )
        return PleDecision(module, True, basis, None)
    reason = (
        f"unknown: {silent} and {spec.module} {spec.switch} is 0, which it also is when PLE "
        f"was switched off; load {spec.module} with {spec.switch}="
        f"{spec.defaults()[spec.switch]}: a non-zero read-back proves PLE"
    )
    return PleDecision(module, None, f"{spec.module} {spec.switch}=0 ({silent})", reason)


def availability(seam: HostSeam) -> tuple[KvmModule | None, str | None]:
    """(the PLE-capable module, None) or (module or None, why PLE is unavailable or unknown).
    See decide_ple for how it is decided."""
    decision = decide_ple(seam)
    return decision.module, None if decision.available else decision.reason


def _release(seam: HostSeam) -> str:
    try:
        return (seam.proc_root / "sys" / "kernel" / "osrelease").read_text().strip()
    except OSError:
        return ""


def require_ple(seam: HostSeam) -> tuple[KvmModule, PleModuleSpec]:
    """The PLE module, or HostError saying why this host has no PLE (nothing is changed).

    A host where PLE is unknown (decide_ple) passes: reading the knobs is harmless, and a
    change is judged by its read-back (kvm_intel zeroes ple_gap without hardware PLE).
    """
    decision = decide_ple(seam)
    module, reason = decision.module, decision.reason
    if decision.available is False or module is None or module.ple_spec is None:
        raise HostError(
            f"PLE is not available on this host, nothing changed: {reason}",
            hint="PLE needs VT-x with 'ple' or AMD-V with 'pausefilter' and kvm_intel/kvm_amd;"
            " run 'kvmple doctor' for details",
        )
    return module, module.ple_spec


def read_knobs(seam: HostSeam) -> PleKnobs:
    """The module's current PLE values from /sys/module/MODULE/parameters."""
    _, spec = require_ple(seam)
    return PleKnobs(spec, _read_values(seam, spec))


def _read_values(seam: HostSeam, spec: PleModuleSpec) -> dict[str, int]:
    values: dict[str, int] = {}
    base = seam.module_parameters_dir(spec.module)
    for name in spec.names:
        path = base / name
        try:
            values[name] = int(path.read_text().strip())
        except FileNotFoundError:
            continue  # older kernels lack the *_max / grow / shrink parameters
        except (OSError, ValueError) as exc:
            raise HostError(f"cannot read {path}: {exc}", hint="unexpected sysfs content") from exc
    return values


def parse_assignments(spec: PleModuleSpec, words: Iterable[str]) -> dict[str, int]:
    """Turn ``["ple_gap=0", ...]`` into validated values (UsageError on any bad word)."""
    values: dict[str, str] = {}
    for word in words:
        name, sep, value = word.partition("=")
        if not sep or not name:
            raise UsageError(
                f"not KEY=VALUE: {word!r}", hint=f"parameters of {spec.module}: {_names(spec)}"
            )
        values[name.strip()] = value.strip()
    if not values:
        raise UsageError("no KEY=VALUE given", hint=f"parameters of {spec.module}: {_names(spec)}")
    parsed: dict[str, int] = {}
    for name, text in values.items():
        _check_name(spec, name)
        try:
            parsed[name] = int(text, 10)
        except ValueError:
            raise UsageError(
                f"{name}={text!r} is not an integer", hint="values are decimal integers"
            ) from None
    return validate(spec, parsed)


def _names(spec: PleModuleSpec) -> str:
    return ", ".join(spec.names)


def _check_name(spec: PleModuleSpec, name: str) -> None:
    if spec.param(name) is None:
        raise UsageError(
            f"unknown {spec.module} parameter {name!r}",
            hint=f"parameters of {spec.module}: {_names(spec)}",
        )


def validate(spec: PleModuleSpec, values: Mapping[str, int]) -> dict[str, int]:
    """Check names and ranges (ushort 0..65535 on kvm_amd, uint on kvm_intel)."""
    for name, value in values.items():
        _check_name(spec, name)
        param = spec.param(name)
        assert param is not None
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{name}={value!r} is not an integer", hint="use decimal integers")
        if not 0 <= value <= param.maximum:
            raise UsageError(
                f"{name}={value} is out of range 0..{param.maximum} for {spec.module}",
                hint=f"{spec.module} declares it "
                + ("ushort" if param.maximum < 2**32 - 1 else "uint"),
            )
    return dict(values)


def target_values(seam: HostSeam, mode: Mode) -> dict[str, int]:
    """The full set of values for ``on`` / ``off``.

    off: the current values with the switch (ple_gap / pause_filter_count) at 0.
    on:  the values saved before kvmple first changed them, or the module defaults; the
         switch takes its default when the saved value was 0 (the host had PLE off).
    """
    knobs = read_knobs(seam)
    spec = knobs.spec
    if mode == "off":
        return {**knobs.values, spec.switch: 0}
    saved = ple_state.load()
    base = saved.values if saved is not None and saved.module == spec.module else spec.defaults()
    wanted = {name: base.get(name, spec.defaults()[name]) for name in knobs.values}
    if wanted.get(spec.switch, 0) == 0:
        wanted[spec.switch] = spec.defaults()[spec.switch]
    return wanted


def check_can_reload(seam: HostSeam, module: KvmModule) -> None:
    """Refuse (HostError, nothing changed) when a reload cannot or must not happen now."""
    if module.builtin:
        raise HostError(
            f"{module.name} is built into the kernel: its parameters cannot change at run time",
            hint=f"boot with {module.name}.PARAM=VALUE on the kernel command line instead",
        )
    if not seam.is_root():
        raise HostError(
            "changing PLE parameters reloads a kernel module: run as root; nothing changed",
            hint="sudo kvmple ple ...",
        )
    running = seam.vms.running()
    blocking = [vm for vm in running if vm.uses_kvm or vm.source.startswith("libvirt")]
    if blocking:
        raise HostError(
            f"{len(blocking)} VM(s) running, nothing changed: "
            + "; ".join(vm.describe() for vm in blocking),
            hint="the module cannot be reloaded while any VM runs: stop them first"
            " (kvmple never stops VMs it did not start)",
        )
    if module.refcnt:
        raise HostError(
            f"module {module.name} is in use (refcnt {module.refcnt}), nothing changed",
            hint="some process still holds /dev/kvm or a KVM VM; stop it first",
        )


def apply(seam: HostSeam, values: Mapping[str, int]) -> PleKnobs:
    """Set PLE parameters (a module reload) and return what sysfs reads back.

    Nothing changes when the values are already in place. The originals are saved before
    the first change. A read-back that differs from what was asked is a HostError.
    """
    module, spec = require_ple(seam)
    wanted = validate(spec, values)
    current = _read_values(seam, spec)
    absent = sorted(set(wanted) - set(current))
    if absent:
        raise UsageError(
            f"{spec.module} on this kernel has no {', '.join(absent)} parameter; nothing changed",
            hint=f"it exposes {', '.join(current)} (kernels before 3.18 have only ple_gap and "
            "ple_window)",
        )
    if all(current.get(k) == v for k, v in wanted.items()):
        return PleKnobs(spec, current)
    check_can_reload(seam, module)
    ple_state.save_if_absent(spec.module, current)
    options = {**current, **wanted}
    seam.loader.reload(spec.module, options)
    after = _read_values(seam, spec)
    differ = {k: (v, after.get(k)) for k, v in options.items() if after.get(k) != v}
    if differ:
        detail = ", ".join(f"{k} wanted {w} got {g}" for k, (w, g) in sorted(differ.items()))
        raise HostError(
            f"{spec.module} reloaded but its parameters read back differently: {detail}",
            hint="the kernel clamped or ignored them (check dmesg); "
            "'kvmple ple restore' puts the saved originals back",
        )
    saved = ple_state.load()
    if saved is not None and saved.module == spec.module and saved.values == after:
        ple_state.forget()  # back at the originals: nothing left to restore
    return PleKnobs(spec, after)


def set_mode(seam: HostSeam, mode: Mode) -> PleKnobs:
    """``kvmple ple on|off``."""
    return apply(seam, target_values(seam, mode))


def restore(seam: HostSeam) -> PleKnobs | None:
    """Put back the values saved before kvmple first changed them (None: nothing saved)."""
    saved = ple_state.load()
    if saved is None:
        return None
    _, spec = require_ple(seam)
    if saved.module != spec.module:
        raise HostError(
            f"the saved originals are for {saved.module} but {spec.module} is loaded now",
            hint=f"inspect {ple_state.originals_path()} and remove it if it is stale",
        )
    knobs = apply(seam, {k: v for k, v in saved.values.items() if spec.param(k) is not None})
    ple_state.forget()
    return knobs


@contextmanager
def ple_values(seam: HostSeam, values: Mapping[str, int]) -> Iterator[PleKnobs]:
    """Apply ``values`` for the duration of the block, then put back what was there."""
    before = read_knobs(seam)
    knobs = apply(seam, values)
    try:
        yield knobs
    finally:
        apply(seam, before.values)


@contextmanager
def ple_setting(seam: HostSeam, mode: Mode) -> Iterator[PleKnobs]:
    """PLE ``on`` or ``off`` for the duration of the block (the campaign runner's knob).

    Raises HostError when PLE is unavailable (TCG, no hardware PLE, kvm_pvm) or a reload is
    impossible now; on exit (also on error or Ctrl-C) the previous values are reloaded.
    """
    with ple_values(seam, target_values(seam, mode)) as knobs:
        yield knobs
