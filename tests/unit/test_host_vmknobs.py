"""Per-VM knobs (issue 16): QEMU's -overcommit cpu-pm as a factor. The setting goes into
every guest's domain XML and is read back from each running QEMU's command line (fake /proc);
a guest without it fails the block rather than carrying a false label."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvmple.campaign.plan import build_plan
from kvmple.campaign.playbook import parse_playbook
from kvmple.errors import HostError
from kvmple.host import knobs, vmknobs
from kvmple.vm.domxml import QEMU_NS, domain_xml
from tests.fixtures.fake_host import make_fake_host
from tests.unit.test_vm_spec import make_spec


def _proc(tmp_path: Path, guests: dict[str, list[str]]) -> Path:
    proc = tmp_path / "proc"
    for pid, (name, extra) in enumerate(guests.items(), start=100):
        argv = ["/usr/bin/qemu-system-x86_64", "-name", f"guest={name},debug-threads=on", *extra]
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (proc / "self").mkdir()
    return proc


def test_qemu_args_and_read_back(tmp_path: Path) -> None:
    args = vmknobs.qemu_args([("ple", "on"), ("cpu-pm", "on")])
    assert args == ("-overcommit", "cpu-pm=on")
    proc = _proc(tmp_path, {"kvmple-c-a": ["-m", "512", *args], "kvmple-c-b": list(args)})
    found = vmknobs.check_guests([("cpu-pm", "on")], ["kvmple-c-a", "kvmple-c-b"], proc)
    assert found["cpu-pm"].to_json() == {
        "per_vm": True,
        "value": "on",
        "guests": {"kvmple-c-a": "-overcommit cpu-pm=on", "kvmple-c-b": "-overcommit cpu-pm=on"},
    }


def test_a_guest_without_the_setting_fails_the_block(tmp_path: Path) -> None:
    proc = _proc(tmp_path, {"kvmple-c-a": ["-overcommit", "cpu-pm=off"]})
    with pytest.raises(HostError, match="guest kvmple-c-a's QEMU was not started with"):
        vmknobs.check_guests([("cpu-pm", "on")], ["kvmple-c-a"], proc)
    with pytest.raises(HostError, match="kvmple-c-gone"):
        vmknobs.check_guests([("cpu-pm", "off")], ["kvmple-c-gone"], proc)


def test_domain_xml_carries_the_per_vm_arguments() -> None:
    spec = make_spec(qemu_args=("-overcommit", "cpu-pm=on"))
    xml = domain_xml(spec, overlay=Path("/o.qcow2"), console_log=Path("/c.log"), ssh_port=2222)
    args = [a.get("value") for a in ET.fromstring(xml).iter(f"{{{QEMU_NS}}}arg")]
    assert args[-2:] == ["-overcommit", "cpu-pm=on"]


def test_cpu_pm_is_unavailable_under_tcg_with_why(tmp_path: Path) -> None:
    seam = make_fake_host(tmp_path, "intel").seam()
    missing = knobs.unavailable(["cpu-pm"], seam, accelerator="tcg", host_reason="no VT-x")
    assert "guests under TCG have no such exits (no VT-x)" in missing["cpu-pm"]
    assert knobs.unavailable(["cpu-pm"], seam, accelerator="kvm", host_reason="") == {}
    with knobs.applied([("cpu-pm", "on")], seam) as done:  # nothing on the host changes
        assert done["cpu-pm"].to_json() == {"setting": "on", "per_vm": True, "value": "on"}


MODERN = """
name: modern
guests:
  a: {image: debian12-amqp, vcpus: 2, memory_mib: 1024, pin: [0, 1]}
  b: {image: debian12-amqp, vcpus: 2, memory_mib: 1024, pin: [0, 1]}
workloads:
  a: {name: dbench, role: measure}
  b: {name: spin, role: load, busy_vcpus: count}
factors:
  - knob: ple
    values: ["off", "on"]
  - knob: cpu-pm
    values: ["off", "on"]
  - knob: kvm.halt_poll_ns
    values: [0, 200000]
axes:
  spinners: {values: [0, 2], guest: b, param: count}
repetitions: 3
"""


def test_ple_x_cpu_pm_x_halt_poll_dry_run_count() -> None:
    playbook = parse_playbook(MODERN, "modern.yaml").playbook
    plan = build_plan(playbook, {})
    assert len(plan.runs) == 2 * 2 * 2 * 2 * 3
    assert len({r.knob_key for r in plan.blocks}) == 8  # one block (one boot) per setting
    tcg = build_plan(playbook, {"ple": "TCG", "cpu-pm": "TCG", "kvm.halt_poll_ns": "TCG"})
    assert len(tcg.runs) == 2 * 3
