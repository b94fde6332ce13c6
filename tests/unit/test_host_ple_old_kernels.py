"""PLE on kernels whose /proc/cpuinfo has no "vmx flags" line (issue 18, kind 1).

A missing field is unknown, never "no": kvm_intel zeroes ple_gap when the CPU lacks PLE
(arch/x86/kvm/vmx.c hardware_setup), so a loaded kvm_intel with ple_gap > 0 proves it.
Kernels before 3.18 expose only ple_gap and ple_window.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kvmple import cli
from kvmple.errors import HostError, UsageError
from kvmple.host import ple, ple_state
from kvmple.host.cpuinfo import parse_cpuinfo
from kvmple.host.doctor import decide
from kvmple.host.kvmmodule import find_kvm_module
from kvmple.host.seam import HostSeam
from tests.fixtures.fake_host import FakeModuleLoader, FakeVmLister
from tests.unit.test_host_doctor import KVM_OK, LIBVIRT, QEMU, _probe

CASE = Path(__file__).resolve().parents[1] / "data" / "cases" / "ple-old-kernel-no-vmx-flags"

# A 2.6.39-era Xeon (the RFC's kind of host): vmx in flags, no "vmx flags" line.
OLD_XEON = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU X5670 @ 2.93GHz
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep lm constant_tsc vmx est tpr_shadow vnmi \
flexpriority ept vpid
"""


def _seam(root: Path, *, hardware_ple: bool = True) -> HostSeam:
    return HostSeam(
        sys_root=root / "sys",
        proc_root=root / "proc",
        loader=FakeModuleLoader(root / "sys", hardware_ple=hardware_ple),
        vms=FakeVmLister(),
        is_root=lambda: True,
    )


def _old_host(tmp_path: Path, ple_gap: int, cpuinfo: str = OLD_XEON) -> Path:
    root = tmp_path / "host"
    params = root / "sys/module/kvm_intel/parameters"
    params.mkdir(parents=True)
    (params / "ple_gap").write_text(f"{ple_gap}\n")
    (params / "ple_window").write_text("4096\n")
    (root / "sys/module/kvm_intel/initstate").write_text("live\n")
    (root / "sys/module/kvm_intel/refcnt").write_text("0\n")
    (root / "proc").mkdir()
    (root / "proc/cpuinfo").write_text(cpuinfo)
    return root


def test_case_ple_gap_proves_ple_without_vmx_flags_line(tmp_path: Path) -> None:
    """Case ple-old-kernel-no-vmx-flags: kvm_intel loaded, ple_gap=128, no "vmx flags"."""
    root = tmp_path / "root"
    shutil.copytree(CASE / "root", root)
    seam = _seam(root)
    module, reason = ple.availability(seam)
    assert module is not None and module.name == "kvm_intel"
    assert reason is None
    decision = ple.decide_ple(seam)
    assert decision.available is True
    assert "ple_gap=128 > 0" in decision.basis and "no 'vmx flags' line" in decision.basis


def test_cpuinfo_without_vmx_flags_line_is_unknown_not_no() -> None:
    cpu = parse_cpuinfo(OLD_XEON)
    assert cpu.virt_extension == "vmx"
    assert cpu.ple_from_cpuinfo is None
    assert cpu.to_json()["ple_flag_known"] is False
    with_line = parse_cpuinfo(OLD_XEON + "vmx flags\t: vnmi ept\n")
    assert with_line.ple_from_cpuinfo is False  # the line is there and has no 'ple': no
    assert parse_cpuinfo(OLD_XEON + "vmx flags\t: vnmi ple\n").ple_from_cpuinfo is True
    assert parse_cpuinfo("processor\t: 0\nvendor_id\t: GenuineIntel\n").ple_from_cpuinfo is None


def test_ple_gap_zero_without_vmx_flags_is_unknown(tmp_path: Path) -> None:
    seam = _seam(_old_host(tmp_path, ple_gap=0))
    decision = ple.decide_ple(seam)
    assert decision.available is None
    assert decision.reason is not None and decision.reason.startswith("unknown:")
    assert "lacks" not in decision.reason
    _, reason = ple.availability(seam)
    assert reason == decision.reason  # campaigns record it as not usable, saying why


def test_unknown_is_settled_by_the_read_back(tmp_path: Path) -> None:
    """`ple on` on an unknown host: the reload's read-back proves or disproves PLE."""
    seam = _seam(_old_host(tmp_path, ple_gap=0), hardware_ple=True)
    knobs = ple.set_mode(seam, "on")
    assert knobs.values["ple_gap"] == 128
    assert ple.decide_ple(seam).available is True
    nohw = _seam(_old_host(tmp_path / "b", ple_gap=0), hardware_ple=False)
    with pytest.raises(HostError, match="ple_gap wanted 128 got 0"):
        ple.set_mode(nohw, "on")


def test_after_kvmple_switched_ple_off_the_saved_value_proves_it(tmp_path: Path) -> None:
    seam = _seam(_old_host(tmp_path, ple_gap=128))
    ple.set_mode(seam, "off")
    saved = ple_state.load()
    assert saved is not None and saved.values["ple_gap"] == 128
    decision = ple.decide_ple(seam)
    assert decision.available is True
    assert "ple_gap=128 before kvmple changed it" in decision.basis


def test_pre_3_18_kernel_has_only_gap_and_window(tmp_path: Path) -> None:
    seam = _seam(_old_host(tmp_path, ple_gap=128))
    assert ple.read_knobs(seam).values == {"ple_gap": 128, "ple_window": 4096}
    with pytest.raises(UsageError, match="no ple_window_grow parameter"):
        ple.apply(seam, {"ple_window_grow": 4})
    assert ple.target_values(seam, "off") == {"ple_gap": 0, "ple_window": 4096}


def test_doctor_status_and_campaign_give_the_same_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    shutil.copytree(CASE / "root", root)
    seam = _seam(root)
    decision = ple.decide_ple(seam)
    verdict = decide(
        cpu=parse_cpuinfo((root / "proc/cpuinfo").read_text()),
        module=find_kvm_module(root / "sys"),
        dev_kvm=True,
        probe=_probe(KVM_OK),
        ple_reason=decision.reason,
        qemu=QEMU,
        libvirt=LIBVIRT,
        ple_basis=decision.basis,
    )
    assert (verdict.verdict, verdict.ple_available) == ("kvm+ple", True)
    assert "ple_gap=128" in verdict.reason
    monkeypatch.setattr("kvmple.commands.ple.make_seam", lambda: seam)
    assert cli.main(["ple", "status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["available"], doc["basis"]) == (True, decision.basis)
    assert cli.main(["ple", "status"]) == 0
    assert "decided by kvm_intel ple_gap=128" in capsys.readouterr().out


def test_doctor_says_unknown_not_no(tmp_path: Path) -> None:
    root = _old_host(tmp_path, ple_gap=0)
    decision = ple.decide_ple(_seam(root))
    verdict = decide(
        cpu=parse_cpuinfo(OLD_XEON),
        module=find_kvm_module(root / "sys"),
        dev_kvm=True,
        probe=_probe(KVM_OK),
        ple_reason=decision.reason,
        qemu=QEMU,
        libvirt=LIBVIRT,
    )
    assert verdict.verdict == "kvm" and not verdict.ple_available
    assert "PLE is unknown:" in verdict.reason and "no PLE" not in verdict.reason
