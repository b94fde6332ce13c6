"""Guest KVM PV features as per-VM knobs (issue 16): pv.sched_yield / pv.unhalt go into every
guest's QEMU as ``-global x86_64-cpu.kvm-pv-...``, are read back from its command line (fake
/proc) and from inside the guest (CPUID 0x40000001 and the kernel log, fake executors), and
are unavailable under TCG."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest

from kvmple.campaign.plan import UNAVAILABLE, build_plan
from kvmple.campaign.playbook import parse_playbook
from kvmple.errors import HostError, KvmpleError
from kvmple.executor import Executor
from kvmple.host import knobs, pvknobs, vmknobs
from kvmple.run import Result
from kvmple.vm.domxml import QEMU_NS, domain_xml
from tests.fixtures.fake_host import make_fake_host
from tests.unit.test_host_vmknobs import MODERN, _proc
from tests.unit.test_vm_spec import make_spec

SIG = "4b4d564b 564b4d56 0000004d"  # "KVMKVMKVM\0\0\0"
# bits 0-13 of a KVM host that offers everything up to PV sched yield, then with 13 and 7 clear
ALL = 0x3FFF
NO_YIELD_NO_UNHALT = ALL & ~(1 << 13) & ~(1 << 7)


def _probe(eax: int | None, *log: str, sig: str = SIG) -> str:
    leaf1 = f" {eax:08x} 00000000 00000000 00000000" if eax is not None else ""
    lines = [
        f"leaf 0x40000000: 40000001 {sig}" if eax is not None else "leaf 0x40000000:",
        f"leaf 0x40000001:{leaf1}",
    ]
    return "\n".join([*lines, *log]) + "\n"


@dataclass
class _Guest:
    """A guest that answers the probe script with canned output."""

    stdout: str
    returncode: int = 0
    name: str = "guest a"
    calls: list[list[str]] = field(default_factory=list)

    def run(self, argv: list[str], **_: object) -> Result:
        self.calls.append(list(argv))
        return Result(tuple(argv), self.returncode, self.stdout, "boom", 0.1)


def _in(**guests: _Guest) -> dict[str, Executor]:
    return {name.replace("_", "-"): cast(Executor, guest) for name, guest in guests.items()}


def test_qemu_args_domain_xml_and_command_line_read_back(tmp_path: Path) -> None:
    args = vmknobs.qemu_args([("pv.sched_yield", "off"), ("cpu-pm", "on"), ("pv.unhalt", "on")])
    assert args == (
        "-global",
        "x86_64-cpu.kvm-pv-sched-yield=off",
        "-overcommit",
        "cpu-pm=on",
        "-global",
        "x86_64-cpu.kvm-pv-unhalt=on",
    )
    spec = make_spec(qemu_args=args)
    xml = domain_xml(spec, overlay=Path("/o.qcow2"), console_log=Path("/c.log"), ssh_port=2222)
    passed = [a.get("value") for a in ET.fromstring(xml).iter(f"{{{QEMU_NS}}}arg")]
    assert passed[-6:] == list(args)
    proc = _proc(tmp_path, {"kvmple-c-a": list(args)})
    found = vmknobs.check_guests([("pv.sched_yield", "off")], ["kvmple-c-a"], proc)
    assert found["pv.sched_yield"].to_json()["guests"] == {
        "kvmple-c-a": "-global x86_64-cpu.kvm-pv-sched-yield=off"
    }
    with pytest.raises(HostError, match=r"not started with -global x86_64-cpu.kvm-pv-unhalt=off"):
        vmknobs.check_guests([("pv.unhalt", "off")], ["kvmple-c-a"], proc)


def test_bad_values_are_refused_naming_the_knob() -> None:
    with pytest.raises(ValueError, match=r"knob 'pv.sched_yield' takes 'on' or 'off', not 'yes'"):
        vmknobs.qemu_args([("pv.sched_yield", "yes")])
    text = MODERN.replace(
        'knob: cpu-pm\n    values: ["off", "on"]', "knob: pv.unhalt\n    values: [maybe]"
    )
    assert "pv.unhalt" in text
    with pytest.raises(KvmpleError, match=r"pv.unhalt"):
        parse_playbook(text, "bad.yaml")


def test_parse_probe_cpuid_and_log() -> None:
    seen = pvknobs.parse_probe(_probe(ALL, "[    0.0123] kvm-guest: setup PV sched yield"))
    assert seen.kvm and seen.eax == ALL
    assert seen.log == ("kvm-guest: setup PV sched yield",)
    sched, unhalt = pvknobs.PV_KNOBS["pv.sched_yield"], pvknobs.PV_KNOBS["pv.unhalt"]
    assert sched.decide("a", seen) == ("on", "CPUID 0x40000001 EAX=0x3fff (bit 13)")
    off = pvknobs.parse_probe(_probe(NO_YIELD_NO_UNHALT))
    assert sched.decide("a", off)[0] == "off" and unhalt.decide("a", off)[0] == "off"
    assert unhalt.decide("a", seen)[0] == "on"
    # a hypervisor leaf without KVM's signature (TCG, another hypervisor): no KVM features
    other = pvknobs.parse_probe(_probe(ALL, sig="00000000 00000000 00000000"))
    assert not other.kvm and sched.decide("a", other)[0] == "off"


def test_without_cpuid_the_kernel_log_decides_or_the_block_fails() -> None:
    sched, unhalt = pvknobs.PV_KNOBS["pv.sched_yield"], pvknobs.PV_KNOBS["pv.unhalt"]
    logged = pvknobs.parse_probe(
        _probe(
            None, "[0.1] kvm-guest: setup PV sched yield", "[0.2] kvm-guest: PV spinlocks enabled"
        )
    )
    assert logged.eax is None
    assert sched.decide("a", logged) == ("on", "guest kernel log: kvm-guest: setup PV sched yield")
    assert unhalt.decide("a", logged)[0] == "on"
    no_host = pvknobs.parse_probe(_probe(None, "PV spinlocks disabled, no host support"))
    assert unhalt.decide("a", no_host)[0] == "off"
    with pytest.raises(HostError, match=r"pv.sched_yield: guest a shows neither CPUID"):
        sched.decide("a", no_host)  # absence of the line proves nothing


def test_check_in_guests_stores_and_refuses_a_differing_read_back() -> None:
    good = _Guest(_probe(ALL, "kvm-guest: setup PV sched yield"))
    found = pvknobs.check_in_guests([("ple", "on"), ("pv.sched_yield", "on")], _in(kvmple_c_a=good))
    assert found["pv.sched_yield"].to_json() == {
        "per_vm": True,
        "value": "on",
        "in_guest": {
            "kvmple-c-a": {
                "value": "on",
                "evidence": "CPUID 0x40000001 EAX=0x3fff (bit 13)",
                "log": ["kvm-guest: setup PV sched yield"],
            }
        },
    }
    assert good.calls[0][:2] == ["sh", "-c"]
    assert pvknobs.check_in_guests([("cpu-pm", "on")], _in(kvmple_c_a=_Guest(""))) == {}
    lacking = _Guest(_probe(NO_YIELD_NO_UNHALT))
    with pytest.raises(HostError, match=r"pv.sched_yield=on: guest kvmple-c-b reads back off"):
        pvknobs.check_in_guests([("pv.sched_yield", "on")], _in(kvmple_c_b=lacking))
    with pytest.raises(HostError, match="PV feature read-back in guest a failed: boom"):
        pvknobs.check_in_guests([("pv.unhalt", "on")], _in(x=_Guest("", returncode=1)))


def test_unavailable_under_tcg_and_collapsed_in_the_plan(tmp_path: Path) -> None:
    seam = make_fake_host(tmp_path, "intel").seam()
    missing = knobs.unavailable(["pv.sched_yield"], seam, accelerator="tcg", host_reason="no VT-x")
    assert missing == {"pv.sched_yield": "unavailable: TCG has no KVM PV interface (no VT-x)"}
    assert knobs.unavailable(["pv.unhalt"], seam, accelerator="kvm", host_reason="") == {}
    with knobs.applied([("pv.sched_yield", "off")], seam) as done:  # nothing on the host
        assert done["pv.sched_yield"].to_json() == {
            "setting": "off",
            "per_vm": True,
            "value": "off",
        }
    pv_factor = '  - knob: pv.sched_yield\n    values: ["on", "off"]\naxes:'
    playbook = parse_playbook(MODERN.replace("axes:", pv_factor), "pv.yaml").playbook
    plan = build_plan(playbook, missing)
    assert {dict(b.knobs)["pv.sched_yield"] for b in plan.blocks} == {UNAVAILABLE}
