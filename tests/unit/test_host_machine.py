"""Emulated-machine detection (DMI + CPUID hypervisor bit) and the lab host's PLE reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmple.host import ple
from kvmple.host.cpuinfo import CpuInfo
from kvmple.host.machine import read_machine
from tests.fixtures.fake_host import make_fake_host


def _cpu(*flags: str) -> CpuInfo:
    return CpuInfo("AuthenticAMD", "QEMU Virtual CPU version 2.5+", frozenset(flags), frozenset())


def _dmi(sys_root: Path, vendor: str, product: str) -> None:
    dmi = sys_root / "class/dmi/id"
    dmi.mkdir(parents=True, exist_ok=True)
    (dmi / "sys_vendor").write_text(vendor + "\n")
    (dmi / "product_name").write_text(product + "\n")


@pytest.mark.parametrize(
    ("vendor", "product", "flags", "emulated", "evidence"),
    [
        ("QEMU", "Standard PC (i440FX + PIIX, 1996)", ("svm",), True, "DMI sys_vendor 'QEMU'"),
        ("Dell Inc.", "PowerEdge R650", ("vmx",), False, None),
        ("Dell Inc.", "PowerEdge R650", ("vmx", "hypervisor"), True, "CPUID hypervisor bit"),
        ("Microsoft Corporation", "Virtual Machine", (), True, "Hyper-V"),
        ("Microsoft Corporation", "Surface Laptop", (), False, None),
    ],
)
def test_machine_evidence(  # noqa: PLR0917 (pytest parameters)
    tmp_path: Path,
    vendor: str,
    product: str,
    flags: tuple[str, ...],
    emulated: bool,
    evidence: str | None,
) -> None:
    _dmi(tmp_path, vendor, product)
    machine = read_machine(tmp_path, _cpu(*flags))
    assert machine.emulated is emulated
    assert (evidence is None) == (not machine.evidence)
    if evidence is not None:
        assert any(evidence in e for e in machine.evidence)
    assert machine.to_json()["sys_vendor"] == vendor


def test_no_dmi_is_not_evidence(tmp_path: Path) -> None:
    machine = read_machine(tmp_path, _cpu("svm"))
    assert (machine.emulated, machine.sys_vendor) == (False, None)


def test_emulated_amd_without_pause_filter_says_so(tmp_path: Path) -> None:
    """The lab host's case: kvm_amd loaded, no pausefilter, DMI says QEMU."""
    host = make_fake_host(tmp_path, "amd-nople")
    cpuinfo = tmp_path / "proc/cpuinfo"
    cpuinfo.write_text(cpuinfo.read_text().replace(" hypervisor", ""))  # bare metal first
    _, plain = ple.availability(host.seam())
    assert plain is not None and "the CPU has no pause filter" in plain
    _dmi(tmp_path / "sys", "QEMU", "Standard PC (i440FX + PIIX, 1996)")
    _, why = ple.availability(host.seam())
    assert why is not None and "the (emulated) CPU has no pause filter" in why


def _probe(kvm_s: float, tcg_s: float, kvm_status: str = "passed"):  # type: ignore[no-untyped-def]
    from kvmple.host.kvmprobe import BootProbe, ProbeOutcome

    return BootProbe(
        ProbeOutcome("kvm", kvm_status, kvm_s, "PGLD", "x"),
        ProbeOutcome("tcg", "passed", tcg_s, "PGLD", "x"),
        "6.1",
        "7.2",
        "kvm_amd",
    )


def test_slow_machine_kvm_must_beat_tcg() -> None:
    from kvmple.host.doctor import _judge_slow_machine

    assert _judge_slow_machine(_probe(10.5, 22.4)).kvm_boots  # a lab host: nested KVM wins
    assert not _judge_slow_machine(_probe(60.0, 22.4)).kvm_boots  # slower than emulation
    fast_host = _probe(0.3, 0.35)  # the usual budget: nothing to judge
    assert _judge_slow_machine(fast_host) is fast_host
    assert _judge_slow_machine(None) is None
