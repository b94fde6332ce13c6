"""Knobs named by what they change (issue 16): KVM module parameters written in place or by a
module reload, and /sys or /sys/kernel/debug files by path; against fake module trees whose
loader rewrites sysfs as modprobe would. Every change is read back and restored."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvmple.campaign.plan import build_plan
from kvmple.campaign.playbook import parse_playbook
from kvmple.errors import ConfigError, HostError
from kvmple.host import knobs
from kvmple.host.paramknobs import ModuleParamKnob, SysfsPathKnob, canonical
from kvmple.host.vms import RunningVm
from tests.fixtures.fake_host import FakeHost, make_fake_host


@pytest.fixture
def intel(tmp_path: Path) -> FakeHost:
    host = make_fake_host(tmp_path, "intel")
    kvm = host.sys_root / "module/kvm/parameters"
    kvm.mkdir(parents=True, exist_ok=True)
    (kvm / "halt_poll_ns").write_text("200000\n")
    (kvm / "halt_poll_ns").chmod(0o644)  # module_param(halt_poll_ns, uint, 0644)
    nested = host.sys_root / "module/kvm_intel/parameters/nested"
    nested.write_text("Y\n")
    for param in (host.sys_root / "module/kvm_intel/parameters").iterdir():
        param.chmod(0o444)  # kvm_intel's parameters are read-only at run time
    return host


def test_names_resolve_to_knobs() -> None:
    assert isinstance(knobs.get("kvm.halt_poll_ns"), ModuleParamKnob)
    assert isinstance(knobs.get("/sys/kernel/debug/sched/x"), SysfsPathKnob)
    for bad, message in (
        ("kvm_pvm.force", "unknown host knob"),
        ("/etc/passwd", "not a path under /sys"),
        ("/sys/../etc/passwd", "not a path under /sys"),
    ):
        with pytest.raises(HostError, match=message):
            knobs.get(bad)


def test_writable_parameter_is_written_read_back_and_restored(intel: FakeHost) -> None:
    with knobs.applied([("kvm.halt_poll_ns", "0")], intel.seam()) as done:
        assert intel.param("kvm", "halt_poll_ns") == "0"
        assert done["kvm.halt_poll_ns"].to_json()["value"] == "0"
        assert done["kvm.halt_poll_ns"].to_json()["writable"] is True
    assert intel.param("kvm", "halt_poll_ns") == "200000"
    assert intel.loader.calls == []  # no reload for a 0644 parameter


def test_read_only_parameter_reloads_keeping_ple_values(intel: FakeHost) -> None:
    with knobs.applied([("ple", "off"), ("kvm_intel.ple_window", "8192")], intel.seam()) as done:
        assert intel.param("kvm_intel", "ple_window") == "8192"
        assert intel.param("kvm_intel", "ple_gap") == "0"  # the PLE factor survived the reload
        assert done["kvm_intel.ple_window"].to_json()["writable"] is False
    assert intel.param("kvm_intel", "ple_window") == "4096"
    assert intel.param("kvm_intel", "ple_gap") == "128"


def test_bool_parameters_compare_as_the_kernel_prints_them(intel: FakeHost) -> None:
    assert canonical("Y") == canonical("1") and canonical("N") == canonical("0")
    knob = knobs.get("kvm_intel.nested")
    assert knob.apply(intel.seam(), "1").to_json()["value"] == "Y"  # already Y: nothing done
    assert intel.loader.calls == []


def test_a_clamped_value_is_refused_and_restored(intel: FakeHost) -> None:
    intel.loader.clamp["ple_window_max"] = 7
    with pytest.raises(HostError, match="ple_window_max was set to 100 but reads back 7"):
        with knobs.applied([("kvm_intel.ple_window_max", "100")], intel.seam()):
            pass


def test_reload_refused_while_a_vm_runs_changes_nothing(intel: FakeHost) -> None:
    intel.vms.vms.append(
        RunningVm("other", "libvirt qemu:///system", 42, uses_kvm=True, command="qemu")
    )
    with pytest.raises(HostError, match="VM\\(s\\) running, nothing changed"):
        knobs.get("kvm_intel.ple_window").apply(intel.seam(), "8192")
    assert intel.param("kvm_intel", "ple_window") == "4096" and intel.loader.calls == []


def test_under_tcg_the_parameter_is_read_but_unavailable(intel: FakeHost) -> None:
    missing = knobs.unavailable(
        ["kvm.halt_poll_ns"], intel.seam(), accelerator="tcg", host_reason="KVM does not boot"
    )
    assert "reads 200000 here, but guests run under TCG" in missing["kvm.halt_poll_ns"]
    gone = knobs.unavailable(["kvm.nonexistent"], intel.seam(), accelerator="kvm", host_reason="")
    assert gone == {"kvm.nonexistent": "kvm has no parameter nonexistent (this kernel's version?)"}


def test_sysfs_path_knob(intel: FakeHost) -> None:
    target = intel.sys_root / "kernel/debug/sched/vcpu_debooster_enabled"
    target.parent.mkdir(parents=True)
    target.write_text("1\n")
    name = "/sys/kernel/debug/sched/vcpu_debooster_enabled"
    with knobs.applied([(name, "0")], intel.seam()):
        assert target.read_text() == "0\n"
    assert target.read_text().strip() == "1"
    outside = intel.root / "secret"
    outside.write_text("x\n")
    os.symlink(outside, intel.sys_root / "kernel/debug/sched/link")
    reason = knobs.get("/sys/kernel/debug/sched/link").available(intel.seam())
    assert reason is not None and "outside /sys" in reason
    assert "does not exist" in str(knobs.get("/sys/nope").available(intel.seam()))


def test_values_a_parameter_cannot_take_are_refused() -> None:
    knob = knobs.get("kvm.halt_poll_ns")
    assert knob.check_setting(0) == "0"
    for bad in ("1;reboot", "", "a b", True):
        with pytest.raises(ValueError, match="not a value a kernel parameter takes"):
            knob.check_setting(bad)


PLAYBOOK = """
name: t
guests:
  a: {image: debian12-amqp, vcpus: 1, memory_mib: 512, pin: [0]}
workloads:
  a: {name: hackbench, role: measure}
factors:
  - knob: ple
    values: ["off", "on"]
  - knob: kvm.halt_poll_ns
    values: [0, 200000]
repetitions: 2
"""


def test_playbook_factors_by_parameter_name_multiply_the_plan() -> None:
    playbook = parse_playbook(PLAYBOOK, "t.yaml").playbook
    assert playbook.factors[1].values == ("0", "200000")
    assert len(build_plan(playbook, {}).runs) == 2 * 2 * 2
    assert len(build_plan(playbook, {"kvm.halt_poll_ns": "TCG"}).runs) == 2 * 2
    with pytest.raises(ConfigError, match="not a value a kernel parameter takes"):
        parse_playbook(PLAYBOOK.replace("[0, 200000]", '["0", "1;x"]'), "t.yaml")


def _with_factor(factor: str) -> str:
    return PLAYBOOK.replace("  - knob: kvm.halt_poll_ns\n    values: [0, 200000]\n", factor)


@pytest.mark.parametrize(
    ("factor", "message"),
    [
        (
            "  - knob: kvm.halt_poll_ns\n    values: [-1]\n",
            r"t\.yaml:\d+: factors\.1\.values: kvm\.halt_poll_ns is a uint parameter: '-1' is "
            "not a whole number from 0 to 4294967295",
        ),
        (
            '  - knob: kvm.halt_poll_ns\n    values: ["abc"]\n',
            r"factors\.1\.values: kvm\.halt_poll_ns is a uint parameter: 'abc'",
        ),
        (
            "  - knob: kvm_amd.pause_filter_count\n    values: [0, 70000]\n",
            r"ushort parameter: '70000' is not a whole number from 0 to 65535",
        ),
        (
            '  - knob: kvm_intel.nested\n    values: ["Y", "on"]\n',
            r"kvm_intel\.nested is a bool parameter: 'on' is not Y, N, 1 or 0",
        ),
        (
            "  - knob: kvm.not_in_this_kernel\n    values: [1, 2]\n",
            r"kvmple does not know the type of kvm\.not_in_this_kernel: declare it in the "
            r"factor, e\.g\. 'type: uint'",
        ),
        (
            "  - knob: kvm.not_in_this_kernel\n    type: bool\n    values: [1, 2]\n",
            r"kvm\.not_in_this_kernel is a bool parameter: '2' is not Y, N, 1 or 0",
        ),
        (
            "  - knob: kvm.not_in_this_kernel\n    type: float\n    values: [1]\n",
            r"type 'float' is not one of bool, int, uint, ushort, ulong, string",
        ),
        (
            "  - knob: kvm.halt_poll_ns\n    type: int\n    values: [1]\n",
            r"kvm\.halt_poll_ns is a uint parameter \(virt/kvm/kvm_main\.c\), not int",
        ),
    ],
)
def test_module_parameter_values_are_checked_by_type_at_load(factor: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_playbook(_with_factor(factor), "t.yaml")


def test_values_of_the_parameter_type_load() -> None:
    for factor in (
        "  - knob: kvm.halt_poll_ns\n    values: [0, 4294967295]\n",
        '  - knob: kvm_intel.nested\n    values: ["Y", "N", 0]\n',
        "  - knob: kvm_amd.nested\n    values: [-1, 1]\n",  # an int in svm.c
        '  - knob: kvm.enable_relaxed_boost\n    values: ["Y", "N"]\n',  # the RFC's
        "  - knob: kvm.not_in_this_kernel\n    type: uint\n    values: [0, 5]\n",
        "  - knob: kvm.not_in_this_kernel\n    type: string\n    values: [auto, never]\n",
    ):
        factor_spec = parse_playbook(_with_factor(factor), "t.yaml").playbook.factors[1]
        assert factor_spec.values  # loaded, the settings as text


def test_only_module_parameters_take_a_type() -> None:
    factor = '  - knob: cpu-pm\n    type: bool\n    values: ["on"]\n'
    with pytest.raises(ConfigError, match=r"knob 'cpu-pm' takes no 'type'"):
        parse_playbook(_with_factor(factor), "t.yaml")
