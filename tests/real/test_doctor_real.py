"""The doctor, the KVM boot probe, VM discovery and PLE refusal on THIS host, for real.

On the development/CI machine (no VT-x/AMD-V, /dev/kvm from kvm_pvm) the doctor must say
``tcg`` with the reason, the TCG control must boot the probe guest, KVM must not, and every
PLE change must be refused with nothing changed. On a VT-x/AMD-V host the same tests check
the other side (KVM boots the probe). Nothing here touches VMs kvmple did not start.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmple.errors import HostError
from kvmple.host import ple
from kvmple.host.cpuinfo import read_cpuinfo
from kvmple.host.doctor import DoctorReport, diagnose
from kvmple.host.kvmmodule import KvmModule, find_kvm_module
from kvmple.host.seam import real_seam
from kvmple.host.virt import libvirt_info
from kvmple.host.vms import SystemVmLister, scan_processes
from kvmple.run import background, run
from tests.support import need, need_program
from tests.unit.test_host_doctor import documented_keys, flatten_keys

pytestmark = pytest.mark.real

KVMPLE = [sys.executable, "-m", "kvmple.cli"]
HAS_VIRT = read_cpuinfo().virt_extension is not None
MODULE = find_kvm_module(Path("/sys"))
IS_PVM = MODULE is not None and MODULE.name == "kvm_pvm"


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One state directory for the module: the first diagnose probes, later ones use the cache."""
    return tmp_path_factory.mktemp("doctor-state")


@pytest.fixture
def shared_state(monkeypatch: pytest.MonkeyPatch, state_dir: Path) -> Path:
    monkeypatch.setenv("KVMPLE_STATE_DIR", str(state_dir))
    return state_dir


@pytest.fixture(scope="module")
def prerequisites() -> None:
    need_program("qemu-system-x86_64")
    need_program("virsh")
    info = libvirt_info(refresh=False)
    need(
        info.reachable, f"libvirt qemu:///system unreachable: {info.error} (scripts/setup-host.sh)"
    )


@pytest.fixture
def report(prerequisites: None, shared_state: Path) -> DoctorReport:
    return diagnose()


def test_verdict_on_this_host(report: DoctorReport) -> None:
    assert report.can_run, report.problems
    probe = report.probe
    assert probe is not None
    assert probe.tcg.passed, probe.tcg.detail  # the positive control: the probe itself works
    assert probe.tcg.stages == "PGLD"
    if not HAS_VIRT:
        assert report.verdict == "tcg"
        assert report.accelerator == "tcg"
        assert not report.ple_available
        assert "neither VT-x (vmx) nor AMD-V (svm)" in report.reason
    if IS_PVM:
        # kvm_pvm creates the VM but cannot run an ordinary guest: the probe must time out.
        # How far the guest got before the budget ran out (probe.kvm.stages) depends on the
        # host's load, so the verdict and the kind of reason are judged, not the stage.
        assert probe.kvm.status == "timeout", probe.kvm
        assert probe.kvm.detail.startswith("no exit within"), probe.kvm.detail
        assert "kvm_pvm" in report.reason
        assert "cannot boot an ordinary guest" in report.reason
        assert "TCG control passed" in report.reason
        assert report.ple_reason is not None and "kvm_pvm" in report.ple_reason
    if HAS_VIRT and MODULE is not None and MODULE.ple_spec is not None:
        assert probe.kvm.passed, probe.kvm.detail
        assert report.verdict in ("kvm", "kvm+ple")


def test_facts_match_the_host(report: DoctorReport) -> None:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    assert f"vendor_id\t: {report.cpu.vendor}" in cpuinfo
    assert report.dev_kvm == Path("/dev/kvm").exists()
    assert set(os.sched_getaffinity(0)) <= set(report.topology.online)
    assert report.qemu.version is not None
    assert report.qemu.version in run(["qemu-system-x86_64", "--version"], timeout=30).stdout
    assert report.libvirt.reachable
    assert "qemu" in report.libvirt.domain_types
    assert report.kernel == os.uname().release


def test_second_diagnose_uses_the_cache(report: DoctorReport) -> None:
    again = diagnose(probe_kvm=False)
    assert again.probe is not None and again.probe.cached
    assert again.probe.kvm == report.probe.kvm  # type: ignore[union-attr]
    assert again.verdict == report.verdict


def test_doctor_cli_json_is_complete_and_documented(
    report: DoctorReport, shared_state: Path
) -> None:
    result = run([*KVMPLE, "doctor", "--json"], timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["verdict"] == report.verdict
    assert doc["kvm"]["boot_probe"]["cached"] is True
    carried = flatten_keys(doc)
    assert documented_keys() - carried == set()
    assert carried - documented_keys() == set()
    for outcome in (doc["kvm"]["boot_probe"]["kvm"], doc["kvm"]["boot_probe"]["tcg_control"]):
        assert set(outcome) == {"accel", "status", "passed", "seconds", "stages", "detail"}


def test_doctor_cli_table(report: DoctorReport, shared_state: Path) -> None:
    result = run([*KVMPLE, "doctor"], timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert f"verdict: {report.verdict}" in result.stdout
    assert "what to do:" in result.stdout
    assert "KVM boot probe" in result.stdout


# --- PLE on this host: read-only paths, refusals, nothing changed ------------------------------


def _sysfs_snapshot() -> dict[str, str]:
    snap = {}
    for module in ("kvm", "kvm_intel", "kvm_amd", "kvm_pvm"):
        for p in sorted(Path(f"/sys/module/{module}/parameters").glob("*")):
            try:
                snap[str(p)] = p.read_text()
            except OSError:
                continue
    return snap


def test_ple_cli_on_this_host(prerequisites: None, shared_state: Path) -> None:
    before = _sysfs_snapshot()
    status = run([*KVMPLE, "ple", "status", "--json"], timeout=60, check=False)
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    _, reason = ple.availability(real_seam())
    assert doc["available"] is (reason is None)
    if reason is not None:
        for action in (["off"], ["on"], ["set", "ple_gap=0"], ["set", "pause_filter_count=0"]):
            result = run([*KVMPLE, "ple", *action], timeout=60, check=False)
            assert result.returncode == 4, (action, result.stderr)
            assert "PLE is not available on this host, nothing changed" in result.stderr
            assert "Traceback" not in result.stderr
        restore = run([*KVMPLE, "ple", "restore"], timeout=60, check=False)
        assert restore.returncode == 0
        assert "nothing to restore" in restore.stderr
    assert _sysfs_snapshot() == before
    assert not (shared_state / "ple-originals.json").exists()


@pytest.fixture
def kvm_process() -> Iterator[int]:
    """A paused QEMU that holds /dev/kvm (kvm_pvm creates VMs fine; it just cannot run them)."""
    need(Path("/dev/kvm").exists(), "no /dev/kvm on this host")
    name = f"kvmple-hosttest-{os.getpid()}"
    argv = [
        "qemu-system-x86_64",
        "-accel",
        "kvm",
        "-S",
        "-name",
        f"guest={name}",
        "-nodefaults",
        "-display",
        "none",
        "-m",
        "16",
    ]
    with background(argv) as proc:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = [v for v in scan_processes(Path("/proc")) if v.pid == proc.pid]
            if found and found[0].uses_kvm:
                break
            assert proc.poll() is None, "qemu -accel kvm -S exited"
            time.sleep(0.2)
        yield proc.pid


def test_real_scan_sees_kvm_holder_and_refuses_reload(kvm_process: int) -> None:
    lister = SystemVmLister()
    vm = next(v for v in lister.running() if v.pid == kvm_process)
    assert vm.uses_kvm
    assert vm.kvmple_owned
    assert vm.name == f"kvmple-hosttest-{os.getpid()}"
    # the reload guard on the real seam: a loadable module stands in for kvm_intel (the
    # real one here is built in, which is refused even earlier)
    stand_in = KvmModule(name="kvm_intel", builtin=False, refcnt=0, parameters=())
    with pytest.raises(HostError, match=vm.name) as info:
        ple.check_can_reload(real_seam(), stand_in)
    assert "nothing changed" in info.value.message


def test_real_libvirt_domain_is_listed(prerequisites: None, tmp_path: Path) -> None:
    name = f"kvmple-hosttest-dom-{os.getpid()}"
    xml = tmp_path / "dom.xml"
    xml.write_text(
        f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>16</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
</domain>
"""
    )
    run(["virsh", "-c", "qemu:///system", "create", xml, "--paused"], timeout=120)
    try:
        running = SystemVmLister().running()
        vm = next(v for v in running if v.name == name)
        assert vm.source == "libvirt qemu:///system"
        assert vm.pid is not None  # its QEMU process was matched by -name guest=
        assert vm.kvmple_owned
        assert sum(1 for v in running if v.pid == vm.pid) == 1  # not listed twice
    finally:
        run(["virsh", "-c", "qemu:///system", "destroy", name], timeout=120, check=False)
