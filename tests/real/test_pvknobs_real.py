"""The PV-feature knobs' two real edges on THIS machine, without booting a guest:

- the in-guest read-back script (CPUID 0x40000001 through /dev/cpu/0/cpuid, the kernel log)
  run on the host itself, which is a KVM guest (kvm_pvm): the same Debian 12 kernel family
  the campaign's guests run;
- QEMU 7.2 under TCG accepts ``-global x86_64-cpu.kvm-pv-sched-yield=on`` but filters it out
  (the CPU's property reads back false over QMP), and refuses a value other than on/off:
  why the knobs are "unavailable: TCG has no KVM PV interface". Each QEMU is started with -S
  (no guest code runs) and quits over QMP within seconds.
"""

from __future__ import annotations

import json

import pytest

from kvmple.executor import LocalExecutor
from kvmple.host import pvknobs
from kvmple.host.cpuinfo import read_cpuinfo
from kvmple.run import run
from tests.support import need, need_program, need_root

pytestmark = pytest.mark.real


def test_read_back_script_on_this_kvm_guest_host() -> None:
    need_root()
    need("hypervisor" in read_cpuinfo().flags, "the host must itself run under a hypervisor")
    seen = pvknobs.probe_guest(LocalExecutor())
    need(seen.kvm, "the host's hypervisor must be KVM (CPUID 0x40000000 'KVMKVMKVM')")
    assert seen.eax is not None and seen.eax > 0
    for knob in pvknobs.PV_KNOBS.values():
        state, evidence = knob.decide("host", seen)
        assert evidence.startswith("CPUID 0x40000001 EAX=")
        if state == "on" and knob.name == "pv.sched_yield":
            # the kernel logs the setup when it offers the feature and has > 1 CPU
            assert any("pv sched yield" in line.lower() for line in seen.log), seen.log


def _qom_get(qemu: str, global_: str, prop: str) -> tuple[int, object, str]:
    commands = [
        {"execute": "qmp_capabilities"},
        {
            "execute": "qom-get",
            "arguments": {"path": "/machine/unattached/device[0]", "property": prop},
        },
        {"execute": "quit"},
    ]
    argv = [qemu, "-machine", "pc,accel=tcg", "-S", "-nodefaults", "-display", "none"]
    argv += ["-global", global_, "-qmp", "stdio"]
    text = "".join(json.dumps(c) + "\n" for c in commands)
    result = run(argv, timeout=60, check=False, input=text, what="qemu -S")
    values = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    got = [v["return"] for v in values if "return" in v and v["return"] != {}]
    return result.returncode, got[0] if got else None, result.stderr


def test_tcg_accepts_and_filters_the_property() -> None:
    qemu = need_program("qemu-system-x86_64")
    knob = pvknobs.PV_KNOBS["pv.sched_yield"]
    on = knob.qemu_args("on")[1]
    assert _qom_get(qemu, on, knob.prop)[:2] == (0, False)  # asked on, TCG offers no KVM PV
    control = f"{pvknobs.CPU_TYPE}.pdpe1gb=on"  # the same -global reaches the default model
    assert _qom_get(qemu, control, "pdpe1gb")[:2] == (0, True)
    code, _, stderr = _qom_get(qemu, f"{pvknobs.CPU_TYPE}.{knob.prop}=maybe", knob.prop)
    assert code != 0 and "expects 'on' or 'off'" in stderr
