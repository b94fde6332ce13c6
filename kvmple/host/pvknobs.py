"""Guest-visible KVM paravirtual (PV) features as per-VM knobs (issue 16): ``pv.sched_yield``
(KVM_FEATURE_PV_SCHED_YIELD, Linux 5.3: a vCPU sending an IPI to a preempted vCPU yields to
it) and ``pv.unhalt`` (KVM_FEATURE_PV_UNHALT: PV qspinlocks halt a waiter and kick it).

Set: each guest's QEMU gets ``-global x86_64-cpu.kvm-pv-sched-yield=on|off``. libvirt 9.0's
CPU map has no name for these features (/usr/share/libvirt/cpu_map), so the domain's
``<cpu>`` cannot carry them; a QEMU ``-global`` on the abstract CPU type applies to whatever
model libvirt picks (QEMU applies globals to subtypes: measured here with QEMU 7.2, where
``-global x86_64-cpu.pdpe1gb=on`` turns up on the default qemu64-x86_64-cpu, and a value
other than on/off is refused at start).

Read back twice: the guest's QEMU command line (:func:`kvmple.host.vmknobs.check_guests`), then
inside each guest (:func:`check_in_guests`): CPUID leaf 0x40000001 EAX (the feature bits,
include/uapi/asm/kvm_para.h: PV_UNHALT = 7, PV_SCHED_YIELD = 13) through the guest's
/dev/cpu/0/cpuid, and the guest kernel's log lines about them (arch/x86/kernel/kvm.c:
"setup PV sched yield" from kvm_guest_init, "PV spinlocks enabled" / "... disabled, no host
support" from kvm_spinlock_init). A feature asked on that the host's KVM does not offer (a
host kernel older than the feature) reads back off and fails the block.

Under TCG there is no KVM PV interface at all: QEMU accepts the property but filters it out
(``kvm-pv-sched-yield=on`` reads back false on a TCG CPU), so the knobs are unavailable there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvmple.errors import HostError
from kvmple.executor import Executor
from kvmple.host.knob import VmKnob, VmSetting
from kvmple.host.seam import HostSeam

if TYPE_CHECKING:  # the lab host runs the host layer without pydantic (lab/bochs_media.py)
    from pydantic import JsonValue

CPU_TYPE = "x86_64-cpu"  # QEMU's abstract x86-64 CPU type: -global reaches every model
KVM_SIGNATURE = ("4b4d564b", "564b4d56", "0000004d")  # "KVMKVMKVM\0\0\0" in EBX, ECX, EDX
PROBE_TIMEOUT_S = 60.0
_LEAVES = (0x40000000, 0x40000001)
# /dev/cpu/N/cpuid: the file offset is the leaf (arch/x86/kernel/cpuid.c), 16 bytes
# EAX EBX ECX EDX per read; `od -tx4` prints them as four little-endian words.
_PROBE = "\n".join(
    [
        "modprobe -q cpuid 2>/dev/null",
        *(
            f"echo leaf {leaf:#x}: $(dd if=/dev/cpu/0/cpuid bs=16 count=1 iflag=skip_bytes "
            f"skip={leaf} 2>/dev/null | od -An -tx4)"
            for leaf in _LEAVES
        ),
        "dmesg 2>/dev/null | grep -i -e 'pv sched yield' -e 'pv spinlocks' || true",
    ]
)
_LEAF_LINE = re.compile(r"^leaf (0x[0-9a-f]+):((?:\s+[0-9a-f]{8}){4})\s*$")
_STAMP = re.compile(r"^\[[^\]]*\]\s*")


@dataclass(frozen=True)
class GuestPv:
    """What one guest reports: ``eax`` of CPUID 0x40000001 (None when unreadable),
    ``kvm`` whether leaf 0x40000000 carries KVM's signature, ``log`` the kernel's PV lines."""

    eax: int | None
    kvm: bool
    log: tuple[str, ...]


def parse_probe(text: str) -> GuestPv:
    """The output of the in-guest probe script as a :class:`GuestPv`."""
    words: dict[int, list[str]] = {}
    log: list[str] = []
    for line in text.splitlines():
        match = _LEAF_LINE.match(line.strip())
        if match:
            words[int(match.group(1), 16)] = match.group(2).split()
        elif line.strip() and not line.startswith("leaf "):
            log.append(_STAMP.sub("", line.strip()))
    signature = words.get(_LEAVES[0])
    kvm = signature is not None and tuple(signature[1:]) == KVM_SIGNATURE
    features = words.get(_LEAVES[1])
    if signature is not None and not kvm:
        eax: int | None = 0  # a leaf was read, but no KVM behind it: no KVM features
    else:
        eax = int(features[0], 16) if features is not None and kvm else None
    return GuestPv(eax=eax, kvm=kvm, log=tuple(log))


class PvFeatureKnob(VmKnob):
    """One KVM PV CPUID feature of every guest of a block, on or off."""

    settings = ("on", "off")
    provider_hint = "use a KVM host ('kvmple doctor' says kvm), e.g. the emulated AMD-V lab"

    def __init__(
        self, name: str, prop: str, bit: int, on_lines: tuple[str, ...], off_lines: tuple[str, ...]
    ) -> None:
        self.name = name
        self.title = name  # as playbooks name it (the QEMU property is in change_note)
        self.prop = prop  # QEMU's CPU property (target/i386/cpu.c feature_word_info FEAT_KVM)
        self.bit = bit  # in CPUID 0x40000001 EAX
        self.on_lines = on_lines  # guest kernel log lines that prove the feature is on
        self.off_lines = off_lines  # ... and off
        self.change_note = f"per VM: QEMU -global {CPU_TYPE}.{prop}, read back in each guest"

    def without_kvm(self, seam: HostSeam, host_reason: str) -> str:
        return f"unavailable: TCG has no KVM PV interface ({host_reason or 'no KVM here'})"

    def qemu_args(self, setting: str) -> tuple[str, ...]:
        return ("-global", f"{CPU_TYPE}.{self.prop}={self.check_setting(setting)}")

    def decide(self, guest: str, seen: GuestPv) -> tuple[str, str]:
        """("on" | "off", the evidence) for one guest; HostError when neither CPUID nor the
        kernel log tells."""
        if seen.eax is not None:
            state = "on" if seen.eax >> self.bit & 1 else "off"
            return state, f"CPUID 0x40000001 EAX={seen.eax:#x} (bit {self.bit})"
        for state, lines in (("on", self.on_lines), ("off", self.off_lines)):
            for line in seen.log:
                if any(mark in line.lower() for mark in lines):
                    return state, f"guest kernel log: {line}"
        raise HostError(
            f"{self.name}: guest {guest} shows neither CPUID 0x40000001 (no /dev/cpu/0/cpuid) "
            "nor a kernel log line about it; the setting cannot be read back",
            hint="the guest kernel needs CONFIG_X86_CPUID (module cpuid) or its boot log",
        )


PV_KNOBS: dict[str, PvFeatureKnob] = {
    knob.name: knob
    for knob in (
        PvFeatureKnob("pv.sched_yield", "kvm-pv-sched-yield", 13, ("setup pv sched yield",), ()),
        PvFeatureKnob(
            "pv.unhalt",
            "kvm-pv-unhalt",
            7,
            # every kvm_spinlock_init line but "no host support" follows the feature check
            (
                "pv spinlocks enabled",
                "pv spinlocks disabled with kvm_hints_realtime",
                "pv spinlocks disabled, single cpu",
                "pv spinlocks disabled, forced by",
            ),
            ("pv spinlocks disabled, no host support",),
        ),
    )
}
"""The PV-feature knobs by playbook name."""


def probe_guest(executor: Executor) -> GuestPv:
    """Run the read-back probe in a guest (root over SSH) and parse it (HostError on failure)."""
    result = executor.run(
        ["sh", "-c", _PROBE], timeout=PROBE_TIMEOUT_S, check=False, what="PV feature read-back"
    )
    if result.returncode != 0:
        raise HostError(
            f"PV feature read-back in {executor.name} failed: "
            f"{result.stderr.strip()[-200:] or f'exit {result.returncode}'}",
            hint="the guest must answer SSH as root",
        )
    return parse_probe(result.stdout)


def check_in_guests(
    settings: Iterable[tuple[str, str]], guests: Mapping[str, Executor]
) -> dict[str, VmSetting]:
    """Each PV knob's setting as every running guest reports it (CPUID, kernel log).

    Raises HostError naming the guest when one reads back differently from the setting (the
    host's KVM lacks the feature, or the guest was started otherwise)."""
    wanted = [(name, value) for name, value in settings if name in PV_KNOBS]
    if not wanted:
        return {}
    seen = {guest: probe_guest(executor) for guest, executor in guests.items()}
    found: dict[str, VmSetting] = {}
    for name, value in wanted:
        knob = PV_KNOBS[name]
        per_guest: list[tuple[str, dict[str, JsonValue]]] = []  # domain -> its read-back
        for guest, reading in seen.items():
            state, evidence = knob.decide(guest, reading)
            if state != value:
                raise HostError(
                    f"{name}={value}: guest {guest} reads back {state} ({evidence}); its runs "
                    "would be labelled falsely",
                    hint="a feature the host's KVM lacks (older host kernel) reads back off",
                )
            record: dict[str, JsonValue] = {
                "value": state,
                "evidence": evidence,
                "log": list(reading.log),
            }
            per_guest.append((guest, record))
        found[name] = VmSetting(name, value, in_guest=tuple(per_guest))
    return found
